"""Realistic signed activity for a demo federation, so every tool can be tried at once.

A few organisations (service providers, data providers, an analyst organisation,
node operators, an auditor and a wallet/identity service) are admitted; pseudonymous
people appear, some as platform users with custodial wallet keys; consents are
recorded (level 1), requested, given, declined, used, withdrawn, and some expire;
organisations rotate keys. Every transaction is really signed by its principal.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from joserfc.jwk import ECKey, OKPKey

from ledger.signing import TransactionSigner, public_jwk

PURPOSES = [
    "dpv:ServiceProvision",
    "dpv:ScientificResearch",
    "dpv:PersonalisedBenefits",
    "dpv:HealthcareManagement",
    "dpv:ResearchAndDevelopment",
]
CATEGORIES = [
    "dpv-pd:HealthRecord",
    "dpv-pd:BloodPressure",
    "dpv-pd:HeartRate",
    "dpv-pd:PhysicalActivity",
    "dpv-pd:ECG",
    "dpv-pd:Sleep",
    "dpv-pd:Weight",
]
NOTICE = {
    "url": "https://wellbeing.example/privacy/v3",
    "sha256": hashlib.sha256(b"Well-being app privacy notice, version 3").hexdigest(),
}
ORGANISATIONS = [
    ("sp:wellbeing-app", "service_provider", "Well-being app"),
    ("sp:cardio-clinic", "service_provider", "Cardiology clinic"),
    ("sp:diabetes-coach", "service_provider", "Diabetes coaching service"),
    ("dp:bp-registry", "data_provider", "Blood pressure registry"),
    ("dp:hrv-lab", "data_provider", "Heart-rate variability lab"),
    ("an:uni-research", "analyst_org", "University research group"),
    ("node:alpha", "node_operator", "Computation node Alpha"),
    ("node:beta", "node_operator", "Computation node Beta"),
    ("node:gamma", "node_operator", "Computation node Gamma"),
    ("aud:watchdog", "auditor", "Independent auditor"),
    ("ids:wallet", "identity_service", "Custodial wallet and identity service"),
]
CONTROLLERS = [o[0] for o in ORGANISATIONS if o[1] in ("service_provider", "data_provider", "analyst_org")]


@dataclass
class _Consent:
    controller: str
    consent_id: str
    subject: str
    purposes: list[str]
    categories: list[str]
    level: int
    valid_until: float | None


@dataclass
class DemoFederation:
    """Tracks what the generator has done so it only signs transactions that make sense."""

    chain: str
    operator: TransactionSigner
    rng: random.Random
    clock: Callable[[], float] = time.time
    signers: dict[str, TransactionSigner] = field(default_factory=dict)
    citizens: list[str] = field(default_factory=list)
    active: list[_Consent] = field(default_factory=list)
    requested: list[_Consent] = field(default_factory=list)
    people: int = 0

    def _key(self, kind: str = "ed") -> OKPKey | ECKey:
        return OKPKey.generate_key("Ed25519") if kind == "ed" else ECKey.generate_key("secp256k1")

    def _sign(self, signer: TransactionSigner, tx_type: str, body: dict[str, Any]) -> str:
        return signer.sign(tx_type, body, now=self.clock(), valid_for=3600)

    def setup(self) -> Iterator[str]:
        for principal, kind, name in ORGANISATIONS:
            key = self._key()
            self.signers[principal] = TransactionSigner(principal, key, self.chain)
            yield self._sign(
                self.operator,
                "principal.admit",
                {
                    "principal": principal,
                    "kind": kind,
                    "display_name": name,
                    "jwk": public_jwk(key).as_dict(),
                },
            )

    def activity(self) -> Iterator[str]:
        """An endless, plausible stream of transactions."""
        actions: list[tuple[float, Callable[[], str | None]]] = [
            (30, self._level1_consent),
            (4, self._admit_citizen),
            (8, self._request),
            (7, self._answer_request),
            (4, self._citizen_consent),
            (30, self._use),
            (5, self._withdraw),
            (0.3, self._rotate_key),
        ]
        weights = [w for w, _ in actions]
        while True:
            ((_, action),) = self.rng.choices(actions, weights)
            tx = action()
            if tx is not None:
                yield tx

    # --- actions -----------------------------------------------------------------------

    def _pseudonym(self) -> str:
        self.people += 1
        return "p-" + hashlib.sha256(f"{self.chain}/{self.people}".encode()).hexdigest()[:20]

    def _terms(self, short: bool) -> tuple[dict[str, Any], list[str], list[str], float | None]:
        purposes = self.rng.sample(PURPOSES, self.rng.randint(1, 2))
        categories = self.rng.sample(CATEGORIES, self.rng.randint(1, 3))
        now = self.clock()
        valid_until = now + (self.rng.uniform(1, 5) if short else 365 * 86400)
        terms = {
            "purposes": purposes,
            "data_categories": categories,
            "notice": NOTICE,
            "valid_until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(valid_until) + 1)),
        }
        return terms, purposes, categories, valid_until + 1

    def _level1_consent(self) -> str:
        controller = self.rng.choice(CONTROLLERS)
        terms, purposes, categories, until = self._terms(short=self.rng.random() < 0.05)
        consent = _Consent(
            controller,
            str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            self._pseudonym(),
            purposes,
            categories,
            1,
            until,
        )
        self.active.append(consent)
        return self._sign(
            self.signers[controller],
            "consent.give",
            {
                "consent_id": consent.consent_id,
                "controller": controller,
                "subject": consent.subject,
                "level": 1,
                "method": self.rng.choice(["app", "web_form", "paper"]),
                "terms": terms,
            },
        )

    def _admit_citizen(self) -> str:
        citizen = "cit:" + self._pseudonym()
        key = self._key("ec" if self.rng.random() < 0.3 else "ed")
        self.signers[citizen] = TransactionSigner(citizen, key, self.chain)
        self.citizens.append(citizen)
        return self._sign(
            self.signers["ids:wallet"],
            "principal.admit",
            {
                "principal": citizen,
                "kind": "citizen",
                "custodian": "ids:wallet",
                "jwk": public_jwk(key).as_dict(),
            },
        )

    def _request(self) -> str | None:
        if not self.citizens:
            return None
        controller = self.rng.choice(CONTROLLERS)
        terms, purposes, categories, until = self._terms(short=False)
        consent = _Consent(
            controller,
            str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            self.rng.choice(self.citizens),
            purposes,
            categories,
            2,
            until,
        )
        self.requested.append(consent)
        return self._sign(
            self.signers[controller],
            "consent.request",
            {
                "consent_id": consent.consent_id,
                "subject": consent.subject,
                "terms": terms,
            },
        )

    def _answer_request(self) -> str | None:
        if not self.requested:
            return None
        consent = self.requested.pop(self.rng.randrange(len(self.requested)))
        by = consent.subject if self.rng.random() < 0.6 else "ids:wallet"
        body = {
            "consent_id": consent.consent_id,
            "controller": consent.controller,
            "subject": consent.subject,
        }
        if self.rng.random() < 0.2:
            return self._sign(self.signers[by], "consent.decline", body)
        self.active.append(consent)
        return self._sign(self.signers[by], "consent.give", {**body, "level": 2, "method": "wallet"})

    def _citizen_consent(self) -> str | None:
        if not self.citizens:
            return None
        citizen = self.rng.choice(self.citizens)
        controller = self.rng.choice(CONTROLLERS)
        terms, purposes, categories, until = self._terms(short=False)
        consent = _Consent(
            controller,
            str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            citizen,
            purposes,
            categories,
            2,
            until,
        )
        self.active.append(consent)
        return self._sign(
            self.signers[citizen],
            "consent.give",
            {
                "consent_id": consent.consent_id,
                "controller": controller,
                "subject": citizen,
                "level": 2,
                "method": "app",
                "terms": terms,
            },
        )

    def _pick_active(self) -> _Consent | None:
        now = self.clock()
        while self.active:
            i = self.rng.randrange(len(self.active))
            consent = self.active[i]
            if consent.valid_until is not None and consent.valid_until <= now + 1:
                self.active[i] = self.active[-1]
                self.active.pop()  # expired: it stays on the ledger, the demo stops using it
                continue
            return consent
        return None

    def example_question(self) -> tuple[str, str, str] | None:
        """(subject, controller, purpose) of a consent given and neither withdrawn nor
        expired (for a minute more, at least): something a newcomer can ask about."""
        now = self.clock()
        for consent in self.active:
            if consent.valid_until is None or consent.valid_until > now + 60:
                return consent.subject, consent.controller, consent.purposes[0]
        return None

    def _use(self) -> str | None:
        consent = self._pick_active()
        if consent is None:
            return None
        return self._sign(
            self.signers[consent.controller],
            "consent.utilize",
            {
                "consent_id": consent.consent_id,
                "purpose": self.rng.choice(consent.purposes),
                "data_categories": self.rng.sample(consent.categories, 1),
            },
        )

    def _withdraw(self) -> str | None:
        consent = self._pick_active()
        if consent is None:
            return None
        self.active.remove(consent)
        by = consent.controller if consent.level == 1 else consent.subject
        return self._sign(
            self.signers[by],
            "consent.withdraw",
            {
                "consent_id": consent.consent_id,
                "controller": consent.controller,
                "subject": consent.subject,
            },
        )

    def _rotate_key(self) -> str:
        principal = self.rng.choice(CONTROLLERS)
        signer = self.signers[principal]
        new_key = self._key()
        tx = self._sign(
            signer,
            "key.rotate",
            {
                "principal": principal,
                "old_kid": signer.kid,
                "jwk": public_jwk(new_key).as_dict(),
            },
        )
        self.signers[principal] = TransactionSigner(principal, new_key, self.chain, nonce=signer.nonce)
        return tx
