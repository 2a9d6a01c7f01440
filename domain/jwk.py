"""Public JSON Web Keys as the ledger records them (RFC 7517, RFC 7638 thumbprints).

Only the shapes are checked here (pure); whether a point is on its curve is checked
by the ledger when it imports the key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator


def _b64url_len(value: str) -> int:
    if "=" in value or not value.replace("-", "").replace("_", "").isalnum():
        raise ValueError("must be unpadded base64url")
    return len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))


class PublicJwk(BaseModel):
    """An Ed25519 (OKP) or secp256k1 (EC) public key; private members are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kty: Literal["OKP", "EC"]
    crv: Literal["Ed25519", "secp256k1"]
    x: str
    y: str | None = None
    alg: Literal["EdDSA", "Ed25519", "ES256K"] | None = None
    use: Literal["sig"] | None = None

    @field_validator("x", "y")
    @classmethod
    def _coordinate(cls, value: str | None) -> str | None:
        if value is not None and _b64url_len(value) != 32:
            raise ValueError("a coordinate must be 32 bytes, unpadded base64url")
        return value

    def model_post_init(self, _context: Any) -> None:
        if self.kty == "OKP" and (self.crv != "Ed25519" or self.y is not None):
            raise ValueError("an OKP key must be crv Ed25519 with no y")
        if self.kty == "EC" and (self.crv != "secp256k1" or self.y is None):
            raise ValueError("an EC key must be crv secp256k1 with x and y")

    @property
    def algorithm(self) -> str:
        """The JWS alg this key verifies (EdDSA also covers RFC 9864's Ed25519)."""
        return "EdDSA" if self.kty == "OKP" else "ES256K"

    def thumbprint(self) -> str:
        """RFC 7638 thumbprint: SHA-256 over the required members, base64url."""
        required: dict[str, str] = {"crv": self.crv, "kty": self.kty, "x": self.x}
        if self.y is not None:
            required["y"] = self.y
        digest = hashlib.sha256(json.dumps(required, sort_keys=True, separators=(",", ":")).encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def as_dict(self) -> dict[str, str]:
        return self.model_dump(exclude_none=True)
