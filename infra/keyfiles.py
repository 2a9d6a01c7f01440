"""Private keys on disk: one file each, mode 0600, in a 0700 directory.

Keys are written once (O_EXCL, never overwritten) and refused when other users
could read them, as ssh does. Their contents are never logged or printed.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from joserfc.jwk import ECKey, OKPKey


class KeyFileError(Exception):
    pass


def make_private_dirs(directory: Path) -> list[Path]:
    """Create the missing directories as 0700 whatever the umask, and leave existing
    ones as they are: a key written into /tmp or a shared folder must not change who
    may use that folder (the file itself is 0600). Returns those created, outermost
    first."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    created = list(reversed(missing))
    for path in created:
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    return created


def write_secret(path: Path, content: str) -> None:
    make_private_dirs(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:  # a full disk: no half-written key left to block the next attempt
        path.unlink(missing_ok=True)
        raise


def read_secret(path: Path) -> str:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise KeyFileError(f"no key file at {path}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} is readable by other users (mode {oct(mode & 0o777)}); chmod 600 it")
    return path.read_text(encoding="utf-8").strip()


def write_jwk(path: Path, key: OKPKey | ECKey) -> None:
    write_secret(path, json.dumps(key.as_dict(private=True), sort_keys=True) + "\n")


def read_jwk(path: Path) -> OKPKey | ECKey:
    wrong = KeyFileError(f"{path} is not an Ed25519 or secp256k1 private JWK")
    try:
        data = json.loads(read_secret(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise wrong from exc
    if not isinstance(data, dict) or data.get("kty") not in ("OKP", "EC"):
        raise wrong
    if "d" not in data:  # it imports, and fails only when it first signs (a traceback in the CLI)
        raise KeyFileError(f'{path} holds a public key only: give the private JWK (with its "d")')
    try:
        return OKPKey.import_key(data) if data["kty"] == "OKP" else ECKey.import_key(data)
    except Exception as exc:  # joserfc's errors for bad key material vary by key type
        raise wrong from exc
