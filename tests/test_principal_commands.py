"""``dfg principals``: the operator admits, grants and manages keys from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from http_server import running_server
from joserfc.jwk import OKPKey

from gateways.cli.main import cli
from infra.bootstrap import open_store
from infra.settings import Settings
from ledger.signing import kid_of, public_jwk


def dfg(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=stdin)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    directory = tmp_path / "ledger"
    result = dfg("init", "--data", str(directory))
    assert result.exit_code == 0, result.output
    return directory


def size_of(directory: Path) -> int:
    store = open_store(Settings(data_dir=directory), read_only=True)
    try:
        return store.head()[0]
    finally:
        store.close()


def keygen(tmp_path: Path, name: str) -> tuple[Path, dict[str, str]]:
    """What a node operator sends the federation's operator: `dfg node keygen`'s output."""
    printed = dfg("node", "keygen", "--out", str(tmp_path / f"{name}.jwk"), "--name", name)
    assert printed.exit_code == 0, printed.output
    out = tmp_path / f"{name}.json"
    out.write_text(printed.output)
    return out, json.loads(printed.output)["jwk"]


def public_key_file(path: Path) -> tuple[Path, OKPKey]:
    key = OKPKey.generate_key("Ed25519")
    path.write_text(json.dumps(public_jwk(key).as_dict()))
    return path, key


def test_the_operator_admits_a_node_grants_a_role_and_manages_its_keys(data: Path, tmp_path: Path) -> None:
    keygen_output, jwk = keygen(tmp_path, "node:alpha")
    admitted = dfg(
        "principals",
        "admit",
        "node:alpha",
        "--kind",
        "node_operator",
        "--jwk",
        str(keygen_output),
        "--display-name",
        "Alpha",
        "--data",
        str(data),
    )
    assert admitted.exit_code == 0, admitted.output
    assert admitted.output.strip() == "admitted node:alpha (node_operator) in entry 2"

    granted = dfg("principals", "grant-role", "node:alpha", "auditor", "--data", str(data), "--json")
    assert granted.exit_code == 0, granted.output
    assert json.loads(granted.output)["seq"] == 3

    old_kid = kid_of("node:alpha", OKPKey.import_key(jwk))
    new_file, _ = public_key_file(tmp_path / "new.json")
    rotated = dfg(
        "principals",
        "rotate-key",
        "node:alpha",
        "--old-kid",
        old_kid,
        "--jwk",
        str(new_file),
        "--data",
        str(data),
    )
    assert rotated.exit_code == 0, rotated.output
    spare_file, _ = public_key_file(tmp_path / "spare.json")
    added = dfg(
        "principals", "add-key", "node:alpha", "--jwk", "-", "--data", str(data), stdin=spare_file.read_text()
    )
    assert added.exit_code == 0, added.output

    shown = dfg("principals", "show", "node:alpha", "--data", str(data))
    assert shown.exit_code == 0, shown.output
    principal = json.loads(shown.output)
    assert set(principal["roles"]) == {"auditor", "node_operator"}
    assert principal["display_name"] == "Alpha"
    keys = {k["kid"]: k for k in principal["keys"]}
    assert keys[old_kid]["revoked_reason"] == "superseded"
    assert len(keys) == 3 and sum(k["revoked_seq"] is None for k in keys.values()) == 2

    spare_kid = next(kid for kid, k in keys.items() if k["added_seq"] == 5)
    revoked = dfg(
        "principals",
        "revoke-key",
        "node:alpha",
        "--kid",
        spare_kid,
        "--reason",
        "compromised",
        "--data",
        str(data),
    )
    assert revoked.exit_code == 0, revoked.output
    assert size_of(data) == 6
    audited = dfg("audit", "verify", "--data", str(data))
    assert audited.exit_code == 0, audited.output


def test_a_key_s_validity_is_given_in_utc_with_z_or_with_an_offset(data: Path, tmp_path: Path) -> None:
    """``--not-before 2026-01-01T00:00:00Z``, the first form the help names, was read as a
    time without a zone and the transaction refused ("not_after: Input should have
    timezone info")."""
    keygen_output, _ = keygen(tmp_path, "node:alpha")
    admit = ["principals", "admit", "node:alpha", "--kind", "node_operator", "--jwk", str(keygen_output)]
    admitted = dfg(*admit, "--data", str(data))
    assert admitted.exit_code == 0, admitted.output
    for name, times in (
        ("z.json", ("2026-01-01T00:00:00Z", "2030-01-01T00:00:00Z")),
        ("offset.json", ("2026-01-01T01:00:00+01:00", "2030-01-01T01:00:00+01:00")),
    ):
        key_file, key = public_key_file(tmp_path / name)
        added = dfg(
            "principals",
            "add-key",
            "node:alpha",
            "--jwk",
            str(key_file),
            "--not-before",
            times[0],
            "--not-after",
            times[1],
            "--data",
            str(data),
        )
        assert added.exit_code == 0, added.output
        shown = json.loads(dfg("principals", "show", "node:alpha", "--data", str(data)).output)
        (found,) = [k for k in shown["keys"] if k["kid"] == kid_of("node:alpha", key)]
        assert (found["not_before"], found["not_after"]) == ("2026-01-01T00:00:00Z", "2030-01-01T00:00:00Z")


def test_what_the_ledger_refuses_is_named_and_nothing_is_appended(data: Path, tmp_path: Path) -> None:
    keygen_output, _ = keygen(tmp_path, "node:alpha")
    admit = ["principals", "admit", "node:alpha", "--kind", "node_operator", "--jwk", str(keygen_output)]
    assert dfg(*admit, "--data", str(data)).exit_code == 0
    before = size_of(data)

    again = dfg(*admit, "--data", str(data))
    assert again.exit_code == 1
    assert "refused (principal_exists)" in again.output

    stranger_file = tmp_path / "stranger.jwk"
    stranger_file.write_text(json.dumps(OKPKey.generate_key("Ed25519").as_dict(private=True)))
    stranger_file.chmod(0o600)
    wrong_key = dfg(
        "principals", "grant-role", "node:alpha", "auditor", "--key", str(stranger_file), "--data", str(data)
    )
    assert wrong_key.exit_code == 1
    assert "refused (unknown_key)" in wrong_key.output

    unknown = dfg("principals", "revoke-key", "node:alpha", "--kid", "node:alpha#nope", "--data", str(data))
    assert unknown.exit_code == 1 and "refused (" in unknown.output
    assert size_of(data) == before


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("not json", "not a JSON file"),
        ("[1, 2]", "not a JWK"),
        ('{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}', "not a public key the ledger accepts"),
        ("PRIVATE", "holds a private key"),
    ],
)
def test_a_jwk_file_that_is_not_a_public_key_is_refused_before_signing(
    data: Path, tmp_path: Path, content: str, expected: str
) -> None:
    if content == "PRIVATE":
        content = json.dumps(OKPKey.generate_key("Ed25519").as_dict(private=True))
    jwk = tmp_path / "key.json"
    jwk.write_text(content)
    result = dfg(
        "principals", "admit", "node:alpha", "--kind", "node_operator", "--jwk", str(jwk), "--data", str(data)
    )
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert size_of(data) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["admit", "alpha", "--kind", "node_operator"], "is not a principal id"),
        (["admit", "node:alpha", "--kind", "wizard"], "'wizard' is not one of"),
        (["grant-role", "node:alpha", "wizard"], "'wizard' is not one of"),
        (["admit", "citizen:x", "--kind", "citizen", "--display-name", "Ann"], "no display_name"),
        (["add-key", "node:alpha"], "Missing option '--jwk'"),
    ],
)
def test_bad_arguments_are_refused_with_exit_status_2(data: Path, args: list[str], expected: str) -> None:
    result = dfg("principals", *args, "--data", str(data))
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert size_of(data) == 1


