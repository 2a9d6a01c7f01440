"""The Python SDK (gateways/sdk) against a real dfg server on a loopback port.

One server per module on SQLite (tests use distinct subjects and consent ids, so they
do not depend on each other), one flow on PostgreSQL, and a flaky proxy in front of
the server to show that retries resubmit the same JWS safely.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import CHAIN, OPERATOR, TERMS
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_server import running_server
from pydantic import ValidationError

from domain.identifiers import PSEUDONYM_PATTERN
from gateways.sdk import (
    Accepted,
    AsyncConsentClient,
    ConsentClient,
    ConsentQuestion,
    DfgApiError,
    DfgConnectionError,
    KeyRing,
    NonceSource,
    ReceiptError,
    Refused,
    RetryPolicy,
    TransactionBuilder,
    consent_terms,
    decode_payload,
    generate_key,
    kid_for,
    load_key,
    new_consent_id,
    notice_sha256,
    pseudonym,
    public_jwk,
    save_key,
    verify_receipt,
)
from gateways.sdk.keys import Algorithm, PrivateKey
from infra.bootstrap import ROOT_KEY_FILE, checkpoint_key, create_ledger
from infra.keyfiles import KeyFileError
from infra.settings import Settings
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.entry import Entry
from ledger.merkle import leaf_hash
from ledger.note import SignerKey

PROVIDER = "sp:wellbeing-app"
PURPOSE = "dpv:ServiceProvision"
CATEGORY = "dpv-pd:HeartRate"
SECRET = b"0123456789abcdef-provider-secret"
FAST_RETRY = RetryPolicy(attempts=4, backoff=0.01)


@dataclass
class Env:
    url: str
    client: ConsentClient
    operator: TransactionBuilder
    provider: TransactionBuilder
    provider_key: PrivateKey
    checkpoint_key: str

    def give(self) -> tuple[str, uuid.UUID, str]:
        """A signed level 1 consent copy for a new person: (subject, consent id, JWS)."""
        subject = pseudonym(SECRET, f"user-{uuid.uuid4()}")
        cid = new_consent_id()
        return subject, cid, self.provider.give_consent_copy(consent_id=cid, subject=subject, terms=TERMS)


def _start(settings: Settings) -> tuple[TransactionBuilder, str]:
    create_ledger(settings, chain=CHAIN, origin=None, operator=OPERATOR, display_name="Test federation")
    key = checkpoint_key(settings)
    assert key is not None
    operator = TransactionBuilder.from_key_file(settings.keys_dir / ROOT_KEY_FILE, OPERATOR, CHAIN)
    return operator, key.verifier().to_string()


@contextmanager
def environment(settings: Settings) -> Iterator[Env]:
    operator, vkey = _start(settings)
    with running_server(settings) as url:
        client = ConsentClient(url, checkpoint_key=vkey, retry=FAST_RETRY)
        key = generate_key()
        admitted = client.submit(
            operator.admit_principal(
                principal=PROVIDER, kind="service_provider", jwk=public_jwk(key), display_name="Wellbeing"
            )
        )
        assert not admitted.duplicate
        yield Env(url, client, operator, TransactionBuilder(PROVIDER, key, CHAIN), key, vkey)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with environment(Settings(data_dir=tmp_path_factory.mktemp("sdk") / "data")) as found:
        yield found


# --- keys, pseudonyms, builders (no server) ------------------------------------------------


def test_keys_are_saved_privately_never_overwritten_and_name_their_owner(tmp_path: Path) -> None:
    algorithms: tuple[Algorithm, ...] = ("EdDSA", "ES256K")
    for alg in algorithms:
        key = generate_key(alg)
        path = save_key(tmp_path / "keys" / f"{alg}.jwk", key)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with pytest.raises(KeyFileError, match="refusing to overwrite"):
            save_key(path, generate_key(alg))
        loaded = load_key(path)
        assert public_jwk(loaded) == public_jwk(key)
        assert "d" not in public_jwk(key)
        kid = kid_for(PROVIDER, key)
        assert kid.startswith(PROVIDER + "#") and kid == kid_for(PROVIDER, public_jwk(key))
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="readable by other users"):
        load_key(path)


def test_pseudonyms_are_keyed_stable_and_valid() -> None:
    one = pseudonym(SECRET, "alice@example.org")
    assert one == pseudonym(SECRET, "alice@example.org")
    assert one != pseudonym(SECRET, "bob@example.org")
    assert one != pseudonym(b"another secret of 32 bytes......", "alice@example.org")
    hexed = pseudonym(SECRET, "alice@example.org", encoding="hex", prefix="sub.")
    assert all(re.match(PSEUDONYM_PATTERN, p) for p in (one, hexed))
    assert "alice" not in one and len(hexed) == 4 + 64
    with pytest.raises(ValueError, match="at least 16"):
        pseudonym(b"short", "alice")


def test_builder_validates_locally_and_nonces_strictly_increase() -> None:
    ticks = iter([100, 100, 50, 1000])
    persisted: list[int] = []
    builder = TransactionBuilder(
        PROVIDER,
        generate_key(),
        CHAIN,
        nonces=NonceSource(last=10, clock=lambda: next(ticks)),
        on_nonce=persisted.append,
    )
    with pytest.raises(ValidationError, match="subject"):
        builder.give_consent_copy(consent_id=uuid.uuid4(), subject="alice@example.org", terms=TERMS)
    assert builder.last_nonce == 10  # a refused body consumes no nonce
    tokens = [builder.withdraw_consent(consent_id=uuid.uuid4(), subject="p-1") for _ in range(4)]
    nonces = [decode_payload(t)["nonce"] for t in tokens]
    assert nonces == [100, 101, 102, 1000] == persisted
    payload = decode_payload(tokens[0])
    assert (payload["signer"], payload["chain"], payload["type"]) == (PROVIDER, CHAIN, "consent.withdraw")
    assert payload["body"]["controller"] == PROVIDER
    restored = TransactionBuilder(PROVIDER, generate_key(), CHAIN, last_nonce=2**52)
    assert (
        decode_payload(
            restored.utilize_consent(consent_id=uuid.uuid4(), purpose=PURPOSE, data_categories=[CATEGORY])
        )["nonce"]
        == 2**52 + 1
    )


# --- submitting -------------------------------------------------------------------------------


def test_submit_single_and_batch(env: Env) -> None:
    _, cid, token = env.give()
    accepted = env.client.submit(token)
    assert isinstance(accepted, Accepted) and not accepted.duplicate
    assert accepted.entry["event"] == "Consent.Given" and accepted.entry["tx"] == token

    _, _, first = env.give()
    _, _, second = env.give()
    bad = env.provider.utilize_consent(consent_id=cid, purpose="dpv:Marketing", data_categories=[CATEGORY])
    use = env.provider.utilize_consent(consent_id=cid, purpose=PURPOSE, data_categories=[CATEGORY])
    results = env.client.submit_batch([first, second, bad, use, first])
    a, b, refused, used, again = results
    assert isinstance(a, Accepted) and isinstance(b, Accepted) and isinstance(used, Accepted)
    assert b.seq == a.seq + 1 and used.seq == b.seq + 1
    assert isinstance(refused, Refused) and (refused.code, refused.status) == ("purpose_not_covered", 422)
    assert refused.error().code == "purpose_not_covered"
    assert isinstance(again, Accepted) and again.duplicate and again.seq == a.seq
    assert env.client.submit_batch([]) == []


def test_a_secp256k1_provider(env: Env) -> None:
    key = generate_key("ES256K")
    env.client.submit(
        env.operator.admit_principal(
            principal="sp:wallet-friendly", kind="service_provider", jwk=key, display_name="ES256K provider"
        )
    )
    builder = TransactionBuilder("sp:wallet-friendly", key, CHAIN)
    subject = pseudonym(SECRET, "k1-user")
    accepted = env.client.submit(
        builder.give_consent_copy(consent_id=uuid.uuid4(), subject=subject, terms=TERMS)
    )
    assert env.client.check(subject, "sp:wallet-friendly", PURPOSE).granted
    assert (
        verify_receipt(env.client.entry(accepted.seq), env.checkpoint_key, public_jwk(key)).kid == builder.kid
    )


def test_a_token_that_is_not_ascii_is_refused_by_the_server_as_any_bad_jws(env: Env) -> None:
    """It used to raise UnicodeEncodeError in the SDK, before any request."""
    _, _, token = env.give()
    with pytest.raises(DfgApiError) as refused:
        env.client.submit(token[:-1] + "é")
    assert refused.value.status == 400 and refused.value.code, refused.value


def test_one_string_where_a_list_of_codes_belongs_is_refused_not_spelt_out(env: Env) -> None:
    """A string is an iterable of its characters: ``data_categories="Health"`` was signed
    onto the ledger as the six categories H, e, a, l, t, h, and a check asked about them
    (granted for such a consent, category_not_covered for one that covers "Health")."""
    notice = {"notice_url": "https://app.example/notice", "notice_sha256": "0" * 64}
    with pytest.raises(TypeError, match="data_categories: a list of codes"):
        consent_terms(purposes=[PURPOSE], data_categories="Health", **notice)
    with pytest.raises(TypeError, match="purposes: a list of codes"):
        consent_terms(purposes="Research", data_categories=[CATEGORY], **notice)
    with pytest.raises(TypeError, match="data_categories: a list of codes"):
        env.provider.utilize_consent(consent_id=new_consent_id(), purpose=PURPOSE, data_categories="Heal")
    for question in (
        lambda: env.client.check("p-x", PROVIDER, PURPOSE, "Health"),
        lambda: env.client.check_many([ConsentQuestion.of("p-x", PROVIDER, PURPOSE, "Health")]),
        lambda: env.client.check_many(
            [{"subject": "p-x", "controller": PROVIDER, "purpose": PURPOSE, "categories": "Health"}]
        ),
        lambda: ConsentQuestion("p-x", PROVIDER, PURPOSE, "Health"),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError, match="categories: a list of codes"):
            question()
    kept = ConsentQuestion.of("p-x", PROVIDER, PURPOSE, (c for c in ["Health", "Sleep"]))
    assert kept.categories == ("Health", "Sleep")


def test_resubmitting_the_same_jws_returns_the_same_entry(env: Env) -> None:
    _, _, token = env.give()
    first = env.client.submit(token)
    second = env.client.submit(token)
    assert (second.seq, second.leaf_hash, second.duplicate) == (first.seq, first.leaf_hash, True)


@contextmanager
def serve_app(app: web.Application) -> Iterator[str]:
    """Any aiohttp app on a free loopback port, in a thread with its own event loop."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    ready: list[str] = []

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert runner.addresses
        ready.append(f"http://127.0.0.1:{runner.addresses[0][1]}")

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if ready:
                break
            thread.join(0.01)
        yield ready[0]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def flaky_proxy(target: str, failure: str, failures: int = 1) -> tuple[web.Application, list[str]]:
    """Forwards every request to ``target``, but for the first ``failures`` POSTs the
    answer is lost *after* the ledger handled it: a 503, or a dropped connection."""
    left = [failures]
    seen: list[str] = []

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append(request.method)
        headers = {"Content-Type": request.headers.get("Content-Type", "application/octet-stream")}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, target + request.path_qs, data=body or None, headers=headers
            ) as answer,
        ):
            raw, status, kind = await answer.read(), answer.status, answer.content_type
        if request.method == "POST" and left[0] > 0:
            left[0] -= 1
            if failure == "drop":
                assert request.transport is not None
                request.transport.abort()
                raise ConnectionResetError("answer lost")
            return web.json_response(
                {"type": "x", "title": "x", "status": 503, "code": "ledger_unavailable", "detail": "busy"},
                status=503,
                content_type="application/problem+json",
            )
        return web.Response(body=raw, status=status, content_type=kind)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    return app, seen


