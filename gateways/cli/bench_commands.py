"""``dfg bench``: measured figures, printed as a table (and one JSON line with --json)."""

from __future__ import annotations

import json
import os
import uuid

import click
from rich.console import Console
from rich.table import Table

GOALS = {
    "append_sqlite_per_s": "≥ 0.6 x verify_per_s",
    "append_postgres_per_s": "≥ 0.4 x verify_per_s",
    "audit_verify_per_s": "≥ 1.5 x verify_per_s (2 cores)",
    "peak_rss_mb": "< 500 MB at 1,000,000 entries",
}


@click.group("bench")
def bench() -> None:
    """Benchmarks: they print figures; nothing asserts on them."""


@bench.command("ledger")
@click.option("--events", type=click.IntRange(1000, 10_000_000), default=100_000, show_default=True)
@click.option("--signers", type=click.IntRange(1, 100_000), default=500, show_default=True)
@click.option(
    "--postgres-url",
    envvar="DFG_TEST_DATABASE_URL",
    default="postgresql://postgres@127.0.0.1:5432/test",
    show_envvar=True,
    show_default=True,
    help="PostgreSQL to measure (a fresh schema is used and dropped).",
)
@click.option("--no-postgres", is_flag=True, help="Measure SQLite only.")
@click.option("--json", "as_json", is_flag=True, help="Also print one JSON object on the last line.")
def ledger(events: int, signers: int, postgres_url: str | None, no_postgres: bool, as_json: bool) -> None:
    """Append, audit and proof throughput, and peak memory, of the signed ledger."""
    from infra.benchmarks.ledger import run

    schema = None
    unreachable = None if no_postgres or not postgres_url else _unreachable(postgres_url)
    if no_postgres or unreachable:
        postgres_url = None
    if postgres_url:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        postgres_url = f"{postgres_url.split('?', 1)[0]}?schema={schema}"
    err = Console(stderr=True)
    try:
        figures = run(
            events,
            signers=signers,
            postgres_url=postgres_url,
            say=lambda m: err.print(m, style="dim"),
        )
    finally:
        if schema and postgres_url:
            _drop_schema(postgres_url, schema)
    table = Table(title=f"dfg bench ledger: {events:,} signed transactions, {os.cpu_count()} cores")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("ratio to (a)", justify="right")
    table.add_column("to libsodium", justify="right")
    table.add_column("goal")
    bases = (figures.verify_per_s, figures.verify_libsodium_per_s)
    for key, value in figures.as_json().items():
        if key in ("events", "signers", "notes") or isinstance(value, list):
            continue
        rated = key.endswith("per_s") and value and not key.startswith("verify_")
        ratios = [f"{value / base:.2f}x" if rated and base else "" for base in bases]
        shown = "not measured" if value is None else f"{value:,.1f}"
        table.add_row(key, shown, *ratios, GOALS.get(key, ""))
    Console(width=max(120, Console().width)).print(table)
    if unreachable:
        figures.notes.append(unreachable)
    for note in figures.notes:
        click.echo(f"note: {note}")
    if as_json:
        click.echo(json.dumps(figures.as_json(), sort_keys=True))