def test_a_ledger_held_by_a_server_is_written_through_its_api(data: Path, tmp_path: Path) -> None:
    """While dfg serve holds the ledger, appending from --data is refused with the way
    out; through --api the same command works, and show answers from the server."""
    key_file, _ = public_key_file(tmp_path / "sp.json")
    admit = ["principals", "admit", "sp:clinic", "--kind", "service_provider", "--jwk", str(key_file)]
    with running_server(Settings(data_dir=data)) as url:
        busy = dfg(*admit, "--data", str(data))
        assert busy.exit_code == 1
        assert "submit through it with --api URL" in busy.output
        through = dfg(*admit, "--data", str(data), "--api", url, "--json")
        assert through.exit_code == 0, through.output
        seq = json.loads(through.output)["seq"]
        shown = dfg("principals", "show", "sp:clinic", "--api", url)
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output)["admitted_seq"] == seq
        missing = dfg("principals", "show", "sp:nobody", "--api", url)
        assert missing.exit_code == 1 and "is not admitted" in missing.output
        again = dfg(*admit, "--data", str(data), "--api", url)
        assert again.exit_code == 1 and "refused (principal_exists)" in again.output
        elsewhere = dfg(*admit, "--api", url, "--data", str(tmp_path / "none"))
        assert elsewhere.exit_code == 2 and "give --signer" in elsewhere.output
    assert size_of(data) == seq


