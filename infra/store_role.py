"""Whether a ledger database is a sequencer's own ledger or a node's replica of one.

Both hold the same tables, and a replica of a ledger even holds its genesis entry, so
nothing else tells them apart once a data directory or a schema is given to the wrong
command: a sequencer started on a replica would append entries the ledger never had (a
fork under the ledger's name), and a follower started on a ledger would write its
markers and any violation it found into the ledger's own database. The role is
recorded in the store by the first writer whose own checks pass (under the writer
lock), and checked by every writer before it writes anything.
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


#: Progress markers only a ledger's relay writes, and only a node's follower writes
#: (``gateways.kafka.relay``, ``gateways.kafka.follower``): what tells the two apart in
#: a store written before roles were recorded.
LEDGER_EVIDENCE = ("relay.entries", "relay.checkpoints")
REPLICA_EVIDENCE = ("follower.checkpoints", "follower.topic_end", "follower.cosigned")


def _evident_role(store: LedgerStore) -> StoreRole | None:
    recorded = store_role(store)
    if recorded is not None:
        return recorded
    if any(store.marker(name) for name in REPLICA_EVIDENCE) or store.violations():
        return StoreRole.REPLICA
    if any(store.marker(name) for name in LEDGER_EVIDENCE):
        return StoreRole.LEDGER
    return None


def check_store_role(store: LedgerStore, role: StoreRole, settings: Settings) -> None:
    """``WrongStoreRole`` if the store is of the other role, as recorded or, in a store
    from before roles were recorded, as its markers show. Writes nothing: a command
    records the role (``claim_store_role``) once its own checks have passed, so that a
    refused one leaves no mark."""
    evident = _evident_role(store)
    if evident is not None and evident is not role:
        raise WrongStoreRole(_wrong_role_message(evident, settings))


def claim_store_role(store: LedgerStore, role: StoreRole, settings: Settings) -> None:
    """Record ``role`` in a store not yet recorded as anything (after
    ``check_store_role``'s check). Call with the writer lock held, so that two writers
    cannot both claim it."""
    check_store_role(store, role, settings)
    if store_role(store) is None:
        store.set_marker(ROLE_MARKER, role)


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
