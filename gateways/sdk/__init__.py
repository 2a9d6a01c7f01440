"""The dfg SDK for service providers (integration Level 1): keep a copy of the consents
you collect on the ledger, check them, and verify receipts without trusting the server.

    from gateways.sdk import ConsentClient, TransactionBuilder, consent_terms, pseudonym

Modules, one job each: ``keys`` (key files and kids), ``nonces``, ``pseudonyms``,
``builders`` (signed transactions), ``client`` / ``async_client`` (HTTP),
``verify`` (offline receipt checks), ``errors``, ``results``, ``protocol``.
See docs/integration-level-1.md.
"""

import warnings

from gateways.sdk.async_client import AsyncConsentClient
from gateways.sdk.builders import (
    TransactionBuilder,
    consent_terms,
    decode_payload,
    new_consent_id,
    notice_sha256,
)
from gateways.sdk.client import ConsentClient
from gateways.sdk.errors import DfgApiError, DfgConnectionError
from gateways.sdk.keys import generate_key, kid_for, load_key, public_jwk, save_key
from gateways.sdk.nonces import NonceSource
from gateways.sdk.protocol import RetryPolicy
from gateways.sdk.pseudonyms import pseudonym
from gateways.sdk.results import Accepted, ConsentAnswer, ConsentQuestion, Refused
from gateways.sdk.verify import KeyRing, ReceiptError, VerifiedReceipt, verify_receipt
from ledger.witness import WitnessPolicy

# The wire format names Ed25519 signatures "EdDSA" (docs/transactions.md); joserfc warns
# on every process start that RFC 9864 deprecates that name. The ledger accepts it on
# purpose, so the warning would only alarm providers; nothing else is silenced.
warnings.filterwarnings("ignore", message="EdDSA is deprecated")

__all__ = [
    "Accepted",
    "AsyncConsentClient",
    "ConsentAnswer",
    "ConsentClient",
    "ConsentQuestion",
    "DfgApiError",
    "DfgConnectionError",
    "KeyRing",
    "NonceSource",
    "ReceiptError",
    "Refused",
    "RetryPolicy",
    "TransactionBuilder",
    "VerifiedReceipt",
    "WitnessPolicy",
    "consent_terms",
    "decode_payload",
    "generate_key",
    "kid_for",
    "load_key",
    "new_consent_id",
    "notice_sha256",
    "pseudonym",
    "public_jwk",
    "save_key",
    "verify_receipt",
]
