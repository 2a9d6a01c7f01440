"""What one computation node does for a task, given what its replica says (the caller
reads the ledger; nothing here does).

* **Merge** (task 1): every node opens its share bundles, keeps the subjects present in
  every datasource (the inner join on the pseudonymous key) whose consent its own
  replica finds valid, and the nodes agree on the rows: each broadcasts the digests
  of its eligible pseudonyms and all keep the intersection -- a subject is computed on
  only if *every* node's replica finds its consent valid. A second round compares the
  digests of the agreed rows, so a node that told different nodes different lists is
  caught. What nodes learn: which pseudonyms each datasource holds (they already did
  from the bundles), which of them every node finds consenting, and so the size of
  the merged dataset.
* **Compute** (tasks 2..): the shared table of the agreed rows, then
  ``mpc.statistics.aggregate`` for the task's calculation; the node keeps its shares of
  the aggregates and seals them to the analyst (``mpc.results``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mpc.bundles import ShareBundle
from mpc.runtime import Party
from mpc.statistics import PRESENT, SharedTable
from mpc.vectors import Vec, ops_for

#: Bytes of a pseudonym's digest in the merge round.
DIGEST_BYTES = 16


class EngineError(RuntimeError):
    """A task cannot be computed correctly; the reason goes into ``task.fail``."""


def _digest(pseudonym: str) -> bytes:
    return hashlib.sha256(pseudonym.encode()).digest()[:DIGEST_BYTES]


def eligible_rows(bundles: Sequence[ShareBundle], consenting: Iterable[str]) -> set[str]:
    """Subjects present in every datasource (inner join) whose consent is valid."""
    if not bundles:
        raise EngineError("the analysis has no datasource with uploaded shares")
    common = set(bundles[0].keys)
    for bundle in bundles[1:]:
        common &= set(bundle.keys)
    return common & set(consenting)


def agree_on_rows(party: Party, eligible: Iterable[str]) -> list[str]:
    """The rows every node finds eligible, in pseudonym order; two rounds."""
    mine = sorted(eligible)
    received = party.broadcast_bytes(b"".join(_digest(k) for k in mine))
    common: set[bytes] | None = None
    for data in received.values():
        if len(data) % DIGEST_BYTES:
            raise EngineError("a node sent a malformed list of digests")
        digests = {data[i : i + DIGEST_BYTES] for i in range(0, len(data), DIGEST_BYTES)}
        common = digests if common is None else common & digests
    rows = [k for k in mine if _digest(k) in (common or set())]
    summary = hashlib.sha256("\n".join(rows).encode()).digest()
    summaries = party.broadcast_bytes(summary)
    disagreeing = sorted(j for j, data in summaries.items() if data != summary)
    if disagreeing:
        raise EngineError(f"the nodes disagree on the merged rows (parties {disagreeing})")
    return rows


@dataclass(frozen=True)
class Column:
    """A data view variable: its alias, and where its values come from."""

    alias: str
    datasource_id: str
    variable: str


def shared_table(
    bundles: Mapping[str, ShareBundle], columns: Sequence[Column], rows: Sequence[str], *, precision: int
) -> SharedTable:
    """This node's shares of the merged table: a column and a presence flag per alias,
    rows in the agreed order. Values shared at a lower precision are scaled up (exact);
    a higher one would need a truncation and is refused."""
    table: dict[str, Vec] = {}
    for column in columns:
        bundle = bundles.get(column.datasource_id)
        if bundle is None:
            raise EngineError(f"no shares of datasource {column.datasource_id}")
        if column.variable not in bundle.columns:
            raise EngineError(f"datasource {column.datasource_id} has no variable {column.variable}")
        if bundle.precision > precision:
            raise EngineError(
                f"datasource {column.datasource_id} was shared with {bundle.precision} fractional bits,"
                f" more than the analysis' {precision}"
            )
        scale = 1 << (precision - bundle.precision)
        place = {key: i for i, key in enumerate(bundle.keys)}
        try:
            at = [place[key] for key in rows]
        except KeyError as exc:
            raise EngineError(f"datasource {column.datasource_id} has no row for an agreed subject") from exc
        values, present = bundle.columns[column.variable], bundle.columns[column.variable + PRESENT]
        ops = ops_for(bundle.modulus)
        index = np.array(at, dtype=np.int64)
        column_values = values[..., index]
        table[column.alias] = column_values if scale == 1 else ops.scale(column_values, scale)
        table[column.alias + PRESENT] = present[..., index]
    return SharedTable(table, len(rows))


def check_bundles(bundles: Mapping[str, ShareBundle], *, node: str, party: int, modulus: int) -> None:
    """Every bundle must hold this node's shares at its point, in the analysis' field."""
    for datasource_id, bundle in bundles.items():
        if bundle.node != node or bundle.party != party:
            raise EngineError(
                f"datasource {datasource_id}'s bundle holds {bundle.node}'s shares at point {bundle.party},"
                f" not {node}'s at {party}: the provider shared it to another set of nodes"
            )
        if bundle.modulus != modulus:
            raise EngineError(
                f"datasource {datasource_id} was shared in GF({bundle.modulus}),"
                f" the analysis computes in GF({modulus})"
            )
