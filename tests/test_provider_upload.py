"""A provider uploads a CSV: checked against the variables, shared on its machine,
sealed to each node, delivered, and committed on the ledger -- nothing in clear."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import Ledger
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from http_server import running_node_server, running_server, send_raw
from joserfc.jwk import OKPKey
from replication import wait_for

from gateways.cli.main import cli
from gateways.deliveries import HEADER as DELIVERY_HEADER
from gateways.deliveries import delivery_statement
from gateways.sdk import TransactionBuilder
from infra.keyfiles import write_jwk
from infra.settings import Settings
from infra.share_bundles import KEEP_UNCOMMITTED, find_bundle
from mpc.bundles import ShareBundle, commitment, open_sealed, seal
from mpc.field import MERSENNE_127, FixedPoint, PrimeField
from mpc.shamir import Scheme
from projections.base import catch_up

CSV = "subject,sbp,smoker\np-1,120,true\np-2,135.5,false\np-3,,1\n"


@pytest.fixture
def federation(ledger: Ledger, tmp_path: Path) -> Iterator[dict[str, Any]]:
    provider = ledger.admit("dp:clinic", "data_provider")
    nodes = [ledger.admit(f"node:n{i}", "node_operator") for i in range(3)]
    private = {}
    for node in nodes:
        key = X25519PrivateKey.generate()
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "X25519", "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}
        ledger.accept(ledger.sign(node, "node.set_encryption_key", {"jwk": jwk}))
        private[node.principal] = key
    catalog, datasource = str(uuid.uuid4()), str(uuid.uuid4())
    ledger.accept(ledger.sign(provider, "catalog.create", {"catalog_id": catalog, "name": "Clinic"}))
    body = {
        "datasource_id": datasource,
        "catalog_id": catalog,
        "name": "Blood pressure",
        "origin": {"kind": "tabular", "format": "csv"},
        "keys": ["subject"],
        "data_categories": ["dpv-pd:HealthRecord"],
    }
    ledger.accept(ledger.sign(provider, "datasource.create", body))
    for variable in (
        {"name": "sbp", "type": "decimal", "unit": "mm[Hg]", "min": "60", "max": "260"},
        {"name": "smoker", "type": "boolean"},
    ):
        ledger.accept(ledger.sign(provider, "variable.create", {"datasource_id": datasource, **variable}))
    key_file = tmp_path / "provider.jwk"
    write_jwk(key_file, provider.key)
    assert ledger.sequencer.ledger is not None
    key, chain = ledger.sequencer.ledger["checkpoint_key"], ledger.sequencer.ledger["chain"]
    ledger.sequencer.store.close()
    with running_server(ledger.settings) as url, ExitStack() as stack:
        node_urls = {}
        for index, node in enumerate(nodes):
            settings = Settings(data_dir=tmp_path / f"node{index}")
            node_urls[node.principal] = stack.enter_context(
                running_node_server(settings, url, chain, key, name=node.principal)
            )
        yield {
            "url": url,
            "datasource": datasource,
            "nodes": node_urls,
            "private": private,
            "args": ["--url", url, "--datasource", datasource, "--principal", "dp:clinic",
                     "--key", str(key_file),
                     *[a for n, u in node_urls.items() for a in ("--node", f"{n}={u}")]],
            "dirs": {node.principal: tmp_path / f"node{i}" for i, node in enumerate(nodes)},
            "signers": {s.principal: TransactionBuilder(s.principal, s.key, chain)
                        for s in [provider, *nodes]},
        }  # fmt: skip


def _upload(federation: dict[str, Any], tmp_path: Path, text: str) -> Any:
    records = tmp_path / "records.csv"
    records.write_text(text)
    return CliRunner().invoke(cli, ["provider", "upload", str(records), *federation["args"]])


def delivered(node_dir: Path, datasource: str) -> Path:
    """The one bundle a node holds for the datasource (kept under its SHA-256)."""
    (path,) = (node_dir / "bundles" / datasource).glob("*.sealed")
    return path


def test_upload_seals_shares_to_each_node_and_commits_them(
    federation: dict[str, Any], tmp_path: Path
) -> None:
    result = _upload(federation, tmp_path, CSV)
    assert result.exit_code == 0, result.output

    from gateways.graphql.schema import schema  # noqa: F401 - the GraphQL API reads the commitments

    query = json.dumps(
        {"query": "{ datasources { records fixedPointPrecision commitments { node sha256 } } }"}
    )
    request = urllib.request.Request(f"{federation['url']}/graphql", data=query.encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request) as response:
        (source,) = json.loads(response.read())["data"]["datasources"]
    assert source["records"] == 3 and source["fixedPointPrecision"] == 16
    recorded = {c["node"]: c["sha256"] for c in source["commitments"]}
    opened = {}
    for node, directory in federation["dirs"].items():
        sealed = (directory / "bundles" / federation["datasource"] / f"{recorded[node]}.sealed").read_bytes()
        # nothing in clear ("135" alone also occurs, by chance, in the random datasource id
        # the bundle names in clear: about one run in two hundred)
        assert b"p-1" not in sealed and b"135.5" not in sealed
        opened[node] = open_sealed(sealed, federation["private"][node], expected_commitment=recorded[node])
    scheme = Scheme(PrimeField(MERSENNE_127), parties=3, threshold=1)
    fixed = FixedPoint(16)
    n0, n2 = opened["node:n0"], opened["node:n2"]
    sbp = [scheme.reconstruct({1: a, 3: b}) for a, b in zip(n0.ints("sbp"), n2.ints("sbp"), strict=True)]
    present = [
        scheme.reconstruct({1: a, 3: b})
        for a, b in zip(n0.ints("sbp__present"), n2.ints("sbp__present"), strict=True)
    ]
    assert [fixed.decode(v) for v in sbp[:2]] == [120, 135.5] and present == [1, 1, 0]
    assert n0.keys == n2.keys == ("p-1", "p-2", "p-3")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("subject,sbp,smoker\np-1,300,true\n", "line 2: sbp = 300 is outside its allowed range [60, 260]"),
        ("subject,sbp,smoker\np-1,120,maybe\n", "line 2: smoker is a boolean"),
        ("subject,sbp,smoker\np-1,NaN,1\n", "line 2: sbp is a number, not 'NaN'"),
        ("subject,sbp,smoker\np-1,sNaN,1\n", "line 2: sbp is a number, not 'sNaN'"),
        ("subject,sbp,smoker\np-1,Infinity,1\n", "line 2: sbp is a number, not 'Infinity'"),
        ("subject,sbp,smoker\np-1,1_20,1\n", "line 2: sbp is a number, not '1_20'"),
        (
            "subject,sbp,smoker\np-1,\u0661\u0662\u0660,1\n",
            "line 2: sbp is a number, not '\u0661\u0662\u0660'",
        ),
        ("subject,sbp,smoker\np-1,1e-999999999,1\n", "line 2: sbp is a number, not '1e-999999999'"),
        ("subject,sbp,sbp,smoker\np-1,120,130,1\n", "line 1: the header names the column(s) sbp more"),
        ("subject,sbp\np-1,120\n", "lacks the column(s) smoker"),
        ("subject,sbp,smoker\np-1,120,1\np-1,130,0\n", "a subject appears twice"),
        ("subject,sbp,smoker\np-1,120,1\np-2,130\n", "line 3: fewer fields than the header has"),
        ("subject,sbp,smoker\np-1,120,1,9\n", "line 2: more fields than the header has"),
        ("subject,sbp,smoker\np-1," + "9" * 140_000 + ",1\n", "is not a CSV file: field larger than"),
    ],
)
def test_bad_records_stop_the_upload_before_anything_is_sent(
    federation: dict[str, Any], tmp_path: Path, text: str, message: str
) -> None:
    result = _upload(federation, tmp_path, text)
    assert result.exit_code == 1 and message in result.output
    assert not any((d / "bundles").exists() for d in federation["dirs"].values())


def _observation(subject: str, when: str, **parts: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": parts.pop("status", "final"),
        "subject": {"reference": f"Patient/{subject}"},
        "effectiveDateTime": when,
        **parts,
    }
    return {"resource": resource}


def _pressure(value: float, unit: str = "mm[Hg]") -> dict[str, Any]:
    """A blood-pressure panel whose systolic component carries the value."""
    return {
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": unit},
            }
        ],
    }


SMOKER = {"code": {"coding": [{"system": "urn:x-dfg", "code": "smoker"}]}}


def _bundle(tmp_path: Path, entries: list[dict[str, Any]]) -> Path:
    path = tmp_path / "observations.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}))
    return path


def test_a_fhir_bundle_of_observations_is_uploaded_latest_value_per_subject(
    federation: dict[str, Any], tmp_path: Path
) -> None:
    path = _bundle(
        tmp_path,
        [
            _observation("p-1", "2026-01-01T08:00:00Z", **_pressure(150)),
            _observation("p-1", "2026-03-01T08:00:00Z", **_pressure(121.5)),  # the latest counts
            _observation("p-1", "2026-03-01T08:00:00Z", **SMOKER, valueBoolean=True),
            _observation("p-2", "2026-02-01T08:00:00Z", **_pressure(133)),
            _observation("p-2", "2026-04-01T08:00:00Z", **_pressure(259), status="entered-in-error"),
        ],
    )
    result = CliRunner().invoke(
        cli, ["provider", "upload", str(path), *federation["args"], "--code", "sbp=http://loinc.org|8480-6",
              "--code", "smoker=urn:x-dfg|smoker"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    node = "node:n0"
    sealed = delivered(federation["dirs"][node], federation["datasource"]).read_bytes()
    from mpc.bundles import bundle_header, commitment

    assert bundle_header(sealed)["rows"] == 2
    shares = {}
    for name in ("node:n0", "node:n2"):
        sealed = delivered(federation["dirs"][name], federation["datasource"]).read_bytes()
        shares[name] = open_sealed(
            sealed, federation["private"][name], expected_commitment=commitment(sealed)
        )
    assert shares["node:n0"].keys == ("p-1", "p-2")
    scheme, fixed = Scheme(PrimeField(MERSENNE_127), parties=3, threshold=1), FixedPoint(16)

    def column(name: str) -> list[int]:
        pairs = zip(shares["node:n0"].ints(name), shares["node:n2"].ints(name), strict=True)
        return [scheme.field.signed(scheme.reconstruct({1: a, 3: b})) for a, b in pairs]

    assert [fixed.decode(v) for v in column("sbp")] == [Decimal("121.5"), 133]
    assert column("smoker__present") == [1, 0] and column("smoker")[0] == fixed.encode(1)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [_observation("p-1", "2026-01-01T08:00:00Z", **_pressure(120, "kPa"))],
            "sbp is in 'mm[Hg]', not 'kPa'",
        ),
        ([_observation("p-1", "2026-01-01T08:00:00Z", **_pressure(400))], "sbp = 400 is outside"),
        (
            [{"resource": {**_observation("p-1", "x", **_pressure(120))["resource"], "subject": None}}],
            "valid FHIR",
        ),
        ([], "no Observation of the datasource's variables"),
        (
            [
                {
                    "resource": {
                        **_observation("p-1", "2026-01-01T08:00:00Z", **_pressure(120))["resource"],
                        "subject": 5,
                    }
                }
            ],
            "entry.0.resource.subject: ",
        ),
    ],
)
def test_a_bad_fhir_bundle_stops_the_upload_before_anything_is_sent(
    federation: dict[str, Any], tmp_path: Path, entries: list[dict[str, Any]], message: str
) -> None:
    path = _bundle(tmp_path, entries)
    result = CliRunner().invoke(
        cli, ["provider", "upload", str(path), *federation["args"], "--code", "sbp=http://loinc.org|8480-6"]
    )
    assert result.exit_code == 1 and message in result.output, result.output
    assert not any((d / "bundles").exists() for d in federation["dirs"].values())


def test_a_spreadsheets_utf8_csv_with_a_byte_order_mark_is_read(
    federation: dict[str, Any], tmp_path: Path
) -> None:
    records = tmp_path / "records.csv"
    records.write_bytes(CSV.encode("utf-8-sig"))
    result = CliRunner().invoke(cli, ["provider", "upload", str(records), *federation["args"]])
    assert result.exit_code == 0, result.output


def test_a_file_that_is_not_utf8_is_refused_before_anything_is_sent(
    federation: dict[str, Any], tmp_path: Path
) -> None:
    records = tmp_path / "records.csv"
    records.write_bytes(CSV.encode("utf-16"))  # starts with the bytes ff fe
    result = CliRunner().invoke(cli, ["provider", "upload", str(records), *federation["args"]])
    assert result.exit_code == 1, result.output
    assert "is not UTF-8 text (byte 0): save it as UTF-8 CSV" in result.output
    assert not any((d / "bundles").exists() for d in federation["dirs"].values())


def test_a_bundle_file_that_is_not_json_is_named_so(federation: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "observations.json"
    path.write_text("{not json")
    args = ["provider", "upload", str(path), *federation["args"], "--code", "sbp=http://loinc.org|8480-6"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "is not a valid FHIR Bundle: Invalid JSON" in result.output, (
        result.output
    )


def test_a_delivery_signed_with_an_unknown_key_leaves_the_committed_bundle_in_place(
    federation: dict[str, Any], tmp_path: Path
) -> None:
    """A provider delivers its bundles before it signs their commitments. A delivery
    whose commitment the ledger then refused (here: signed with a key the ledger does not
    know) used to replace the committed bundle, and the next analysis failed as if it had
    been tampered with. The node now refuses the delivery itself, and the committed
    bundle stays."""
    assert _upload(federation, tmp_path, CSV).exit_code == 0
    committed = {node: delivered(directory, federation["datasource"]).stem
                 for node, directory in federation["dirs"].items()}  # fmt: skip
    stranger = tmp_path / "stranger.jwk"
    write_jwk(stranger, OKPKey.generate_key("Ed25519"))
    args = list(federation["args"])
    args[args.index("--key") + 1] = str(stranger)
    records = tmp_path / "other.csv"
    records.write_text("subject,sbp,smoker\np-9,150,0\n")
    refused = CliRunner().invoke(cli, ["provider", "upload", str(records), *args])
    assert refused.exit_code == 1, refused.output
    assert "refused the bundle (unknown_key): dp:clinic#" in refused.output
    for node, directory in federation["dirs"].items():
        path = find_bundle(directory / "bundles", federation["datasource"], committed[node])
        assert path is not None
        opened = open_sealed(
            path.read_bytes(), federation["private"][node], expected_commitment=committed[node]
        )
        assert opened.keys == ("p-1", "p-2", "p-3")


def _junk(federation: dict[str, Any], node: str, datasource: str, subject: str) -> bytes:
    """A well-formed bundle sealed to the node's public key, as anyone could make."""
    bundle = ShareBundle(datasource_id=datasource, node=node, keys=(subject,), columns={"sbp": [1]})
    return seal(bundle, federation["private"][node].public_key())


