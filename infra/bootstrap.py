"""The composition root: the one place where engines, keys and the ledger are wired."""

from __future__ import annotations

import errno
import time
from contextlib import suppress
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey

from domain import rules as rules_versions
from infra.keyfiles import KeyFileError, make_private_dirs, read_jwk, read_secret, write_jwk, write_secret
from infra.settings import Settings
from infra.store_role import StoreRole, check_store_role, claim_store_role
from infra.writer_lock import take_writer_lock
from ledger.entry import Entry
from ledger.errors import Rejected
from ledger.note import NoteError, SignerKey
from ledger.sequencer import Accepted, CheckpointPolicy, Sequencer
from ledger.signing import TransactionSigner, public_jwk
from ledger.store import LedgerStore
from ledger.transaction import parse_transaction
from projections.base import ViewDatabase

ROOT_KEY_FILE = "root.jwk"
CHECKPOINT_KEY_FILE = "checkpoint.key"


def open_store(settings: Settings, *, scan: bool = False, read_only: bool = False) -> LedgerStore:
    """The ledger's store. ``scan``: for reading the whole log once, in order (an
    audit), which wants a small page cache on SQLite (PostgreSQL's is the server's).
    ``read_only``: an existing ledger that this process only reads (the audit tools),
    which a database role allowed only to read, or a user who may not write the file
    (a copy on read-only media), can then open; nothing is written to it."""
    if settings.database_url:
        from infra.storage.postgres import PostgresLedgerStore

        return PostgresLedgerStore(
            settings.database_url, read_only=read_only, lock_timeout_s=settings.lock_timeout_s
        )
    from infra.storage.sqlite import SQLiteLedgerStore

    _require_file_or_nothing(settings.ledger_file)
    return SQLiteLedgerStore(
        settings.ledger_file, scan=scan, read_only=read_only, lock_timeout_s=settings.lock_timeout_s
    )


def checkpoint_key(settings: Settings) -> SignerKey | None:
    path = settings.keys_dir / CHECKPOINT_KEY_FILE
    if not path.exists():
        return None
    try:
        return SignerKey.from_string(read_secret(path))
    except NoteError as exc:
        raise KeyFileError(f"{path} is not a checkpoint signing key: {exc}") from exc


def required_checkpoint_key(settings: Settings) -> SignerKey:
    """The key a sequencer signs checkpoints with: without it a ledger would take entries
    that no checkpoint ever covers (nothing would tie them to the ledger's key)."""
    key = checkpoint_key(settings)
    if key is None:
        path = settings.keys_dir / CHECKPOINT_KEY_FILE
        raise KeyFileError(f"{path} is missing: the sequencer signs the ledger's checkpoints with it")
    return key


def open_writer_store(
    settings: Settings, *, doing: str, role: StoreRole, store: LedgerStore | None = None
) -> LedgerStore:
    """The ledger's store (``store``, or one opened here) holding the ledger's writer lock
    until it is closed; ``LedgerBusy`` while another process writes the ledger,
    ``WrongStoreRole`` if the store is of the other role than ``role`` (a replica given
    to a sequencer, or the reverse). The caller records the role (``claim_store_role``)
    once its own checks have passed."""
    lock = take_writer_lock(settings, doing=doing)
    try:
        store = store or open_store(settings)
    except BaseException:
        lock.release()
        raise
    store.hold_writer_lock(lock)
    try:
        check_store_role(store, role, settings)
    except BaseException:
        store.close()
        raise
    return store


#: Set while ``dfg recover`` appends entries, cleared when it has taken back every one
#: its source holds (or appended none).
RECOVERY_MARKER = "recovery.unfinished"


class RecoveryUnfinished(RuntimeError):
    """A ``dfg recover`` stopped part-way: the ledger holds fewer entries than were
    published, and a new entry would take the place of one that replicas hold."""


def open_sequencer(settings: Settings, store: LedgerStore | None = None) -> Sequencer:
    """The ledger's sequencer; its store holds the ledger's writer lock."""
    key = required_checkpoint_key(settings)  # before the store: a refused start leaves no mark
    store = open_writer_store(settings, doing="writing to it", role=StoreRole.LEDGER, store=store)
    try:
        if store.marker(RECOVERY_MARKER):
            raise RecoveryUnfinished(
                f"a dfg recover of this ledger did not finish: it holds {store.head()[0]:,} entries, and"
                " its replicas and topics may hold later ones, which new entries would contradict (a"
                " fork). Run dfg recover again with a complete source, or `dfg recover --abandon` to"
                " go on from what it holds"
            )
        sequencer = Sequencer(
            store,
            checkpoint_key=key,
            policy=CheckpointPolicy(settings.checkpoint_every, settings.checkpoint_interval_ms),
        )
        if sequencer.ledger is not None:  # an empty store is claimed with its genesis entry
            claim_store_role(store, StoreRole.LEDGER, settings)
        return sequencer
    except BaseException:
        store.close()
        raise


def root_signer(settings: Settings, chain: str, operator: str) -> TransactionSigner:
    key = read_jwk(settings.keys_dir / ROOT_KEY_FILE)
    assert isinstance(key, OKPKey)
    return TransactionSigner(principal=operator, key=key, chain=chain)


