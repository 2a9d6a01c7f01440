"""``dfg analyst results``: fetch, check and reconstruct an analysis' results (see
gateways/analyst_results.py)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from joserfc.jwk import OKPKey

from gateways.analyst_results import DEFAULT_TIMEOUT_S, CalculationResult, ResultsError, fetch_results
from gateways.cli.options import fail, http_url
from gateways.provider_upload import UploadError, parse_nodes
from gateways.sdk import ConsentClient, DfgApiError, DfgConnectionError, TransactionBuilder
from infra.keyfiles import KeyFileError, read_jwk


@click.group("analyst")
def analyst() -> None:
    """What an analyst organisation does with its analyses' results."""


@analyst.command("results")
@click.argument("analysis_id")
@click.option(
    "--url", default="http://127.0.0.1:8080", show_default=True, callback=http_url, help="The coordinator."
)
@click.option("--principal", required=True, help="The analyst organisation's principal id.")
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="The analyst organisation's signing key (JWK).",
)
@click.option(
    "--encryption-key",
    "encryption_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="The analyst's X25519 key (JWK): the nodes seal their result shares to it.",
)
@click.option(
    "--node", "nodes", multiple=True, required=True, help="node:name=http://host:port, one per node."
)
@click.option(
    "--timeout",
    type=click.FloatRange(1, 3600),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for each answer of a node or the coordinator (a hung node fails the command then).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def results_command(
    analysis_id: str,
    url: str,
    principal: str,
    key_file: Path,
    encryption_file: Path,
    nodes: tuple[str, ...],
    timeout: float,
    as_json: bool,
) -> None:
    """Ask for access, collect every node's sealed result shares, check them against
    the commitments on the ledger and across nodes, reconstruct, print."""
    client = ConsentClient(url)
    try:
        chain = client.health()["chain"]
        builder = TransactionBuilder(principal, read_jwk(key_file), chain)
        sealing = read_jwk(encryption_file)
        private = sealing.private_key if isinstance(sealing, OKPKey) else None
        if not isinstance(private, X25519PrivateKey):
            fail(f"--encryption-key: {encryption_file} is not a private X25519 key (JWK)")
        analysis, finished = fetch_results(
            coordinator=url,
            analysis_id=analysis_id,
            analyst=builder,
            key=private,
            nodes=parse_nodes(nodes),
            timeout=timeout,
        )
    except (KeyFileError, UploadError) as exc:
        fail(str(exc))
    except DfgConnectionError:
        fail(f"no dfg server at {url}")
    except DfgApiError as exc:
        fail(f"the ledger refused the access request: {exc}")
    except ResultsError as exc:
        fail(f"{exc.code}: {exc}")
    if as_json:
        click.echo(json.dumps(_json(analysis, finished), sort_keys=True, default=_number))
        return
    click.secho(f"{analysis['name']} ({analysis_id})", bold=True)
    for calculation in finished:
        where = f" where {calculation.filter}" if calculation.filter else ""
        click.secho(f"\n{calculation.name}{where}", bold=True)
        for result in calculation.results:
            click.echo(f"  {result['function']:<34} {describe(result)}")


def describe(result: dict[str, Any]) -> str:
    """One result as a line of text."""
    if "suppressed" in result:
        return f"(suppressed: {result['suppressed']})"
    if "counts" in result:
        edges, last = result["edges"], len(result["counts"]) - 1
        closes = [")"] * last + ["]"]  # the last bin holds the range's top value too
        return "  ".join(
            f"[{_short(edges[i])}, {_short(edges[i + 1])}{closes[i]}: {'<k' if c is None else c}"
            for i, c in enumerate(result["counts"])
        )
    if "slopes" in result:
        slopes = ", ".join(f"{s:.4f}" for s in result["slopes"])
        return f"intercept {result['intercept']:.4f}, slopes [{slopes}] (n = {result['count']})"
    if "value" in result:
        value = result["value"]
        shown = "none" if value is None else f"{float(value):.6g}"
        return shown + (f"  (n = {result['count']})" if "count" in result else "")
    return str(result.get("count"))


def _short(text: str) -> str:
    return f"{float(Fraction(text)):g}"


def _number(value: Any) -> Any:
    if isinstance(value, Fraction):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _json(analysis: dict[str, Any], finished: list[CalculationResult]) -> dict[str, Any]:
    return {
        "analysis_id": analysis["analysisId"],
        "name": analysis["name"],
        "calculations": [
            {
                "task_id": c.task_id,
                "calculation_id": c.calculation_id,
                "name": c.name,
                "filter": c.filter,
                "results": c.results,
            }
            for c in finished
        ],
    }
