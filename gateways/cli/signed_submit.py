"""Sign one transaction with a key file and submit it: through a ledger's API, or
straight to the ledger in ``--data`` when no server holds it. What ``dfg principals``
and a node operator's ``dfg node set-*`` commands share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from gateways.cli.options import fail, require_ledger
from gateways.sdk.builders import TransactionBuilder
from gateways.sdk.client import ConsentClient
from gateways.sdk.errors import DfgApiError
from gateways.sdk.keys import PrivateKey, load_key
from infra.bootstrap import open_sequencer
from infra.keyfiles import KeyFileError
from infra.settings import Settings
from infra.writer_lock import LedgerBusy
from ledger.entry import Entry
from ledger.errors import Rejected
from ledger.sequencer import Accepted
from ledger.store import LedgerStore

#: Builds the signed transaction from a builder holding the signer's key and chain.
Build = Callable[[TransactionBuilder], str]


def submit_through_api(api: str, key: Path, signer: str, build: Build) -> int:
    """Sign for the ledger ``api`` serves (its chain, from ``/healthz``) and submit;
    the entry's number. A refusal exits 1 with its code; a bad transaction exits 2."""
    client = ConsentClient(api)
    try:
        chain = client.health().get("chain")
    except DfgApiError as exc:
        fail(f"{api} did not answer as a dfg server: {exc}")
    if not isinstance(chain, str):
        fail(f"{api} names no ledger (is it a computation node, not the ledger's server?)")
    builder = TransactionBuilder(signer, _key(key), chain)
    try:
        accepted = client.submit(_signed(build, builder))
    except DfgApiError as exc:
        fail(f"refused ({exc.code}): {exc.detail}")
    return accepted.seq


def append_to_ledger(settings: Settings, key: Path, signer: str | None, build: Build) -> int:
    """Sign and append to the ledger in ``settings`` (``signer``: default its genesis
    operator), then sign a checkpoint so that the entry is covered at once."""
    require_ledger(settings)
    try:
        sequencer = open_sequencer(settings)
    except LedgerBusy as exc:
        fail(f"{exc}; if dfg serve holds it, submit through it with --api URL")
    except (KeyFileError, RuntimeError) as exc:
        fail(str(exc))
    try:
        chain, operator = ledger_identity(sequencer.store)
        signer = signer or operator
        builder = TransactionBuilder(signer, _key(key), chain, last_nonce=sequencer.store.last_nonce(signer))
        (outcome,) = sequencer.submit([_signed(build, builder)])
        if isinstance(outcome, Rejected):
            fail(f"refused ({outcome.code}): {outcome.message}")
        assert isinstance(outcome, Accepted)
        sequencer.checkpoint_now()
        return outcome.seq
    finally:  # the ledger's writer lock goes with the store
        sequencer.verifier.close()
        sequencer.store.close()


def ledger_identity(store: LedgerStore) -> tuple[str, str]:
    """(chain, first operator) from the genesis entry."""
    first = store.read_entries(1, 1)
    if not first:
        fail("this ledger has no genesis entry")
    genesis = Entry.decode(first[0].canonical)
    return str(genesis.data["ledger"]["chain"]), str(genesis.data["principal"])


def _key(path: Path) -> PrivateKey:
    try:
        return load_key(path)
    except (KeyFileError, OSError) as exc:
        fail(f"the signer's key: {exc}")


def _signed(build: Build, builder: TransactionBuilder) -> str:
    try:
        return build(builder)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        fail(f"not a valid transaction: {problems}", 2)
    except ValueError as exc:
        fail(str(exc), 2)
