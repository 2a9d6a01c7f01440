"""``dfg bench api``: the consent API under load, from a separate process on loopback.

The server is a real ``dfg serve`` subprocess on a fresh SQLite ledger; this process
is the load generator. Measured: (1) transactions/s submitted in batches of 1,000
through ``POST /v1/transactions``, four requests in flight; (2) single consent-check
latency percentiles at fixed request rates (open loop: requests are sent on schedule
whether or not earlier ones have answered, so queueing shows up in the latencies);
(3) checks/s through the batch endpoint; (4) the server's resident memory after the
consents are recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from infra.benchmarks.ledger import BATCH, CHAIN, OPERATOR, _signer_key, _stream, presign
from infra.bootstrap import create_ledger, root_signer
from infra.settings import Settings
from ledger.signing import public_jwk


@dataclass
class ApiFigures:
    consents: int
    submit_batch_per_s: float = 0.0
    check_p50_ms_at_1000rps: float = 0.0
    check_p99_ms_at_1000rps: float = 0.0
    check_latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    check_batch_per_s: float = 0.0
    server_rss_mb: float = 0.0
    server_rss_mb_1m: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the server did not start")


#: Batch submissions in flight, as several providers' backends would have. The server
#: verifies one batch while it commits the one before; with two in flight, one of them
#: is always travelling (response out, next request in) and that pipeline idles.
#: Each submitter sends its own signers' transactions, one batch after another: a
#: signer's nonces must reach the ledger in order, and two batches in flight from one
#: signer may arrive in either order (the second's nonces would refuse the first's).
SUBMITTERS = 4
#: The load generator shares the server's two cores, so it reads and writes JSON with
#: orjson: the standard library took 13.4 ms per batch of 1,000 (writing the request,
#: reading the 1.6 MB of results with every entry embedded) against 6 ms, which at
#: 5,000 transactions/s is 4 % of a core the server then lacked.
_JSON = {"Content-Type": "application/json"}


def _lanes(path: Path, signers: int, lanes: int = SUBMITTERS) -> list[list[list[str]]]:
    """The presigned stream (transaction i is signer i % signers') split by signer into
    ``lanes`` submitters' batches, each lane in stream order (so in nonce order)."""
    own: list[list[str]] = [[] for _ in range(lanes)]
    index = 0
    for batch in _stream(path):
        for token in batch:
            own[(index % signers) % lanes].append(token)
            index += 1
    return [[lane[i : i + BATCH] for i in range(0, len(lane), BATCH)] for lane in own]


async def _post_batches(url: str, lanes: list[list[list[str]]]) -> int:
    """Submit each lane's batches in order, one request in flight per lane."""
    accepted = 0

    async def worker(session: aiohttp.ClientSession, batches: list[list[str]]) -> None:
        nonlocal accepted
        for batch in batches:
            async with session.post(
                f"{url}/v1/transactions", data=orjson.dumps({"transactions": batch}), headers=_JSON
            ) as response:
                body = orjson.loads(await response.read())
            bad = [r for r in body["results"] if r["status"] != "accepted"]
            if bad:
                raise RuntimeError(f"the benchmark's transactions were refused: {bad[0]}")
            accepted += len(body["results"])

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session, lane) for lane in lanes))
    return accepted


async def _open_loop_checks(url: str, rate: int, seconds: float, subjects: list[str]) -> list[float]:
    """Send GET checks at ``rate``/s on schedule; return each latency in ms."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            subject = subjects[i % len(subjects)]
            started = time.perf_counter()
            async with session.get(
                f"{url}/v1/consents/check",
                params={
                    "subject": subject,
                    "controller": f"sp:bench-{i % 20}",
                    "purpose": "dpv:ServiceProvision",
                },
            ) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"check failed: {response.status}")
            latencies.append((time.perf_counter() - started) * 1000)

        tasks = []
        start = time.perf_counter()
        total = int(rate * seconds)
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return latencies


async def _batch_checks(url: str, subjects: list[str], rounds: int = 5) -> float:
    questions = [
        {
            "subject": subjects[i % len(subjects)],
            "controller": f"sp:bench-{i % 20}",
            "purpose": "dpv:ServiceProvision",
            "categories": ["dpv-pd:HeartRate"],
        }
        for i in range(10_000)
    ]
    payload = json.dumps({"questions": questions})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        started = time.perf_counter()
        for _ in range(rounds):
            async with session.post(f"{url}/v1/consents/check", data=payload, headers=_JSON) as response:
                body = orjson.loads(await response.read())
                assert len(body["answers"]) == 10_000
        return rounds * 10_000 / (time.perf_counter() - started)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(
    consents: int,
    *,
    rates: tuple[int, ...] = (250, 500, 1000),
    seconds: float = 10.0,
    say: Callable[[str], None] = print,
) -> ApiFigures:
    figures = ApiFigures(consents=consents)
    signers = 20
    with tempfile.TemporaryDirectory(prefix="dfg-bench-api-") as tmp:
        root = Path(tmp)
        settings = Settings(data_dir=root / "data")
        create_ledger(settings, chain=CHAIN, origin=None, operator=OPERATOR, display_name="Bench")
        presigned = root / "presigned.jws"
        say(f"pre-signing {consents:,} consent transactions ...")
        presign(presigned, consents, signers, seed=1, workers=os.cpu_count() or 1)
        operator = root_signer(settings, CHAIN, OPERATOR)
        operator.nonce = 1
        admits = [
            operator.sign(
                "principal.admit",
                {
                    "principal": f"sp:bench-{s}",
                    "kind": "service_provider",
                    "display_name": f"Bench {s}",
                    "jwk": public_jwk(_signer_key(1, s)).as_dict(),
                },
                now=time.time(),
            )
            for s in range(signers)
        ]
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateways.cli",
                "serve",
                "--data",
                str(settings.data_dir),
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            asyncio.run(_wait_ready(url))
            asyncio.run(_post_batches(url, [[admits]]))
            say(f"submitting in batches of {BATCH:,}, {SUBMITTERS} submitters ...")
            lanes = _lanes(presigned, signers)
            started = time.perf_counter()
            accepted = asyncio.run(_post_batches(url, lanes))
            figures.submit_batch_per_s = accepted / (time.perf_counter() - started)
            figures.server_rss_mb = _rss_mb(server.pid)
            if consents >= 1_000_000:
                figures.server_rss_mb_1m = figures.server_rss_mb
            subjects = [f"p-1-{i}" for i in range(0, consents, max(1, consents // 5000))]
            for rate in rates:
                say(f"single checks at {rate}/s for {seconds:.0f}s ...")
                latencies = asyncio.run(_open_loop_checks(url, rate, seconds, subjects))
                figures.check_latency_ms[str(rate)] = {
                    "p50": round(statistics.median(latencies), 2),
                    "p99": round(_percentile(latencies, 0.99), 2),
                    "max": round(max(latencies), 2),
                }
            at_1000 = figures.check_latency_ms.get("1000", {})
            figures.check_p50_ms_at_1000rps = at_1000.get("p50", 0.0)
            figures.check_p99_ms_at_1000rps = at_1000.get("p99", 0.0)
            say("batch checks of 10,000 ...")
            figures.check_batch_per_s = asyncio.run(_batch_checks(url, subjects))
            figures.server_rss_mb = max(figures.server_rss_mb, _rss_mb(server.pid))
        finally:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    return figures
