"""Subject pseudonyms: the ledger must never see a user id, e-mail or name in clear.

``pseudonym(secret, user_id)`` is HMAC-SHA-256 keyed with a secret only the provider
holds, so the same user always maps to the same pseudonym (consents can be checked
and withdrawn later) while nobody without the secret can test a guess ("is
alice@example.org in this ledger?"), which a plain hash would allow.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Literal

from domain.identifiers import PSEUDONYM_PATTERN

MIN_SECRET_BYTES = 16
_PSEUDONYM_RE = re.compile(PSEUDONYM_PATTERN)


def pseudonym(
    secret: bytes,
    user_id: str,
    *,
    prefix: str = "p-",
    encoding: Literal["base32", "hex"] = "base32",
) -> str:
    """``prefix + encode(HMAC-SHA-256(secret, user_id))``, e.g. ``p-4x2k…`` (54 characters).

    ``user_id`` is hashed exactly as given (UTF-8): normalise it first (e.g. lower-case
    an e-mail address) so one person has one pseudonym. Keep ``secret`` (at least 16
    random bytes) for as long as consents must be found again: losing it orphans them.
    """
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the pseudonym secret must be at least {MIN_SECRET_BYTES} random bytes")
    digest = hmac.new(secret, user_id.encode("utf-8"), hashlib.sha256).digest()
    if encoding == "base32":
        text = base64.b32encode(digest).decode("ascii").rstrip("=").lower()
    elif encoding == "hex":
        text = digest.hex()
    else:
        raise ValueError("encoding is base32 or hex")
    value = prefix + text
    if not _PSEUDONYM_RE.match(value):
        raise ValueError(f"prefix {prefix!r} makes an invalid pseudonym (allowed: A-Z a-z 0-9 . _ : ~ -)")
    return value
