"""The one exception family of the SDK, so a provider's code has one thing to catch.

The server answers every error with an RFC 9457 problem document carrying a stable
``code`` (docs/transactions.md lists them); the SDK keeps that code rather than
the HTTP status, because the code is the contract and the status is only a hint.
"""

from __future__ import annotations

from typing import Any

#: Statuses after which resubmitting the *same* request is safe and may succeed: the
#: ledger or a proxy in front of it was busy or gone, or (408 ``body_timeout``) the body
#: did not arrive in time and nothing was read.
RETRYABLE_STATUSES = frozenset({408, 502, 503, 504})


class DfgApiError(Exception):
    """The server refused a request (or could not be reached); nothing was recorded.

    ``code`` is the problem document's stable code (``nonce_reused``,
    ``consent_never_given``, ...), ``status`` the HTTP status (0 when no answer came
    back), ``detail`` the human explanation, ``problem`` the whole document.
    """

    def __init__(self, status: int, code: str, detail: str, problem: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.problem: dict[str, Any] = (
            problem
            if problem is not None
            else {
                "status": status,
                "code": code,
                "detail": detail,
            }
        )

    @property
    def retryable(self) -> bool:
        """True when resubmitting the same JWS later may succeed (the ledger was busy)."""
        return self.status == 0 or self.status in RETRYABLE_STATUSES

    @classmethod
    def from_problem(cls, status: int, problem: dict[str, Any]) -> DfgApiError:
        return cls(
            int(problem.get("status", status)),
            str(problem.get("code", "http_error")),
            str(problem.get("detail", "")),
            problem,
        )


class DfgConnectionError(DfgApiError):
    """No HTTP answer at all (refused, reset, timed out) even after the retries.

    The transaction may or may not have been recorded: resubmit the *same* JWS
    later; the ledger answers with the existing entry (``duplicate=True``) if it was.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(0, "connection_failed", detail)
