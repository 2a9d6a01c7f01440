"""Options every command takes, read once here at the edge."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from infra.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


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
        help="Directory of the ledger (SQLite files and keys).",
    )
    @click.option(
        "--database-url",
        envvar="DFG_DATABASE_URL",
        show_envvar=True,
        default=None,
        help="postgresql://user@host:port/db[?schema=name] to use PostgreSQL instead of SQLite.",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, data_dir: Path, database_url: str | None, **kwargs: Any) -> Any:
        return func(*args, settings=Settings(data_dir=data_dir, database_url=database_url), **kwargs)

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int = 1) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    raise SystemExit(code)