@pytest.mark.parametrize("failure", ["drop", "503"])
def test_retry_after_a_lost_answer_resubmits_the_same_jws(env: Env, failure: str) -> None:
    app, seen = flaky_proxy(env.url, failure)
    subject, _, token = env.give()
    with serve_app(app) as proxy:
        accepted = ConsentClient(proxy, retry=FAST_RETRY).submit(token)
    assert seen == ["POST", "POST"]
    assert accepted.duplicate  # the first attempt was recorded; its answer was lost
    assert env.client.submit(token).seq == accepted.seq
    assert env.client.check(subject, PROVIDER, PURPOSE).granted


def test_no_answer_at_all_raises_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    delays: list[float] = []
    client = ConsentClient(f"http://127.0.0.1:{port}", retry=RetryPolicy(3, 0.01), sleep=delays.append)
    with pytest.raises(DfgConnectionError) as caught:
        client.health()
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (0, "connection_failed", True)
    assert len(delays) == 2


@pytest.mark.parametrize("policy", [{"attempts": 0}, {"attempts": -1}, {"attempts": 2.5}, {"backoff": -1}])
def test_a_retry_policy_that_would_never_send_is_refused_when_made(policy: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**policy)
    assert RetryPolicy(attempts=1).attempts == 1  # no retry: one try


