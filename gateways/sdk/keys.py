"""A provider's signing key: generate once, keep it in a private file, load it to sign.

Key ids name their owner (``<principal>#<RFC 7638 thumbprint>``, see ledger/signing.py),
so the ``kid`` is derived, never chosen: the ledger binds one kid to one key forever.
Files are written with mode 0600 and never overwritten, because silently replacing a
registered key locks the provider out of its own ledger identity.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from joserfc.jwk import ECKey, OKPKey

from domain.jwk import PublicJwk
from infra.keyfiles import KeyFileError, read_jwk
from ledger.signing import kid_of
from ledger.signing import public_jwk as _public_jwk

PrivateKey = OKPKey | ECKey
Algorithm = Literal["EdDSA", "ES256K"]

__all__ = [
    "Algorithm",
    "KeyFileError",
    "PrivateKey",
    "generate_key",
    "kid_for",
    "load_key",
    "public_jwk",
    "save_key",
]


def generate_key(alg: Algorithm = "EdDSA") -> PrivateKey:
    """A fresh key: Ed25519 (``EdDSA``, the default) or secp256k1 (``ES256K``, wallets)."""
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519")
    if alg == "ES256K":
        return ECKey.generate_key("secp256k1")
    raise ValueError(f"unsupported algorithm {alg!r}; use EdDSA or ES256K")


def save_key(path: str | os.PathLike[str], key: PrivateKey) -> Path:
    """Write the private JWK to ``path`` with mode 0600; refuse to overwrite anything.

    Missing parent directories are created with mode 0700; existing ones are left
    as they are (the SDK does not change the permissions of directories it did not make).
    """
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{target} already exists; refusing to overwrite a key") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(key.as_dict(private=True), sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return target


def load_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Read a private JWK file; refused when group or others could read it (as ssh does)."""
    return read_jwk(Path(path))


def public_jwk(key: PrivateKey | Mapping[str, str]) -> dict[str, str]:
    """The public JWK to hand to the operator for ``principal.admit`` (no private members)."""
    if isinstance(key, OKPKey | ECKey):
        return _public_jwk(key).as_dict()
    return PublicJwk.model_validate({k: v for k, v in key.items() if k in {"kty", "crv", "x", "y"}}).as_dict()


def kid_for(principal: str, key: PrivateKey | Mapping[str, str]) -> str:
    """``<principal>#<RFC 7638 thumbprint>``: the kid the ledger expects in the JWS header."""
    if isinstance(key, OKPKey | ECKey):
        return kid_of(principal, key)
    return f"{principal}#{PublicJwk.model_validate(public_jwk(key)).thumbprint()}"
