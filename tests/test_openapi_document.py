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
