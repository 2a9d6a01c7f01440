"""Identifier rules shared by every aggregate.

Principal ids and subject pseudonyms share one namespace: a citizen who joins the
platform keeps the pseudonym service providers already used for them. The patterns
forbid '@' and spaces so that an e-mail address or a name cannot be recorded in
clear by mistake (the ledger holds no personal data in clear).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from functools import lru_cache
from typing import Final

PRINCIPAL_ID_PATTERN: Final = r"^[a-z][a-z0-9_-]{0,31}:[A-Za-z0-9._~-]{1,96}$"
PSEUDONYM_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:~-]{0,127}$"
CODE_PATTERN: Final = r"^[A-Za-z][A-Za-z0-9._:/-]{0,127}$"

_PRINCIPAL_RE = re.compile(PRINCIPAL_ID_PATTERN)

#: Namespace for deriving aggregate ids; fixed forever (ids are in the log).
DFG_NAMESPACE: Final = uuid.UUID("5b0f1c7e-8a0e-4d7c-9a55-0c6d1f3e2a10")


_NAMESPACE_BYTES: Final = DFG_NAMESPACE.bytes
_VERSION_BITS_CLEARED: Final = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_5_BITS: Final = (5 << 76) | (0x8000 << 48)


def _uuid5(name: str) -> uuid.UUID:
    """``uuid.uuid5(DFG_NAMESPACE, name)``, about 40 % faster: the same SHA-1 and bits,
    set on the integer directly (two derivations per consent entry are on the hot path)."""
    digest = hashlib.sha1(_NAMESPACE_BYTES + name.encode("utf-8"), usedforsecurity=False).digest()
    return uuid.UUID(int=(int.from_bytes(digest[:16]) & _VERSION_BITS_CLEARED) | _VERSION_5_BITS)


def could_be_principal(name: str) -> bool:
    """Principal ids always contain ':' (``PRINCIPAL_ID_PATTERN``); pseudonyms of people
    who are not platform users need not, and a lookup for those needs no hashing."""
    return ":" in name


def is_principal_id(value: str) -> bool:
    return bool(_PRINCIPAL_RE.fullmatch(value))  # not match: its $ also matches before a final "\n"


@lru_cache(maxsize=100_000)
def principal_aggregate_id(principal: str) -> uuid.UUID:
    """Aggregate id of a principal: stable and derivable by anyone."""
    return _uuid5(f"principal\n{principal}")


def consent_aggregate_id(controller: str, consent_id: uuid.UUID | str) -> uuid.UUID:
    """Consent ids are client-chosen, so they are scoped by controller: one
    controller can never touch another's consent by guessing its id. ``consent_id``
    may be given as its text (``str(id)``, what is hashed), when the caller has it."""
    return _uuid5(f"consent\n{controller}\n{consent_id}")


def entity_aggregate_id(kind: str, entity_id: uuid.UUID) -> uuid.UUID:
    """Aggregate id of a catalog, datasource, data view or analysis: its client-chosen
    id, scoped by kind so that ids of different kinds never collide."""
    return _uuid5(f"{kind}\n{entity_id}")


def split_kid(kid: str) -> tuple[str, str]:
    """``<principal>#<thumbprint>`` -> (principal, thumbprint)."""
    principal, sep, thumbprint = kid.rpartition("#")
    if not sep or not principal or not thumbprint:
        raise ValueError(f"key id {kid[:100]!r} is not of the form <principal>#<thumbprint>")
    return principal, thumbprint
