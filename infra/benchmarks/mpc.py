"""``dfg bench mpc``: the MPC engine's speed, with three node processes on loopback.

1. **Protocols** -- three processes, each a party with its own authenticated, encrypted
   connections to the others (``mpc.transport``), time each measurement from a common
   start (a round trip), the slowest party counting:
   * ``mults_per_s``: secure multiplications in GF(2^127 - 1) (a vector of a million);
     ``mults_per_s_fast`` in GF(2^61 - 1) (a vector of four million);
   * ``comparisons_per_s``: secure comparisons of 27-bit values (the range of the demo's
     variables at 16 fractional bits);
   * ``mean_1m_s``: count, sum and mean of a column of 1,000,000 rows, after input;
   * ``correlation_1m_s``: the correlation of two columns, each input by another party
     (two providers), over 1,000,000 merged rows, after input;
   * ``analysis_s``: the benchmark analysis -- a filter, mean, variance and correlation
     over ``--rows`` rows -- and the same analysis with MPyC (three processes,
     ``python -m infra.benchmarks.mpyc_analysis -M3``): ``speedup_vs_mpyc``.
2. **Pipeline** -- see ``gateways/bench_pipeline.py`` (it runs the product's processes).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

NAMES = ["node:a", "node:b", "node:c"]
P127 = (1 << 127) - 1
P61 = (1 << 61) - 1
PRECISION = 16


@dataclass
class Figures:
    mults_per_s: float = 0.0
    mults_per_s_fast: float = 0.0
    comparisons_per_s: float = 0.0
    mean_1m_s: float = 0.0
    correlation_1m_s: float = 0.0
    analysis_s: float = 0.0
    mpyc_analysis_s: float | None = None
    speedup_vs_mpyc: float | None = None
    rows: int = 0
    pipeline: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        def rounded(v: Any) -> Any:
            if isinstance(v, float):
                return round(v, 4)
            if isinstance(v, dict):
                return {k: rounded(x) for k, x in v.items()}
            return v

        return {k: rounded(v) for k, v in self.__dict__.items()}


# --- the protocol measurements, one process per party -----------------------------------------


@dataclass(frozen=True)
class Sizes:
    mults: int
    mults_fast: int
    comparisons: int
    rows_1m: int
    analysis_rows: int


def _timed(party: Any, work: Callable[[], object]) -> float:
    """Seconds for ``work``, started together: a round trip first aligns the parties."""
    party.broadcast_bytes(b"go")
    started = time.perf_counter()
    work()
    party.broadcast_bytes(b"done")  # the slowest party's finish counts for everyone
    return time.perf_counter() - started


def _party_main(index: int, keys: list[bytes], ports: list[int], sizes: Sizes, out: Any) -> None:
    try:
        out.put((index, _party(index, keys, ports, sizes)))
    except BaseException as exc:  # report, so the parent does not wait for nothing
        import traceback

        out.put((index, {"error": "".join(traceback.format_exception(exc))}))


def _party(index: int, keys: list[bytes], ports: list[int], sizes: Sizes) -> dict[str, float]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from domain.calculations import check_calculation
    from infra.runtime import keep_large_allocations
    from mpc.field import FixedPoint, PrimeField
    from mpc.protocols import input_values, less_than_zero, multiply, open_values
    from mpc.runtime import Party
    from mpc.shamir import Scheme
    from mpc.statistics import PRESENT, Ranges, SharedTable, aggregate, finish
    from mpc.transport import Mesh, NodeIdentity

    keep_large_allocations()  # as the dfg entry point does for every node process
    private = [Ed25519PrivateKey.from_private_bytes(k) for k in keys]
    registry = {n: [k.public_key()] for n, k in zip(NAMES, private, strict=True)}
    me = NAMES[index - 1]
    mesh = Mesh(
        NodeIdentity(me, private[index - 1]),
        lambda p: registry.get(p, []),
        b"dfg-bench",
        listen=("127.0.0.1", ports[index - 1]),
        peers={n: ("127.0.0.1", ports[i]) for i, n in enumerate(NAMES) if n != me},
        timeout=600,
    ).start()
    figures: dict[str, float] = {}
    try:

        def party(name: str, modulus: int) -> Party:
            return Party(index, Scheme(PrimeField(modulus), 3, 1), mesh.endpoint(name, NAMES))

        p127 = party("mult127", P127)
        a = p127.ops.random(sizes.mults)
        figures["mults"] = _timed(p127, lambda: multiply(p127, a, a))
        p61 = party("mult61", P61)
        b = p61.ops.random(sizes.mults_fast)
        figures["mults_fast"] = _timed(p61, lambda: multiply(p61, b, b))

        cmp = party("compare", P127)
        rng = random.Random(index)
        magnitudes = [rng.randrange(1 << 25) for _ in range(sizes.comparisons)]
        values = [P127 - m if i % 2 else m for i, m in enumerate(magnitudes)]  # half negative
        shared = input_values(cmp, 1, values if index == 1 else None)
        figures["comparisons"] = _timed(cmp, lambda: open_values(cmp, less_than_zero(cmp, shared, 27)))

        fixed = FixedPoint(PRECISION)
        ranges = Ranges({"x": Fraction(-100), "y": Fraction(-100)}, {"x": Fraction(100), "y": Fraction(100)})
        view = {"x": "decimal", "y": "decimal"}

        def table(session: Party, rows: int) -> SharedTable:
            """x from party 1, y from party 2 (two providers), presences with them."""
            generator = random.Random(7)
            drawn = [fixed.encode(Decimal(generator.uniform(-99, 99))) % P127 for _ in range(rows)]
            xs = drawn if index == 1 else None
            ys = drawn[::-1] if index == 2 else None
            ones = [1] * rows
            columns = {
                "x": input_values(session, 1, xs),
                "x" + PRESENT: input_values(session, 1, ones if index == 1 else None),
                "y": input_values(session, 2, ys),
                "y" + PRESENT: input_values(session, 2, ones if index == 2 else None),
            }
            return SharedTable(columns, rows)

        def analysis(
            session: Party, shared: SharedTable, filter_text: str | None, functions: list[str]
        ) -> Any:
            """The calculation as one timed piece of work: aggregates, opening, finishing."""
            calculation = check_calculation(filter_text, functions, view)

            def run() -> list[dict[str, Any]]:
                outputs = aggregate(session, calculation, shared, fixed=fixed, ranges=ranges)
                flat = [q for o in outputs for q in o.quantities]
                opened = iter([session.scheme.field.signed(v) for v in open_values(session, flat)])
                return [finish(o.public(), [next(opened) for _ in o.quantities], fixed) for o in outputs]

            return run

        big = party("rows1m", P127)
        shared_1m = table(big, sizes.rows_1m)
        figures["mean_1m"] = _timed(big, analysis(big, shared_1m, None, ["count()", "sum(x)", "mean(x)"]))
        figures["correlation_1m"] = _timed(big, analysis(big, shared_1m, None, ["correlation(x, y)"]))
        small = party("analysis", P127)
        shared_small = table(small, sizes.analysis_rows)
        work = analysis(small, shared_small, "x >= 0", ["mean(x)", "variance(x)", "correlation(x, y)"])
        figures["analysis"] = _timed(small, work)
    finally:
        mesh.close()
    return figures


def _protocols(sizes: Sizes, say: Callable[[str], None]) -> dict[str, float]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    from infra.tansu import free_port

    raw = (Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    keys = [Ed25519PrivateKey.generate().private_bytes(*raw) for _ in NAMES]
    ports = [free_port() for _ in NAMES]
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    processes = [
        context.Process(target=_party_main, args=(i, keys, ports, sizes, out), name=f"bench-party-{i}")
        for i in (1, 2, 3)
    ]
    say("protocols: three party processes on loopback")
    for process in processes:
        process.start()
    results = {}
    try:
        for _ in processes:
            index, figures = out.get(timeout=3600)
            if "error" in figures:
                raise RuntimeError(f"party {index} failed:\n{figures['error']}")
            results[index] = figures
    finally:
        for process in processes:
            process.join(30)
    return {k: max(r[k] for r in results.values()) for k in results[1]}


# --- MPyC ------------------------------------------------------------------------------------


def _mpyc(rows: int, say: Callable[[str], None]) -> tuple[float | None, str | None]:
    try:
        import mpyc  # noqa: F401
    except ImportError:
        return None, "MPyC is not installed (pip install 'dfg[bench]'): no speed-up ratio"
    say("MPyC: the same analysis with three MPyC processes")
    done = subprocess.run(
        [sys.executable, "-m", "infra.benchmarks.mpyc_analysis", "-M3", "--rows", str(rows)],
        capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return float(json.loads(line)["seconds"]), None
    return None, f"MPyC did not report a time: {done.stderr[-500:]}"


def run(
    *,
    rows: int,
    million: int = 1_000_000,
    say: Callable[[str], None] = lambda _: None,
) -> Figures:
    sizes = Sizes(
        mults=million, mults_fast=4 * million, comparisons=20_000, rows_1m=million, analysis_rows=rows
    )
    measured = _protocols(sizes, say)
    figures = Figures(rows=rows)
    figures.mults_per_s = sizes.mults / measured["mults"]
    figures.mults_per_s_fast = sizes.mults_fast / measured["mults_fast"]
    figures.comparisons_per_s = sizes.comparisons / measured["comparisons"]
    figures.mean_1m_s = measured["mean_1m"] * 1_000_000 / sizes.rows_1m
    figures.correlation_1m_s = measured["correlation_1m"] * 1_000_000 / sizes.rows_1m
    figures.analysis_s = measured["analysis"]
    if million != 1_000_000:
        figures.notes.append(f"1m figures extrapolated linearly from {million:,} rows")
    mpyc_seconds, note = _mpyc(rows, say)
    if note:
        figures.notes.append(note)
    if mpyc_seconds is not None:
        figures.mpyc_analysis_s = mpyc_seconds
        figures.speedup_vs_mpyc = mpyc_seconds / figures.analysis_s
    figures.notes.append(f"{os.cpu_count()} cores; three parties as separate processes on loopback")
    return figures
