"""The payload reader: a fast path for compact JSON, the standard reader for the rest.
Both must give the same value, and repeated member names are refused either way."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.transaction import _payload_value

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(_json_values, st.sampled_from(["compact", "spaced", "ascii", "indented"]))
def test_every_form_reads_as_the_standard_reader_reads_it(value: Any, form: str) -> None:
    text = {
        "compact": lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False),
        "spaced": lambda v: json.dumps(v, ensure_ascii=False),
        "ascii": lambda v: json.dumps(v, separators=(",", ":")),
        "indented": lambda v: json.dumps(v, indent=2),
    }[form](value)
    assert _payload_value(text.encode("utf-8", "surrogatepass")) == json.loads(text)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a":1,"a":1}',  # the same member twice, compact (the fast path's form)
        b'{"a":1,"b":{"c":2,"c":3}}',
        b'{ "a": 1, "a": 2 }',
        b'{"a":{"b":1},"a":{"b":1}}',
    ],
)
def test_a_repeated_member_name_is_refused_in_any_form(payload: bytes) -> None:
    with pytest.raises(ValueError, match="duplicate member names"):
        _payload_value(payload)


@pytest.mark.parametrize("payload", [b"", b"{", b'{"a":1}x', b"\xff{}", b'{"a":"\xc3"}'])
def test_malformed_json_is_refused_by_the_standard_reader(payload: bytes) -> None:
    with pytest.raises(ValueError):
        _payload_value(payload)


def test_one_call_validation_gives_what_two_steps_give() -> None:
    """A valid payload is validated with its body's model in one call; the command and
    envelope must be those the envelope-then-body validation gives."""
    from domain.handlers import COMMANDS
    from ledger.errors import Rejected
    from ledger.transaction import Payload, _typed_payload, _validated

    raw: dict[str, Any] = {
        "chain": "dfg-test",
        "signer": "sp:app",
        "nonce": 3,
        "valid_until": 2_000_000_000,
        "type": "consent.give",
        "body": {
            "consent_id": "00000000-0000-4001-8000-000000000001",
            "controller": "sp:app",
            "subject": "p-1",
            "level": 1,
            "method": "app",
            "terms": {
                "purposes": ["dpv:ServiceProvision"],
                "data_categories": ["dpv-pd:HealthRecord"],
                "notice": {"url": "https://app.example/notice", "sha256": "ab" * 32},
            },
        },
    }
    envelope, command = _validated(raw)
    two_steps = Payload.model_validate(raw)
    assert command == COMMANDS["consent.give"].model_validate(two_steps.body)
    assert {k: getattr(envelope, k) for k in ("chain", "signer", "nonce", "valid_until", "type")} == {
        k: getattr(two_steps, k) for k in ("chain", "signer", "nonce", "valid_until", "type")
    }
    built = _typed_payload.cache_info().currsize
    for name in ("no.such.type", "x" * 100, "consent.givE"):
        with pytest.raises(Rejected) as refused:
            _validated({**raw, "type": name})
        assert refused.value.code == ("malformed_payload" if len(name) > 64 else "unknown_type")
    assert _typed_payload.cache_info().currsize == built  # unknown types build nothing


@pytest.mark.parametrize("depth", [255, 600, 1024])
def test_nesting_orjson_reads_but_cannot_write_is_read_by_the_standard_reader(depth: int) -> None:
    """orjson reads 1,024 levels but writes 254: in between, the fast path's check
    raised a TypeError that failed the sequencer's whole batch (503 for everyone in it)."""
    payload = b'{"a":' * depth + b"1" + b"}" * depth
    try:
        expected: Any = json.loads(payload)
    except RecursionError:
        with pytest.raises(RecursionError):
            _payload_value(payload)
    else:
        assert _payload_value(payload) == expected


def test_a_deeply_nested_body_is_refused_as_malformed_not_failing_its_batch() -> None:
    from ledger.errors import Rejected
    from ledger.jws import b64url_encode
    from ledger.transaction import parse_transaction

    header = b64url_encode(b'{"alg":"EdDSA","kid":"sp:app#x","typ":"dfg-tx"}')
    body = b'{"a":' * 300 + b"1" + b"}" * 300
    envelope = b'{"chain":"c","signer":"sp:app","nonce":1,"valid_until":1,"type":"consent.give","body":'
    raw = envelope + body + b"}"
    token = f"{header}.{b64url_encode(raw)}.{b64url_encode(bytes(64))}"
    with pytest.raises(Rejected) as refused:
        parse_transaction(token)
    assert refused.value.code in {"invalid_body", "malformed_payload"}