def not_the_api(body: bytes, content_type: str) -> web.Application:
    """A server that answers every request 200 with ``body``: what a base URL that
    reaches a web page, another service or a proxy's page answers."""

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


UNEXPECTED_CALLS: list[tuple[str, Callable[[Any], Any]]] = [
    ("submit", lambda c: c.submit("a.b.c")),
    ("submit_batch", lambda c: c.submit_batch(["a.b.c"])),
    ("check", lambda c: c.check("p-x", PROVIDER, PURPOSE)),
    ("check_many", lambda c: c.check_many([ConsentQuestion.of("p-x", PROVIDER, PURPOSE)])),
    ("entry", lambda c: c.entry(1)),
    ("checkpoint", lambda c: c.checkpoint()),
    ("principal", lambda c: c.principal(PROVIDER)),
    ("history", lambda c: c.history("p-x")),
    ("health", lambda c: c.health()),
]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html><body>Sign in to the portal</body></html>", "text/html"),
        (b'{"hello": "world"}', "application/json"),
        (b'["not", "an", "object"]', "application/json"),
        (b'{"seq": ', "application/json"),  # cut short
    ],
)
def test_an_answer_that_is_not_the_apis_is_an_api_error(body: bytes, content_type: str) -> None:
    """The SDK's one exception family, also when the base URL reaches something else: a
    provider's queue catching DfgApiError got a KeyError or TypeError from the reader, and
    entry(), principal(), history() and health() returned the page's text as the document."""
    with serve_app(not_the_api(body, content_type)) as url:
        client = ConsentClient(url, retry=FAST_RETRY)
        for name, call in UNEXPECTED_CALLS:
            if name == "checkpoint" and content_type == "text/html":
                continue  # a note is text: only its reader could tell a page from it
            with pytest.raises(DfgApiError) as caught:
                call(client)
            assert (caught.value.status, caught.value.code) == (200, "unexpected_answer"), name
            assert not caught.value.retryable

        async def main() -> None:
            async with AsyncConsentClient(url, retry=FAST_RETRY) as client:
                with pytest.raises(DfgApiError) as caught:
                    await client.health()
                assert caught.value.code == "unexpected_answer"
                with pytest.raises(DfgApiError) as caught:
                    await client.check("p-x", PROVIDER, PURPOSE)
                assert caught.value.code == "unexpected_answer"

        asyncio.run(main())


