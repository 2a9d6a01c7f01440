"""``ConsentClient``: the consent API from synchronous code, on the standard library only
(urllib), so a provider's backend needs no new dependency to talk to the ledger."""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from gateways.sdk import protocol
from gateways.sdk.errors import DfgConnectionError
from gateways.sdk.protocol import Call, RetryPolicy
from gateways.sdk.results import Accepted, ConsentAnswer, ConsentQuestion, Refused
from gateways.sdk.verify import (
    KeyRing,
    Keys,
    VerifiedReceipt,
    principal_to_fetch,
    required_checkpoint_key,
    verify_receipt,
)
from ledger.witness import WitnessPolicy

USER_AGENT = "dfg-sdk-python/1"


class ConsentClient:
    """A client of one dfg server (``base_url`` such as ``https://ledger.example``).

    Every call is retried on connection errors and 408/502/503/504 with the *same*
    request; for a transaction that is safe because the ledger answers a JWS it
    already accepted with the existing entry (``duplicate=True``). Errors raise
    ``DfgApiError`` (``DfgConnectionError`` when no answer came back at all).

    ``checkpoint_key`` (the ledger's verifier key, obtained out of band) and
    ``keyring`` (pinned signer keys) are used by ``receipt``. Thread-safe, but
    submit one signer's transactions in nonce order (one after the other, or in one
    batch): concurrent requests may reach the ledger in any order, and a lower nonce
    arriving after a higher one is refused as ``nonce_reused``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        checkpoint_key: str | None = None,
        keyring: KeyRing | None = None,
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.checkpoint_key = checkpoint_key
        self.keyring = keyring if keyring is not None else KeyRing()
        self.headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        self._sleep = sleep

    # --- transactions -------------------------------------------------------------------

    def submit(self, jws: str) -> Accepted:
        """Submit one signed transaction; raises ``DfgApiError`` when it is refused."""
        result: Accepted = self._do(protocol.submit(jws))
        return result

    def submit_batch(self, tokens: Sequence[str]) -> list[Accepted | Refused]:
        """Submit many (in order; split into batches of 1000); one result per JWS."""
        results: list[Accepted | Refused] = []
        for chunk in protocol.chunks(tokens, protocol.BATCH_TRANSACTIONS):
            results.extend(self._do(protocol.submit_batch(chunk)))
        return results

    # --- consent checks -----------------------------------------------------------------

    def check(
        self,
        subject: str,
        controller: str,
        purpose: str,
        categories: Iterable[str] = (),
        at: datetime | None = None,
    ) -> ConsentAnswer:
        """Is the consent valid for this use now (or ``at``)? Sees every accepted JWS."""
        answer: ConsentAnswer = self._do(protocol.check(subject, controller, purpose, categories, at))
        return answer

    def check_many(self, questions: Iterable[ConsentQuestion | dict[str, Any]]) -> list[ConsentAnswer]:
        """Many questions in one round trip each 10,000; answers in order."""
        answers: list[ConsentAnswer] = []
        for chunk in protocol.chunks(protocol.as_questions(questions), protocol.BATCH_CHECKS):
            answers.extend(self._do(protocol.check_many(chunk)))
        return answers

    # --- proofs and read models ------------------------------------------------------------

    def entry(self, seq: int, *, final: bool = False) -> dict[str, Any]:
        """The receipt document of entry ``seq`` as served (store it as your receipt);
        ``final``: proven against the newest checkpoint the witnesses' quorum cosigned
        (``DfgApiError`` ``not_yet_final`` until one covers the entry)."""
        doc: dict[str, Any] = self._do(protocol.entry(seq, final=final))
        return doc

    def receipt(
        self,
        seq: int,
        *,
        checkpoint_key: str | None = None,
        keys: Keys | None = None,
        witnesses: WitnessPolicy | None = None,
    ) -> VerifiedReceipt:
        """Fetch entry ``seq`` and verify it offline (``verify_receipt``).

        Without ``keys``, the signer's keys come from the client's keyring; a signer
        not pinned yet is fetched once from /v1/principals and pinned (each key is
        checked against the thumbprint in its kid). With ``witnesses``, the receipt is
        fetched against the newest final checkpoint (``entry(seq, final=True)``), which
        must carry cosignatures of the policy's quorum."""
        doc = self.entry(seq, final=witnesses is not None)
        ring = keys if keys is not None else self.keyring
        if isinstance(ring, KeyRing) and (owner := principal_to_fetch(doc, ring)):
            ring.pin_principal(self.principal(owner))
        pinned = required_checkpoint_key(checkpoint_key or self.checkpoint_key)
        return verify_receipt(doc, pinned, ring, witnesses=witnesses)

    def checkpoint(self) -> str:
        """The latest signed checkpoint note (C2SP tlog-checkpoint)."""
        note: str = self._do(protocol.checkpoint())
        return note

    def principal(self, principal_id: str) -> dict[str, Any]:
        """A principal, its roles and its keys over time."""
        doc: dict[str, Any] = self._do(protocol.principal(principal_id))
        return doc

    def history(self, subject: str, *, limit: int | None = None, before: int | None = None) -> dict[str, Any]:
        """One page of a subject's events, newest first (``next_before`` pages on)."""
        doc: dict[str, Any] = self._do(protocol.history(subject, limit=limit, before=before))
        return doc

    def health(self) -> dict[str, Any]:
        """``{"status", "chain", "size", ...}``: the chain id the builder needs."""
        doc: dict[str, Any] = self._do(protocol.health())
        return doc

    # --- transport ----------------------------------------------------------------------------

    def _do(self, call: Call) -> Any:
        failure: DfgConnectionError | None = None
        for attempt in range(self.retry.attempts):
            if attempt:
                self._sleep(self.retry.delay(attempt - 1))
            try:
                status, content_type, raw = self._send(call)
            except (OSError, http.client.HTTPException) as exc:
                failure = DfgConnectionError(f"{call.method} {call.path}: {exc}")
                continue
            if self.retry.retryable_status(status) and attempt + 1 < self.retry.attempts:
                continue
            return protocol.answer(call, status, content_type, raw)
        assert failure is not None
        raise failure

    def _send(self, call: Call) -> tuple[int, str, bytes]:
        request = urllib.request.Request(
            self.base_url + call.path, data=call.body, method=call.method, headers=self.headers
        )
        if call.content_type:
            request.add_header("Content-Type", call.content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.headers.get_content_type(), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers.get_content_type(), exc.read()
