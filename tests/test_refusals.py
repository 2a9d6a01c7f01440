"""Every refusal the ledger must make, with its exact code, and proof it left no trace.

Each refusal is checked through ``Sequencer.submit`` (outcomes are returned, never
raised): the ``Rejected.code`` is the contract (ledger.errors, domain/*.py), and the
log must be untouched afterwards (head size and root, and the signer's last nonce).
Bad envelopes that no SDK would produce are built by hand with base64url and the
keys' joserfc objects.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import CHAIN, OPERATOR, TERMS, Ledger
from joserfc.jwk import ECKey, OKPKey
from joserfc.jws import JWSRegistry

from domain.times import format_time
from infra.bootstrap import checkpoint_key, create_ledger, open_store, root_signer
from infra.settings import Settings
from ledger.canonical import canonical_json
from ledger.errors import Rejected
from ledger.jws import MAX_JWS_BYTES, TYP, b64url_encode, sign_compact
from ledger.sequencer import Accepted, Sequencer
from ledger.signing import TransactionSigner, public_jwk

_REGISTRY = JWSRegistry(algorithms=["EdDSA", "ES256K"])
#: Order of the secp256k1 group (SEC 2), for the high-S twin of an ECDSA signature.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
#: Order of the Ed25519 base point (RFC 8032), for the S + L twin of a signature.
ED25519_L = 2**252 + 27742317777372353535851937790883648493


# --- helpers ------------------------------------------------------------------------------


def refuse(led: Ledger, token: str, code: str, *, signer: str) -> Rejected:
    """Submit ``token`` alone; it must be refused with ``code`` and change nothing."""
    store = led.sequencer.store
    head, nonce, size = led.head(), store.last_nonce(signer), led.sequencer.size
    (outcome,) = led.submit(token)
    assert isinstance(outcome, Rejected), outcome
    assert outcome.code == code, outcome
    assert led.head() == head
    assert led.sequencer.size == size
    assert store.last_nonce(signer) == nonce
    return outcome


def refuse_beside(led: Ledger, bad: str, code: str, *, signer: TransactionSigner) -> None:
    """``bad`` is refused with ``code`` inside a batch, and a good transaction of the same
    batch is still accepted: a hostile token must never take its batch down with it."""
    assert len(bad) <= MAX_JWS_BYTES  # refused for what it is, not for its size
    good = led.sign(signer, "consent.give", give_body(signer.principal))
    head = led.head()
    outcomes = led.submit(bad, good)
    assert isinstance(outcomes[0], Rejected) and outcomes[0].code == code, outcomes[0]
    assert accepted(outcomes[1]).seq == head[0] + 1
    assert led.head()[0] == head[0] + 1
    assert led.sequencer.store.last_nonce(signer.principal) == signer.nonce


def raw_json(value: Any) -> bytes:
    """Compact JSON without the canonical checks (so floats etc. can be forged)."""
    return json.dumps(value, separators=(",", ":")).encode()


def b64(segment: bytes) -> str:
    return b64url_encode(segment)


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def alg_of(key: OKPKey | ECKey) -> str:
    return "EdDSA" if isinstance(key, OKPKey) else "ES256K"


def forge(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, key: OKPKey | ECKey) -> str:
    """A compact JWS with any header and payload bytes, correctly signed by ``key``."""
    header_bytes = header if isinstance(header, bytes) else raw_json(header)
    payload_bytes = payload if isinstance(payload, bytes) else canonical_json(payload)
    signing_input = f"{b64(header_bytes)}.{b64(payload_bytes)}".encode("ascii")
    signature = _REGISTRY.get_alg(alg_of(key)).sign(signing_input, key)
    return f"{signing_input.decode('ascii')}.{b64(signature)}"


def header_for(signer: TransactionSigner, **changes: Any) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": alg_of(signer.key), "kid": signer.kid, "typ": TYP}
    header.update(changes)
    return {k: v for k, v in header.items() if v is not ...}


def payload_for(
    signer: TransactionSigner, tx_type: str, body: dict[str, Any], **changes: Any
) -> dict[str, Any]:
    """The payload ``signer`` would send next (its nonce is not consumed here)."""
    payload: dict[str, Any] = {
        "chain": signer.chain,
        "signer": signer.principal,
        "nonce": signer.nonce + 1,
        "valid_until": int(datetime.now(UTC).timestamp()) + 300,
        "type": tx_type,
        "body": body,
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not ...}


def with_signature(token: str, signature: bytes) -> str:
    header, payload, _ = token.split(".")
    return f"{header}.{payload}.{b64(signature)}"


def give_body(
    controller: str,
    subject: str = "p-1",
    *,
    consent_id: str | None = None,
    level: int = 1,
    **terms: Any,
) -> dict[str, Any]:
    return {
        "consent_id": consent_id or str(uuid.uuid4()),
        "controller": controller,
        "subject": subject,
        "level": level,
        "method": "app" if level == 1 else "wallet",
        "terms": {**TERMS, **terms},
    }


def use_body(
    consent_id: str,
    purpose: str = "dpv:ServiceProvision",
    categories: tuple[str, ...] = ("dpv-pd:HeartRate",),
) -> dict[str, Any]:
    return {"consent_id": consent_id, "purpose": purpose, "data_categories": list(categories)}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def accepted(outcome: Any) -> Accepted:
    assert isinstance(outcome, Accepted), outcome
    return outcome


# --- a ledger whose clock the test moves --------------------------------------------------


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.t = start

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


@dataclass
class ClockedLedger(Ledger):
    clock: FakeClock

    def now(self) -> float:
        return self.clock.t.timestamp()


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[ClockedLedger]:
    settings = Settings(data_dir=tmp_path / "data")
    create_ledger(settings, chain=CHAIN, origin=None, operator=OPERATOR, display_name="Test federation")
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1))
    sequencer = Sequencer(open_store(settings), checkpoint_key=checkpoint_key(settings), clock=clock)
    operator = root_signer(settings, CHAIN, OPERATOR)
    operator.nonce = 1
    led = ClockedLedger(settings, sequencer, operator, clock)
    yield led
    sequencer.store.close()


@pytest.fixture
def app(ledger: Ledger) -> TransactionSigner:
    return ledger.admit("sp:app", "service_provider")


# --- envelope -----------------------------------------------------------------------------


def test_alg_none_unsigned_token_is_alg_not_allowed(ledger: Ledger, app: TransactionSigner) -> None:
    """The classic unsecured JWS (RFC 7515 appendix A.5): empty signature segment."""
    header = b64(raw_json({"alg": "none", "kid": app.kid, "typ": TYP}))
    payload = b64(canonical_json(payload_for(app, "consent.give", give_body("sp:app"))))
    refuse(ledger, f"{header}.{payload}.", "alg_not_allowed", signer="sp:app")


def test_alg_none_with_a_signature_segment_is_alg_not_allowed(ledger: Ledger, app: TransactionSigner) -> None:
    token = forge(header_for(app, alg="none"), payload_for(app, "consent.give", give_body("sp:app")), app.key)
    refuse(ledger, token, "alg_not_allowed", signer="sp:app")


def test_hs256_keyed_with_the_signers_public_key_is_alg_not_allowed(
    ledger: Ledger, app: TransactionSigner
) -> None:
    """Algorithm confusion: an HMAC 'signature' keyed with public key bytes."""
    header = b64(raw_json(header_for(app, alg="HS256")))
    payload = b64(canonical_json(payload_for(app, "consent.give", give_body("sp:app"))))
    secret = unb64(public_jwk(app.key).x)
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    refuse(ledger, f"{header}.{payload}.{b64(mac)}", "alg_not_allowed", signer="sp:app")


@pytest.mark.parametrize("alg", ["HS512", "RS256", "ES256", "EdDSA ", "eddsa", None, 1])
def test_other_algorithms_are_alg_not_allowed(ledger: Ledger, app: TransactionSigner, alg: Any) -> None:
    token = forge(header_for(app, alg=alg), payload_for(app, "consent.give", give_body("sp:app")), app.key)
    refuse(ledger, token, "alg_not_allowed", signer="sp:app")


def test_missing_alg_is_alg_not_allowed(ledger: Ledger, app: TransactionSigner) -> None:
    token = forge(header_for(app, alg=...), payload_for(app, "consent.give", give_body("sp:app")), app.key)
    refuse(ledger, token, "alg_not_allowed", signer="sp:app")


def test_header_repeating_alg_is_malformed(ledger: Ledger, app: TransactionSigner) -> None:
    """{"alg":"none",...,"alg":"EdDSA"}: parsers disagree on which member wins, so an
    auditor in another language could read another algorithm; refuse it outright."""
    header = b'{"alg":"none",' + raw_json(header_for(app))[1:]
    token = forge(header, payload_for(app, "consent.give", give_body("sp:app")), app.key)
    refuse(ledger, token, "malformed_jws", signer="sp:app")


@pytest.mark.parametrize("segment", ["header", "payload", "signature"])
@pytest.mark.parametrize("bad", ["+", "/", "=", "\n", " "])
def test_characters_outside_base64url_are_non_canonical(
    ledger: Ledger, app: TransactionSigner, segment: str, bad: str
) -> None:
    token = ledger.sign(app, "consent.give", give_body("sp:app"))
    parts = token.split(".")
    index = ["header", "payload", "signature"].index(segment)
    parts[index] = parts[index][:8] + bad + parts[index][9:]
    refuse(ledger, ".".join(parts), "non_canonical_base64", signer="sp:app")


def test_padded_signature_is_non_canonical(ledger: Ledger, app: TransactionSigner) -> None:
    token = ledger.sign(app, "consent.give", give_body("sp:app"))
    assert len(token.rsplit(".", 1)[1]) % 4 == 2  # a 64-byte signature needs "=="
    refuse(ledger, token + "==", "non_canonical_base64", signer="sp:app")


def test_padded_header_is_non_canonical(ledger: Ledger, app: TransactionSigner) -> None:
    token = ledger.sign(app, "consent.give", give_body("sp:app"))
    header, payload, signature = token.split(".")
    padded = base64.urlsafe_b64encode(unb64(header)).decode()
    if padded == header:  # no padding needed: a trailing space keeps the JSON valid
        padded = base64.urlsafe_b64encode(unb64(header) + b" ").decode()
    assert "=" in padded
    refuse(ledger, f"{padded}.{payload}.{signature}", "non_canonical_base64", signer="sp:app")


@pytest.mark.parametrize(("urlsafe", "standard"), [("-", "+"), ("_", "/")])
def test_standard_base64_alphabet_is_non_canonical(
    ledger: Ledger, app: TransactionSigner, urlsafe: str, standard: str
) -> None:
    """The same signature bytes in the standard alphabet ('+' and '/')."""
    for _ in range(200):
        token = ledger.sign(app, "consent.give", give_body("sp:app"))
        header, payload, signature = token.split(".")
        if urlsafe in signature:
            break
    else:  # pragma: no cover - probability ~ (63/64)**(86*200)
        pytest.fail(f"no signature containing {urlsafe!r}")
    twisted = base64.b64encode(unb64(signature)).decode().rstrip("=")
    assert standard in twisted and base64.b64decode(twisted + "==") == unb64(signature)
    refuse(ledger, f"{header}.{payload}.{twisted}", "non_canonical_base64", signer="sp:app")


def test_non_zero_trailing_bits_in_signature_are_non_canonical(
    ledger: Ledger, app: TransactionSigner
) -> None:
    token = ledger.sign(app, "consent.give", give_body("sp:app"))
    header, payload, signature = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    assert last & 0b1111 == 0  # 64 bytes = 86 chars: the last char carries 4 padding bits
    twin = signature[:-1] + alphabet[last | 0b0001]
    assert unb64(twin) == unb64(signature)  # same bytes, different text
    refuse(ledger, f"{header}.{payload}.{twin}", "non_canonical_base64", signer="sp:app")
    (ok,) = ledger.submit(token)  # the canonical form of the very same JWS is fine
    accepted(ok)


def test_segment_of_impossible_length_is_non_canonical(ledger: Ledger, app: TransactionSigner) -> None:
    token = ledger.sign(app, "consent.give", give_body("sp:app"))
    header, payload, signature = token.split(".")
    cut = signature[: len(signature) - (len(signature) % 4) + 1]  # length = 1 (mod 4)
    assert len(cut) % 4 == 1
    refuse(ledger, f"{header}.{payload}.{cut}", "non_canonical_base64", signer="sp:app")


@pytest.mark.parametrize(
    "reshape",
    [
        pytest.param(lambda h, p, s: f"{h}.{p}", id="two-segments"),
        pytest.param(lambda h, p, s: f"{h}.{p}.{s}.{s}", id="four-segments"),
        pytest.param(lambda h, p, s: f"{h}.{p}.{s}.", id="trailing-dot"),
        pytest.param(lambda h, p, s: f"{h}..{s}", id="empty-payload"),
        pytest.param(lambda h, p, s: f".{p}.{s}", id="empty-header"),
        pytest.param(lambda h, p, s: f"{h}.{p}.", id="empty-signature"),
        pytest.param(lambda h, p, s: "", id="empty"),
        pytest.param(
            lambda h, p, s: json.dumps({"protected": h, "payload": p, "signature": s}),
            id="json-serialisation",
        ),
    ],
)
def test_not_three_segments_is_malformed_jws(
    ledger: Ledger, app: TransactionSigner, reshape: Callable[[str, str, str], str]
) -> None:
    token = ledger.sign(app, "consent.give", give_body("sp:app"))
    refuse(ledger, reshape(*token.split(".")), "malformed_jws", signer="sp:app")


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"cty": "json"}, id="extra-member"),
        pytest.param({"crit": ["b64"], "b64": False}, id="crit-b64"),
        pytest.param({"jwk": {"kty": "OKP"}}, id="embedded-jwk"),
        pytest.param({"typ": ...}, id="missing-typ"),
        pytest.param({"typ": "JWT"}, id="wrong-typ"),
        pytest.param({"typ": "DFG-TX"}, id="typ-case"),
        pytest.param({"kid": ...}, id="missing-kid"),
        pytest.param({"kid": ""}, id="empty-kid"),
        pytest.param({"kid": 7}, id="kid-not-a-string"),
    ],
)
def test_bad_header_is_malformed_jws(ledger: Ledger, app: TransactionSigner, changes: dict[str, Any]) -> None:
    token = forge(header_for(app, **changes), payload_for(app, "consent.give", give_body("sp:app")), app.key)
    refuse(ledger, token, "malformed_jws", signer="sp:app")


@pytest.mark.parametrize("header", [b"not json", b"[1,2,3]", b'"EdDSA"', b"null"])
def test_header_that_is_not_a_json_object_is_malformed_jws(
    ledger: Ledger, app: TransactionSigner, header: bytes
) -> None:
    token = forge(header, payload_for(app, "consent.give", give_body("sp:app")), app.key)
    refuse(ledger, token, "malformed_jws", signer="sp:app")


@pytest.mark.parametrize("alg", [["EdDSA"], {"name": "EdDSA"}])
def test_unhashable_alg_is_alg_not_allowed(ledger: Ledger, app: TransactionSigner, alg: Any) -> None:
    bad = forge(
        header_for(app, alg=alg),
        payload_for(app, "consent.give", give_body("sp:app"), nonce=99),
        app.key,
    )
    refuse_beside(ledger, bad, "alg_not_allowed", signer=app)


NESTED = [
    pytest.param(b"[" * 3000 + b"]" * 3000, id="arrays"),
    pytest.param(b'{"a":' * 1500 + b"1" + b"}" * 1500, id="objects"),
]


@pytest.mark.parametrize("nested", NESTED)
def test_deeply_nested_header_is_malformed_jws(ledger: Ledger, app: TransactionSigner, nested: bytes) -> None:
    bad = forge(nested, payload_for(app, "consent.give", give_body("sp:app"), nonce=99), app.key)
    refuse_beside(ledger, bad, "malformed_jws", signer=app)


@pytest.mark.parametrize("nested", NESTED)
def test_deeply_nested_payload_is_malformed_payload(
    ledger: Ledger, app: TransactionSigner, nested: bytes
) -> None:
    bad = forge(header_for(app), nested, app.key)
    refuse_beside(ledger, bad, "malformed_payload", signer=app)


def test_deeply_nested_body_is_malformed_payload(ledger: Ledger, app: TransactionSigner) -> None:
    payload = raw_json(payload_for(app, "consent.give", give_body("sp:app"), nonce=99))
    deep = payload[:-1] + b',"x":' + b"[" * 3000 + b"]" * 3000 + b"}"
    refuse_beside(ledger, forge(header_for(app), deep, app.key), "malformed_payload", signer=app)


def test_signed_transaction_over_16_kib_is_too_large(ledger: Ledger, app: TransactionSigner) -> None:
    codes = [f"dpv:Code{i:03d}" + "x" * 110 for i in range(64)]
    token = ledger.sign(app, "consent.give", give_body("sp:app", purposes=codes, data_categories=codes))
    assert len(token) > MAX_JWS_BYTES
    refuse(ledger, token, "too_large", signer="sp:app")


def test_size_limit_boundary(ledger: Ledger) -> None:
    refuse(ledger, "a" * MAX_JWS_BYTES, "malformed_jws", signer="sp:app")  # at the limit: parsed
    refuse(ledger, "a" * (MAX_JWS_BYTES + 1), "too_large", signer="sp:app")
    refuse(ledger, "a.b." + "c" * MAX_JWS_BYTES, "too_large", signer="sp:app")


def test_signed_transaction_just_under_16_kib_is_accepted(ledger: Ledger, app: TransactionSigner) -> None:
    codes = [f"dpv:Code{i:03d}" + "x" * 110 for i in range(44)]
    best = None
    for length in range(8, 1980):
        url = "https://a.example/" + "n" * length
        body = give_body(
            "sp:app",
            purposes=codes,
            data_categories=codes,
            notice={"url": url, "sha256": "ab" * 32},
        )
        token = sign_compact(canonical_json(payload_for(app, "consent.give", body)), app.kid, app.key)
        if len(token) > MAX_JWS_BYTES:
            break
        best = token
    assert best is not None and MAX_JWS_BYTES - 3 <= len(best) <= MAX_JWS_BYTES
    accepted(ledger.submit(best)[0])


def _good_payload(app: TransactionSigner) -> dict[str, Any]:
    return payload_for(app, "consent.give", give_body("sp:app"))


MALFORMED_PAYLOADS: list[Any] = [
    pytest.param(lambda app: b"not json at all", id="not-json"),
    pytest.param(lambda app: b'{"chain": ', id="truncated-json"),
    pytest.param(lambda app: b"\xff\xfe{}", id="not-utf8"),
    pytest.param(lambda app: raw_json([_good_payload(app)]), id="array"),
    pytest.param(lambda app: b'"a string"', id="string"),
    pytest.param(lambda app: b"42", id="number"),
    pytest.param(lambda app: b"null", id="null"),
    pytest.param(
        lambda app: raw_json(_good_payload(app))[:-1] + b',"nonce":99}',
        id="duplicate-member",
    ),
    pytest.param(
        lambda app: raw_json({**_good_payload(app), "body": {"consent_id": "x"}}).replace(
            b'"body":{', b'"body":{"consent_id":"y",'
        ),
        id="duplicate-member-in-body",
    ),
    *[
        pytest.param(
            lambda app, f=field: raw_json({k: v for k, v in _good_payload(app).items() if k != f}),
            id=f"missing-{field}",
        )
        for field in ("chain", "signer", "nonce", "valid_until", "type", "body")
    ],
    pytest.param(lambda app: raw_json({**_good_payload(app), "aud": "x"}), id="extra-member"),
    pytest.param(lambda app: raw_json({**_good_payload(app), "nonce": "2"}), id="nonce-string"),
    pytest.param(lambda app: raw_json({**_good_payload(app), "nonce": 2.0}), id="nonce-float"),
    pytest.param(lambda app: raw_json({**_good_payload(app), "nonce": True}), id="nonce-bool"),
    pytest.param(lambda app: raw_json({**_good_payload(app), "nonce": 0}), id="nonce-zero"),
    pytest.param(lambda app: raw_json({**_good_payload(app), "nonce": -1}), id="nonce-negative"),
    pytest.param(lambda app: raw_json({**_good_payload(app), "nonce": 2**53}), id="nonce-too-big"),
    pytest.param(
        lambda app: raw_json({**_good_payload(app), "valid_until": "soon"}), id="valid-until-string"
    ),
    pytest.param(
        lambda app: raw_json({**_good_payload(app), "valid_until": 2**40 + 1}),
        id="valid-until-too-big",
    ),
    pytest.param(lambda app: raw_json({**_good_payload(app), "body": []}), id="body-array"),
    pytest.param(lambda app: raw_json({**_good_payload(app), "type": ""}), id="type-empty"),
    pytest.param(lambda app: raw_json({**_good_payload(app), "chain": 1}), id="chain-number"),
    pytest.param(
        lambda app: raw_json({**_good_payload(app), "signer": "sp app"}),
        id="signer-not-a-principal-id",
    ),
]


@pytest.mark.parametrize("payload", MALFORMED_PAYLOADS)
def test_bad_payload_is_malformed_payload(
    ledger: Ledger, app: TransactionSigner, payload: Callable[[TransactionSigner], bytes]
) -> None:
    token = forge(header_for(app), payload(app), app.key)
    refuse(ledger, token, "malformed_payload", signer="sp:app")


# --- keys ---------------------------------------------------------------------------------


def test_unknown_kid_of_an_admitted_principal_is_unknown_key(ledger: Ledger, app: TransactionSigner) -> None:
    other = OKPKey.generate_key("Ed25519")
    stranger = TransactionSigner("sp:app", other, CHAIN, nonce=app.nonce)
    assert stranger.kid != app.kid
    refuse(
        ledger,
        ledger.sign(stranger, "consent.give", give_body("sp:app")),
        "unknown_key",
        signer="sp:app",
    )


@pytest.mark.parametrize("kid", ["sp:app", "#abc", "sp:app#"])
def test_kid_without_principal_and_thumbprint_is_unknown_key(
    ledger: Ledger, app: TransactionSigner, kid: str
) -> None:
    token = forge(header_for(app, kid=kid), _good_payload(app), app.key)
    refuse(ledger, token, "unknown_key", signer="sp:app")


def test_kid_of_another_principal_is_signer_mismatch(ledger: Ledger, app: TransactionSigner) -> None:
    other = ledger.admit("sp:other", "service_provider")
    token = sign_compact(canonical_json(_good_payload(app)), other.kid, other.key)
    refuse(ledger, token, "signer_mismatch", signer="sp:app")
    refuse(ledger, token, "signer_mismatch", signer="sp:other")


def test_signer_never_admitted_is_unknown_signer(ledger: Ledger) -> None:
    ghost = TransactionSigner("sp:ghost", OKPKey.generate_key("Ed25519"), CHAIN)
    refuse(
        ledger,
        ledger.sign(ghost, "consent.give", give_body("sp:ghost")),
        "unknown_signer",
        signer="sp:ghost",
    )
    assert ledger.sequencer.store.last_nonce("sp:ghost") == 0


def test_revoked_key_is_key_revoked(ledger: Ledger, app: TransactionSigner) -> None:
    spare = OKPKey.generate_key("Ed25519")
    ledger.accept(
        ledger.sign(app, "key.add", {"principal": "sp:app", "jwk": public_jwk(spare).as_dict()}),
        ledger.sign(app, "key.revoke", {"principal": "sp:app", "kid": app.kid, "reason": "compromised"}),
    )
    refuse(
        ledger,
        ledger.sign(app, "consent.give", give_body("sp:app")),
        "key_revoked",
        signer="sp:app",
    )
    # the spare key still signs, with the next nonce of the principal
    spare_signer = TransactionSigner(
        "sp:app", spare, CHAIN, nonce=ledger.sequencer.store.last_nonce("sp:app")
    )
    ledger.accept(ledger.sign(spare_signer, "consent.give", give_body("sp:app")))


def test_key_revoked_by_an_operator_is_key_revoked(ledger: Ledger, app: TransactionSigner) -> None:
    ledger.accept(
        ledger.sign(
            ledger.operator,
            "key.revoke",
            {"principal": "sp:app", "kid": app.kid, "reason": "compromised"},
        )
    )
    refuse(
        ledger,
        ledger.sign(app, "consent.give", give_body("sp:app")),
        "key_revoked",
        signer="sp:app",
    )


def test_an_operators_last_key_cannot_be_revoked(ledger: Ledger) -> None:
    """The sole operator revoking its only key would lock the federation's
    administration for good: refused. With a second key it may, and an operator whose
    role another operator revoked may lose its keys."""
    op = ledger.operator
    revoke_own = {"principal": op.principal, "kid": op.kid, "reason": "retired"}
    refusal = refuse(
        ledger, ledger.sign(op, "key.revoke", revoke_own), "last_operator_key", signer=op.principal
    )
    assert "add or rotate in another first" in refusal.message
    op.nonce -= 1
    spare = OKPKey.generate_key("Ed25519")
    ledger.accept(
        ledger.sign(op, "key.add", {"principal": op.principal, "jwk": public_jwk(spare).as_dict()}),
        ledger.sign(op, "key.revoke", revoke_own),
    )
    op = TransactionSigner(op.principal, spare, CHAIN, nonce=ledger.sequencer.store.last_nonce(op.principal))
    other_key = OKPKey.generate_key("Ed25519")
    admit = {
        "principal": "op:other",
        "kind": "operator",
        "display_name": "Other",
        "jwk": public_jwk(other_key).as_dict(),
    }
    ledger.accept(ledger.sign(op, "principal.admit", admit))
    other = TransactionSigner("op:other", other_key, CHAIN)
    revoke_other = {"principal": "op:other", "kid": other.kid, "reason": "retired"}
    refuse(ledger, ledger.sign(op, "key.revoke", revoke_other), "last_operator_key", signer=op.principal)
    op.nonce -= 1
    ledger.accept(
        ledger.sign(op, "principal.revoke_role", {"principal": "op:other", "role": "operator"}),
        ledger.sign(op, "key.revoke", revoke_other),
    )


def test_rotated_away_key_is_key_revoked(ledger: Ledger, app: TransactionSigner) -> None:
    new = OKPKey.generate_key("Ed25519")
    ledger.accept(
        ledger.sign(
            app,
            "key.rotate",
            {"principal": "sp:app", "old_kid": app.kid, "jwk": public_jwk(new).as_dict()},
        )
    )
    refuse(
        ledger,
        ledger.sign(app, "consent.give", give_body("sp:app")),
        "key_revoked",
        signer="sp:app",
    )
    rotated = TransactionSigner("sp:app", new, CHAIN, nonce=ledger.sequencer.store.last_nonce("sp:app"))
    ledger.accept(ledger.sign(rotated, "consent.give", give_body("sp:app")))


def test_key_with_future_not_before_is_key_not_yet_valid(clocked: ClockedLedger) -> None:
    app = clocked.admit("sp:app", "service_provider")
    later = OKPKey.generate_key("Ed25519")
    start = clocked.clock.t + timedelta(hours=1)
    clocked.accept(
        clocked.sign(
            app,
            "key.add",
            {"principal": "sp:app", "jwk": public_jwk(later).as_dict(), "not_before": iso(start)},
        )
    )
    signer = TransactionSigner("sp:app", later, CHAIN, nonce=app.nonce)
    refuse(
        clocked,
        clocked.sign(signer, "consent.give", give_body("sp:app")),
        "key_not_yet_valid",
        signer="sp:app",
    )
    clocked.clock.advance(3600)
    clocked.accept(clocked.sign(signer, "consent.give", give_body("sp:app")))


def test_key_past_not_after_is_key_expired(clocked: ClockedLedger) -> None:
    app = clocked.admit("sp:app", "service_provider")
    short = OKPKey.generate_key("Ed25519")
    end = clocked.clock.t + timedelta(minutes=10)
    clocked.accept(
        clocked.sign(
            app,
            "key.add",
            {"principal": "sp:app", "jwk": public_jwk(short).as_dict(), "not_after": iso(end)},
        )
    )
    signer = TransactionSigner("sp:app", short, CHAIN, nonce=app.nonce)
    clocked.accept(clocked.sign(signer, "consent.give", give_body("sp:app")))
    clocked.clock.advance(600)
    refuse(
        clocked,
        clocked.sign(signer, "consent.give", give_body("sp:app")),
        "key_expired",
        signer="sp:app",
    )


def test_valid_kid_signed_by_another_key_is_bad_signature(ledger: Ledger, app: TransactionSigner) -> None:
    impostor = OKPKey.generate_key("Ed25519")
    token = sign_compact(canonical_json(_good_payload(app)), app.kid, impostor)
    refuse(ledger, token, "bad_signature", signer="sp:app")


def test_bad_signature_on_both_engines(any_ledger: Ledger) -> None:
    app = any_ledger.admit("sp:app", "service_provider")
    impostor = OKPKey.generate_key("Ed25519")
    token = sign_compact(canonical_json(_good_payload(app)), app.kid, impostor)
    refuse(any_ledger, token, "bad_signature", signer="sp:app")
    accepted(any_ledger.submit(any_ledger.sign(app, "consent.give", give_body("sp:app")))[0])


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_flipped_signature_byte_is_bad_signature(ledger: Ledger, app: TransactionSigner, index: int) -> None:
    token = ledger.sign(app, "consent.give", give_body("sp:app"))
    signature = bytearray(unb64(token.rsplit(".", 1)[1]))
    signature[index] ^= 0x01
    refuse(ledger, with_signature(token, bytes(signature)), "bad_signature", signer="sp:app")
    accepted(ledger.submit(token)[0])


def test_flipped_payload_byte_is_bad_signature(ledger: Ledger, app: TransactionSigner) -> None:
    payload = _good_payload(app)
    token = sign_compact(canonical_json(payload), app.kid, app.key)
    header, _, signature = token.split(".")
    changed = canonical_json({**payload, "body": give_body("sp:app", subject="p-2")})
    refuse(ledger, f"{header}.{b64(changed)}.{signature}", "bad_signature", signer="sp:app")


@pytest.mark.parametrize("length", [0, 63, 65])
def test_signature_of_wrong_length_is_bad_signature(
    ledger: Ledger, app: TransactionSigner, length: int
) -> None:
    token = ledger.sign(app, "consent.give", give_body("sp:app"))
    signature = (unb64(token.rsplit(".", 1)[1]) * 2)[:length]
    if length == 0:
        refuse(ledger, with_signature(token, signature), "malformed_jws", signer="sp:app")
    else:
        refuse(ledger, with_signature(token, signature), "bad_signature", signer="sp:app")


def test_ed25519_signature_with_s_plus_l_is_bad_signature(ledger: Ledger, app: TransactionSigner) -> None:
    """Ed25519 malleability (RFC 8032 5.1.7: S must be below L) is refused."""
    token = ledger.sign(app, "consent.give", give_body("sp:app"))
    signature = unb64(token.rsplit(".", 1)[1])
    s = int.from_bytes(signature[32:], "little") + ED25519_L
    refuse(
        ledger,
        with_signature(token, signature[:32] + s.to_bytes(32, "little")),
        "bad_signature",
        signer="sp:app",
    )
    accepted(ledger.submit(token)[0])


def test_rfc9864_ed25519_alg_name_is_accepted(ledger: Ledger, app: TransactionSigner) -> None:
    header = {"alg": "Ed25519", "kid": app.kid, "typ": TYP}
    signing_input = f"{b64(raw_json(header))}.{b64(canonical_json(_good_payload(app)))}".encode()
    signature = _REGISTRY.get_alg("EdDSA").sign(signing_input, app.key)
    accepted(ledger.submit(f"{signing_input.decode()}.{b64(signature)}")[0])


def test_es256k_key_signs_and_a_tampered_es256k_signature_is_bad_signature(ledger: Ledger) -> None:
    wallet = ledger.admit("sp:k1", "service_provider", es256k=True)
    assert isinstance(wallet.key, ECKey)
    first = accepted(ledger.submit(ledger.sign(wallet, "consent.give", give_body("sp:k1")))[0])
    assert first.entry.tx.startswith(b64(raw_json({"alg": "ES256K", "kid": wallet.kid, "typ": TYP})))
    token = ledger.sign(wallet, "consent.give", give_body("sp:k1"))
    for index in (0, 40):  # in r, in s
        signature = bytearray(unb64(token.rsplit(".", 1)[1]))
        assert len(signature) == 64
        signature[index] ^= 0x80
        refuse(ledger, with_signature(token, bytes(signature)), "bad_signature", signer="sp:k1")
    accepted(ledger.submit(token)[0])


def test_es256k_high_s_twin_of_a_signature_is_bad_signature(ledger: Ledger) -> None:
    """ECDSA malleability: (r, n - s) verifies too. A third party who sees a signed
    transaction can make this second encoding of it; only low-S may be accepted, or a
    transaction does not have exactly one encoding (ledger/jws.py docstring)."""
    wallet = ledger.admit("sp:k1", "service_provider", es256k=True)
    token = ledger.sign(wallet, "consent.give", give_body("sp:k1"))
    signature = unb64(token.rsplit(".", 1)[1])
    r, s = signature[:32], int.from_bytes(signature[32:], "big")
    low, high = min(s, SECP256K1_N - s), max(s, SECP256K1_N - s)
    high_token = with_signature(token, r + high.to_bytes(32, "big"))
    low_token = with_signature(token, r + low.to_bytes(32, "big"))
    refuse(ledger, high_token, "bad_signature", signer="sp:k1")
    accepted(ledger.submit(low_token)[0])


def test_es256k_alg_with_an_ed25519_key_is_bad_signature(ledger: Ledger, app: TransactionSigner) -> None:
    header = b64(raw_json({"alg": "ES256K", "kid": app.kid, "typ": TYP}))
    payload = b64(canonical_json(_good_payload(app)))
    k1 = ECKey.generate_key("secp256k1")
    signature = _REGISTRY.get_alg("ES256K").sign(f"{header}.{payload}".encode(), k1)
    refuse(ledger, f"{header}.{payload}.{b64(signature)}", "bad_signature", signer="sp:app")


def test_eddsa_alg_for_an_es256k_key_is_bad_signature(ledger: Ledger) -> None:
    wallet = ledger.admit("sp:k1", "service_provider", es256k=True)
    ed = OKPKey.generate_key("Ed25519")
    payload = payload_for(wallet, "consent.give", give_body("sp:k1"))
    token = sign_compact(canonical_json(payload), wallet.kid, ed)
    assert token.startswith(b64(raw_json({"alg": "EdDSA", "kid": wallet.kid, "typ": TYP})))
    refuse(ledger, token, "bad_signature", signer="sp:k1")


# --- payload ------------------------------------------------------------------------------


def test_other_chain_is_wrong_chain(any_ledger: Ledger) -> None:
    app = any_ledger.admit("sp:app", "service_provider")
    elsewhere = TransactionSigner("sp:app", app.key, "dfg-other", nonce=app.nonce)
    refuse(
        any_ledger,
        any_ledger.sign(elsewhere, "consent.give", give_body("sp:app")),
        "wrong_chain",
        signer="sp:app",
    )
    accepted(any_ledger.submit(any_ledger.sign(app, "consent.give", give_body("sp:app")))[0])


def test_valid_until_in_the_past_is_expired(ledger: Ledger, app: TransactionSigner) -> None:
    token = ledger.sign(app, "consent.give", give_body("sp:app"), now=ledger.now() - 3600)
    refuse(ledger, token, "expired", signer="sp:app")


def test_valid_until_boundary(clocked: ClockedLedger) -> None:
    """valid_until is the last instant (whole second) at which the ledger accepts."""
    app = clocked.admit("sp:app", "service_provider")
    assert clocked.clock.t.microsecond == 0
    on_time = clocked.sign(app, "consent.give", give_body("sp:app"), valid_for=60)
    late = clocked.sign(app, "consent.give", give_body("sp:app"), valid_for=60)
    clocked.clock.advance(60)
    accepted(clocked.submit(on_time)[0])
    clocked.clock.advance(0.5)
    refuse(clocked, late, "expired", signer="sp:app")


def test_reused_nonce_with_a_different_body_is_nonce_reused(any_ledger: Ledger) -> None:
    app = any_ledger.admit("sp:app", "service_provider")
    any_ledger.accept(any_ledger.sign(app, "consent.give", give_body("sp:app")))
    again = any_ledger.sign(app, "consent.give", give_body("sp:app"), nonce=app.nonce)
    refuse(any_ledger, again, "nonce_reused", signer="sp:app")


def test_lower_nonce_is_nonce_reused(ledger: Ledger, app: TransactionSigner) -> None:
    app.nonce = 10
    ledger.accept(ledger.sign(app, "consent.give", give_body("sp:app")))
    assert ledger.sequencer.store.last_nonce("sp:app") == 11
    for nonce in (1, 5, 10, 11):
        refuse(
            ledger,
            ledger.sign(app, "consent.give", give_body("sp:app"), nonce=nonce),
            "nonce_reused",
            signer="sp:app",
        )


def test_nonce_reused_inside_one_batch(ledger: Ledger, app: TransactionSigner) -> None:
    first = ledger.sign(app, "consent.give", give_body("sp:app"))
    second = ledger.sign(app, "consent.give", give_body("sp:app"), nonce=app.nonce)
    head = ledger.head()
    ok, bad = ledger.submit(first, second)
    assert accepted(ok).seq == head[0] + 1
    assert isinstance(bad, Rejected) and bad.code == "nonce_reused"
    assert ledger.head()[0] == head[0] + 1


def test_unknown_type_is_unknown_type(ledger: Ledger, app: TransactionSigner) -> None:
    for tx_type in ("consent.frobnicate", "Consent.give", "consent.give "):
        refuse(ledger, ledger.sign(app, tx_type, give_body("sp:app")), "unknown_type", signer="sp:app")


def _give_with(**changes: Any) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        body = give_body("sp:app")
        for key, value in changes.items():
            if key.startswith("terms_"):
                body["terms"][key.removeprefix("terms_")] = value
            elif value is ...:
                del body[key]
            else:
                body[key] = value
        return body

    return build


INVALID_BODIES: list[Any] = [
    pytest.param(_give_with(subject="alice@example.org"), id="pseudonym-with-at"),
    pytest.param(_give_with(subject="Alice Smith"), id="pseudonym-with-space"),
    pytest.param(_give_with(terms_purposes=["not a code"]), id="purpose-with-space"),
    pytest.param(_give_with(terms_purposes=["1dpv:Thing"]), id="purpose-starting-with-digit"),
    pytest.param(_give_with(terms_purposes=[]), id="no-purposes"),
    pytest.param(_give_with(terms_purposes=["dpv:A", "dpv:A"]), id="duplicate-purposes"),
    pytest.param(_give_with(consent_id=...), id="missing-consent-id"),
    pytest.param(_give_with(consent_id="not-a-uuid"), id="consent-id-not-uuid"),
    pytest.param(_give_with(level=3), id="level-3"),
    pytest.param(_give_with(level=0), id="level-0"),
    pytest.param(_give_with(method="telepathy"), id="unknown-method"),
    pytest.param(_give_with(controller="App"), id="controller-not-principal-id"),
    pytest.param(_give_with(extra=1), id="extra-member"),
    pytest.param(
        _give_with(terms_notice={"url": "https://a.example/n", "sha256": "zz" * 32}),
        id="sha256-not-hex",
    ),
    pytest.param(
        _give_with(terms_notice={"url": "https://a.example/n", "sha256": "ab" * 31}),
        id="sha256-short",
    ),
    pytest.param(
        _give_with(terms_notice={"url": "ftp://a.example/n", "sha256": "ab" * 32}),
        id="notice-not-http",
    ),
    pytest.param(_give_with(terms_valid_from="2026-02-30T00:00:00Z"), id="impossible-date"),
    pytest.param(_give_with(terms_valid_from="2026-03-01T00:00:00"), id="naive-datetime"),
    # no UTC form (Python raises OverflowError converting them, not a validation error)
    pytest.param(_give_with(terms_valid_until="9999-12-31T23:59:59-23:59"), id="after-the-calendar"),
    pytest.param(_give_with(terms_valid_from="0001-01-01T00:00:00+23:59"), id="before-the-calendar"),
    pytest.param(_give_with(terms_colour="blue"), id="extra-term"),
    # types are strict: a value of another JSON type is refused, not converted
    pytest.param(_give_with(level=True), id="level-true"),
    pytest.param(_give_with(level=1.0), id="level-float"),
    pytest.param(_give_with(level="1"), id="level-string"),
    pytest.param(_give_with(terms_valid_from=1_700_000_000), id="instant-as-number"),
    pytest.param(_give_with(terms_valid_from="1700000000"), id="instant-as-numeric-string"),
    pytest.param(_give_with(terms_valid_from="2026-03-01 00:00:00Z"), id="instant-with-a-space"),
    pytest.param(_give_with(consent_id="urn:uuid:3f0f7a52-61c2-4f5e-9d8a-0c1b2a3d4e5f"), id="uuid-urn"),
    pytest.param(_give_with(consent_id="3f0f7a5261c24f5e9d8a0c1b2a3d4e5f"), id="uuid-bare-digits"),
    pytest.param(_give_with(method=["app"]), id="method-as-list"),
]


@pytest.mark.parametrize("body", INVALID_BODIES)
def test_body_failing_validation_is_invalid_body(
    ledger: Ledger, app: TransactionSigner, body: Callable[[], dict[str, Any]]
) -> None:
    refuse(ledger, ledger.sign(app, "consent.give", body()), "invalid_body", signer="sp:app")


def test_invalid_bodies_of_other_types(ledger: Ledger, app: TransactionSigner) -> None:
    op = ledger.operator
    cases = [
        (op, "principal.admit", {"principal": "ctz:a", "kind": "citizen", "display_name": "Alice"}),
        (
            op,
            "principal.admit",
            {"principal": "sp:b", "kind": "service_provider", "custodian": "ids:w"},
        ),
        (op, "principal.admit", {"principal": "sp:b", "kind": "overlord"}),
        (op, "principal.admit", {"principal": "b@example.org", "kind": "service_provider"}),
        (
            op,
            "key.add",
            {"principal": "sp:app", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}},
        ),
        (
            op,
            "key.add",
            {
                "principal": "sp:app",
                "jwk": {**public_jwk(OKPKey.generate_key("Ed25519")).as_dict(), "d": "x"},
            },
        ),
        (
            op,
            "key.add",
            {
                "principal": "sp:app",
                "jwk": public_jwk(OKPKey.generate_key("Ed25519")).as_dict(),
                "not_after": "9999-12-31T23:59:59-23:59",
            },
        ),
        (op, "key.revoke", {"principal": "sp:app", "kid": app.kid, "reason": "bored"}),
        (
            op,
            "key.add",
            {
                "principal": "sp:app",
                "jwk": public_jwk(OKPKey.generate_key("Ed25519")).as_dict(),
                "not_before": "1700000000",
            },
        ),
        (op, "principal.grant_role", {"principal": "sp:app", "role": 7}),
        (
            app,
            "consent.utilize",
            {"consent_id": str(uuid.uuid4()), "purpose": "dpv:X", "data_categories": []},
        ),
        (app, "consent.withdraw", {"consent_id": str(uuid.uuid4()), "controller": "sp:app"}),
    ]
    for signer, tx_type, body in cases:
        refuse(ledger, ledger.sign(signer, tx_type, body), "invalid_body", signer=signer.principal)
        signer.nonce -= 1


def test_second_genesis_is_genesis_exists(ledger: Ledger) -> None:
    op = ledger.operator
    body = {
        "ledger": {"chain": CHAIN, "origin": "dfg.local/again", "checkpoint_key": "x" * 40},
        "operator": OPERATOR,
        "display_name": "Again",
        "jwk": public_jwk(op.key).as_dict(),
    }
    refuse(ledger, ledger.sign(op, "ledger.genesis", body), "genesis_exists", signer=OPERATOR)


def test_genesis_by_someone_else_is_genesis_exists(ledger: Ledger) -> None:
    usurper = TransactionSigner("op:usurper", OKPKey.generate_key("Ed25519"), CHAIN)
    body = {
        "ledger": {"chain": CHAIN, "origin": "dfg.local/mine", "checkpoint_key": "x" * 40},
        "operator": "op:usurper",
        "display_name": "Mine",
        "jwk": public_jwk(usurper.key).as_dict(),
    }
    refuse(ledger, ledger.sign(usurper, "ledger.genesis", body), "genesis_exists", signer="op:usurper")


# --- an empty ledger ----------------------------------------------------------------------


def _empty_sequencer(tmp_path: Path) -> Sequencer:
    return Sequencer(open_store(Settings(data_dir=tmp_path / "empty")), checkpoint_key=None)


def _genesis_body(key: OKPKey, *, chain: str = CHAIN) -> dict[str, Any]:
    return {
        "ledger": {"chain": chain, "origin": "dfg.local/empty", "checkpoint_key": "x" * 40},
        "operator": OPERATOR,
        "display_name": "Empty",
        "jwk": public_jwk(key).as_dict(),
    }


def _refuse_on(sequencer: Sequencer, token: str, code: str) -> None:
    head = sequencer.store.head()
    (outcome,) = sequencer.submit([token])
    assert isinstance(outcome, Rejected) and outcome.code == code, outcome
    assert sequencer.store.head() == head == (0, head[1])
    assert sequencer.ledger is None


def test_empty_ledger_refuses_anything_but_genesis(tmp_path: Path) -> None:
    sequencer = _empty_sequencer(tmp_path)
    try:
        op = TransactionSigner(OPERATOR, OKPKey.generate_key("Ed25519"), CHAIN)
        now = datetime.now(UTC).timestamp()
        _refuse_on(sequencer, op.sign("consent.give", give_body(OPERATOR), now=now), "no_genesis")
        other = OKPKey.generate_key("Ed25519")
        _refuse_on(sequencer, op.sign("ledger.genesis", _genesis_body(other), now=now), "unknown_key")
        _refuse_on(
            sequencer,
            op.sign("ledger.genesis", _genesis_body(op.key, chain="dfg-else"), now=now),
            "wrong_chain",
        )
        forged = sign_compact(
            canonical_json(payload_for(op, "ledger.genesis", _genesis_body(op.key))), op.kid, other
        )
        _refuse_on(sequencer, forged, "bad_signature")
        good = op.sign("ledger.genesis", _genesis_body(op.key), now=now)
        assert accepted(sequencer.submit([good])[0]).seq == 1
    finally:
        sequencer.store.close()


# --- duplicates ---------------------------------------------------------------------------


def test_resubmitted_jws_is_an_idempotent_duplicate(any_ledger: Ledger) -> None:
    app = any_ledger.admit("sp:app", "service_provider")
    token = any_ledger.sign(app, "consent.give", give_body("sp:app"))
    (first,) = any_ledger.accept(token)
    assert not first.duplicate
    head, nonce = any_ledger.head(), any_ledger.sequencer.store.last_nonce("sp:app")
    for _ in range(2):
        (again,) = any_ledger.submit(token)
        assert isinstance(again, Accepted) and again.duplicate
        assert again.seq == first.seq and again.entry == first.entry
        assert any_ledger.head() == head
        assert any_ledger.sequencer.store.last_nonce("sp:app") == nonce


def test_same_jws_twice_in_one_batch_is_one_entry(ledger: Ledger, app: TransactionSigner) -> None:
    token = ledger.sign(app, "consent.give", give_body("sp:app"))
    size = ledger.head()[0]
    first, second = ledger.submit(token, token)
    assert isinstance(first, Accepted) and not first.duplicate
    assert isinstance(second, Accepted) and second.duplicate
    assert first.seq == second.seq == size + 1
    assert ledger.head()[0] == size + 1
    (third,) = ledger.submit(token)
    assert isinstance(third, Accepted) and third.duplicate and third.seq == first.seq
    assert ledger.head()[0] == size + 1


def test_duplicate_among_refusals_in_one_batch(ledger: Ledger, app: TransactionSigner) -> None:
    token = ledger.sign(app, "consent.give", give_body("sp:app"))
    (first,) = ledger.accept(token)
    bad = ledger.sign(app, "consent.give", give_body("sp:app"), nonce=1)
    head = ledger.head()
    outcomes = ledger.submit(bad, token, bad, token)
    assert [type(o) for o in outcomes] == [Rejected, Accepted, Rejected, Accepted]
    assert all(o.code == "nonce_reused" for o in outcomes if isinstance(o, Rejected))
    assert all(o.duplicate and o.seq == first.seq for o in outcomes if isinstance(o, Accepted))
    assert ledger.head() == head


def test_resubmission_after_valid_until_is_still_a_duplicate(clocked: ClockedLedger) -> None:
    """A client whose response was lost retries later: the JWS *was* accepted, so the
    answer must say so (Accepted.duplicate), not 'expired' (= never recorded)."""
    app = clocked.admit("sp:app", "service_provider")
    token = clocked.sign(app, "consent.give", give_body("sp:app"), valid_for=60)
    (first,) = clocked.accept(token)
    head = clocked.head()
    clocked.clock.advance(120)
    (again,) = clocked.submit(token)
    assert isinstance(again, Accepted), again
    assert again.duplicate and again.seq == first.seq
    assert clocked.head() == head


def test_resubmission_after_key_rotation_is_still_a_duplicate(ledger: Ledger, app: TransactionSigner) -> None:
    token = ledger.sign(app, "consent.give", give_body("sp:app"))
    (first,) = ledger.accept(token)
    new = OKPKey.generate_key("Ed25519")
    ledger.accept(
        ledger.sign(
            app,
            "key.rotate",
            {"principal": "sp:app", "old_kid": app.kid, "jwk": public_jwk(new).as_dict()},
        )
    )
    head = ledger.head()
    (again,) = ledger.submit(token)
    assert isinstance(again, Accepted), again
    assert again.duplicate and again.seq == first.seq
    assert ledger.head() == head


# --- domain rules -------------------------------------------------------------------------


def test_level1_for_an_admitted_citizen_is_subject_is_platform_user(
    ledger: Ledger, app: TransactionSigner
) -> None:
    ledger.admit("ctz:p-1", "citizen")
    token = ledger.sign(app, "consent.give", give_body("sp:app", subject="ctz:p-1"))
    refuse(ledger, token, "subject_is_platform_user", signer="sp:app")


def test_level1_recorded_by_another_organisation_is_not_controller(
    ledger: Ledger, app: TransactionSigner
) -> None:
    ledger.admit("sp:other", "service_provider")
    token = ledger.sign(app, "consent.give", give_body("sp:other"))
    refuse(ledger, token, "not_controller", signer="sp:app")


def test_level1_by_a_citizen_is_role_not_allowed(ledger: Ledger, app: TransactionSigner) -> None:
    citizen = ledger.admit("ctz:p-1", "citizen")
    token = ledger.sign(citizen, "consent.give", give_body("sp:app", subject="ctz:p-1"))
    refuse(ledger, token, "role_not_allowed", signer="ctz:p-1")


def test_level2_by_another_citizen_is_not_subject(ledger: Ledger, app: TransactionSigner) -> None:
    ledger.admit("ctz:alice", "citizen")
    mallory = ledger.admit("ctz:mallory", "citizen")
    token = ledger.sign(mallory, "consent.give", give_body("sp:app", subject="ctz:alice", level=2))
    refuse(ledger, token, "not_subject", signer="ctz:mallory")


def test_level2_by_an_organisation_is_not_subject(ledger: Ledger, app: TransactionSigner) -> None:
    ledger.admit("ctz:alice", "citizen")
    token = ledger.sign(app, "consent.give", give_body("sp:app", subject="ctz:alice", level=2))
    refuse(ledger, token, "not_subject", signer="sp:app")


def test_custodial_wallet_may_give_level2_for_its_citizen(ledger: Ledger, app: TransactionSigner) -> None:
    wallet = ledger.admit("ids:wallet", "identity_service")
    ledger.admit("ctz:alice", "citizen", custodian="ids:wallet")
    given = accepted(
        ledger.submit(ledger.sign(wallet, "consent.give", give_body("sp:app", subject="ctz:alice", level=2)))[
            0
        ]
    )
    assert given.entry.data["given_by"] == "ids:wallet" and given.entry.data["level"] == 2
    # but not for a citizen it is not the custodian of
    ledger.admit("ctz:bob", "citizen")
    token = ledger.sign(wallet, "consent.give", give_body("sp:app", subject="ctz:bob", level=2))
    refuse(ledger, token, "not_subject", signer="ids:wallet")


def test_a_wallet_whose_identity_service_role_was_revoked_speaks_for_nobody(
    ledger: Ledger, app: TransactionSigner
) -> None:
    """Custody is the identity service's: another role it holds (which passes the
    signing gate for consent.give) does not keep it a wallet."""
    wallet = ledger.admit("ids:wallet", "identity_service")
    ledger.admit("ctz:alice", "citizen", custodian="ids:wallet")
    body = give_body("sp:app", subject="ctz:alice", level=2)
    ledger.accept(ledger.sign(wallet, "consent.give", body))
    for tx_type, role in (
        ("principal.grant_role", "service_provider"),
        ("principal.revoke_role", "identity_service"),
    ):
        ledger.accept(ledger.sign(ledger.operator, tx_type, {"principal": "ids:wallet", "role": role}))
    token = ledger.sign(wallet, "consent.give", give_body("sp:app", subject="ctz:alice", level=2))
    refuse(ledger, token, "not_subject", signer="ids:wallet")
    withdraw = {"consent_id": str(body["consent_id"]), "controller": "sp:app", "subject": "ctz:alice"}
    refuse(ledger, ledger.sign(wallet, "consent.withdraw", withdraw), "not_subject", signer="ids:wallet")


def test_a_level2_consent_starts_no_earlier_than_it_is_given(ledger: Ledger, app: TransactionSigner) -> None:
    """The subject consents from now on, whichever way (answering a request, or giving
    directly); a level 1 copy keeps the earlier start it records (collected on paper)."""
    citizen = ledger.admit("ctz:alice", "citizen")
    month_ago = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = give_body("sp:app", subject="ctz:alice", level=2, valid_from=month_ago)
    (direct,) = ledger.accept(ledger.sign(citizen, "consent.give", body))
    assert direct.entry.data["terms"]["valid_from"] == format_time(direct.entry.ts)
    (copy,) = ledger.accept(ledger.sign(app, "consent.give", give_body("sp:app", valid_from=month_ago)))
    assert copy.entry.data["terms"]["valid_from"] == month_ago


def _given(led: Ledger, app: TransactionSigner, **terms: Any) -> str:
    body = give_body(app.principal, **terms)
    led.accept(led.sign(app, "consent.give", body))
    return str(body["consent_id"])


def test_utilize_for_a_purpose_not_covered(ledger: Ledger, app: TransactionSigner) -> None:
    cid = _given(ledger, app)
    token = ledger.sign(app, "consent.utilize", use_body(cid, purpose="dpv:Marketing"))
    refuse(ledger, token, "purpose_not_covered", signer="sp:app")


def test_utilize_for_a_category_not_covered(ledger: Ledger, app: TransactionSigner) -> None:
    cid = _given(ledger, app)
    token = ledger.sign(
        app, "consent.utilize", use_body(cid, categories=("dpv-pd:HeartRate", "dpv-pd:Location"))
    )
    refuse(ledger, token, "category_not_covered", signer="sp:app")


def test_utilize_after_withdraw_is_consent_withdrawn(ledger: Ledger, app: TransactionSigner) -> None:
    cid = _given(ledger, app)
    ledger.accept(
        ledger.sign(app, "consent.withdraw", {"consent_id": cid, "controller": "sp:app", "subject": "p-1"})
    )
    refuse(
        ledger,
        ledger.sign(app, "consent.utilize", use_body(cid)),
        "consent_withdrawn",
        signer="sp:app",
    )


def test_utilize_before_valid_from_is_consent_not_yet_valid(clocked: ClockedLedger) -> None:
    app = clocked.admit("sp:app", "service_provider")
    cid = _given(clocked, app, valid_from=iso(clocked.clock.t + timedelta(days=1)))
    refuse(
        clocked,
        clocked.sign(app, "consent.utilize", use_body(cid)),
        "consent_not_yet_valid",
        signer="sp:app",
    )
    clocked.clock.advance(86400)
    accepted(clocked.submit(clocked.sign(app, "consent.utilize", use_body(cid)))[0])


def test_utilize_after_valid_until_is_consent_expired(clocked: ClockedLedger) -> None:
    app = clocked.admit("sp:app", "service_provider")
    cid = _given(clocked, app, valid_until=iso(clocked.clock.t + timedelta(seconds=30)))
    accepted(clocked.submit(clocked.sign(app, "consent.utilize", use_body(cid)))[0])
    clocked.clock.advance(30)
    refuse(
        clocked,
        clocked.sign(app, "consent.utilize", use_body(cid)),
        "consent_expired",
        signer="sp:app",
    )


def test_giving_a_consent_that_already_ended_is_consent_expired(
    ledger: Ledger, app: TransactionSigner
) -> None:
    past = datetime.now(UTC) - timedelta(days=1)
    body = give_body("sp:app", valid_from=iso(past - timedelta(days=1)), valid_until=iso(past))
    refuse(ledger, ledger.sign(app, "consent.give", body), "consent_expired", signer="sp:app")


def test_withdraw_twice_is_consent_withdrawn(ledger: Ledger, app: TransactionSigner) -> None:
    cid = _given(ledger, app)
    withdraw = {"consent_id": cid, "controller": "sp:app", "subject": "p-1"}
    ledger.accept(ledger.sign(app, "consent.withdraw", withdraw))
    refuse(ledger, ledger.sign(app, "consent.withdraw", withdraw), "consent_withdrawn", signer="sp:app")


def test_service_provider_admitting_is_role_not_allowed(ledger: Ledger, app: TransactionSigner) -> None:
    for kind in ("citizen", "service_provider", "operator"):
        body: dict[str, Any] = {"principal": "x:new", "kind": kind}
        refuse(ledger, ledger.sign(app, "principal.admit", body), "role_not_allowed", signer="sp:app")


def test_a_custodian_that_is_no_identity_service_is_named(ledger: Ledger, app: TransactionSigner) -> None:
    """The refusal named the signer's roles ("ids:wallet (roles identity_service) may not
    do this"), as if the signer were at fault, not the custodian it named."""
    ids = ledger.admit("ids:wallet", "identity_service")
    body = {"principal": "ctz:new", "kind": "citizen", "custodian": "sp:app"}
    refused = refuse(
        ledger, ledger.sign(ids, "principal.admit", body), "role_not_allowed", signer="ids:wallet"
    )
    assert refused.message == "the custodian sp:app is no identity service (roles service_provider)"


