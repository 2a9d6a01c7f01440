"""Result shares: what each computation node hands the analyst for one finished task.

A node never opens a result. It holds Shamir shares of each function's aggregates
(``mpc.statistics.Output``); it commits to them on the ledger (``task.finish`` carries
the SHA-256 of the canonical plaintext below) and seals them to the analyst's X25519
key (``results.request_access``). The analyst decrypts every node's shares, checks each
against that node's commitment on the ledger, reconstructs each aggregate with the
redundant share checking the others, and finishes the statistics.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from mpc import sealing
from mpc.field import FixedPoint, PrimeField
from mpc.shamir import Scheme, SharingError
from mpc.statistics import Output, finish

FORMAT: Final = "dfg-result-shares/1"
_LABEL: Final = b"dfg result shares v1"


class ResultError(ValueError):
    """Result shares that cannot be opened, do not match the ledger, or disagree."""


@dataclass(frozen=True)
class ResultShares:
    """One node's shares of one task's outputs, with the public layout of each."""

    analysis_id: str
    task_id: int
    calculation_id: str
    node: str
    party: int  # this node's Shamir point (1..n, the analysis' node order)
    parties: int
    modulus: int
    precision: int
    outputs: tuple[dict[str, Any], ...]  # Output.public() of each function
    shares: tuple[int, ...]  # the concatenated quantities of every output

    @classmethod
    def of(
        cls,
        *,
        analysis_id: str,
        task_id: int,
        calculation_id: str,
        node: str,
        party: int,
        parties: int,
        modulus: int,
        precision: int,
        outputs: Sequence[Output],
    ) -> ResultShares:
        return cls(
            analysis_id, task_id, calculation_id, node, party, parties, modulus, precision,
            tuple(o.public() for o in outputs), tuple(q for o in outputs for q in o.quantities),
        )  # fmt: skip

    def plaintext(self) -> bytes:
        body = {
            "format": FORMAT,
            "analysis": self.analysis_id,
            "task": self.task_id,
            "calculation": self.calculation_id,
            "node": self.node,
            "party": self.party,
            "parties": self.parties,
            "modulus": str(self.modulus),
            "precision": self.precision,
            "outputs": list(self.outputs),
            "shares": [str(s) for s in self.shares],
        }
        return sealing.canonical(body)

    def commitment(self) -> str:
        """What the node signs in ``task.finish``."""
        return hashlib.sha256(self.plaintext()).hexdigest()

    @classmethod
    def from_plaintext(cls, plaintext: bytes) -> ResultShares:
        try:
            body = json.loads(plaintext)
            if body.get("format") != FORMAT:
                raise ResultError(f"not {FORMAT}")
            return cls(
                str(body["analysis"]), int(body["task"]), str(body["calculation"]), str(body["node"]),
                int(body["party"]), int(body["parties"]), int(body["modulus"]), int(body["precision"]),
                tuple(body["outputs"]), tuple(int(s) for s in body["shares"]),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ResultError(f"malformed result shares: {exc}") from exc


def seal_result(result: ResultShares, analyst: X25519PublicKey) -> bytes:
    header = {
        "format": FORMAT,
        "analysis": result.analysis_id,
        "task": result.task_id,
        "node": result.node,
    }
    return sealing.seal(result.plaintext(), header, analyst, label=_LABEL)


def open_result(sealed: bytes, analyst: X25519PrivateKey, *, expected_commitment: str) -> ResultShares:
    """Decrypt one node's result shares and check them against its ledger commitment."""
    try:
        header, plaintext = sealing.open_box(sealed, analyst, label=_LABEL, expected_format=FORMAT)
    except sealing.SealError as exc:
        raise ResultError(str(exc)) from exc
    if not hmac.compare_digest(hashlib.sha256(plaintext).hexdigest(), expected_commitment):
        raise ResultError(
            f"{header.get('node')}'s result shares for task {header.get('task')} do not match the"
            " commitment it signed on the ledger"
        )
    result = ResultShares.from_plaintext(plaintext)
    if (result.analysis_id, result.task_id, result.node) != (
        header["analysis"],
        header["task"],
        header["node"],
    ):
        raise ResultError("the sealed header and the result shares disagree")
    return result


def reconstruct(results: Sequence[ResultShares]) -> list[dict[str, Any]]:
    """The task's finished results from every node's shares. The nodes must agree on
    the layout, and every aggregate is opened with every share checked, so a node that
    hands over a wrong share is detected, never believed."""
    if not results:
        raise ResultError("no result shares")
    first = results[0]
    for other in results[1:]:
        same = (other.analysis_id, other.task_id, other.modulus, other.precision, other.outputs)
        if same != (first.analysis_id, first.task_id, first.modulus, first.precision, first.outputs):
            raise ResultError(f"{other.node} and {first.node} disagree on task {first.task_id}'s outputs")
        if len(other.shares) != len(first.shares):
            raise ResultError(
                f"{other.node} sent {len(other.shares)} shares, {first.node} {len(first.shares)}"
            )
    parties = {r.party for r in results}
    if len(parties) != len(results):
        raise ResultError("two result files claim the same share point")
    field = PrimeField(first.modulus)
    scheme = Scheme(field, first.parties, (first.parties - 1) // 2)
    values: list[int] = []
    for index in range(len(first.shares)):
        try:
            value = scheme.open_checked({r.party: r.shares[index] for r in results})
        except SharingError as exc:
            raise ResultError(f"task {first.task_id}, aggregate {index}: {exc}") from exc
        values.append(field.signed(value))
    fixed = FixedPoint(first.precision)
    finished = []
    position = 0
    for output in first.outputs:
        count = _quantities(output)
        finished.append(finish(output, values[position : position + count], fixed))
        position += count
    if position != len(values):
        raise ResultError("the shares do not match the outputs' layout")
    return finished


def _quantities(output: Mapping[str, Any]) -> int:
    if output.get("suppressed"):
        return 0
    if output["kind"] == "histogram":
        return sum(1 for ok in output["layout"]["shown"] if ok)
    if output["kind"] == "extreme" or output["name"] == "count":
        return 1
    k = int(output["layout"]["variables"])
    return 1 + k + k * (k + 1) // 2
