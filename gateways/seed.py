"""Start a replica from an audit bundle or from a ledger's HTTP API, not from offset 0.

Why: a new node operator joining a ledger with millions of entries may get its history
faster from a file or from the ledger's API than from the topic. Nothing is trusted
more for it: every entry goes through the same ``Replica`` checks as on the topic, and
the follower then continues from the replica's size.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from infra.bundle import BundleReader
from ledger.entry import Entry, EntryFormatError
from ledger.replica import NotThisLedger, Replica, ReplicaHalted
from ledger.store import StoredEntry

PAGE = 2000
log = logging.getLogger("dfg.seed")


class SeedError(RuntimeError):
    """The source could not be read (the replica keeps what it verified so far)."""


def _batches(entries: Iterator[StoredEntry], size: int = PAGE) -> Iterator[list[StoredEntry]]:
    batch: list[StoredEntry] = []
    for entry in entries:
        batch.append(entry)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def seed_from_bundle(replica: Replica, path: Path, progress: Callable[[int], None] | None = None) -> int:
    """Verify and keep a bundle's entries and checkpoints; returns the replica's size."""
    reader = BundleReader(path)
    try:
        for batch in _batches(reader.entries()):
            replica.accept_entries(batch)
            if progress is not None:
                progress(replica.size)
        for checkpoint in reader.checkpoints:
            replica.accept_checkpoint(checkpoint.note)
    finally:
        reader.close()
    return replica.size


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body: bytes = response.read()
            return body
    except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: e.g. http.client.InvalidURL
        raise SeedError(f"cannot read {url}: {exc}") from exc


def _stored(line: bytes) -> StoredEntry:
    try:
        entry = Entry.decode(line)
    except EntryFormatError as exc:
        raise SeedError(f"the ledger API sent something that is not an entry: {exc}") from exc
    return StoredEntry(entry.seq, entry.aggregate_id, entry.version, entry.event_type, entry.canonical)


def seed_from_api(replica: Replica, base_url: str, progress: Callable[[int], None] | None = None) -> int:
    """Page through ``GET /v1/log`` and the latest checkpoint; returns the replica's size."""
    base = base_url.rstrip("/")
    while True:
        query = urllib.parse.urlencode({"start": replica.size + 1, "limit": PAGE})
        lines = [line for line in _get(f"{base}/v1/log?{query}").split(b"\n") if line]
        if not lines:
            break
        replica.accept_entries([_stored(line) for line in lines])
        if progress is not None:
            progress(replica.size)
    try:
        note = _get(f"{base}/v1/checkpoint").decode("utf-8")
    except SeedError:
        return replica.size  # no checkpoint yet: the topic brings them
    replica.accept_checkpoint(note)
    return replica.size


def follow_api(
    replica: Replica,
    apply_views: Callable[[], None],
    base_url: str,
    stop: threading.Event,
    *,
    interval: float = 0.2,
) -> str | None:
    """Keep a replica (and its views) up to date by pulling from a ledger's API: the
    same verification as from Kafka, for a node that reaches the coordinator over
    HTTP only. Stops on ``stop``; a violation stops it for good (ReplicaHalted). Returns
    why the API cannot be followed into this replica (another ledger), else None."""
    while not stop.is_set():
        try:
            seed_from_api(replica, base_url)
            apply_views()
        except ReplicaHalted as halted:
            log.error("stopped following %s: %s (evidence kept; dfg node status shows it)", base_url, halted)
            return None
        except NotThisLedger as exc:
            log.error("stopped following %s: it serves another ledger than the one named: %s", base_url, exc)
            return f"{base_url} serves another ledger than the one named: {exc}"
        except SeedError as exc:
            log.warning("cannot reach the ledger's API (%s); retrying", exc)
            stop.wait(min(5.0, interval * 10))
            continue
        stop.wait(interval)
    return None
