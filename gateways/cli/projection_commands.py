"""``dfg projections`` and ``dfg consents``: read models, rebuilt and queried."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import click
from eventsourcing.persistence import PersistenceError
from pydantic import TypeAdapter, ValidationError

from domain.commands import Code, PrincipalId, Pseudonym
from gateways.cli.options import RFC3339, fail, ledger_options, require_ledger
from infra.bootstrap import open_store, open_views, set_aside_views
from infra.settings import Settings
from infra.writer_lock import LedgerBusy, take_writer_lock
from ledger.store import LedgerStore, newest_entry_time
from projections.base import View, ViewDatabase, catch_up, prepare
from projections.base import rebuild as rebuild_view
from projections.consent_state import ConsentStateView
from projections.consent_state import check as check_consent
from projections.registry import all_views
from projections.timeline import TimelineView, history


@click.group("projections")
def projections() -> None:
    """Read models built from the log."""


@projections.command("rebuild")
@ledger_options
@click.option("--view", "names", multiple=True, help="Only these views [default: all].")
def rebuild(settings: Settings, names: tuple[str, ...]) -> None:
    """Drop read models and build them again from the first entry."""
    views = [v for v in all_views() if not names or v.name in names]
    unknown = set(names) - {v.name for v in all_views()}
    if unknown:
        fail(
            f"unknown view(s): {', '.join(sorted(unknown))}; known: {', '.join(v.name for v in all_views())}"
        )
    try:
        lock = take_writer_lock(settings, doing="rebuilding its views")
    except LedgerBusy as exc:
        fail(str(exc))
    try:
        store, db = open_caught_up(settings, catch=False, set_aside_unreadable=True)
        try:
            for view in views:
                position = rebuild_view(db, view, store.read_entries)
                click.echo(f"{view.name}: rebuilt up to entry {position}")
        finally:
            db.close()
            store.close()
    finally:
        lock.release()


@projections.command("status")
@ledger_options
def status(settings: Settings) -> None:
    """Each view's position and lag behind the log."""
    store, db = open_caught_up(settings)
    try:
        size = store.head()[0]
        for view in all_views():
            position = db.position(view.name)
            click.echo(f"{view.name}: at entry {position} of {size} (lag {size - position})")
    finally:
        db.close()
        store.close()


@click.group("consents")
def consents() -> None:
    """Consent checks and histories (read from the projections)."""


def _checked(kind: Any, what: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback refusing what the API refuses (exit 2), so that a question about
    a subject that cannot be a pseudonym is not answered "never given" (exit 3)."""
    adapter = TypeAdapter(kind)

    def check(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        for item in value if isinstance(value, tuple) else [value]:
            try:
                adapter.validate_python(item)
            except ValidationError:
                raise click.BadParameter(f"{item!r} is not {what}") from None
        return value

    return check


_SUBJECT = _checked(Pseudonym, "a pseudonym (letters, digits and . _ : ~ -, such as p-4x2k…)")


@consents.command("check")
@ledger_options
@click.option("--subject", required=True, callback=_SUBJECT)
@click.option("--controller", required=True, callback=_checked(PrincipalId, "a principal id (kind:name)"))
@click.option("--purpose", required=True, callback=_checked(Code, "a purpose code (dpv:ServiceProvision)"))
@click.option("--category", "categories", multiple=True, callback=_checked(Code, "a data category code"))
@click.option(
    "--at",
    "at",
    type=RFC3339,
    default=None,
    help="Instant to check at (RFC 3339, e.g. 2026-11-25T12:00:00Z) [default: now].",
)
def check(
    settings: Settings,
    subject: str,
    controller: str,
    purpose: str,
    categories: tuple[str, ...],
    at: datetime | None,
) -> None:
    """Is the subject's consent to the controller valid for this purpose and categories?
    Prints the answer as JSON; exit status 0 if granted, 3 if not."""
    store, db = open_caught_up(settings, [ConsentStateView()])
    when = at or _log_time_now(store)
    try:
        with db.transaction(commit=False) as cursor:
            answer = check_consent(cursor, subject, controller, purpose, categories, when)
    finally:
        db.close()
        store.close()
    click.echo(json.dumps(answer.as_dict()))
    if not answer.granted:
        raise SystemExit(3)


def _log_time_now(store: LedgerStore) -> datetime:
    """The clock, or the newest entry's time while the clock is behind it: "now" as the
    sequencer stamps it, as the API's checks ask (``Sequencer.now``)."""
    now = datetime.now(UTC)
    newest = newest_entry_time(store)
    return now if newest is None else max(now, newest)


@consents.command("history")
@ledger_options
@click.option("--subject", required=True, callback=_SUBJECT)
@click.option("--limit", type=click.IntRange(1, 1000), default=50)
def subject_history(settings: Settings, subject: str, limit: int) -> None:
    """The subject's consents and every use of them, newest first."""
    store, db = open_caught_up(settings, [TimelineView()])
    try:
        with db.transaction(commit=False) as cursor:
            for item in history(cursor, subject, limit=limit):
                click.echo(json.dumps(item, sort_keys=True))
    finally:
        db.close()
        store.close()


def open_caught_up(
    settings: Settings,
    views: Sequence[View] | None = None,
    *,
    catch: bool = True,
    set_aside_unreadable: bool = False,
) -> tuple[LedgerStore, ViewDatabase]:
    """The log and the read models, checked to be this log's and caught up with it
    (unless ``catch`` is False: a rebuild must not first use views it is about to drop,
    which may be another ledger's). A rebuild also sets aside a views file SQLite
    cannot read (``set_aside_unreadable``): read models are derived data."""
    require_ledger(settings)
    store = open_store(settings)
    try:
        db = open_views(settings)
    except (sqlite3.DatabaseError, PersistenceError) as exc:
        if not set_aside_unreadable or settings.database_url:
            store.close()
            raise
        aside = set_aside_views(settings)
        click.echo(f"{settings.views_file} could not be read ({exc}); set aside as {aside.name}", err=True)
        db = open_views(settings)
    if catch:
        for view in views if views is not None else all_views():
            prepare(db, view, store.read_entries)
            catch_up(db, view, store.read_entries)
    return store, db


@projections.command("follow")
@ledger_options
@click.option(
    "--poll",
    type=click.FloatRange(0.05, 60),
    default=1.0,
    show_default=True,
    help="Longest wait between catch-ups (PostgreSQL wakes on NOTIFY sooner).",
)
def follow(settings: Settings, poll: float) -> None:
    """Keep every read model up to date until interrupted."""
    import threading

    from projections.follow import Follower

    store, db = open_caught_up(settings, [])
    follower = Follower(db, all_views(), store.read_entries, store.wait_for_append, poll_s=poll)
    stop = threading.Event()
    click.echo("following the log; Ctrl-C to stop")
    try:
        follower.run(stop)
    except KeyboardInterrupt:
        stop.set()
    finally:
        db.close()
        store.close()
