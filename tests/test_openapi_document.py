"""docs/openapi.json is the document the server serves (regenerate:
``python -m gateways.http.openapi > docs/openapi.json``)."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

from gateways.http.openapi import build_openapi


def test_docs_openapi_matches_the_served_document() -> None:
    committed = json.loads((Path(__file__).parent.parent / "docs" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(build_openapi(version("dfg")))), (
        "docs/openapi.json is stale: python -m gateways.http.openapi > docs/openapi.json"
    )


def test_a_resubmitted_transaction_200_is_documented() -> None:
    """POST /v1/transactions answers 200 both for a batch and for one JWS accepted
    before (an AcceptedResult with duplicate: true): the 200 schema admits either."""
    post = build_openapi(version("dfg"))["paths"]["/v1/transactions"]["post"]
    schema = post["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {
        "anyOf": [
            {"$ref": "#/components/schemas/BatchResults"},
            {"$ref": "#/components/schemas/AcceptedResult"},
        ]
    }