def test_a_node_operator_records_its_encryption_key_and_policy(data: Path, tmp_path: Path) -> None:
    """What `dfg node keygen --encryption-out` prepares, recorded with the node's own
    key through the ledger's server: providers seal to the X25519 key, and the node's
    engine approves results under the policy."""
    printed = dfg(
        "node",
        "keygen",
        "--out",
        str(tmp_path / "node.jwk"),
        "--name",
        "node:a",
        "--encryption-out",
        str(tmp_path / "x25519.jwk"),
    )
    assert printed.exit_code == 0, printed.output
    (tmp_path / "node-a.json").write_text(printed.output)
    node = ["--name", "node:a", "--key", str(tmp_path / "node.jwk")]
    with running_server(Settings(data_dir=data)) as url:
        early = dfg("node", "set-policy", "--coordinator", url, *node)
        assert early.exit_code == 1 and "refused (unknown_signer)" in early.output, early.output
        admit = [
            "principals",
            "admit",
            "node:a",
            "--kind",
            "node_operator",
            "--jwk",
            str(tmp_path / "node-a.json"),
        ]
        assert dfg(*admit, "--data", str(data), "--api", url).exit_code == 0
        wrong_file = dfg(
            "node",
            "set-encryption-key",
            "--coordinator",
            url,
            *node,
            "--encryption-key",
            str(tmp_path / "node.jwk"),
        )
        assert wrong_file.exit_code == 1 and "is not a private X25519 key" in wrong_file.output
        # the two files swapped: said of --key, not "not a valid transaction: crv: ..."
        swapped = ["--name", "node:a", "--key", str(tmp_path / "x25519.jwk")]
        for command in (
            ["set-encryption-key", "--encryption-key", str(tmp_path / "x25519.jwk")],
            ["set-policy"],
        ):
            refused = dfg("node", command[0], "--coordinator", url, *swapped, *command[1:])
            assert refused.exit_code == 1 and "--key: " in refused.output, refused.output
            assert "is not a private Ed25519 key" in refused.output, refused.output
        recorded = dfg(
            "node",
            "set-encryption-key",
            "--coordinator",
            url,
            *node,
            "--encryption-key",
            str(tmp_path / "x25519.jwk"),
        )
        assert recorded.exit_code == 0, recorded.output
        policy = dfg(
            "node",
            "set-policy",
            "--coordinator",
            url,
            *node,
            "--min-cell",
            "5",
            "--release-extremes",
            "--approval",
            "automatic",
        )
        assert policy.exit_code == 0, policy.output
        out_of_range = dfg("node", "set-policy", "--coordinator", url, *node, "--min-cell", "0")
        assert out_of_range.exit_code == 2
        shown = json.loads(dfg("principals", "show", "node:a", "--api", url).output)
    assert shown["encryption_key"]["x"] == json.loads(printed.output)["encryption_jwk"]["x"]
    assert shown["policy"] == {"min_cell": 5, "release_extremes": True, "approval": "automatic"}
