"""The bounded aggregate caches and the known-id prefixes the sequencer and the audit
decide with: what they hold must never change a decision, only its cost."""

from __future__ import annotations

import uuid

from conftest import OPERATOR, Ledger, give_level1

from domain.identifiers import principal_aggregate_id
from ledger.known_ids import KnownIds
from ledger.recent import MISSING, RecentItems


def test_recent_items_keep_what_is_used_and_stay_bounded() -> None:
    items: RecentItems[int, str | None] = RecentItems(maxsize=10)
    items.put(0, "hot")
    items.put(1, None)  # absence is a value too
    for key in range(2, 100):
        items.put(key, str(key))
        assert items.get(0) == "hot"  # used in every generation: never dropped
        assert len(items) <= 10
    assert items.get(1) is MISSING  # used once, long ago: aged out
    assert items.get(99) == "99"


def test_recent_items_answer_the_newest_value_and_forget_both_generations() -> None:
    items: RecentItems[str, int] = RecentItems(maxsize=4)
    items.put("a", 1)
    items.put("b", 2)  # the young generation is full: "a" and "b" are now old
    items.put("a", 3)
    assert items.get("a") == 3
    items.forget("a")
    assert items.get("a") is MISSING
    assert items.get("b") == 2


def test_stores_read_the_prefixes_of_the_aggregates_created_before_an_entry(any_ledger: Ledger) -> None:
    app = any_ledger.admit("sp:app", "service_provider")
    any_ledger.accept(*(give_level1(any_ledger, app, f"p-{i}") for i in range(3)))
    store = any_ledger.sequencer.store
    size = store.head()[0]
    created = [e.aggregate_id for e in store.read_entries(1, size) if e.version == 1]
    assert sorted(store.aggregate_id_prefixes()) == sorted(KnownIds.prefix(i) for i in created)
    before_app = list(store.aggregate_id_prefixes(before=2))
    assert before_app == [KnownIds.prefix(principal_aggregate_id(OPERATOR))]
    known = KnownIds(store.aggregate_id_prefixes())
    assert all(known.may_exist(i) for i in created)
    assert not known.may_exist(uuid.uuid4())