def create_ledger(
    settings: Settings,
    *,
    chain: str,
    origin: str | None,
    operator: str,
    display_name: str,
    rules: int | None = rules_versions.NEWEST,
) -> Entry:
    """Generate the root and checkpoint keys and append the genesis entry, holding the
    ledger's writer lock (``LedgerBusy`` while another process writes it). Bad
    arguments are refused before anything is written, and a genesis entry that is not
    appended leaves no keys behind (they would block the next attempt)."""
    origin = origin or f"dfg.local/{chain}"
    root = OKPKey.generate_key("Ed25519")
    note_key = SignerKey(origin, Ed25519PrivateKey.generate())
    genesis = TransactionSigner(principal=operator, key=root, chain=chain).sign(
        "ledger.genesis",
        {
            "ledger": {
                "chain": chain,
                "origin": origin,
                "checkpoint_key": note_key.verifier().to_string(),
                # a new ledger follows the newest rules from its first entry; version 1
                # (or None) is written as the first release wrote it, without the member,
                # which that release refuses: its replicas and audits can read the ledger
                **({} if rules is None or rules == 1 else {"rules": rules}),
            },
            "operator": operator,
            "display_name": display_name,
            "jwk": public_jwk(root).as_dict(),
        },
        now=time.time(),
    )
    parse_transaction(genesis)  # a bad chain, operator or name is refused here
    written = [settings.keys_dir / ROOT_KEY_FILE, settings.keys_dir / CHECKPOINT_KEY_FILE]
    if not settings.database_url:
        _require_file_or_nothing(settings.ledger_file)  # before the writer lock's file is made
    # Opening the store creates the ledger's tables (ledger.sqlite, or the schema on
    # PostgreSQL): what would refuse the keys is checked before, so that a refused init
    # writes nothing, there or in --data.
    if any(path.exists() for path in written) and not ledger_present(settings):
        raise KeyFileError(f"{_existing(written)} exists but there is no ledger; move it away first")
    try:  # SQLite's data directory as the writer lock would make it; the keys' 0700
        created = [] if settings.database_url else _make_dirs(settings.data_dir)
        created += make_private_dirs(settings.keys_dir)
    except OSError as exc:
        raise KeyFileError(f"cannot write the keys in {settings.keys_dir}: {exc.strerror or exc}") from exc
    try:
        return _append_genesis(settings, genesis, note_key, root, written)
    except BaseException:
        for path in reversed(created):  # those the keys were not written to
            with suppress(OSError):
                path.rmdir()
        raise


def ledger_present(settings: Settings) -> bool:
    """Whether the store holds a ledger's tables, asked without creating them."""
    if settings.database_url:
        from infra.storage.postgres import ledger_exists

        return ledger_exists(settings.database_url)
    return settings.ledger_file.exists()


def _make_dirs(directory: Path) -> list[Path]:
    missing = [path for path in (directory, *directory.parents) if not path.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def _existing(paths: list[Path]) -> Path:
    return next(path for path in paths if path.exists())


def _append_genesis(
    settings: Settings, genesis: str, note_key: SignerKey, root: OKPKey, written: list[Path]
) -> Entry:
    # two inits must not race; the role is recorded with the genesis entry, not before
    store = open_writer_store(settings, doing="creating a ledger in it", role=StoreRole.LEDGER)
    try:
        if store.head()[0] != 0:
            raise Rejected("genesis_exists", "this ledger already exists; nothing was changed")
        for path in written:
            if path.exists():
                raise KeyFileError(f"{path} exists but the ledger is empty; move it away first")
        try:
            write_jwk(written[0], root)
            write_secret(written[1], note_key.to_string() + "\n")
            sequencer = Sequencer(store, checkpoint_key=note_key)
            (outcome,) = sequencer.submit([genesis])
            if not isinstance(outcome, Accepted):
                raise outcome
        except BaseException:
            if store.head()[0] == 0:  # no ledger came of it
                for path in written:
                    with suppress(OSError):
                        path.unlink(missing_ok=True)
            raise
        claim_store_role(store, StoreRole.LEDGER, settings)
        sequencer.checkpoint_now()
        return outcome.entry
    finally:
        store.close()


def set_aside_views(settings: Settings) -> Path:
    """Move an unreadable SQLite views file (and its journal) out of the way, kept for
    inspection: read models are derived data, built again from the log."""
    views = settings.views_file
    aside = views.with_name(f"{views.name}.unreadable-{int(time.time())}")
    views.rename(aside)
    for journal in ("-wal", "-shm"):
        views.with_name(views.name + journal).unlink(missing_ok=True)
    return aside


def data_dir_exists(path: Path) -> bool:
    return (path / "ledger.sqlite").exists() or (path / "keys" / ROOT_KEY_FILE).exists()


def open_views(settings: Settings) -> ViewDatabase:
    """The read-model database: a SQLite file beside the ledger, or the PostgreSQL schema."""
    if settings.database_url:
        from infra.storage.views import PostgresViews

        return PostgresViews(settings.database_url)
    from infra.storage.views import SQLiteViews

    _require_file_or_nothing(settings.views_file)
    return SQLiteViews(settings.views_file)


def _require_file_or_nothing(path: Path) -> None:
    """SQLite says "disk I/O error" or "unable to open database file" when its file is a
    directory (or a socket, a FIFO): name what is there instead."""
    if path.exists() and not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file"
        raise OSError(
            errno.EISDIR if path.is_dir() else errno.EINVAL, f"the database's file is {what}", str(path)
        )
