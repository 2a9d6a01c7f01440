"""Whether a ledger database is a sequencer's own ledger or a node's replica of one.

Both hold the same tables, and a replica of a ledger even holds its genesis entry, so
nothing else tells them apart once a data directory or a schema is given to the wrong
command: a sequencer started on a replica would append entries the ledger never had (a
fork under the ledger's name), and a follower started on a ledger would write its
markers and any violation it found into the ledger's own database. The role is
recorded in the store by the first writer (under the writer lock) and checked by every
later one.
"""

from __future__ import annotations

from enum import IntEnum

from infra.settings import Settings
from ledger.store import LedgerStore

ROLE_MARKER = "store_role"


class StoreRole(IntEnum):
    LEDGER = 1
    REPLICA = 2


class WrongStoreRole(RuntimeError):
    """The store is the other kind of store (a replica given to a sequencer, or the
    reverse)."""


def store_role(store: LedgerStore) -> StoreRole | None:
    """The recorded role; ``None`` for a store no writer has claimed yet (new, or
    written before roles were recorded)."""
    value = store.marker(ROLE_MARKER)
    return StoreRole(value) if value in (StoreRole.LEDGER, StoreRole.REPLICA) else None


def claim_store_role(store: LedgerStore, role: StoreRole, settings: Settings) -> None:
    """Record ``role`` in an unclaimed store, or raise ``WrongStoreRole`` if the store
    holds the other one. Call with the writer lock held, so that two writers cannot
    both claim it."""
    held = store_role(store)
    if held is None:
        store.set_marker(ROLE_MARKER, role)
    elif held is not role:
        raise WrongStoreRole(_wrong_role_message(held, settings))


def refuse_replica(store: LedgerStore, settings: Settings) -> None:
    """For a reader that must only ever serve a ledger (the relay publishes it)."""
    if store_role(store) is StoreRole.REPLICA:
        raise WrongStoreRole(_wrong_role_message(StoreRole.REPLICA, settings))


def describe_store(settings: Settings) -> str:
    if settings.database_url:
        from infra.storage.postgres import database_url_schema

        return f"schema {database_url_schema(settings.database_url)!r} of the database"
    return str(settings.ledger_file)


def _wrong_role_message(held: StoreRole, settings: Settings) -> str:
    where = describe_store(settings)
    if held is StoreRole.REPLICA:
        return (
            f"{where} is a node's replica of a ledger (dfg node follow writes it), not a ledger:"
            " entries appended or published from it would fork the ledger it copies; run the"
            " sequencer and the relay on the ledger's own store"
        )
    return (
        f"{where} is a ledger's own store (its sequencer writes it), not a replica: a node"
        " would write its markers and the violations it finds into the ledger's database;"
        " give the node a store of its own"
    )
