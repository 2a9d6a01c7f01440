"""The benchmark analysis of ``dfg bench mpc``, in MPyC: the reference it is compared with.

Run as ``python -m infra.benchmarks.mpyc_analysis -M3 --rows N`` (MPyC starts the other
two parties as processes on loopback). Party 0 inputs x, party 1 inputs y (two
providers); the parties compute a filter (x >= 0, secure comparisons), the count, the
sums and the sums of products of the kept rows, and open those aggregates -- exactly
what dfg's engine opens for mean, variance and correlation. Party 0 prints
``{"seconds": ...}``, timed from after the inputs to the opened aggregates.
"""

from __future__ import annotations

import argparse
import json
import random
import time


async def analysis(rows: int) -> None:
    from mpyc.runtime import mpc

    secfxp = mpc.SecFxp(64, 16)
    await mpc.start()
    generator = random.Random(7)
    xs = [generator.uniform(-99, 99) for _ in range(rows)]
    ys = [generator.uniform(-99, 99) for _ in range(rows)]
    x = mpc.input([secfxp(v) if mpc.pid == 0 else secfxp(None) for v in xs], senders=0)
    y = mpc.input([secfxp(v) if mpc.pid == 1 else secfxp(None) for v in ys], senders=1)
    await mpc.barrier("inputs")
    started = time.perf_counter()
    keep = [v >= 0 for v in x]
    kept_x = mpc.schur_prod(keep, x)
    kept_y = mpc.schur_prod(keep, y)
    aggregates = [
        mpc.sum(keep),
        mpc.sum(kept_x),
        mpc.sum(kept_y),
        mpc.in_prod(kept_x, x),
        mpc.in_prod(kept_x, y),
        mpc.in_prod(kept_y, y),
    ]
    opened = await mpc.output(aggregates)
    seconds = time.perf_counter() - started
    await mpc.shutdown()
    if mpc.pid == 0:
        print(json.dumps({"seconds": seconds, "rows": rows, "count": float(opened[0])}))


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--rows", type=int, default=10_000)
    known, _ = parser.parse_known_args()  # MPyC reads its own options (-M, -I, ...) itself
    from mpyc.runtime import mpc

    mpc.run(analysis(known.rows))


if __name__ == "__main__":
    main()
