"""What one party of a protocol holds, and how it talks to the others.

Protocols are written from one party's point of view, as straight-line code (as in
MPyC): a party computes locally and calls ``exchange`` to send one vector of field
elements to every party and receive one from each. Vectors travel as their raw bytes
(``mpc.vectors``). ``LocalNetwork`` connects parties that run as threads of one process
(tests, benchmarks of the arithmetic); the node engine connects them over
authenticated network connections (``mpc.transport``) with the same interface.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from mpc.shamir import Scheme
from mpc.vectors import Vec, VectorOps

T = TypeVar("T")

#: A received message: bytes, or a view of a received frame (large vectors are not copied).
Message = bytes | memoryview


class ProtocolTimeout(RuntimeError):
    """Another party did not answer in time (it stopped, or the network did)."""


class ProtocolAborted(ProtocolTimeout):
    """Another party gave up the session and said why (so this one stops waiting for
    it now, not at the time-out)."""


class ProtocolError(RuntimeError):
    """A protocol could not complete correctly (an inconsistent opening, a malformed
    message)."""


class Endpoint(Protocol):
    def exchange(self, outgoing: Mapping[int, bytes]) -> Mapping[int, Message]:
        """Send ``outgoing[j]`` to each party j (itself included; nothing is an empty
        message) and return what each party j sent to this one, in one round."""
        ...


@dataclass
class Party:
    """One party's view: its number (1..n), the sharing scheme and its endpoint."""

    index: int
    scheme: Scheme
    endpoint: Endpoint

    @property
    def parties(self) -> range:
        return self.scheme.points

    @property
    def ops(self) -> VectorOps:
        return self.scheme.field.vectors

    def exchange(self, outgoing: Mapping[int, Vec]) -> dict[int, Vec]:
        ops = self.ops
        received = self.endpoint.exchange({j: ops.dumps(v) for j, v in outgoing.items()})
        try:
            return {j: ops.loads(data) for j, data in received.items()}
        except ValueError as exc:
            raise ProtocolError(f"a party sent a malformed vector: {exc}") from exc

    def broadcast(self, values: Vec) -> dict[int, Vec]:
        """Send the same vector to everyone; receive everyone's."""
        return self.exchange({j: values for j in self.parties})

    def broadcast_bytes(self, data: bytes) -> dict[int, bytes]:
        return {j: bytes(m) for j, m in self.endpoint.exchange({j: data for j in self.parties}).items()}


class LocalNetwork:
    """n parties in one process: a queue per (sender, receiver) pair, rounds in order."""

    def __init__(self, parties: int, timeout: float = 30.0) -> None:
        self.parties = parties
        self.timeout = timeout
        self._queues = {
            (i, j): queue.Queue[bytes]() for i in range(1, parties + 1) for j in range(1, parties + 1)
        }

    def endpoint(self, index: int) -> Endpoint:
        network = self

        class _Local:
            def exchange(self, outgoing: Mapping[int, bytes]) -> dict[int, Message]:
                for j in range(1, network.parties + 1):
                    network._queues[(index, j)].put(outgoing.get(j, b""))
                received: dict[int, Message] = {}
                for j in range(1, network.parties + 1):
                    try:
                        received[j] = network._queues[(j, index)].get(timeout=network.timeout)
                    except queue.Empty:
                        raise ProtocolTimeout(f"party {j} did not answer party {index}") from None
                return received

        return _Local()


def run_local(scheme: Scheme, program: Callable[[Party], T], *, timeout: float = 30.0) -> list[T]:
    """Run ``program`` as every party, each in a thread; results in party order."""
    network = LocalNetwork(scheme.parties, timeout)
    parties = [Party(i, scheme, network.endpoint(i)) for i in scheme.points]
    with ThreadPoolExecutor(max_workers=scheme.parties, thread_name_prefix="mpc-party") as pool:
        futures = [pool.submit(program, party) for party in parties]
        return [future.result() for future in futures]
