"""What one party of a protocol holds, and how it talks to the others.

Protocols are written from one party's point of view, as straight-line code (as in
MPyC): a party computes locally and calls ``exchange`` to send one vector of field
elements to every party and receive one from each. ``LocalNetwork`` connects parties
that run as threads of one process (tests, benchmarks of the arithmetic); the node
engine connects them over authenticated network connections with the same interface.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from mpc.randomness import RandomMany, uniform_below
from mpc.shamir import Scheme

T = TypeVar("T")


class ProtocolTimeout(RuntimeError):
    """Another party did not answer in time (it stopped, or the network did)."""


class Endpoint(Protocol):
    def exchange(self, outgoing: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
        """Send ``outgoing[j]`` to each party j (itself included) and return what each
        party j sent to this one, in one round."""
        ...


@dataclass
class Party:
    """One party's view: its number (1..n), the sharing scheme and its endpoint."""

    index: int
    scheme: Scheme
    endpoint: Endpoint
    random: RandomMany = field(default=uniform_below)

    @property
    def parties(self) -> range:
        return self.scheme.points

    def exchange(self, outgoing: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
        return self.endpoint.exchange(outgoing)

    def broadcast(self, values: Sequence[int]) -> dict[int, list[int]]:
        """Send the same vector to everyone; receive everyone's."""
        return self.exchange({j: values for j in self.parties})


class LocalNetwork:
    """n parties in one process: a queue per (sender, receiver) pair, rounds in order."""

    def __init__(self, parties: int, timeout: float = 30.0) -> None:
        self.parties = parties
        self.timeout = timeout
        self._queues = {
            (i, j): queue.Queue[list[int]]() for i in range(1, parties + 1) for j in range(1, parties + 1)
        }

    def endpoint(self, index: int) -> Endpoint:
        network = self

        class _Local:
            def exchange(self, outgoing: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
                for j in range(1, network.parties + 1):
                    network._queues[(index, j)].put(list(outgoing.get(j, ())))
                received = {}
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
