"""Start a replica from an audit bundle or from a ledger's HTTP API, not from offset 0.

Why: a new node operator joining a ledger with millions of entries may get its history
faster from a file or from the ledger's API than from the topic. Nothing is trusted
more for it: every entry goes through the same ``Replica`` checks as on the topic, and
the follower then continues from the replica's size.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from infra.bundle import BundleError, BundleReader
from ledger.audit import genesis_mismatch
from ledger.entry import Entry, EntryFormatError
from ledger.replica import NeedsNewerDfg, NotThisLedger, Replica, ReplicaHalted
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
    # ValueError: e.g. http.client.InvalidURL; HTTPException: a server that does not answer
    # HTTP, or a body cut short (neither is an OSError, and either ended follow_api's thread)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
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


def _genesis_problem(entry: Entry, chain: str | None, checkpoint_key: str | None) -> str | None:
    ledger = entry.data.get("ledger")
    if entry.seq != 1 or not isinstance(ledger, dict):
        return f"its first entry ({entry.seq}) is not a genesis entry"
    return genesis_mismatch(ledger, chain=chain, checkpoint_key=checkpoint_key)


def api_ledger_problem(base_url: str, *, chain: str | None, checkpoint_key: str | None) -> str | None:
    """Why the API at ``base_url`` serves another ledger than the one named, asked before
    a replica is made for it: a node would otherwise say it serves, create its files
    and only then stop. None when it is the one, or cannot be asked now (a ledger still
    starting; the follower retries)."""
    url = f"{base_url.rstrip('/')}/v1/log?start=1&limit=1"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body: bytes = response.read(1 << 20)
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"it is no dfg ledger's API (GET /v1/log answered {exc.code})" if exc.code == 404 else None
    except (urllib.error.URLError, OSError, ValueError):  # RemoteDisconnected is an OSError
        return None
    except http.client.BadStatusLine:  # it answered, but not in HTTP (another service's port)
        return "it is no dfg ledger's API (it does not answer HTTP)"
    except http.client.HTTPException:  # e.g. a body cut short: ask again later
        return None
    first = body.split(b"\n", 1)[0]
    if not first:
        return None
    try:
        entry = Entry.decode(first)
    except EntryFormatError:
        return "it is no dfg ledger's API (GET /v1/log sent no entry)"
    return _genesis_problem(entry, chain, checkpoint_key)


def bundle_ledger_problem(path: Path, *, chain: str | None, checkpoint_key: str | None) -> str | None:
    """Why an audit bundle holds another ledger than the one named (its genesis), or
    None; an unreadable bundle is left to seeding, which says what is wrong with it."""
    try:
        reader = BundleReader(path)
    except (BundleError, OSError):
        return None
    try:
        first = next(reader.entries(check_principals=False), None)
        if first is None:
            return None
        return _genesis_problem(Entry.decode(first.canonical), chain, checkpoint_key)
    except (BundleError, EntryFormatError, OSError):
        return None
    finally:
        reader.close()


def _note_the_end(replica: Replica, noted: float) -> float:
    """Record, about once a second, that the replica reached the end of the ledger's log,
    as a Kafka follower does for its topic: `dfg node status` reports the lag and when
    the end was last seen from these, and would otherwise say "never seen" forever."""
    from gateways.kafka.follower import SEEN_AT_MARKER, TOPIC_END_MARKER

    now = time.time()
    if now - noted < 1.0:
        return noted
    replica.store.set_marker(TOPIC_END_MARKER, replica.size)
    replica.store.set_marker(SEEN_AT_MARKER, int(now * 1000))
    return now


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
    noted = 0.0
    while not stop.is_set():
        try:
            seed_from_api(replica, base_url)
            apply_views()
            noted = _note_the_end(replica, noted)
        except ReplicaHalted as halted:
            log.error("stopped following %s: %s (evidence kept; dfg node status shows it)", base_url, halted)
            return None
        except NotThisLedger as exc:
            log.error("stopped following %s: it serves another ledger than the one named: %s", base_url, exc)
            return f"{base_url} serves another ledger than the one named: {exc}"
        except NeedsNewerDfg as exc:
            log.error("stopped following %s: %s", base_url, exc)
            return f"{base_url}: {exc}"
        except SeedError as exc:
            log.warning("cannot reach the ledger's API (%s); retrying", exc)
            stop.wait(min(5.0, interval * 10))
            continue
        stop.wait(interval)
    return None
