"""RFC 9457 problem documents: every error the API returns, with a stable ``code``."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import suppress
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from infra.storage.errors import storage_unavailable
from infra.storage.postgres import check_pools

PROBLEM_TYPE = "application/problem+json"
#: The content codings a request body may be in: aiohttp decodes gzip and deflate as it
#: reads (br and zstd only with optional libraries, not installed: it refuses those
#: itself) and passes any other coding through undecoded, as if it were the body.
ACCEPTED_CODINGS = frozenset({"", "identity", "gzip", "deflate"})


class Problem(web.HTTPException):
    """Raise anywhere in a handler; the middleware renders it."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        self.status_code = status
        super().__init__(
            text=json.dumps(problem_body(status, code, detail, **extra)), content_type=PROBLEM_TYPE
        )


def problem_body(status: int, code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": f"urn:dfg:problem:{code}",
        "title": code.replace("_", " "),
        "status": status,
        "code": code,
        "detail": detail,
        **extra,
    }


def problem_response(status: int, code: str, detail: str, **extra: Any) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(problem_body(status, code, detail, **extra)), content_type=PROBLEM_TYPE
    )


@web.middleware
async def problems_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error leaves as a problem document: ours, aiohttp's (404, 405, 413) and bugs."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except Problem:
        raise
    except web.HTTPException as exc:
        if exc.content_type == PROBLEM_TYPE:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
        response = problem_response(exc.status, code, exc.reason or code)
        if "Allow" in exc.headers:  # a 405 names the methods the resource has (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        # the body cannot be read: e.g. it is not in the Content-Encoding it names
        cause = exc.__cause__ or exc
        detail = f"the request body cannot be read: {getattr(cause, 'message', '') or cause}"
        response = problem_response(400, "malformed_body", detail)
        # Nothing more of this body can be read, and the parser has given up on the
        # connection: close it after the answer, and mark the body as ended so that
        # aiohttp does not try to drain it first (reading it again raised the same
        # error, which aiohttp logged as an unhandled exception with its traceback).
        response.force_close()
        request.content.feed_eof()
        return response
    except Exception as exc:
        if isinstance(exc, ConnectionResetError) and _client_gone(request):
            return _client_left(request)
        if storage_unavailable(exc):
            request.app.logger.warning("storage unavailable in %s %s: %s", request.method, request.path, exc)
            # the next requests get working connections, not the pools' other dead ones
            # (check_pools raises nothing; the executor refuses new work while shutting down)
            with suppress(RuntimeError):
                asyncio.get_running_loop().run_in_executor(None, check_pools)
            response = problem_response(
                503, "storage_unavailable", "the ledger's database cannot answer now; try again shortly"
            )
            response.headers["Retry-After"] = "1"
            return response
        request.app.logger.exception("unhandled error in %s %s", request.method, request.path)
        return problem_response(
            500, "internal_error", "the server failed; nothing was changed by this request"
        )


@web.middleware
async def content_coding_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """A body in a coding the server does not decode is refused (415, RFC 9110 §15.5.16),
    not read as if it were plain JSON."""
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding not in ACCEPTED_CODINGS:
        refused = Problem(
            415,
            "unsupported_content_encoding",
            f"the request body's Content-Encoding {coding[:40]!r} is not one this server decodes:"
            " send it as is, or as gzip or deflate",
        )
        refused.headers["Accept-Encoding"] = "gzip, deflate"
        refused.force_close()  # its body is not read
        request.content.feed_eof()
        raise refused
    response: web.StreamResponse = await handler(request)
    return response


class _MalformedRequests(logging.Filter):
    """aiohttp answers a request that is not well-formed HTTP (a bad Content-Length or
    chunk, a header over 8,190 bytes, a body it cannot decode) with a plain 400 and logs
    it as an error with a traceback: a client's mistake, or a scanner's, that would fill
    the log. Logged as one warning line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and 400 <= (error.code or 0) < 500:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = f"refused a malformed request ({error.code}): {error.message}"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def quiet_malformed_requests() -> None:
    """Install ``_MalformedRequests`` on aiohttp's server log (once)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedRequests) for f in server_log.filters):
        server_log.addFilter(_MalformedRequests())


def _client_left(request: web.Request) -> web.Response:
    """The client hung up while its body was being read: nobody is left to answer (the
    response is never sent). That is the client's doing, not an unhandled error to log
    with a traceback."""
    request.app.logger.info("client left during %s %s", request.method, request.path)
    response = problem_response(400, "client_disconnected", "the connection closed mid-request")
    response.force_close()
    return response


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
