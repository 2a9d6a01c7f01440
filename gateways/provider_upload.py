"""A data provider's upload: read records, check them against the datasource's
variables, secret-share them on the provider's machine, seal each node's shares to
that node's key, deliver them, and record the commitments on the ledger.

No value leaves the provider's machine in clear: nodes get sealed shares and the
subjects' pseudonyms (which consents already name on the ledger: each node checks
consent in its own replica, and joins datasets, by them); the ledger gets one SHA-256
per node's bundle, the row count and the encoding precision. A value that does not fit its variable stops the
upload before anything is sent, naming the row and the column.

Missing values are shared too: each variable ``v`` comes with ``v__present`` (1 or
0), so a node can skip a missing value inside the computation without learning which
rows miss it.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from gateways.deliveries import HEADER as DELIVERY_HEADER
from gateways.deliveries import delivery_statement
from gateways.sdk import ConsentClient, DfgApiError, TransactionBuilder
from mpc.bundles import ShareBundle, commitment, seal
from mpc.field import MERSENNE_127, FixedPoint, PrimeField
from mpc.shamir import Scheme

PRESENT = "__present"
#: A number as a CSV cell writes it: Python's Decimal would also read NaN, Infinity,
#: 1_000 and other scripts' digits, which no spreadsheet means and which the range check
#: cannot compare; an exponent of a few digits, since encoding 1e-999999999 as a fixed-point
#: number would compute 10^999999999 (the upload hung).
_NUMBER: Final = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,4})?", re.ASCII)


class UploadError(ValueError):
    """The records or the federation's setup do not allow an upload; nothing was sent."""


@dataclass
class UploadTimings:
    """Seconds spent sharing (on the provider's machine) and sealing + delivering +
    committing, summed over uploads (for ``dfg bench mpc``)."""

    sharing_s: float = 0.0
    upload_s: float = 0.0


@dataclass(frozen=True)
class Variable:
    name: str
    type: str
    low: Decimal | None
    high: Decimal | None
    categories: tuple[str, ...]
    unit: str = ""

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> Variable:
        low, high = spec.get("min"), spec.get("max")
        return cls(
            spec["name"],
            spec["type"],
            Decimal(low) if low is not None else None,
            Decimal(high) if high is not None else None,
            tuple(spec.get("categories") or ()),
            spec.get("unit") or "",
        )

    def value(self, text: str, where: str) -> Decimal | None:
        """The number a cell stands for (None when empty); refused when it does not fit."""
        text = text.strip()
        if not text:
            return None
        if self.type == "boolean":
            if text.lower() not in ("0", "1", "true", "false"):
                raise UploadError(f"{where}: {self.name} is a boolean (0/1/true/false), not {text!r}")
            return Decimal(1 if text.lower() in ("1", "true") else 0)
        if self.type == "category":
            if text not in self.categories:
                raise UploadError(
                    f"{where}: {text!r} is not a category of {self.name} ({', '.join(self.categories)})"
                )
            return Decimal(self.categories.index(text))
        if not _NUMBER.fullmatch(text):
            raise UploadError(f"{where}: {self.name} is a number, not {text!r}")
        number = Decimal(text)
        if self.type == "integer" and number != number.to_integral_value():
            raise UploadError(f"{where}: {self.name} is an integer, not {text}")
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            raise UploadError(
                f"{where}: {self.name} = {text} is outside its allowed range [{self.low}, {self.high}]"
            )
        return number


def _refuse_repeated_columns(header: Sequence[str]) -> None:
    """``DictReader`` keeps the last of two columns of one name: which value is uploaded
    would depend on the column order, unnoticed."""
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise UploadError(f"line 1: the header names the column(s) {', '.join(repeated)} more than once")