def _unreachable(url: str) -> str | None:
    import psycopg

    try:
        with psycopg.connect(url.split("?", 1)[0], connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {url} not measured: {exc}".strip()


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    try:
        with psycopg.connect(url.split("?", 1)[0], autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except psycopg.Error:
        pass


@bench.command("api")
@click.option(
    "--consents",
    type=click.IntRange(1000, 10_000_000),
    default=100_000,
    show_default=True,
    help="Consents recorded through the API before the checks (1,000,000 for server_rss_mb_1m).",
)
@click.option(
    "--seconds",
    type=click.FloatRange(1, 600),
    default=10.0,
    show_default=True,
    help="Duration of each fixed-rate check run.",
)
@click.option("--json", "as_json", is_flag=True, help="Also print one JSON object on the last line.")
def api(consents: int, seconds: float, as_json: bool) -> None:
    """The consent API under load from a separate process on loopback."""
    from infra.benchmarks.api import run

    err = Console(stderr=True)
    figures = run(consents, seconds=seconds, say=lambda m: err.print(m, style="dim"))
    table = Table(title=f"dfg bench api: {consents:,} consents, {os.cpu_count()} cores")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("goal")
    goals = {
        "submit_batch_per_s": ">= 5,000 /s",
        "check_p99_ms_at_1000rps": "<= 5 ms",
        "check_batch_per_s": ">= 50,000 /s",
        "server_rss_mb_1m": "<= 500 MB with 1,000,000 consents",
    }
    for key, value in figures.as_json().items():
        if key == "check_latency_ms":
            for rate, stats in value.items():
                table.add_row(
                    f"check latency at {rate}/s", f"p50 {stats['p50']} ms, p99 {stats['p99']} ms", ""
                )
            continue
        table.add_row(key, "not measured" if value is None else f"{value:,}", goals.get(key, ""))
    Console().print(table)
    if as_json:
        click.echo(json.dumps(figures.as_json(), sort_keys=True))


@bench.command("replication")
@click.option(
    "--rates",
    default="500,1000,2000,3000,4000",
    show_default=True,
    help="Offered transactions/s, in rising steps (stops at the first one not kept up with).",
)
@click.option(
    "--seconds", type=click.FloatRange(1, 600), default=10.0, show_default=True, help="Duration of each step."
)
@click.option("--followers", type=click.IntRange(1, 16), default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Also print one JSON object on the last line.")
def replication(rates: str, seconds: float, followers: int, as_json: bool) -> None:
    """Sequencer, relay, a real broker and followers on this machine: the rate the
    followers keep up with, replication lag, and catch-up verification from offset 0."""
    from infra.benchmarks.replication import run

    try:
        steps = tuple(int(r) for r in rates.split(","))
    except ValueError:
        raise click.BadParameter("a comma-separated list of integers", param_hint="--rates") from None
    err = Console(stderr=True)
    figures = run(rates=steps, seconds=seconds, followers=followers, say=lambda m: err.print(m, style="dim"))
    table = Table(title=f"dfg bench replication: {followers} followers, {os.cpu_count()} cores")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("goal")
    goals = {
        "keeps_up_per_s": ">= 3,000 /s",
        "lag_p99_s": "<= 2 s",
        "catchup_verify_per_s": ">= 1.5 x verify_per_s",
    }
    for key in ("verify_per_s", "keeps_up_per_s", "lag_p50_s", "lag_p99_s", "catchup_verify_per_s"):
        value = getattr(figures, key)
        table.add_row(key, "not reached" if value is None else f"{value:,.3f}", goals.get(key, ""))
    Console().print(table)
    for step in figures.steps:
        click.echo(f"step {step}")
    for note in figures.notes:
        click.echo(f"note: {note}")
    if as_json:
        click.echo(json.dumps(figures.as_json(), sort_keys=True))


@bench.command("mpc")
@click.option(
    "--rows",
    type=click.IntRange(100, 10_000_000),
    default=10_000,
    show_default=True,
    help="Rows of the benchmark analysis (computed by dfg and by MPyC).",
)
@click.option(
    "--million",
    type=click.IntRange(10_000, 10_000_000),
    default=1_000_000,
    show_default=True,
    help="Rows of the 1m figures (smaller runs extrapolate linearly, and say so).",
)
@click.option(
    "--pipeline-rows",
    type=click.IntRange(0, 10_000_000),
    default=50_000,
    show_default=True,
    help="Rows two providers upload for the pipeline phases (0: skip the pipeline).",
)
@click.option("--json", "as_json", is_flag=True, help="Also print one JSON object on the last line.")
def mpc_bench(rows: int, million: int, pipeline_rows: int, as_json: bool) -> None:
    """Three node processes on loopback: secure multiplications and comparisons per
    second, count/sum/mean and correlation over a million rows, the benchmark analysis
    against MPyC, and the pipeline's phases (sharing, upload, join, compute, reveal)."""
    from gateways.bench_pipeline import pipeline
    from infra.benchmarks.mpc import run

    err = Console(stderr=True)

    def say(message: str) -> None:
        err.print(message, style="dim")

    figures = run(rows=rows, million=million, say=say)
    if pipeline_rows:
        figures.pipeline = pipeline(pipeline_rows, say)
    table = Table(title=f"dfg bench mpc: 3 node processes, {os.cpu_count()} cores")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("goal")
    goals = {
        "mults_per_s": ">= 1,000,000 /s (127 bits)",
        "mults_per_s_fast": ">= 10,000,000 /s",
        "comparisons_per_s": ">= 10,000 /s",
        "mean_1m_s": "<= 1 s after input",
        "correlation_1m_s": "<= 3 s after input",
        "speedup_vs_mpyc": ">= 10 x",
    }
    report = figures.as_json()
    for key in (
        "mults_per_s", "mults_per_s_fast", "comparisons_per_s", "mean_1m_s", "correlation_1m_s",
        "analysis_s", "mpyc_analysis_s", "speedup_vs_mpyc",
    ):  # fmt: skip
        value = report[key]
        table.add_row(key, "n/a" if value is None else f"{value:,.3f}", goals.get(key, ""))
    for key, value in report["pipeline"].items():
        table.add_row(f"pipeline {key}", f"{value:,}" if isinstance(value, int) else f"{value:,.3f}", "")
    Console().print(table)
    for note in figures.notes:
        click.echo(f"note: {note}")
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
