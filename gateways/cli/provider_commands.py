"""``dfg provider upload``: a data provider secret-shares a datasource's records to the
computation nodes (see gateways/provider_upload.py)."""

from __future__ import annotations

from pathlib import Path

import click

from gateways.cli.options import fail, http_url
from gateways.fhir_observations import parse_codes, read_bundle
from gateways.provider_upload import UploadError, Variable, fetch_datasource, parse_nodes, read_csv, upload
from gateways.sdk import ConsentClient, DfgApiError, DfgConnectionError, TransactionBuilder
from infra.keyfiles import KeyFileError, read_jwk


@click.group("provider")
def provider() -> None:
    """What a data provider does: upload its records' shares."""


@provider.command("upload")
@click.argument("records", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--url", default="http://127.0.0.1:8080", show_default=True, callback=http_url, help="The coordinator."
)
@click.option(
    "--datasource",
    "datasource_id",
    required=True,
    type=click.UUID,
    callback=lambda _c, _p, value: str(value),
    help="The datasource's UUID.",
)
@click.option("--principal", required=True, help="The data provider's principal id.")
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="The provider's signing key (JWK).",
)
@click.option(
    "--node", "nodes", multiple=True, required=True, help="node:name=http://host:port, one per node."
)
@click.option(
    "--precision",
    type=click.IntRange(0, 64),
    default=16,
    show_default=True,
    help="Fractional bits of the fixed-point encoding.",
)
@click.option(
    "--key-column", default=None, help="The subject key column [default: the datasource's first key]."
)
@click.option(
    "--code",
    "codes",
    multiple=True,
    help="FHIR input: the coding of a variable, VARIABLE=SYSTEM|CODE (repeat) [default: code = name].",
)
def upload_command(
    records: Path,
    url: str,
    datasource_id: str,
    principal: str,
    key_file: Path,
    nodes: tuple[str, ...],
    precision: int,
    key_column: str | None,
    codes: tuple[str, ...],
) -> None:
    """Check records -- a CSV file, or a FHIR Bundle of Observations (.json) -- against
    the datasource's variables (type, unit, range), secret-share them, seal each node's
    shares to that node's key, deliver them and sign the commitments."""
    client = ConsentClient(url)
    try:
        mapping = parse_codes(codes)  # bad options are refused before anything is asked
        chain = client.health()["chain"]
        builder = TransactionBuilder(principal, read_jwk(key_file), chain)
        datasource = fetch_datasource(url, datasource_id)
        key = key_column or datasource["keys"][0]
        if _is_fhir(records):
            variables = [Variable.of(v) for v in datasource["variables"]]
            rows = read_bundle(records, key, variables, mapping)
        else:
            rows = read_csv(records)
        commitments = upload(
            client=client,
            provider=builder,
            datasource=datasource,
            rows=rows,
            nodes=parse_nodes(nodes),
            precision=precision,
            key_column=key,
        )
    except (UploadError, KeyFileError) as exc:
        fail(str(exc))
    except DfgConnectionError:
        fail(f"no dfg server at {url}")
    except DfgApiError as exc:
        fail(f"the ledger refused the commitment: {exc}")
    for node, digest in commitments.items():
        click.echo(f"{node}: bundle sha256 {digest}")
    click.echo("commitments recorded on the ledger (datasource.commit_shares)")


def _is_fhir(path: Path) -> bool:
    """A FHIR Bundle in JSON (by its extension, or its first bytes)."""
    if path.suffix.lower() == ".json":
        return True
    with path.open("rb") as handle:
        return handle.read(1).strip() == b"{"
