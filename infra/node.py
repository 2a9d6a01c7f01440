"""Opening a computation node's replica and read models: one place for `dfg node
follow`, `dfg node serve`, the benchmark and the tests."""

from __future__ import annotations

from dataclasses import dataclass

from infra.bootstrap import CHECKPOINT_KEY_FILE, open_views, open_writer_store
from infra.settings import Settings
from infra.store_role import StoreRole, WrongStoreRole, claim_store_role
from ledger.replica import Replica
from ledger.store import LedgerStore
from ledger.verifier import ParallelVerifier
from projections.base import View, ViewDatabase, catch_up, prepare
from projections.registry import all_views


@dataclass
class NodeReplica:
    store: LedgerStore
    views: ViewDatabase
    view_list: list[View]
    replica: Replica

    def apply_views(self) -> None:
        """Bring every read model up to the replica (after a restart, or a pull)."""
        for view in self.view_list:
            catch_up(self.views, view, self.store.read_entries)

    def close(self) -> None:
        self.views.close()
        self.store.close()


class NotAReplica(WrongStoreRole):
    """The data directory is a sequencer's (it holds the ledger's checkpoint key)."""


def open_node(
    settings: Settings,
    *,
    ledger_key: str | None,
    chain: str | None,
    verifier: ParallelVerifier | None = None,
) -> NodeReplica:
    """The node's replica and read models; ``LedgerBusy`` while another process writes
    them, ``NotAReplica`` for a sequencer's own directory and ``WrongStoreRole`` for a
    ledger's own store (a follower would write its markers, and any violation it found,
    into the ledger's database)."""
    if (settings.keys_dir / CHECKPOINT_KEY_FILE).exists():
        raise NotAReplica(
            f"{settings.data_dir} holds a ledger's own keys ({CHECKPOINT_KEY_FILE}): it is the"
            " sequencer's data directory; give the node a directory of its own"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_writer_store(settings, doing="following into it", role=StoreRole.REPLICA)
    try:
        # the replica first: it refuses a store holding another ledger than the one named
        replica = Replica(store, verifier=verifier, expected_checkpoint_key=ledger_key, expected_chain=chain)
        claim_store_role(store, StoreRole.REPLICA, settings)
        views = open_views(settings)
    except BaseException:
        store.close()
        raise
    view_list = all_views()
    for view in view_list:
        prepare(views, view, store.read_entries)
    return NodeReplica(store, views, view_list, replica)
