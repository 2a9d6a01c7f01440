"""Why the ledger refused a transaction: a stable code and a message for people.

Codes are the contract shared by the HTTP API, the SDK and the CLI (docs/transactions.md).
"""

from __future__ import annotations


class Rejected(Exception):
    """A transaction was refused; it left no trace in the log."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}
