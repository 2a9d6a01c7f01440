"""Fixtures: a fresh ledger per test on SQLite and, where marked, on PostgreSQL.

PostgreSQL comes from DFG_TEST_DATABASE_URL (default: the local trust-auth server);
each test gets its own schema, dropped afterwards. When PostgreSQL is unreachable the
tests skip with the reason on a laptop, and fail in CI (CI=true).
"""

from __future__ import annotations

import base64
import os
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import ECKey, OKPKey

from gateways.kafka.client import KafkaSettings
from infra.bootstrap import create_ledger, open_sequencer, open_views, root_signer
from infra.settings import Settings
from infra.tansu import TansuBroker
from ledger.note import Verifier
from ledger.sequencer import Accepted, Sequencer
from ledger.signing import TransactionSigner, public_jwk
from ledger.witness import witness_verifier
from projections.base import catch_up, prepare
from projections.consent_state import ConsentStateView

warnings.filterwarnings("ignore", message="EdDSA is deprecated")

PG_URL = os.environ.get("DFG_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
CHAIN = "dfg-test"
OPERATOR = "op:federation"
TERMS = {
    "purposes": ["dpv:ServiceProvision", "dpv:ScientificResearch"],
    "data_categories": ["dpv-pd:HealthRecord", "dpv-pd:HeartRate"],
    "notice": {"url": "https://app.example/notice", "sha256": "ab" * 32},
}


def postgres_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    import psycopg

    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:
        return f"PostgreSQL at {PG_URL} is not reachable: {exc}"


@pytest.fixture(scope="session")
def pg_url() -> str:
    problem = postgres_available()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)  # CI installs and starts PostgreSQL itself: absence is a failure
        pytest.skip(problem)  # a developer laptop without PostgreSQL: say why, run the rest
    return PG_URL


@pytest.fixture
def pg_schema_url(pg_url: str) -> Iterator[str]:
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{pg_url}?schema={schema}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@dataclass
class Ledger:
    """A ledger with its operator and helpers to admit principals and sign for them."""

    settings: Settings
    sequencer: Sequencer
    operator: TransactionSigner

    def now(self) -> float:
        return time.time()

    def sign(self, signer: TransactionSigner, tx_type: str, body: dict[str, Any], **kw: Any) -> str:
        return signer.sign(tx_type, body, now=kw.pop("now", self.now()), **kw)

    def submit(self, *tokens: str) -> list[Any]:
        return self.sequencer.submit(list(tokens))

    def accept(self, *tokens: str) -> list[Accepted]:
        outcomes = self.submit(*tokens)
        for outcome in outcomes:
            assert isinstance(outcome, Accepted), outcome
        return outcomes

    def admit(self, principal: str, kind: str, *, es256k: bool = False, **extra: Any) -> TransactionSigner:
        key = ECKey.generate_key("secp256k1") if es256k else OKPKey.generate_key("Ed25519")
        body: dict[str, Any] = {
            "principal": principal,
            "kind": kind,
            "jwk": public_jwk(key).as_dict(),
            **extra,
        }
        if kind != "citizen" and "display_name" not in body:
            body["display_name"] = principal
        by = extra.pop("by", None) or self.operator
        body.pop("by", None)
        self.accept(self.sign(by, "principal.admit", body))
        return TransactionSigner(principal, key, CHAIN)

    def head(self) -> tuple[int, bytes]:
        return self.sequencer.store.head()


def make_ledger(settings: Settings, *, first_release: bool = False) -> Ledger:
    """``first_release``: a genesis entry as the first release wrote it (no ``rules``:
    version 1); by default, one that names the newest rules."""
    extra = {"rules": None} if first_release else {}
    create_ledger(
        settings, chain=CHAIN, origin=None, operator=OPERATOR, display_name="Test federation", **extra
    )
    sequencer = open_sequencer(settings)
    operator = root_signer(settings, CHAIN, OPERATOR)
    operator.nonce = 1
    return Ledger(settings, sequencer, operator)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = make_ledger(Settings(data_dir=tmp_path / "data"))
    yield led
    led.sequencer.store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """The same test on both engines."""
    url = request.getfixturevalue("pg_schema_url") if request.param == "postgres" else None
    led = make_ledger(Settings(data_dir=tmp_path / "data", database_url=url))
    yield led
    led.sequencer.store.close()


LEVEL1_TERMS = {
    "purposes": ["dpv:ServiceProvision"],
    "data_categories": ["dpv-pd:HealthRecord"],
    "notice": {"url": "https://app.example/notice", "sha256": "ab" * 32},
}


def give_level1(ledger: Ledger, app: TransactionSigner, subject: str, controller: str = "sp:app") -> str:
    """A signed level 1 consent copy by ``app`` for ``subject`` (a fresh consent id)."""
    body = {
        "consent_id": str(uuid.uuid4()),
        "controller": controller,
        "subject": subject,
        "level": 1,
        "method": "app",
        "terms": LEVEL1_TERMS,
    }
    return ledger.sign(app, "consent.give", body)


def assert_outage_then_fault_logged(caplog: pytest.LogCaptureFixture, logger: str, cause: str) -> None:
    """A storage outage was logged in one line naming its cause, then a fault with its
    traceback, and nothing else by ``logger``."""
    outage, fault = [r for r in caplog.records if r.name == logger]
    assert f"the database cannot be used ({cause})" in outage.getMessage()
    assert outage.exc_info is None and fault.exc_info is not None


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """A real Kafka-protocol broker (Tansu) on a free loopback port, shared by a module's
    tests (each uses topics of its own)."""
    with TansuBroker(log_dir=tmp_path_factory.mktemp("tansu")) as running:
        yield running


@pytest.fixture
def kafka(broker: TansuBroker) -> KafkaSettings:
    return KafkaSettings(bootstrap=broker.bootstrap, request_timeout_ms=5000)


def new_witness(name: str) -> tuple[Ed25519PrivateKey, Verifier]:
    """A witness's fresh Ed25519 key and its cosignature verifier key (as ``dfg node
    keygen`` makes them), for tests that cosign checkpoints by hand."""
    key = Ed25519PrivateKey.generate()
    x = base64.urlsafe_b64encode(key.public_key().public_bytes_raw()).rstrip(b"=").decode()
    verifier = witness_verifier(name, {"kty": "OKP", "crv": "Ed25519", "x": x})
    assert verifier is not None
    return key, verifier


@contextmanager
def consent_view(ledger: Ledger) -> Iterator[Any]:
    """A read cursor on the ledger's consent_state view, caught up with its log."""
    store = ledger.sequencer.store
    db = open_views(ledger.settings)
    try:
        prepare(db, ConsentStateView(), store.read_entries)
        catch_up(db, ConsentStateView(), store.read_entries)
        with db.transaction(commit=False) as cursor:
            yield cursor
    finally:
        db.close()