def test_a_signer_whose_every_role_was_revoked_is_said_to_hold_none(ledger: Ledger) -> None:
    """A wallet whose identity_service role was revoked was refused as "ids:wallet
    (roles ) may not sign consent.give"."""
    ids = ledger.admit("ids:wallet", "identity_service")
    ledger.accept(
        ledger.sign(
            ledger.operator, "principal.revoke_role", {"principal": "ids:wallet", "role": "identity_service"}
        )
    )
    body = {"principal": "ctz:new", "kind": "citizen", "custodian": "ids:wallet"}
    refused = refuse(
        ledger, ledger.sign(ids, "principal.admit", body), "role_not_allowed", signer="ids:wallet"
    )
    assert refused.message.startswith("ids:wallet (roles none) may not sign principal.admit;"), (
        refused.message
    )
    other = {"principal": OPERATOR, "jwk": public_jwk(OKPKey.generate_key("Ed25519")).as_dict()}
    refused = refuse(ledger, ledger.sign(ids, "key.add", other), "role_not_allowed", signer="ids:wallet")
    assert refused.message.startswith("ids:wallet (roles none) may not do this;"), refused.message


def test_identity_service_admitting_a_non_citizen_is_role_not_allowed(ledger: Ledger) -> None:
    ids = ledger.admit("ids:wallet", "identity_service")
    for kind in ("service_provider", "operator", "identity_service"):
        body = {"principal": "x:new", "kind": kind, "display_name": "New"}
        refuse(
            ledger,
            ledger.sign(ids, "principal.admit", body),
            "role_not_allowed",
            signer="ids:wallet",
        )
    # citizens it may admit
    citizen = OKPKey.generate_key("Ed25519")
    ledger.accept(
        ledger.sign(
            ids,
            "principal.admit",
            {
                "principal": "ctz:new",
                "kind": "citizen",
                "jwk": public_jwk(citizen).as_dict(),
                "custodian": "ids:wallet",
            },
        )
    )


