"""``AsyncConsentClient``: the consent API from asyncio code, on aiohttp's client (already
a dependency of dfg). Same calls, answers, errors and retries as ``ConsentClient``:
both are driven by gateways/sdk/protocol.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import aiohttp

from gateways.sdk import protocol
from gateways.sdk.client import USER_AGENT
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


class AsyncConsentClient:
    """``async with AsyncConsentClient(url) as client: await client.submit(jws)``.

    Pass ``session`` to share your own ``aiohttp.ClientSession`` (it is then not
    closed by this client); otherwise one is opened on first use and closed by
    ``close()`` / the ``async with`` block. Do not ``gather`` one signer's
    submissions: they may reach the ledger out of nonce order (``nonce_reused``);
    await them in order or send them as one batch.
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        checkpoint_key: str | None = None,
        keyring: KeyRing | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.retry = retry or RetryPolicy()
        self.checkpoint_key = checkpoint_key
        self.keyring = keyring if keyring is not None else KeyRing()
        self.headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> AsyncConsentClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # --- transactions -------------------------------------------------------------------

    async def submit(self, jws: str) -> Accepted:
        """Submit one signed transaction; raises ``DfgApiError`` when it is refused."""
        result: Accepted = await self._do(protocol.submit(jws))
        return result

    async def submit_batch(self, tokens: Sequence[str]) -> list[Accepted | Refused]:
        """Submit many (in order; split into batches of 1000); one result per JWS."""
        results: list[Accepted | Refused] = []
        for chunk in protocol.chunks(tokens, protocol.BATCH_TRANSACTIONS):
            results.extend(await self._do(protocol.submit_batch(chunk)))
        return results

    # --- consent checks -----------------------------------------------------------------

    async def check(
        self,
        subject: str,
        controller: str,
        purpose: str,
        categories: Iterable[str] = (),
        at: datetime | None = None,
    ) -> ConsentAnswer:
        answer: ConsentAnswer = await self._do(protocol.check(subject, controller, purpose, categories, at))
        return answer

    async def check_many(self, questions: Iterable[ConsentQuestion | dict[str, Any]]) -> list[ConsentAnswer]:
        answers: list[ConsentAnswer] = []
        for chunk in protocol.chunks(protocol.as_questions(questions), protocol.BATCH_CHECKS):
            answers.extend(await self._do(protocol.check_many(chunk)))
        return answers

    # --- proofs and read models ------------------------------------------------------------

    async def entry(self, seq: int, *, final: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = await self._do(protocol.entry(seq, final=final))
        return doc

    async def receipt(
        self,
        seq: int,
        *,
        checkpoint_key: str | None = None,
        keys: Keys | None = None,
        witnesses: WitnessPolicy | None = None,
    ) -> VerifiedReceipt:
        """Fetch entry ``seq`` and verify it offline (see ``ConsentClient.receipt``)."""
        doc = await self.entry(seq, final=witnesses is not None)
        ring = keys if keys is not None else self.keyring
        if isinstance(ring, KeyRing) and (owner := principal_to_fetch(doc, ring)):
            ring.pin_principal(await self.principal(owner))
        pinned = required_checkpoint_key(checkpoint_key or self.checkpoint_key)
        return verify_receipt(doc, pinned, ring, witnesses=witnesses)

    async def checkpoint(self) -> str:
        note: str = await self._do(protocol.checkpoint())
        return note

    async def principal(self, principal_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self._do(protocol.principal(principal_id))
        return doc

    async def history(
        self, subject: str, *, limit: int | None = None, before: int | None = None
    ) -> dict[str, Any]:
        doc: dict[str, Any] = await self._do(protocol.history(subject, limit=limit, before=before))
        return doc

    async def health(self) -> dict[str, Any]:
        doc: dict[str, Any] = await self._do(protocol.health())
        return doc

    # --- transport ----------------------------------------------------------------------------

    async def _do(self, call: Call) -> Any:
        failure: DfgConnectionError | None = None
        for attempt in range(self.retry.attempts):
            if attempt:
                await asyncio.sleep(self.retry.delay(attempt - 1))
            try:
                status, content_type, raw = await self._send(call)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                failure = DfgConnectionError(f"{call.method} {call.path}: {exc!r}")
                continue
            if self.retry.retryable_status(status) and attempt + 1 < self.retry.attempts:
                continue
            return protocol.answer(call, status, content_type, raw)
        assert failure is not None
        raise failure

    async def _send(self, call: Call) -> tuple[int, str, bytes]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = dict(self.headers)
        if call.content_type:
            headers["Content-Type"] = call.content_type
        async with self._session.request(
            call.method, self.base_url + call.path, data=call.body, headers=headers, timeout=self.timeout
        ) as response:
            return response.status, response.content_type, await response.read()