def test_a_body_that_arrived_too_slowly_is_resubmitted(env: Env) -> None:
    """408 body_timeout: nothing was read, and docs/integration-level-1.md says to resubmit
    the same JWS; the clients gave up at once and ``retryable`` said it would not help."""
    timeouts = [1]
    seen: list[str] = []

    async def slow_once(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append(request.method)
        if timeouts[0]:
            timeouts[0] -= 1
            problem = {"type": "x", "title": "x", "status": 408, "code": "body_timeout", "detail": "late"}
            return web.json_response(problem, status=408, content_type="application/problem+json")
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                env.url + request.path, data=body, headers={"Content-Type": request.content_type}
            ) as got,
        ):
            return web.Response(body=await got.read(), status=got.status, content_type=got.content_type)

    app = web.Application()
    app.router.add_post("/v1/transactions", slow_once)
    subject, _, token = env.give()
    with serve_app(app) as url:
        accepted = ConsentClient(url, retry=FAST_RETRY).submit(token)
        assert seen == ["POST", "POST"] and not accepted.duplicate
        timeouts[0] = 5
        with pytest.raises(DfgApiError) as caught:
            ConsentClient(url, retry=RetryPolicy(attempts=2, backoff=0.01)).submit(token)
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (408, "body_timeout", True)
    assert env.client.check(subject, PROVIDER, PURPOSE).granted