def test_answer_with_different_terms_is_terms_mismatch(ledger: Ledger, app: TransactionSigner) -> None:
    alice = ledger.admit("ctz:alice", "citizen")
    cid = str(uuid.uuid4())
    ledger.accept(
        ledger.sign(app, "consent.request", {"consent_id": cid, "subject": "ctz:alice", "terms": TERMS})
    )
    changes: list[dict[str, Any]] = [
        {"purposes": ["dpv:ServiceProvision"]},
        {"data_categories": [*TERMS["data_categories"], "dpv-pd:Location"]},
        {"notice": {"url": "https://app.example/notice", "sha256": "cd" * 32}},
        {"valid_until": "2099-01-01T00:00:00Z"},
    ]
    for change in changes:
        body = give_body("sp:app", subject="ctz:alice", consent_id=cid, level=2, **change)
        refuse(ledger, ledger.sign(alice, "consent.give", body), "terms_mismatch", signer="ctz:alice")
    # the same terms (here in another order) answer the request
    same = give_body(
        "sp:app",
        subject="ctz:alice",
        consent_id=cid,
        level=2,
        purposes=list(reversed(TERMS["purposes"])),
    )
    accepted(ledger.submit(ledger.sign(alice, "consent.give", same))[0])


def test_duplicate_consent_id_for_the_same_controller_is_consent_exists(
    ledger: Ledger, app: TransactionSigner
) -> None:
    cid = _given(ledger, app)
    refuse(
        ledger,
        ledger.sign(app, "consent.give", give_body("sp:app", consent_id=cid)),
        "consent_exists",
        signer="sp:app",
    )
    request = {"consent_id": cid, "subject": "p-1", "terms": TERMS}
    refuse(ledger, ledger.sign(app, "consent.request", request), "consent_exists", signer="sp:app")
    upper = cid.upper()  # the same UUID written differently is the same consent
    refuse(
        ledger,
        ledger.sign(app, "consent.give", give_body("sp:app", consent_id=upper)),
        "consent_exists",
        signer="sp:app",
    )


