"""JSON responses: orjson's bytes where it can write the value, json's where it cannot."""

from __future__ import annotations

import json

from gateways.http.responses import json_response


def test_a_response_is_utf8_json_that_reads_back_as_the_value() -> None:
    value = {"answers": [{"granted": True, "consent_id": "c-é", "seq": 7, "reason": None}]}
    response = json_response(value, status=201)
    assert response.status == 201
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert isinstance(response.body, bytes)
    assert json.loads(response.body) == value


def test_what_orjson_cannot_write_is_written_by_json() -> None:
    for value in ({"n": 2**70}, {1: "a"}):
        response = json_response(value)
        assert isinstance(response.body, bytes)
        assert response.body == json.dumps(value).encode()
