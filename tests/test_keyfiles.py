"""Key files: private where they are written, and a clear error when they are not keys."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from joserfc.jwk import OKPKey

from gateways.cli.main import cli
from gateways.sdk import TransactionBuilder
from infra.keyfiles import KeyFileError, read_jwk, write_jwk, write_secret


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_key_is_0600_in_new_0700_folders_and_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    write_secret(shared / "node.jwk", "{}")
    assert _mode(shared) == 0o1777 and _mode(shared / "node.jwk") == 0o600
    write_jwk(shared / "a" / "b" / "node.jwk", OKPKey.generate_key("Ed25519"))
    assert _mode(shared / "a") == _mode(shared / "a" / "b") == 0o700
    assert isinstance(read_jwk(shared / "a" / "b" / "node.jwk"), OKPKey)


@pytest.mark.parametrize(
    "content",
    ["not json", "[1]", '{"kty": "RSA"}', '{"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "d": "!"}', "\xff"],
    ids=["not-json", "a-list", "rsa", "bad-material", "not-text"],
)
def test_a_file_that_is_not_a_key_is_named(tmp_path: Path, content: str) -> None:
    path = tmp_path / "key.jwk"
    write_secret(path, content)
    with pytest.raises(KeyFileError, match="is not an Ed25519 or secp256k1 private JWK"):
        read_jwk(path)


def test_a_public_key_is_not_taken_for_the_private_one(tmp_path: Path) -> None:
    """The public half (what the operator was sent) imported without complaint, and the
    first signature failed: a joserfc traceback from `dfg principals --key`, and an SDK
    builder that had already taken its nonce."""
    key = OKPKey.generate_key("Ed25519")
    path = tmp_path / "provider.pub.json"
    write_secret(path, json.dumps(key.as_dict(private=False)))
    with pytest.raises(KeyFileError, match="holds a public key only"):
        read_jwk(path)
    with pytest.raises(KeyFileError, match="holds a public key only"):
        TransactionBuilder.from_key_file(path, "sp:app", "dfg-test")
    data = tmp_path / "ledger"
    assert CliRunner().invoke(cli, ["init", "--data", str(data)]).exit_code == 0
    added = CliRunner().invoke(
        cli,
        [
            "principals",
            "add-key",
            "op:federation",
            "--jwk",
            str(path),
            "--key",
            str(path),
            "--data",
            str(data),
        ],
    )
    assert added.exit_code == 1 and isinstance(added.exception, SystemExit), added.exception  # no traceback
    assert "holds a public key only" in added.output