def test_same_consent_id_for_another_controller_is_independent(
    ledger: Ledger, app: TransactionSigner
) -> None:
    other = ledger.admit("sp:other", "service_provider")
    cid = _given(ledger, app)
    accepted(ledger.submit(ledger.sign(other, "consent.give", give_body("sp:other", consent_id=cid)))[0])
    # ... and withdrawing one leaves the other usable
    ledger.accept(
        ledger.sign(app, "consent.withdraw", {"consent_id": cid, "controller": "sp:app", "subject": "p-1"})
    )
    accepted(ledger.submit(ledger.sign(other, "consent.utilize", use_body(cid)))[0])
    refuse(
        ledger,
        ledger.sign(app, "consent.utilize", use_body(cid)),
        "consent_withdrawn",
        signer="sp:app",
    )


def test_utilize_of_another_controllers_consent_is_unknown_consent(
    ledger: Ledger, app: TransactionSigner
) -> None:
    other = ledger.admit("sp:other", "service_provider")
    cid = _given(ledger, app)
    refuse(
        ledger,
        ledger.sign(other, "consent.utilize", use_body(cid)),
        "unknown_consent",
        signer="sp:other",
    )


# --- batches ------------------------------------------------------------------------------


def test_batch_mixing_good_and_bad(ledger: Ledger, app: TransactionSigner) -> None:
    other = ledger.admit("sp:other", "service_provider")
    cid = _given(ledger, app)
    head = ledger.head()
    impostor = OKPKey.generate_key("Ed25519")

    good1 = ledger.sign(app, "consent.utilize", use_body(cid))
    bad_sig = sign_compact(
        canonical_json(payload_for(app, "consent.give", give_body("sp:app"))), app.kid, impostor
    )
    bad_domain = ledger.sign(app, "consent.utilize", use_body(cid, purpose="dpv:Marketing"))
    good2 = ledger.sign(other, "consent.give", give_body("sp:other"))
    bad_envelope = good2 + "=="
    bad_nonce = ledger.sign(other, "consent.give", give_body("sp:other"), nonce=other.nonce)
    good3 = ledger.sign(
        app, "consent.withdraw", {"consent_id": cid, "controller": "sp:app", "subject": "p-1"}
    )
    bad_after = ledger.sign(app, "consent.utilize", use_body(cid))

    outcomes = ledger.submit(good1, bad_sig, bad_domain, good2, bad_envelope, bad_nonce, good3, bad_after)
    codes = [o.code if isinstance(o, Rejected) else o.seq for o in outcomes]
    n = head[0]
    assert codes == [
        n + 1,
        "bad_signature",
        "purpose_not_covered",
        n + 2,
        "non_canonical_base64",
        "nonce_reused",
        n + 3,
        "consent_withdrawn",
    ]
    assert all(not o.duplicate for o in outcomes if isinstance(o, Accepted))
    assert ledger.head()[0] == n + 3
    store = ledger.sequencer.store
    assert [e.seq for e in store.read_entries(n + 1, 10)] == [n + 1, n + 2, n + 3]
    assert [e.canonical for e in store.read_entries(n + 1, 10)] == [
        o.entry.canonical for o in outcomes if isinstance(o, Accepted)
    ]
    # nonces: only accepted transactions moved them (bad_after's nonce was not consumed)
    assert store.last_nonce("sp:app") == app.nonce - 1
    assert store.last_nonce("sp:other") == other.nonce


