"""Serving the schema with aiohttp at ``/graphql`` (GraphiQL in a browser)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from cross_web import HTTPException  # what strawberry raises for a request it refuses
from strawberry.aiohttp.views import GraphQLView
from strawberry.http import GraphQLHTTPResponse
from strawberry.http.types import QueryParams
from strawberry.types import ExecutionResult

from gateways.graphql.schema import INVALID_QUERY, Context, schema
from gateways.http.api import read_body
from gateways.http.problems import problem_response
from ledger.jws import RepeatedMember, unique_members

#: Codes for the HTTP errors strawberry raises before a query runs (a query that runs
#: answers 200 with GraphQL ``errors``, as the GraphQL-over-HTTP spec has it).
_CODES = {400: "invalid_graphql_request", 405: "method_not_allowed", 415: "unsupported_media_type"}


class _Refused(HTTPException):
    """A refusal with a code of its own rather than the one its status implies."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(status, reason)
        self.code = code


class LedgerGraphQLView(GraphQLView[Context, None]):
    def __init__(self, context: Context) -> None:
        super().__init__(schema=schema, graphql_ide="graphiql", allow_queries_via_get=True)
        self._context = context

    async def get_context(self, request: web.Request, response: Any) -> Context:
        return self._context

    def parse_json(self, data: str | bytes) -> Any:
        """A JSON body must be an object (or a batch, which strawberry refuses by name):
        strawberry would read a string or a number as one, and fail with a 500."""
        parsed = self._unambiguous_json(data)
        if not isinstance(parsed, dict | list):
            raise HTTPException(400, "the request body is a JSON object with a query")
        return parsed

    def parse_query_params(self, params: QueryParams) -> dict[str, Any]:
        """A GET's ``variables`` and ``extensions`` are JSON values that may be null:
        they are read without ``parse_json``'s check of a body (strawberry checks their
        kinds itself, with its own message)."""
        parsed: dict[str, Any] = dict(params)
        for name in ("variables", "extensions"):
            if parsed.get(name):
                parsed[name] = self._unambiguous_json(parsed[name])
        return parsed

    def _unambiguous_json(self, data: str | bytes) -> Any:
        """JSON with no object naming a member twice: parsers disagree on which value
        counts, and a query or its variables must have one meaning, as every other body
        of the API must (``malformed_json``). Text that is not JSON gets strawberry's
        own refusal."""
        try:
            return json.loads(data, object_pairs_hook=unique_members)
        except RepeatedMember as exc:
            raise _Refused(
                400, "malformed_json", f"the JSON repeats the member {exc.name[:80]!r} in one object"
            ) from None
        except RecursionError:  # strawberry's own read fails alike, and that was a 500
            raise _Refused(400, "malformed_json", "the JSON nests too deeply to be read") from None
        except ValueError:
            return super().parse_json(data)

    async def process_result(self, request: web.Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        """Errors of the document itself (it does not parse, or asks for a field the
        schema lacks) get a code too, like every refusal of the API: ``invalid_query``."""
        answer = await super().process_result(request, result)
        for error in answer.get("errors") or []:
            if not isinstance(error, dict):
                continue
            extensions = dict(error.get("extensions") or {})
            if not error.get("path") and "code" not in extensions:
                error["extensions"] = {**extensions, "code": INVALID_QUERY}
        return answer

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        """A request refused before its query runs gets a problem document like every
        other error of the API; strawberry's own answer is plain text."""
        if request.body_exists and request.content_type != "multipart/form-data":
            # read within the API's body time-out (408 body_timeout), like every other
            # body: a client sending it slowly held its connection and handler for good.
            # aiohttp keeps the bytes, which strawberry's own read then gets.
            try:
                await read_body(request)
            except web.HTTPRequestEntityTooLarge as exc:  # its text names the limit; the reason does not
                return problem_response(413, "too_large", exc.text or "the request body is too large")
        try:
            return await self.run(request=request)
        except HTTPException as exc:
            status = exc.status_code
            code = exc.code if isinstance(exc, _Refused) else _CODES.get(status, "http_error")
            response = problem_response(status, code, exc.reason)
            if status == 405:
                response.headers["Allow"] = "GET, POST"
            return response


def mount(app: web.Application, context: Context) -> None:
    app.router.add_route("*", "/graphql", LedgerGraphQLView(context))
