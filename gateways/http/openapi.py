"""The OpenAPI 3.1 document, built from the route table and the pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from gateways.http import models as m
from gateways.http.api import ROUTES, Param

PROBLEM = "application/problem+json"


def _param_schema(param: Param) -> dict[str, Any]:
    schema: dict[str, Any]
    if param.type == "integer":
        schema = {"type": "integer"}
        if param.minimum is not None:
            schema["minimum"] = param.minimum
        if param.maximum is not None:
            schema["maximum"] = param.maximum
    elif param.type == "date-time":
        schema = {"type": "string", "format": "date-time"}
    else:
        schema = {"type": "string"}
        if param.enum:
            schema["enum"] = list(param.enum)
        if param.pattern:
            schema["pattern"] = param.pattern
    return {"type": "array", "items": schema} if param.repeated else schema


def build_openapi(version: str) -> dict[str, Any]:
    components: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            components[name] = definition
        components[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    paths: dict[str, Any] = {}
    for route in ROUTES:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "tags": [route.tag],
            "parameters": [
                {"name": p.name, "in": "path", "required": True, "schema": _param_schema(p)}
                for p in route.path_params
            ]
            + [
                {
                    "name": p.name,
                    "in": "query",
                    "required": p.required,
                    "schema": _param_schema(p),
                    "description": p.description,
                    **({"explode": True} if p.repeated else {}),
                }
                for p in route.query
            ],
            "responses": {},
        }
        if route.body:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    kind: {"schema": ref(model)}
                    if not isinstance(model, str)
                    else {"schema": {"type": "string", "description": model}}
                    for kind, model in route.body.items()
                },
            }
        responses = dict(route.responses)
        responses.setdefault(400, ("a problem document: a malformed request", m.ProblemDocument))
        if route.body:  # every body is read the same way (gateways/http/app.py, api.json_body)
            responses.setdefault(
                408,
                ("a problem document: the body did not arrive in time (`body_timeout`)", m.ProblemDocument),
            )
            responses.setdefault(
                413, ("a problem document: the body is larger than the server reads", m.ProblemDocument)
            )
            responses.setdefault(
                415,
                (
                    "a problem document: the body is not of a media type listed here"
                    " (`unsupported_media_type`), or in a content coding other than gzip or"
                    " deflate (`unsupported_content_encoding`)",
                    m.ProblemDocument,
                ),
            )
        if route.path.startswith("/v1/"):  # every one of them reads the ledger's database
            responses.setdefault(
                503,
                (
                    "a problem document: the ledger's database cannot answer now"
                    " (`storage_unavailable`); retry after the `Retry-After` seconds",
                    m.ProblemDocument,
                ),
            )
        for status, (description, model) in sorted(responses.items()):
            if model is None:
                content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
            elif isinstance(model, str):
                content = {model: {"schema": {"type": "string"}}}
            elif isinstance(model, tuple):
                content = {"application/json": {"schema": {"anyOf": [ref(one) for one in model]}}}
            elif model.__name__ == "ProblemDocument":
                content = {PROBLEM: {"schema": ref(model)}}
            else:
                content = {"application/json": {"schema": ref(model)}}
                if route.path.startswith("/v1/badge"):
                    content["image/svg+xml"] = {"schema": {"type": "string"}}
            operation["responses"][str(status)] = {"description": description, "content": content}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dfg consent ledger API",
            "version": version,
            "description": "Signed consent transactions, consent checks, receipts with inclusion proofs,"
            " checkpoints and audit history. Errors are RFC 9457 problem documents with a stable `code`.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }


if __name__ == "__main__":  # python -m gateways.http.openapi > docs/openapi.json
    import json
    import sys
    from importlib.metadata import version

    json.dump(build_openapi(version("dfg")), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
