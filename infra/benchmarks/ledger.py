"""``dfg bench ledger``: the ledger's throughput and memory, measured in one run.

1. Pre-sign N consent transactions from many signers (in parallel, into a file, so
   that a million of them never sit in memory).
2. (a) raw single-core Ed25519 verification rate of this machine (the median of
   samples taken between the phases, ``infra.benchmarks.baseline``);
   (b) durable append through the whole pipeline (parse, verify on all cores,
   authorise, domain decision, storage, Merkle tree, checkpoints) on SQLite and on
   PostgreSQL, with batch k+1 verified while batch k commits;
   (c) audit verify of the SQLite ledger; (d) inclusion proofs per second;
   (e) peak memory of this process and its workers.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import resource
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey

from infra.benchmarks.baseline import VerifyBaseline
from infra.bootstrap import create_ledger, open_sequencer, open_store, root_signer
from infra.runtime import tune_for_throughput
from infra.settings import Settings
from ledger.merkle import inclusion_proof
from ledger.segmented_audit import audit_in_segments
from ledger.sequencer import Accepted, Sequencer
from ledger.signing import TransactionSigner, public_jwk
from ledger.verifier import die_with_parent

CHAIN = "dfg-bench"
OPERATOR = "op:bench"
TERMS = {
    "purposes": ["dpv:ServiceProvision", "dpv:ScientificResearch"],
    "data_categories": ["dpv-pd:HealthRecord", "dpv-pd:HeartRate"],
    "notice": {"url": "https://bench.example/notice", "sha256": "ab" * 32},
}
BATCH = 1000


@dataclass
class Figures:
    events: int
    signers: int
    verify_per_s: float = 0.0
    verify_libsodium_per_s: float = 0.0
    verify_per_s_samples: list[float] = field(default_factory=list)
    presign_s: float = 0.0
    append_sqlite_per_s: float = 0.0
    append_postgres_per_s: float | None = None
    audit_verify_per_s: float = 0.0
    proofs_per_s: float = 0.0
    peak_rss_mb: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {k: _rounded(v) for k, v in self.__dict__.items()}


def _rounded(value: Any) -> Any:
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return round(value, 1) if isinstance(value, float) else value


def _signer_key(seed: int, index: int) -> OKPKey:
    raw = hashlib.sha256(f"dfg-bench/{seed}/{index}".encode()).digest()
    return OKPKey.import_key(Ed25519PrivateKey.from_private_bytes(raw))


def _presign_range(args: tuple[int, int, int, int, float]) -> list[str]:
    """Transactions ``start..stop`` of the stream: signer i % S, its (i // S + 1)th nonce."""
    start, stop, signers, seed, now = args
    keys = {s: _signer_key(seed, s) for s in {i % signers for i in range(start, min(stop, start + signers))}}
    out = []
    for i in range(start, stop):
        s = i % signers
        principal = f"sp:bench-{s}"
        signer = TransactionSigner(principal, keys[s], CHAIN, nonce=i // signers)
        out.append(
            signer.sign(
                "consent.give",
                {
                    "consent_id": str(uuid.UUID(int=(seed << 64) + i + 1, version=4)),
                    "controller": principal,
                    "subject": f"p-{seed}-{i}",
                    "level": 1,
                    "method": "app",
                    "terms": TERMS,
                },
                now=now,
                valid_for=86400,
            )
        )
    return out


def presign(path: Path, events: int, signers: int, seed: int, workers: int) -> float:
    started = time.perf_counter()
    now = time.time()
    step = 5000
    ranges = [(a, min(a + step, events), signers, seed, now) for a in range(0, events, step)]
    with path.open("w") as out, ProcessPoolExecutor(workers) as pool:
        for chunk in pool.map(_presign_range, ranges):
            out.write("\n".join(chunk) + "\n")
    return time.perf_counter() - started


def _stream(path: Path) -> Iterator[list[str]]:
    batch: list[str] = []
    with path.open() as handle:
        for line in handle:
            batch.append(line.rstrip("\n"))
            if len(batch) == BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _admit_signers(sequencer: Sequencer, settings: Settings, signers: int, seed: int) -> None:
    operator = root_signer(settings, CHAIN, OPERATOR)
    operator.nonce = 1
    now = time.time()
    tokens = [
        operator.sign(
            "principal.admit",
            {
                "principal": f"sp:bench-{s}",
                "kind": "service_provider",
                "display_name": f"Bench provider {s}",
                "jwk": public_jwk(_signer_key(seed, s)).as_dict(),
            },
            now=now,
        )
        for s in range(signers)
    ]
    for start in range(0, len(tokens), BATCH):
        outcomes = sequencer.submit(tokens[start : start + BATCH])
        assert all(isinstance(o, Accepted) for o in outcomes), outcomes[0]


def append_rate(settings: Settings, presigned: Path, signers: int, seed: int) -> tuple[float, int]:
    """Durable appends per second, with verification of the next batch overlapping."""
    create_ledger(settings, chain=CHAIN, origin=None, operator=OPERATOR, display_name="Bench")
    sequencer = open_sequencer(settings)
    try:
        _admit_signers(sequencer, settings, signers, seed)
        accepted = 0
        started = time.perf_counter()
        pending = None
        for batch in _stream(presigned):
            prepared = sequencer.prepare(batch)
            if pending is not None:
                accepted += _count(sequencer.commit(pending))
            pending = prepared
        if pending is not None:
            accepted += _count(sequencer.commit(pending))
        sequencer.checkpoint_now()
        elapsed = time.perf_counter() - started
        return accepted / elapsed, accepted
    finally:
        sequencer.verifier.close()
        sequencer.store.close()


def _count(outcomes: list[Any]) -> int:
    bad = [o for o in outcomes if not isinstance(o, Accepted)]
    if bad:
        raise RuntimeError(f"the benchmark's own transactions were refused: {bad[0]}")
    return len(outcomes)


def audit_rate(settings: Settings) -> float:
    """``dfg audit verify`` as it runs by default: one segment per core once the
    ledger is large enough, otherwise one pass with signature workers; in a process of
    its own, as that command runs. (In this one, the first segment's thread would
    allocate among what the append phases left: at 1,000,000 entries that measured
    about 5 % slower, and it is no auditor's situation.) Timed from the call, after
    the process has started and opened the ledger, like the other phases."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=_audit_process_setup) as pool:
        return pool.submit(_audit_rate_here, settings).result()


def _audit_process_setup() -> None:
    die_with_parent()
    tune_for_throughput()


def _audit_rate_here(settings: Settings) -> float:
    # opened as `dfg audit verify` opens it (read-only)
    store = open_store(settings, scan=True, read_only=True)
    try:
        started = time.perf_counter()
        segment_store = partial(open_store, settings, scan=True, read_only=True)
        report = audit_in_segments(store, segment_store, setup=tune_for_throughput)
        elapsed = time.perf_counter() - started
        if not report.ok:
            raise RuntimeError(f"the benchmark ledger does not verify: {report.first_problem}")
        return report.entries / elapsed
    finally:
        store.close()


def proof_rate(settings: Settings, samples: int = 3000) -> float:
    store = open_store(settings)
    try:
        size = store.head()[0]
        rng = random.Random(1)
        started = time.perf_counter()
        for _ in range(samples):
            inclusion_proof(rng.randrange(size), size, store.read_nodes)
        return samples / (time.perf_counter() - started)
    finally:
        store.close()


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def run(
    events: int,
    *,
    signers: int,
    postgres_url: str | None,
    seed: int = 1,
    say: Callable[[str], None] = print,
) -> Figures:
    figures = Figures(events=events, signers=signers)
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="dfg-bench-") as tmp:
        root = Path(tmp)
        presigned = root / "presigned.jws"
        say(f"pre-signing {events:,} transactions from {signers} signers ...")
        figures.presign_s = presign(presigned, events, signers, seed, workers)
        baseline = VerifyBaseline()
        say("measuring raw single-core Ed25519 verification (again after each phase) ...")
        baseline.sample()
        sqlite = Settings(data_dir=root / "sqlite")
        say("appending on SQLite ...")
        figures.append_sqlite_per_s, _ = append_rate(sqlite, presigned, signers, seed)
        baseline.sample()
        if postgres_url:
            say("appending on PostgreSQL ...")
            figures.append_postgres_per_s, _ = append_rate(
                Settings(data_dir=root / "pg", database_url=postgres_url), presigned, signers, seed
            )
            baseline.sample()
        say("audit verify on SQLite ...")
        figures.audit_verify_per_s = audit_rate(sqlite)
        baseline.sample()
        say("inclusion proofs ...")
        figures.proofs_per_s = proof_rate(sqlite)
        baseline.sample()
    figures.verify_per_s = baseline.verify_per_s
    figures.verify_libsodium_per_s = baseline.libsodium_per_s
    figures.verify_per_s_samples = baseline.openssl
    figures.notes.append(baseline.describe())
    figures.peak_rss_mb = peak_rss_mb()
    return figures