def read_csv(path: Path) -> list[dict[str, str]]:
    """The file's records, each with exactly the header's fields: a row with fewer or
    more is refused by its line (``DictReader`` would fill the gap with "missing" or
    drop the surplus, and a shifted row would be uploaded as someone's values)."""
    rows: list[dict[str, str]] = []
    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark, which
        # would otherwise be part of the first column's name
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            _refuse_repeated_columns(reader.fieldnames or [])
            for row in reader:
                if None in row:
                    raise UploadError(f"line {reader.line_num}: more fields than the header has")
                if any(value is None for value in row.values()):
                    raise UploadError(f"line {reader.line_num}: fewer fields than the header has")
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise UploadError(f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8 CSV") from exc
    except csv.Error as exc:
        raise UploadError(f"{path} is not a CSV file: {exc}") from exc
    return rows


def columns_of(
    rows: Sequence[Mapping[str, str]], key_column: str, variables: Sequence[Variable], fixed: FixedPoint
) -> tuple[list[str], dict[str, list[int]]]:
    """(pseudonyms, encoded columns with presence flags), checking every cell."""
    if not rows:
        raise UploadError("the file has no records")
    missing = [c for c in [key_column, *(v.name for v in variables)] if c not in rows[0]]
    if missing:
        raise UploadError(f"the file lacks the column(s) {', '.join(missing)}")
    pseudonyms: list[str] = []
    columns: dict[str, list[int]] = {name: [] for v in variables for name in (v.name, v.name + PRESENT)}
    for number, row in enumerate(rows, start=2):  # the header is line 1
        subject = (row.get(key_column) or "").strip()
        if not subject:
            raise UploadError(f"line {number}: no {key_column}")
        pseudonyms.append(subject)
        for variable in variables:
            value = variable.value(row.get(variable.name) or "", f"line {number}")
            columns[variable.name].append(fixed.encode(value) if value is not None else 0)
            columns[variable.name + PRESENT].append(0 if value is None else 1)
    if len(set(pseudonyms)) != len(pseudonyms):
        raise UploadError("a subject appears twice: the merge rules refuse repeated subjects")
    return pseudonyms, columns


def node_key(client: ConsentClient, node: str) -> X25519PublicKey:
    try:
        found = client.principal(node)
    except Exception as exc:
        raise UploadError(f"{node} is not a principal of this ledger: {exc}") from exc
    jwk = found.get("encryption_key")
    if not jwk:
        raise UploadError(f"{node} has not registered an encryption key (node.set_encryption_key)")
    try:  # version 1 and 2 rules let letters of other scripts into x: refused here
        raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
        return X25519PublicKey.from_public_bytes(raw)
    except (KeyError, TypeError, ValueError) as exc:  # binascii.Error is a ValueError
        raise UploadError(
            f"{node}'s registered encryption key is not a usable X25519 key ({exc}): its operator"
            " must register one again (node.set_encryption_key)"
        ) from exc


def deliver(url: str, datasource_id: str, sealed: bytes, statement: str) -> None:
    """POST the sealed bundle with the provider's signed statement (``gateways.deliveries``)."""
    request = urllib.request.Request(
        f"{url.rstrip('/')}/v1/bundles/{datasource_id}",
        data=sealed,
        headers={"Content-Type": "application/octet-stream", DELIVERY_HEADER: statement},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise UploadError(f"the node at {url} refused the bundle {_problem_text(exc)}") from exc
    except OSError as exc:
        raise UploadError(f"cannot reach the node at {url}: {exc}") from exc
    if answer.get("sha256") != commitment(sealed):
        raise UploadError(f"the node at {url} stored other bytes than were sent")


def _problem_text(error: urllib.error.HTTPError) -> str:
    """``(code): detail`` from the node's problem document, or its status and body."""
    raw = error.read()
    try:
        problem = json.loads(raw)
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        return f"(HTTP {error.code}): {raw.decode(errors='replace')[:200]}"
    refused = DfgApiError.from_problem(error.code, problem)
    return f"({refused.code}): {refused.detail}"


def upload(
    *,
    client: ConsentClient,
    provider: TransactionBuilder,
    datasource: Mapping[str, Any],
    rows: Sequence[Mapping[str, str]],
    nodes: Mapping[str, str],
    precision: int = 16,
    modulus: int = MERSENNE_127,
    key_column: str | None = None,
    timings: UploadTimings | None = None,
) -> dict[str, str]:
    """Share, seal, deliver and commit; returns the commitment per node. Node i of the
    nodes sorted by principal id gets the shares at point i (what every node assumes)."""
    names = sorted(nodes)
    if len(names) < 3:
        raise UploadError("shares go to at least three nodes (an honest majority needs n >= 2t + 1)")
    scheme = Scheme(PrimeField(modulus), parties=len(names), threshold=(len(names) - 1) // 2)
    fixed = FixedPoint(precision)
    variables = [Variable.of(v) for v in datasource["variables"]]
    pseudonyms, columns = columns_of(rows, key_column or datasource["keys"][0], variables, fixed)
    keys = {node: node_key(client, node) for node in names}  # before anything is sent
    started = time.perf_counter()
    field = scheme.field
    ops = field.vectors
    shared = {
        name: scheme.share_vector(ops.of([field.element(v) for v in values]))
        for name, values in columns.items()
    }
    shared_at = time.perf_counter()
    commitments: dict[str, str] = {}
    sealed_for: dict[str, bytes] = {}
    for index, node in enumerate(names):
        bundle = ShareBundle(
            datasource_id=datasource["datasource_id"],
            node=node,
            keys=tuple(pseudonyms),
            columns={name: per_party[index] for name, per_party in shared.items()},
            party=index + 1,
            modulus=modulus,
            precision=precision,
        )
        sealed_for[node] = seal(bundle, keys[node])
        commitments[node] = commitment(sealed_for[node])
    for node in names:
        statement = delivery_statement(
            provider, datasource["datasource_id"], node, commitments[node], time.time()
        )
        deliver(nodes[node], datasource["datasource_id"], sealed_for[node], statement)
    body = {
        "datasource_id": datasource["datasource_id"],
        "commitments": commitments,
        "records": len(pseudonyms),
        "fixed_point_precision": precision,
    }
    client.submit(provider.sign("datasource.commit_shares", body))
    if timings is not None:
        timings.sharing_s += shared_at - started
        timings.upload_s += time.perf_counter() - shared_at
    return commitments


def parse_nodes(values: Iterable[str]) -> dict[str, str]:
    """``node:a=http://host:port`` pairs."""
    nodes: dict[str, str] = {}
    for value in values:
        name, sep, url = value.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise UploadError(f"--node takes node:name=http://host:port, not {value!r}")
        if name in nodes:  # the last would silently win, and the count of nodes mislead
            raise UploadError(f"--node {name} is given twice ({nodes[name]} and {url})")
        nodes[name] = url
    return nodes


DATASOURCE_QUERY = """
query($id: ID!) { datasource(id: $id) { datasourceId keys
  variables { name type unit min max categories } } }
"""


def fetch_datasource(url: str, datasource_id: str) -> dict[str, Any]:
    """The datasource as the coordinator's GraphQL API describes it."""
    from strawberry.relay import to_base64

    payload = json.dumps(
        {"query": DATASOURCE_QUERY, "variables": {"id": to_base64("Datasource", datasource_id)}}
    )
    request = urllib.request.Request(
        f"{url.rstrip('/')}/graphql", data=payload.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    except OSError as exc:
        raise UploadError(f"cannot reach the coordinator at {url}: {exc}") from exc
    if answer.get("errors"):
        raise UploadError(
            f"the coordinator has no datasource {datasource_id}: {answer['errors'][0]['message']}"
        )
    found = answer["data"]["datasource"]
    return {"datasource_id": found["datasourceId"], "keys": found["keys"], "variables": found["variables"]}
