"""Where a computation node keeps the share bundles providers deliver to it.

Why by content: the node's inbox takes bundles from anyone (a bundle proves nothing
until it matches the commitment its provider signed on the ledger), and a provider
delivers before it commits. Kept under one name per datasource, a delivery whose
commitment the ledger then refused (a wrong key), or anyone's junk sealed to the
node's public key, replaced the committed bundle, and the next analysis failed as if
the data had been tampered with. Kept under its SHA-256 (the commitment itself), the
committed bundle stays whatever else arrives, and the engine opens exactly the one the
ledger names.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from mpc.bundles import commitment

#: Bundles kept per datasource besides the committed one: the newest deliveries, one
#: of which a provider is about to commit.
KEEP_UNCOMMITTED = 2
_DIGEST = re.compile(r"[0-9a-f]{64}")
_SUFFIX = ".sealed"


def bundle_path(root: Path, datasource_id: str, digest: str) -> Path:
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"{digest!r} is not a bundle's SHA-256 (64 lower-case hex digits)")
    return root / datasource_id / f"{digest}{_SUFFIX}"


def keep_bundle(root: Path, datasource_id: str, sealed: bytes) -> str:
    """Store ``sealed`` under its commitment, atomically; return the commitment."""
    digest = commitment(sealed)
    target = bundle_path(root, datasource_id, digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".partial")
    temporary.write_bytes(sealed)
    os.replace(temporary, target)  # a crash leaves the bundle whole or absent
    return digest


def prune_bundles(root: Path, datasource_id: str, committed: str | None) -> list[str]:
    """Delete all but the committed bundle and the ``KEEP_UNCOMMITTED`` newest others;
    return the commitments deleted."""
    directory = root / datasource_id
    others = sorted(
        (p for p in directory.glob(f"*{_SUFFIX}") if p.stem != committed),
        key=lambda p: p.stat().st_mtime_ns,
        reverse=True,
    )
    removed = []
    for stale in others[KEEP_UNCOMMITTED:]:
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed.append(stale.stem)
    return removed


def find_bundle(root: Path, datasource_id: str, digest: str) -> Path | None:
    """The bundle with this commitment, or, from a node that kept one bundle per
    datasource (before bundles were kept by content), that one file (its contents are
    checked against the commitment when opened)."""
    path = bundle_path(root, datasource_id, digest)
    if path.exists():
        return path
    legacy = root / f"{datasource_id}{_SUFFIX}"
    return legacy if legacy.exists() else None
