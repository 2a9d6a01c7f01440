"""A ledger writer for the crash-safety tests (run as a script, never imported by pytest).

    python tests/crash_writer.py DATA_DIR [BATCH] [SEED]

Creates a SQLite ledger in DATA_DIR when there is none, then appends realistic signed
transactions (``infra.demo.DemoFederation``) through the real ``Sequencer`` in batches,
forever. After each ``Sequencer.submit`` has *returned* it prints one line per newly
accepted entry, ``<seq> <leaf hash hex>``, and flushes stdout: a printed line is an
acknowledgement, i.e. a promise that the entry is durable. The test kills this process
with SIGKILL at some point and then checks the promise.

BATCH is the largest batch (default 25); each batch has a random size in 1..BATCH, so
small batches are verified inline and large ones (>= 48) on the verifier's process pool.
"""

from __future__ import annotations

import random
import sys
import warnings
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from infra.bootstrap import create_ledger, open_sequencer, root_signer
from infra.demo import DemoFederation
from infra.settings import Settings
from ledger.sequencer import Accepted

warnings.filterwarnings("ignore", message="EdDSA is deprecated")

CHAIN = "dfg-crash"
OPERATOR = "op:federation"


def _transactions(federation: DemoFederation) -> Iterator[str]:
    yield from federation.setup()
    yield from federation.activity()


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    settings = Settings(data_dir=Path(argv[1]))
    max_batch = int(argv[2]) if len(argv) > 2 else 25
    seed = int(argv[3]) if len(argv) > 3 else 7
    if not settings.ledger_file.exists():
        create_ledger(
            settings, chain=CHAIN, origin=None, operator=OPERATOR, display_name="Crash test federation"
        )
    sequencer = open_sequencer(settings)
    if sequencer.store.last_nonce("ids:wallet") > 0:
        print("this ledger was written by a writer before; use a fresh DATA_DIR", file=sys.stderr)
        return 2
    chain = sequencer.chain
    assert chain is not None
    operator = root_signer(settings, chain, OPERATOR)
    operator.nonce = sequencer.store.last_nonce(OPERATOR)
    rng = random.Random(seed)
    stream = _transactions(DemoFederation(chain=chain, operator=operator, rng=random.Random(seed)))
    out = sys.stdout
    print(f"ready {sequencer.size}", file=sys.stderr, flush=True)
    while True:
        chunk = list(islice(stream, rng.randint(1, max_batch)))
        outcomes = sequencer.submit(chunk)
        # Only now, after submit returned (the batch committed), acknowledge.
        acks = [
            f"{o.seq} {o.entry.leaf_hash.hex()}\n"
            for o in outcomes
            if isinstance(o, Accepted) and not o.duplicate
        ]
        if acks:
            out.write("".join(acks))
            out.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
