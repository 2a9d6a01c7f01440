"""(a), the machine's raw single-core Ed25519 verification rate, which the ledger and
replication goals are stated against, sampled at several moments of one run.

Why several: a shared host's speed drifts by tens of percent within a minute. On the
twelfth session's host, twenty one-second samples taken in a row ranged from 4,418/s
to 7,937/s, so one sample taken before the phases could put a phase's ratio anywhere
in a range nearly two to one wide. The median of samples taken between the phases
stands for the machine the phases ran on; the samples themselves are reported too.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.signing import VerifyKey


def raw_verify_rate(seconds: float = 2.0, *, libsodium: bool = False) -> float:
    """Single-core Ed25519 verifications per second of one 600-byte message: with
    OpenSSL (through ``cryptography``; (a), the rate the goals are stated against), or
    with libsodium, which the ledger verifies with."""
    key = Ed25519PrivateKey.generate()
    message = os.urandom(600)
    signature = key.sign(message)
    public = key.public_key()
    check: Callable[[], object] = lambda: public.verify(signature, message)  # noqa: E731
    if libsodium:
        sodium = VerifyKey(public.public_bytes_raw())
        check = lambda: sodium.verify(message, signature)  # noqa: E731
    count = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(500):
            check()
        count += 500
    return count / elapsed


@dataclass
class VerifyBaseline:
    """Samples of (a) and of libsodium's rate, one of each per ``sample`` call."""

    seconds: float = 0.5
    openssl: list[float] = field(default_factory=list)
    libsodium: list[float] = field(default_factory=list)

    def sample(self) -> None:
        self.openssl.append(raw_verify_rate(self.seconds))
        self.libsodium.append(raw_verify_rate(self.seconds, libsodium=True))

    @property
    def verify_per_s(self) -> float:
        """(a): the median of the OpenSSL samples."""
        return statistics.median(self.openssl) if self.openssl else 0.0

    @property
    def libsodium_per_s(self) -> float:
        return statistics.median(self.libsodium) if self.libsodium else 0.0

    def describe(self) -> str:
        """One line for the report: how many samples, and how far apart they were."""
        low, high = min(self.openssl), max(self.openssl)
        return (
            f"verify_per_s (a) is the median of {len(self.openssl)} samples of {self.seconds:g} s "
            f"taken between the phases: {low:,.0f} to {high:,.0f}/s; ratios are to the median"
        )
