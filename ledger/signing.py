"""Building and signing transactions: what every client of the ledger does.

A ``TransactionSigner`` is one principal's signing identity: its key, its key id and
a strictly increasing nonce. Any language with a JOSE library can do the same
(docs/transactions.md); this is the reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from joserfc.jwk import ECKey, OKPKey

from domain.jwk import PublicJwk
from ledger.canonical import canonical_json
from ledger.jws import sign_compact

DEFAULT_VALIDITY_S = 300


def public_jwk(key: OKPKey | ECKey) -> PublicJwk:
    return PublicJwk.model_validate(key.as_dict(private=False))


def kid_of(principal: str, key: OKPKey | ECKey) -> str:
    return f"{principal}#{public_jwk(key).thumbprint()}"


@dataclass
class TransactionSigner:
    principal: str
    key: OKPKey | ECKey = field(repr=False)
    chain: str
    nonce: int = 0

    @property
    def kid(self) -> str:
        return kid_of(self.principal, self.key)

    def sign(
        self,
        tx_type: str,
        body: dict[str, Any],
        *,
        now: float,
        valid_for: int = DEFAULT_VALIDITY_S,
        nonce: int | None = None,
    ) -> str:
        """Sign one transaction; ``now`` is Unix seconds (passed in, never read here)."""
        if nonce is None:
            self.nonce += 1
            nonce = self.nonce
        payload = {
            "chain": self.chain,
            "signer": self.principal,
            "nonce": nonce,
            "valid_until": int(now) + valid_for,
            "type": tx_type,
            "body": json.loads(json.dumps(body, default=str)),
        }
        return sign_compact(canonical_json(payload), self.kid, self.key)
