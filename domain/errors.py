"""The one error type the domain raises: a stable code plus a human message.

Gateways map ``code`` to HTTP problem types and CLI exit messages, so codes are part
of the public contract (see docs/transactions.md) and never change meaning.
"""

from __future__ import annotations


class DomainError(Exception):
    """A command was refused by a domain rule."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