def test_refused_transaction_does_not_consume_its_nonce(ledger: Ledger, app: TransactionSigner) -> None:
    cid = _given(ledger, app)
    nonce = app.nonce + 1
    bad = ledger.sign(app, "consent.utilize", use_body(cid, purpose="dpv:Marketing"), nonce=nonce)
    refuse(ledger, bad, "purpose_not_covered", signer="sp:app")
    good = ledger.sign(app, "consent.utilize", use_body(cid), nonce=nonce)
    assert accepted(ledger.submit(good)[0]).seq == ledger.head()[0]
    assert ledger.sequencer.store.last_nonce("sp:app") == nonce


def test_batch_of_only_refusals_changes_nothing(any_ledger: Ledger) -> None:
    app = any_ledger.admit("sp:app", "service_provider")
    head = any_ledger.head()
    outcomes = any_ledger.submit(
        "x.y.z",
        any_ledger.sign(app, "consent.give", give_body("sp:app"), now=any_ledger.now() - 3600),
        any_ledger.sign(app, "consent.frobnicate", {}),
    )
    assert [o.code for o in outcomes] == ["non_canonical_base64", "expired", "unknown_type"]
    assert any_ledger.head() == head
    assert any_ledger.sequencer.store.last_nonce("sp:app") == 0