def _post(url: str, body: bytes, statement: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/octet-stream"}
    if statement is not None:
        headers[DELIVERY_HEADER] = statement
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _caught_up(federation: dict[str, Any], node: str) -> bool:
    def size(url: str) -> int:
        with urllib.request.urlopen(f"{url}/healthz") as response:
            return int(json.loads(response.read())["size"])

    return size(federation["nodes"][node]) >= size(federation["url"])


def test_only_the_datasource_owner_delivers_and_the_committed_bundle_stays(
    federation: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inbox used to take bundles from anyone who knew the node's public key, under
    one name per datasource: junk displaced the bundle the ledger names. Deliveries now
    carry the owner's signed statement, and the owner's own extra deliveries are kept
    only a few deep, never the committed one, even while the node's views are behind
    its replica (they named no commitment yet, and the committed bundle was pruned)."""
    from gateways.http import node_app
    from infra import node as node_module

    def catch_up_late(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)
        return catch_up(*args, **kwargs)

    monkeypatch.setattr(node_module, "catch_up", catch_up_late)
    assert _upload(federation, tmp_path, CSV).exit_code == 0
    node, datasource = "node:n0", federation["datasource"]
    directory, inbox = federation["dirs"][node], f"{federation['nodes'][node]}/v1/bundles/{datasource}"
    committed = delivered(directory, datasource).stem
    owner, other = federation["signers"]["dp:clinic"], federation["signers"]["node:n1"]
    junk = _junk(federation, node, datasource, "x")

    def statement(signer: TransactionBuilder, body: bytes, **changes: Any) -> str:
        fields = {"datasource_id": datasource, "node": node, "digest": commitment(body), "now": time.time()}
        return delivery_statement(signer, **{**fields, **changes})

    refusals = {
        "delivery_unsigned": None,
        "invalid_delivery": "not.a.jws",
        "not_the_owner": statement(other, junk),
        "delivery_mismatch": statement(owner, junk, digest=committed),
        "delivery_expired": statement(owner, junk, now=time.time() - 3600),
    }
    for code, header in refusals.items():
        status, answer = _post(inbox, junk, header)
        assert status in (400, 401, 403) and answer["code"] == code, (code, answer)
    status, answer = _post(inbox, b"garbage", statement(owner, b"garbage"))  # the owner's, but no bundle
    assert status == 400 and answer["code"] == "invalid_bundle"
    assert [p.stem for p in (directory / "bundles" / datasource).glob("*.sealed")] == [committed]

    wait_for(lambda: _caught_up(federation, node), what="the node's replica (not its views) to hold it")
    for index in range(KEEP_UNCOMMITTED + 3):
        body = _junk(federation, node, datasource, f"x-{index}")
        status, answer = _post(inbox, body, statement(owner, body))
        assert status == 201, answer
    kept = {p.stem for p in (directory / "bundles" / datasource).glob("*.sealed")}
    assert committed in kept and len(kept) == 1 + KEEP_UNCOMMITTED

    monkeypatch.setattr(node_app, "REPLICA_WAIT_S", 0.3)
    unknown = str(uuid.uuid4())
    body = _junk(federation, node, unknown, "x")
    status, answer = _post(f"{federation['nodes'][node]}/v1/bundles/{unknown}", body, None)
    assert status == 404 and answer["code"] == "unknown_datasource"
    assert not (directory / "bundles" / unknown).exists()


def test_a_delivery_whose_body_does_not_all_arrive_is_answered_408_and_its_connection_closed(
    federation: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner's statement passed, a delivery's body was read without a time-out: a
    client that sent part of it held the connection and its handler for good."""
    from gateways.http import api as api_module

    monkeypatch.setattr(api_module, "BODY_TIMEOUT_S", 0.5)
    node, datasource = "node:n0", federation["datasource"]
    wait_for(lambda: _caught_up(federation, node), what="the node's replica to hold the datasource")
    body = _junk(federation, node, datasource, "x")
    owner = federation["signers"]["dp:clinic"]
    statement = delivery_statement(
        owner, datasource_id=datasource, node=node, digest=commitment(body), now=time.time()
    )
    head, rest = send_raw(
        federation["nodes"][node],
        f"POST /v1/bundles/{datasource} HTTP/1.1\r\nHost: x\r\n{DELIVERY_HEADER}: {statement}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[: len(body) // 2],
    )
    assert head.startswith(b"HTTP/1.1 408"), head
    assert json.loads(rest)["code"] == "body_timeout"


@pytest.mark.parametrize("x", ["é" * 43, "A" * 42 + "ß"])
def test_a_node_key_the_ledger_recorded_but_no_one_can_seal_to_is_named(x: str) -> None:
    """The ledger's check of node.set_encryption_key lets other scripts' letters through
    (str.isalnum): the upload crashed in base64 with a bare ValueError."""
    from gateways.provider_upload import UploadError, node_key

    class Ledger:
        def principal(self, principal_id: str) -> dict[str, Any]:
            return {"encryption_key": {"kty": "OKP", "crv": "X25519", "x": x}}

    with pytest.raises(UploadError, match="node:a's registered encryption key is not a usable X25519 key"):
        node_key(Ledger(), "node:a")  # type: ignore[arg-type]


def test_a_nodes_graphql_takes_no_larger_body_than_the_coordinators_while_bundles_may_be_larger(
    federation: dict[str, Any],
) -> None:
    """The node's whole server took bodies of up to 512 MB, the share bundles' limit:
    anyone, with no key, could post a GraphQL request that large (a 60 MB one grew the
    node's memory by 180 MB for good), where the coordinator answers 413 past 16 MB.
    Only the owner's signed deliveries may be that large."""
    from gateways.http.app import MAX_BODY

    node, datasource = "node:n0", federation["datasource"]
    url = federation["nodes"][node]
    padded = b'{"query": "{ __typename }", "pad": "' + b"x" * MAX_BODY + b'"}'
    request = urllib.request.Request(
        f"{url}/graphql", data=padded, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30)
    assert raised.value.code == 413 and json.loads(raised.value.read())["code"] == "too_large"

    wait_for(lambda: _caught_up(federation, node), what="the node's replica to hold the datasource")
    large = b"x" * (MAX_BODY + 1)  # no bundle, but read: refused for what it is, not for its size
    owner = federation["signers"]["dp:clinic"]
    signed = delivery_statement(
        owner, datasource_id=datasource, node=node, digest=commitment(large), now=time.time()
    )
    status, answer = _post(f"{url}/v1/bundles/{datasource}", large, signed)
    assert status == 400 and answer["code"] == "invalid_bundle", answer


def test_a_node_named_twice_is_refused_saying_so() -> None:
    """--node node:b=URL1 --node node:b=URL2 kept the last URL: an upload to three --node
    options was refused as "shares go to at least three nodes", and dfg analyst results
    asked for a --node it had been given."""
    from gateways.provider_upload import UploadError, parse_nodes

    given = ["node:a=http://a:1", "node:b=http://b:1", "node:b=http://c:1"]
    with pytest.raises(UploadError, match=r"^--node node:b is given twice"):
        parse_nodes(given)
