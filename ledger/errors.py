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


def shown(value: str, limit: int = 100) -> str:
    """A client's value as a refusal quotes it: whole when short, else its start. A key
    id of 5,000 characters was echoed back whole in every refusal of it."""
    return value if len(value) <= limit else f"{value[:limit]}… ({len(value):,} characters)"