def test_ledgers_made_with_default_options_do_not_share_an_id(tmp_path: Path) -> None:
    """`dfg init` without --chain names each ledger anew: a fixed default gave every such
    ledger one id (a staging ledger and the production one, say), and a transaction
    signed for one was valid on the other for a provider whose key both admitted."""
    from click.testing import CliRunner
    from conftest import give_level1

    from gateways.cli.main import cli
    from infra.bootstrap import open_sequencer

    app_key = OKPKey.generate_key("Ed25519")
    ledgers: list[Ledger] = []
    for name in ("staging", "production"):
        settings = Settings(data_dir=tmp_path / name)
        assert CliRunner().invoke(cli, ["init", "--data", str(settings.data_dir)]).exit_code == 0
        sequencer = open_sequencer(settings)
        assert sequencer.chain is not None
        operator = root_signer(settings, sequencer.chain, OPERATOR)
        operator.nonce = 1
        ledger = Ledger(settings, sequencer, operator)
        body = {"principal": "sp:app", "kind": "service_provider", "display_name": "App"}
        ledger.accept(
            ledger.sign(operator, "principal.admit", {**body, "jwk": public_jwk(app_key).as_dict()})
        )
        ledgers.append(ledger)
    staging, production = ledgers
    try:
        assert staging.sequencer.chain != production.sequencer.chain
        assert all(len(led.sequencer.chain or "") == len("dfg-") + 8 for led in ledgers)
        for_staging = give_level1(
            staging, TransactionSigner("sp:app", app_key, staging.sequencer.chain or ""), "p-1"
        )
        staging.accept(for_staging)
        before = production.head()
        (outcome,) = production.submit(for_staging)
        assert isinstance(outcome, Rejected) and outcome.code == "wrong_chain"
        assert production.head() == before
    finally:
        for led in ledgers:
            led.sequencer.store.close()