def test_refusals_carry_the_problem_code(env: Env) -> None:
    with pytest.raises(DfgApiError) as caught:
        env.client.submit("not-a-jws")
    assert (caught.value.status, caught.value.code) == (400, "malformed_jws")
    with pytest.raises(DfgApiError) as caught:
        env.client.submit(
            env.provider.utilize_consent(consent_id=uuid.uuid4(), purpose=PURPOSE, data_categories=[CATEGORY])
        )
    assert (caught.value.status, caught.value.code) == (422, "unknown_consent")
    assert "no consent" in caught.value.detail and caught.value.problem["code"] == "unknown_consent"
    stale = TransactionBuilder(PROVIDER, env.provider_key, CHAIN, nonces=NonceSource(clock=lambda: 1))
    _, _, token = env.give()
    env.client.submit(token)
    with pytest.raises(DfgApiError) as caught:
        env.client.submit(stale.give_consent_copy(consent_id=uuid.uuid4(), subject="p-x", terms=TERMS))
    assert caught.value.code == "nonce_reused" and not caught.value.retryable
    with pytest.raises(DfgApiError) as caught:
        env.client.principal("sp:nobody")
    assert (caught.value.status, caught.value.code) == (404, "unknown_principal")


# --- reading --------------------------------------------------------------------------------


def test_checks_see_every_accepted_transaction_at_once(env: Env) -> None:
    subject, cid, token = env.give()
    never = pseudonym(SECRET, "never-asked")
    assert env.client.check(subject, PROVIDER, PURPOSE, [CATEGORY]).reason == "never_given"
    given = env.client.submit(token)
    answer = env.client.check(subject, PROVIDER, PURPOSE, [CATEGORY])
    assert answer and (answer.consent_id, answer.seq) == (str(cid), given.seq)
    env.client.submit(
        env.provider.utilize_consent(consent_id=cid, purpose=PURPOSE, data_categories=[CATEGORY])
    )
    withdrawn = env.client.submit(env.provider.withdraw_consent(consent_id=cid, subject=subject))
    questions: list[ConsentQuestion | dict[str, Any]] = [
        ConsentQuestion.of(subject, PROVIDER, PURPOSE, [CATEGORY]),
        {"subject": never, "controller": PROVIDER, "purpose": PURPOSE},
        ConsentQuestion.of(subject, PROVIDER, PURPOSE, at=given_at(env, given.seq)),
    ]
    now, nobody, before = env.client.check_many(questions)
    assert (now.granted, now.reason, now.seq) == (False, "withdrawn", withdrawn.seq)
    assert (nobody.granted, nobody.reason) == (False, "never_given")
    assert before.granted
    with pytest.raises(DfgApiError) as caught:
        env.client.submit(
            env.provider.utilize_consent(consent_id=cid, purpose=PURPOSE, data_categories=[CATEGORY])
        )
    assert caught.value.code == "consent_withdrawn"
    kinds = [e["kind"] for e in env.client.history(subject)["events"]]
    assert kinds == ["withdrawn", "used", "given"]
    assert env.client.history(subject, limit=1)["next_before"] is not None


def given_at(env: Env, seq: int) -> datetime:
    return datetime.fromisoformat(env.client.entry(seq)["event"]["ts"])


def test_a_check_at_an_instant_whose_offset_has_seconds_is_asked_in_utc(env: Env) -> None:
    """Python's time zones may carry seconds in their offset (zoneinfo's local mean times:
    Amsterdam was +00:19:32 until 1937), which RFC 3339 cannot write: the SDK sent them as
    ``+00:19:32`` and the server refused a valid, aware instant (400 invalid_parameter)."""
    subject, _, token = env.give()
    given = given_at(env, env.client.submit(token).seq)
    odd = timezone(timedelta(minutes=19, seconds=32))
    for at, granted in ((given + timedelta(hours=1), True), (given - timedelta(hours=1), False)):
        answer = env.client.check(subject, PROVIDER, PURPOSE, at=at.astimezone(odd))
        (batched,) = env.client.check_many(
            [ConsentQuestion.of(subject, PROVIDER, PURPOSE, at=at.astimezone(odd))]
        )
        assert answer.granted is batched.granted is granted


