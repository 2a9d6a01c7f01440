"""Identifier rules shared by every aggregate.

Principal ids and subject pseudonyms share one namespace: a citizen who joins the
platform keeps the pseudonym service providers already used for them. The patterns
forbid '@' and spaces so that an e-mail address or a name cannot be recorded in
clear by mistake (the ledger holds no personal data in clear).
"""

from __future__ import annotations

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


def is_principal_id(value: str) -> bool:
    return bool(_PRINCIPAL_RE.match(value))


@lru_cache(maxsize=100_000)
def principal_aggregate_id(principal: str) -> uuid.UUID:
    """Aggregate id of a principal: stable and derivable by anyone."""
    return uuid.uuid5(DFG_NAMESPACE, f"principal\n{principal}")


def consent_aggregate_id(controller: str, consent_id: uuid.UUID) -> uuid.UUID:
    """Consent ids are client-chosen, so they are scoped by controller: one
    controller can never touch another's consent by guessing its id."""
    return uuid.uuid5(DFG_NAMESPACE, f"consent\n{controller}\n{consent_id}")


def entity_aggregate_id(kind: str, entity_id: uuid.UUID) -> uuid.UUID:
    """Aggregate id of a catalog, datasource, data view or analysis: its client-chosen
    id, scoped by kind so that ids of different kinds never collide."""
    return uuid.uuid5(DFG_NAMESPACE, f"{kind}\n{entity_id}")


def split_kid(kid: str) -> tuple[str, str]:
    """``<principal>#<thumbprint>`` -> (principal, thumbprint)."""
    principal, sep, thumbprint = kid.rpartition("#")
    if not sep or not principal or not thumbprint:
        raise ValueError(f"key id {kid!r} is not of the form <principal>#<thumbprint>")
    return principal, thumbprint
