"""Options every command takes, read once here at the edge."""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlparse

import click
from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from domain.commands import Instant
from infra.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def _checked_url(value: str, schemes: tuple[str, ...], expected: str) -> str:
    """``value`` if it is a URL of one of ``schemes`` with a plausible authority; checked
    before anything connects, so a typo is named instead of retried or traced back."""
    try:
        parsed = urlparse(value)
        parsed.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise click.BadParameter(f"not a URL ({exc}); expected {expected}") from None
    if parsed.scheme not in schemes or not parsed.netloc:
        raise click.BadParameter(f"expected {expected}")
    return value


def _database_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from infra.storage.postgres import database_url_schema

    _checked_url(value, ("postgresql", "postgres"), "postgresql://user@host:port/db[?schema=name]")
    try:
        database_url_schema(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _without_password(url: str) -> str:
    """The URL as it may be printed (terminals and logs keep what they show)."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)).geturl()


def http_url(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """A server's base URL, without a trailing slash."""
    return _checked_url(value, ("http", "https"), "http://host:port or https://host").rstrip("/")


def optional_http_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``http_url`` for an option that may be left out."""
    return None if value is None else http_url(ctx, param, value)


def checkpoint_verifier_key(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A ledger's checkpoint verifier key (``<origin>+<hash>+<key>``, type 0x01), or a bad
    option (exit 2) naming what is wrong, before anything is read or created: a typo
    used to surface as "a different checkpoint key than the one you trust"."""
    if value is None:
        return None
    from ledger.note import SIG_ED25519, NoteError, Verifier

    try:
        verifier = Verifier.from_string(value)
    except NoteError as exc:
        raise click.BadParameter(f"not a checkpoint verifier key: {exc}") from exc
    if verifier.sig_type != SIG_ED25519:
        raise click.BadParameter("a witness's cosignature key, not a ledger's checkpoint key")
    return value


def ledger_options(func: F) -> F:
    """Adds ``--data`` and ``--database-url`` and passes a ``settings`` argument."""

    @click.option(
        "--data",
        "data_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("dfg-data"),
        envvar="DFG_DATA",
        show_default=True,
        show_envvar=True,
        help="Directory of the ledger, or of a node's replica (SQLite files and keys).",
    )
    @click.option(
        "--database-url",
        envvar="DFG_DATABASE_URL",
        show_envvar=True,
        default=None,
        help="postgresql://user@host:port/db[?schema=name] to use PostgreSQL instead of SQLite.",
        callback=_database_url,
    )
    @functools.wraps(func)
    def wrapper(*args: Any, data_dir: Path, database_url: str | None, **kwargs: Any) -> Any:
        if database_url:
            name_database_sessions()
        return func(*args, settings=Settings(data_dir=data_dir, database_url=database_url), **kwargs)

    return wrapper  # type: ignore[return-value]


def name_database_sessions() -> None:
    """Name this command's PostgreSQL sessions after it ("dfg relay", "dfg node follow"):
    PostgreSQL shows the name (``pg_stat_activity.application_name``), so an operator
    tells the relay's sessions from the server's without matching ports. libpq reads it
    from ``PGAPPNAME`` for every connection, the worker processes' included; a name the
    operator set is kept."""
    ctx, names = click.get_current_context(silent=True), []
    while ctx is not None and ctx.parent is not None:  # up to the program, whatever it was run as
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    os.environ.setdefault("PGAPPNAME", " ".join(["dfg", *reversed(names)])[:63])


def checkpoint_options(func: F) -> F:
    """Adds the sequencer's checkpoint policy to a command that appends (below
    ``ledger_options``): commands that only read have no use for it."""

    @click.option(
        "--checkpoint-every",
        type=click.IntRange(1),
        default=1000,
        envvar="DFG_CHECKPOINT_EVERY",
        show_default=True,
        help="Sign a checkpoint every N entries ...",
    )
    @click.option(
        "--checkpoint-interval-ms",
        type=click.IntRange(10),
        default=1000,
        envvar="DFG_CHECKPOINT_INTERVAL_MS",
        show_default=True,
        help="... and no later than this after the oldest entry no checkpoint covers yet.",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any, settings: Settings, checkpoint_every: int, checkpoint_interval_ms: int, **kwargs: Any
    ) -> Any:
        settings = dataclasses.replace(
            settings, checkpoint_every=checkpoint_every, checkpoint_interval_ms=checkpoint_interval_ms
        )
        return func(*args, settings=settings, **kwargs)

    return wrapper  # type: ignore[return-value]


def witness_options(func: F) -> F:
    """Adds ``--witness VKEY`` (repeatable) and ``--witness-quorum K``; passes a
    ``witnesses`` argument (a ``WitnessPolicy``, or None without witnesses)."""

    @click.option(
        "--witness",
        "witness_keys",
        multiple=True,
        help="A witness's cosignature key (name+hash+key, from `dfg node keygen`); repeat for each.",
    )
    @click.option(
        "--witness-quorum",
        type=click.IntRange(1),
        default=None,
        help="How many of the --witness keys must have cosigned [default: a majority].",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, witness_keys: tuple[str, ...], witness_quorum: int | None, **kwargs: Any) -> Any:
        from ledger.witness import WitnessPolicy, WitnessPolicyError

        witnesses = None
        if witness_keys:
            names = {key.split("+", 1)[0] for key in witness_keys}
            quorum = witness_quorum if witness_quorum is not None else len(names) // 2 + 1
            try:
                witnesses = WitnessPolicy.from_keys(witness_keys, quorum)
            except WitnessPolicyError as exc:
                fail(str(exc), code=2)  # a bad option, like any other (README: exit 2)
        elif witness_quorum is not None:
            fail("--witness-quorum needs the witnesses' keys (--witness)", code=2)
        return func(*args, witnesses=witnesses, **kwargs)

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int = 1) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    raise SystemExit(code)


def require_ledger(settings: Settings, *, making: str | None = None) -> None:
    """Every command but ``init`` needs an existing ledger: say how to make one
    (``making``: how, when it is not ``dfg init``, e.g. a node's replica)."""
    if not settings.database_url and not settings.ledger_file.exists():
        how = making or f"run `dfg init --data {settings.data_dir}` first"
        fail(f"no ledger in {settings.data_dir}: {how}")
    if settings.database_url:
        from infra.storage.postgres import ledger_exists

        if not ledger_exists(settings.database_url):
            fail(
                f"no ledger at {_without_password(settings.database_url)}:"
                f" {making or 'run `dfg init --database-url ...` first'}"
            )


class Rfc3339(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2 on
    """An instant as the API and transactions take it (RFC 3339 with a time zone, such as
    2026-11-25T12:00:00Z or ...+01:00, up to nanoseconds cut to microseconds): the same
    parser, so that the command line takes no form the API refuses, nor refuses one it takes."""

    name = "RFC3339"
    _adapter: TypeAdapter[datetime] = TypeAdapter(Instant)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return self._adapter.validate_python(value)
        except ValidationError as exc:
            reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            self.fail(f"{value!r}: {reason}", param, ctx)


RFC3339 = Rfc3339()


def run_server(app: web.Application, host: str, port: int, serving: str, **options: Any) -> None:
    """``web.run_app``, saying ``serving`` once the socket is bound (aiohttp calls
    ``print`` then), not before a bind that fails; a ``--host`` that names no address
    is refused naming it (the resolver's "Name or service not known" named nothing)."""
    try:
        web.run_app(app, host=host, port=port, print=lambda _: click.echo(serving), **options)
    except socket.gaierror as exc:
        fail(f"--host {host!r} names no address this machine can listen on: {exc.strerror or exc}", 2)