def test_a_question_given_as_a_dict_takes_its_instant_as_rfc_3339_text(env: Env) -> None:
    """A question read from JSON names ``at`` as text: check_many raised AttributeError
    ('str' object has no attribute 'utcoffset')."""
    subject, _, token = env.give()
    given = given_at(env, env.client.submit(token).seq)
    later = (given + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    question = {"subject": subject, "controller": PROVIDER, "purpose": PURPOSE, "at": later}
    (answer,) = env.client.check_many([question])
    assert answer.granted
    for at, error in (("yesterday", ValueError), ("2026-11-25T12:00:00", ValueError), (3, TypeError)):
        with pytest.raises(error, match=r"at: |timezone-aware"):
            env.client.check_many([{**question, "at": at}])


def test_async_client(env: Env) -> None:
    async def main() -> None:
        async with AsyncConsentClient(env.url, checkpoint_key=env.checkpoint_key, retry=FAST_RETRY) as client:
            subject, cid, token = env.give()
            accepted = await client.submit(token)
            assert (await client.submit(token)).duplicate
            assert (await client.check(subject, PROVIDER, PURPOSE, [CATEGORY])).granted
            withdraw = env.provider.withdraw_consent(consent_id=cid, subject=subject)
            (result,) = await client.submit_batch([withdraw])
            assert isinstance(result, Accepted)
            (answer,) = await client.check_many([ConsentQuestion.of(subject, PROVIDER, PURPOSE)])
            assert answer.reason == "withdrawn"
            verified = await client.receipt(accepted.seq)
            assert (verified.seq, verified.signer) == (accepted.seq, PROVIDER)
            assert verified.tx_type == "consent.give"
            assert (await client.principal(PROVIDER))["keys"][0]["kid"] == env.provider.kid
            assert (await client.checkpoint()).startswith(f"dfg.local/{CHAIN}\n")
            assert [e["kind"] for e in (await client.history(subject))["events"]] == ["withdrawn", "given"]
            with pytest.raises(DfgApiError) as caught:
                await client.submit(token.replace(".", "..", 1))
            assert caught.value.code == "malformed_jws"
        app, seen = flaky_proxy(env.url, "503")
        _, _, token = env.give()
        with serve_app(app) as proxy:
            async with AsyncConsentClient(proxy, retry=FAST_RETRY) as client:
                retried = await client.submit(token)
        assert retried.duplicate and seen == ["POST", "POST"]

    asyncio.run(main())


# --- receipts, verified offline ------------------------------------------------------------------


@pytest.fixture(scope="module")
def receipt(env: Env) -> dict[str, Any]:
    _, _, token = env.give()
    seq = env.client.submit(token).seq
    env.client.submit(env.give()[2])  # the proof then has hashes on both sides
    doc = env.client.entry(seq)
    return doc


def test_a_receipt_verifies_offline(env: Env, receipt: dict[str, Any]) -> None:
    verified = verify_receipt(receipt, env.checkpoint_key, env.provider.public_jwk, chain=CHAIN)
    assert (verified.seq, verified.kid, verified.event) == (receipt["seq"], env.provider.kid, "Consent.Given")
    assert verified.payload["body"]["controller"] == PROVIDER
    ring = KeyRing()
    ring.add(PROVIDER, env.provider.public_jwk)
    assert verify_receipt(json.loads(json.dumps(receipt)), env.checkpoint_key, ring).seq == receipt["seq"]
    assert verify_receipt(receipt, env.checkpoint_key, ring.as_dict()).seq == receipt["seq"]
    fetched = ConsentClient(env.url, checkpoint_key=env.checkpoint_key)
    assert fetched.receipt(receipt["seq"]).seq == receipt["seq"]  # keys fetched once, then pinned
    assert env.provider.kid in fetched.keyring
    operator_entry = fetched.receipt(2)
    assert (operator_entry.signer, operator_entry.tx_type) == (OPERATOR, "principal.admit")
    with pytest.raises(ReceiptError, match="chain"):
        verify_receipt(receipt, env.checkpoint_key, ring, chain="another-chain")


def _flip_hex(text: str) -> str:
    return ("0" if text[0] != "0" else "1") + text[1:]


def _alter_note_signature(note: str) -> str:
    body, _, signature = note.rpartition(" ")
    return f"{body} {'A' if signature[0] != 'A' else 'B'}{signature[1:]}"


def _alter_note_size(note: str) -> str:
    origin, size, rest = note.split("\n", 2)
    return f"{origin}\n{int(size) + 1}\n{rest}"


def _alter_entry(receipt: dict[str, Any]) -> None:
    entry = json.loads(receipt["entry"])
    entry["data"]["subject"] = "p-someone-else"
    receipt["entry"] = json.dumps(entry, sort_keys=True, separators=(",", ":"))


def _other_ending(jws: str) -> str:
    """The same JWS with other (canonical) last characters -- never the same ones."""
    return jws[:-2] + ("QA" if jws.endswith("AA") else "AA")


TAMPERINGS: dict[str, Callable[[dict[str, Any]], None]] = {
    "proof hash": lambda r: r["proof"]["hashes"].__setitem__(0, _flip_hex(r["proof"]["hashes"][0])),
    "checkpoint signature": lambda r: r.__setitem__("checkpoint", _alter_note_signature(r["checkpoint"])),
    "checkpoint size": lambda r: r.__setitem__("checkpoint", _alter_note_size(r["checkpoint"])),
    "proof tree size": lambda r: r["proof"].__setitem__("tree_size", r["proof"]["tree_size"] + 1),
    "entry text": _alter_entry,
    "entry not an object": lambda r: r.__setitem__("entry", "[1]"),
    "jws beside the entry": lambda r: r.__setitem__("jws", _other_ending(r["jws"])),
    "event beside the entry": lambda r: r["event"]["data"].__setitem__("subject", "p-someone-else"),
    "leaf hash beside the entry": lambda r: r.__setitem__("leaf_hash", _flip_hex(r["leaf_hash"])),
}


@pytest.mark.parametrize("what", sorted(TAMPERINGS))
def test_a_tampered_receipt_is_rejected(env: Env, receipt: dict[str, Any], what: str) -> None:
    altered = json.loads(json.dumps(receipt))
    TAMPERINGS[what](altered)
    with pytest.raises(ReceiptError):
        verify_receipt(altered, env.checkpoint_key, env.provider.public_jwk)


def _forge(receipt: dict[str, Any], tx: str) -> tuple[dict[str, Any], str]:
    """What an operator holding the checkpoint key could serve: any entry, proven in a
    tree it signs itself. Only the JWS signature inside can give it away."""
    original = Entry.decode(receipt["entry"].encode())
    entry = Entry.build(
        seq=1,
        ts=original.ts,
        tx=tx,
        aggregate_id=original.aggregate_id,
        version=original.version,
        event_type=original.event_type,
        data=original.data,
    )
    origin = f"dfg.local/{CHAIN}"
    key = SignerKey(origin, Ed25519PrivateKey.generate())
    note = sign_checkpoint(Checkpoint(origin, 1, leaf_hash(entry.canonical)), origin, key.private_key)
    forged = {
        "seq": 1,
        "entry": entry.canonical.decode(),
        "proof": {"leaf_index": 0, "tree_size": 1, "hashes": []},
        "checkpoint": note,
    }
    return forged, key.verifier().to_string()


def test_a_forged_jws_signature_is_rejected_even_in_a_validly_signed_tree(
    env: Env, receipt: dict[str, Any]
) -> None:
    genuine, genuine_key = _forge(receipt, receipt["jws"])
    assert verify_receipt(genuine, genuine_key, env.provider.public_jwk).seq == 1  # the control
    header, payload, signature = receipt["jws"].split(".")
    other = TransactionBuilder(PROVIDER, generate_key(), CHAIN)
    foreign_signature = other.withdraw_consent(consent_id=uuid.uuid4(), subject="p-1").split(".")[2]
    for tx in (f"{header}.{payload}.{foreign_signature}", f"{header}.{payload}.{_flip_b64(signature)}"):
        forged, forged_key = _forge(receipt, tx)
        with pytest.raises(ReceiptError, match="JWS signature does not verify"):
            verify_receipt(forged, forged_key, env.provider.public_jwk)


def _flip_b64(segment: str) -> str:
    return ("A" if segment[0] != "A" else "B") + segment[1:]


def test_a_receipt_is_checked_against_the_keys_given(env: Env, receipt: dict[str, Any]) -> None:
    with pytest.raises(ReceiptError, match="not with the key given"):
        verify_receipt(receipt, env.checkpoint_key, public_jwk(generate_key()))
    with pytest.raises(ReceiptError, match="no pinned public key"):
        verify_receipt(receipt, env.checkpoint_key, KeyRing())
    ring = KeyRing()
    with pytest.raises(ReceiptError, match="another thumbprint"):
        ring.pin(env.provider.kid, public_jwk(generate_key()))
    # A malformed key is a reason the receipt cannot be checked, not a crash (it raised
    # pydantic's ValidationError, which callers catching ReceiptError did not expect).
    for bad in ({"kty": "OKP"}, {"kty": "RSA", "n": "x", "e": "AQAB"}, {env.provider.kid: {"kty": "OKP"}}):
        with pytest.raises(ReceiptError, match="not a public JWK"):
            verify_receipt(receipt, env.checkpoint_key, bad)


@pytest.mark.parametrize("document", [[1], ["seq"], "receipt", 42, None])
def test_a_document_that_is_not_an_object_is_not_a_receipt(env: Env, document: Any) -> None:
    """What ``json.load`` reads from a file that is not a receipt is refused with the
    documented ``ReceiptError`` (it raised ``dict()``'s TypeError or ValueError)."""
    with pytest.raises(ReceiptError, match="not a receipt"):
        verify_receipt(document, env.checkpoint_key, env.provider.public_jwk)


@pytest.mark.parametrize("keys", [[{"kty": "OKP"}], "x", 5, None])
def test_keys_that_are_no_key_are_the_callers_mistake(env: Env, receipt: dict[str, Any], keys: Any) -> None:
    """A list of JWKs (``keys`` is plural) or a stray value ended in an AttributeError from
    inside the key ring; it is a TypeError naming what ``keys`` takes, not a ReceiptError
    that would say the receipt does not verify."""
    with pytest.raises(TypeError, match="keys: a public JWK, a KeyRing or a mapping"):
        verify_receipt(receipt, env.checkpoint_key, keys)
    with pytest.raises(TypeError, match="KeyRing is made from a mapping"):
        KeyRing([public_jwk(env.provider_key)])  # type: ignore[arg-type]


def test_a_receipt_does_not_verify_with_another_ledgers_checkpoint_key(
    env: Env, receipt: dict[str, Any], tmp_path: Path
) -> None:
    _, other_key = _start(Settings(data_dir=tmp_path / "other"))  # same chain and origin
    assert other_key != env.checkpoint_key
    assert other_key.split("+")[0] == env.checkpoint_key.split("+")[0]
    with pytest.raises(ReceiptError, match="checkpoint"):
        verify_receipt(receipt, other_key, env.provider.public_jwk)


# --- PostgreSQL ----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_the_sdk_on_postgresql(pg_schema_url: str, tmp_path: Path) -> None:
    with environment(Settings(data_dir=tmp_path / "data", database_url=pg_schema_url)) as pg:
        subject, cid, token = pg.give()
        (accepted,) = pg.client.submit_batch([token])
        assert isinstance(accepted, Accepted)
        again = pg.client.submit(token)
        assert again.duplicate and again.seq == accepted.seq
        assert pg.client.check(subject, PROVIDER, PURPOSE, [CATEGORY]).granted
        pg.client.submit(pg.provider.withdraw_consent(consent_id=cid, subject=subject))
        assert pg.client.check(subject, PROVIDER, PURPOSE).reason == "withdrawn"
        verified = pg.client.receipt(accepted.seq, keys=pg.provider.public_jwk)
        assert verified.seq == accepted.seq
        terms = consent_terms(
            purposes=[PURPOSE],
            data_categories=[CATEGORY],
            notice_url="https://app.example/notice",
            notice_sha256=notice_sha256("the notice text"),
        )
        with pytest.raises(DfgApiError) as caught:
            pg.client.submit(pg.provider.give_consent_copy(consent_id=cid, subject=subject, terms=terms))
        assert caught.value.code == "consent_exists"