@pytest.mark.parametrize("kid", ["sp:app#" + "A" * 5000, "B" * 5000, "sp:other#" + "C" * 5000])
def test_a_refusal_quotes_a_long_key_id_by_its_start_only(
    ledger: Ledger, app: TransactionSigner, kid: str
) -> None:
    """A key id of 5,000 characters was echoed back whole in the refusal's detail."""
    ledger.admit("sp:other", "service_provider")
    token = forge(header_for(app, kid=kid), _good_payload(app), app.key)
    code = {"sp:app": "unknown_key", "sp:other": "signer_mismatch"}.get(kid.partition("#")[0], "unknown_key")
    refused = refuse(ledger, token, code, signer="sp:app")
    assert len(refused.message) < 300, refused.message


def test_a_huge_number_in_a_payload_is_named_in_the_clients_terms(
    ledger: Ledger, app: TransactionSigner
) -> None:
    """Python's own refusal told a client in any language to call sys.set_int_max_str_digits()."""
    payload = raw_json(_good_payload(app))[:-1] + b',"n":' + b"9" * 5000 + b"}"
    refused = refuse(ledger, forge(header_for(app), payload, app.key), "malformed_payload", signer="sp:app")
    assert "more than 4,300 digits" in refused.message and "sys." not in refused.message, refused.message
