"""``dfg demo mpc``: a privacy-preserving cardiology study, end to end on loopback.

A coordinator and three computation nodes start (each its own process and replica).
A clinic uploads blood pressure and a wearables company heart-rate variability for a
few thousand pseudonymous patients with overlapping keys; each provider secret-shares
its records on its own machine and seals each node's shares to that node. Some
patients consent to the study, some never do, a few withdraw. The analyst runs an
analysis with a filter, mean, variance, a correlation across the two providers and a
histogram; the nodes compute it without seeing a record, approve the results under
their minimum-cell-size policy, and the analyst reconstructs them -- printed next to
the plaintext answer over the consenting patients, which only this demo can compute.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import click
import numpy as np

from gateways.cli.analyst_commands import describe
from gateways.federation import FederationError, analyst_key, federation
from gateways.sdk import pseudonym

Record = dict[str, float]


def _step(text: str) -> None:
    click.secho(f"\n▸ {text}", bold=True)


def synthetic_patients(count: int, seed: int) -> dict[str, Record]:
    """Patients with age, systolic blood pressure (rising with age) and heart-rate
    variability (RMSSD, falling with age and pressure)."""
    rng = random.Random(seed)
    secret = b"federation pseudonymisation key (demo)"
    patients = {}
    for number in range(count):
        age = rng.randint(25, 90)
        sbp = min(219.0, max(81.0, 95 + 0.6 * age + rng.gauss(0, 12)))
        hrv = min(199.0, max(6.0, 95 - 0.55 * age - 0.12 * (sbp - 120) + rng.gauss(0, 12)))
        patients[pseudonym(secret, f"patient-{number}")] = {
            "age": age,
            "sbp": round(sbp, 1),
            "hrv": round(hrv, 1),
        }
    return patients


CALCULATIONS: list[tuple[str, str | None, list[str]]] = [
    ("Blood pressure from 60", "age >= 60", ["count()", "mean(sbp)", "variance(sbp)", "histogram(sbp, 6)"]),
    ("Pressure and HRV from 60", "age >= 60", ["correlation(sbp, hrv)", "mean(hrv)"]),
]
FILTERS: dict[str | None, Callable[[Record], bool]] = {
    "age >= 60": lambda r: r["age"] >= 60,
    None: lambda r: True,
}


def plaintext(function: str, rows: list[Record], low: float = 80, high: float = 220) -> str:
    """What the same function gives on the records in clear (only this demo has them)."""
    sbp = np.array([r["sbp"] for r in rows])
    hrv = np.array([r["hrv"] for r in rows])
    if function == "count()":
        return str(len(rows))
    if function == "mean(sbp)":
        return f"{sbp.mean():.6g}  (n = {len(rows)})"
    if function == "variance(sbp)":
        return f"{sbp.var(ddof=1):.6g}  (n = {len(rows)})"
    if function == "mean(hrv)":
        return f"{hrv.mean():.6g}  (n = {len(rows)})"
    if function == "correlation(sbp, hrv)":
        return f"{np.corrcoef(sbp, hrv)[0, 1]:.6g}  (n = {len(rows)})"
    if function.startswith("histogram(sbp"):
        counts, _ = np.histogram(sbp, bins=np.linspace(low, high, 7))
        return "  ".join(str(int(c)) for c in counts)
    return "?"


@click.command("mpc")
@click.option("--patients", type=click.IntRange(100, 1_000_000), default=3000, show_default=True)
@click.option("--seed", type=int, default=11, show_default=True)
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the federation's data and logs here (default: a temporary directory).",
)
def mpc(patients: int, seed: int, keep: Path | None) -> None:
    """A coordinator and three MPC nodes on loopback compute a cardiology study across
    two providers; results are printed next to the plaintext answer."""
    if keep is not None:
        _demo(keep, patients, seed)
        return
    with tempfile.TemporaryDirectory(prefix="dfg-demo-mpc-") as tmp:
        _demo(Path(tmp), patients, seed)


def _demo(root: Path, count: int, seed: int) -> None:
    people = synthetic_patients(count, seed)
    keys = list(people)
    rng = random.Random(seed + 1)
    clinic_keys = [k for k in keys if rng.random() < 0.8]
    wearable_keys = [k for k in keys if rng.random() < 0.75]
    consenting = {k for k in keys if rng.random() < 0.7}
    withdrawing = set(rng.sample(sorted(consenting), max(1, len(consenting) // 50)))
    _step("Start a coordinator and three computation nodes on loopback (each its own process and replica)")
    try:
        with federation(root, policy={"min_cell": 10, "release_extremes": False}) as fed:
            click.echo(f"  coordinator {fed.url}, ledger {fed.chain}")
            for node in fed.nodes.values():
                click.echo(f"  {node.name}: GraphQL {node.url}, MPC peers on port {node.mpc_port}")
            _run(fed, people, clinic_keys, wearable_keys, consenting, withdrawing)
    except FederationError as exc:
        raise click.ClickException(str(exc)) from exc


def _run(
    fed: Any,
    people: dict[str, Record],
    clinic_keys: list[str],
    wearable_keys: list[str],
    consenting: set[str],
    withdrawing: set[str],
) -> None:
    _step("Admit a clinic and a wearables company (data providers) and a university (analyst)")
    clinic = fed.admit("dp:clinic", "data_provider")
    wearables = fed.admit("dp:wearables", "data_provider")
    university = fed.admit("ao:university", "analyst_org")
    bp = fed.datasource(
        clinic, "Clinic blood pressure", [("age", "integer", "18", "100"), ("sbp", "decimal", "80", "220")]
    )
    hrv = fed.datasource(wearables, "Wearable HRV", [("hrv", "decimal", "5", "200")])
    click.echo(f"  datasources: blood pressure {bp}, HRV {hrv}")

    _step("Each provider secret-shares its records and seals each node's shares to that node")
    started = time.perf_counter()
    fed.upload(
        clinic,
        bp,
        [{"subject": k, "age": str(people[k]["age"]), "sbp": str(people[k]["sbp"])} for k in clinic_keys],
    )
    fed.upload(wearables, hrv, [{"subject": k, "hrv": str(people[k]["hrv"])} for k in wearable_keys])
    overlap = set(clinic_keys) & set(wearable_keys)
    click.echo(
        f"  clinic {len(clinic_keys):,} patients, wearables {len(wearable_keys):,}, in both {len(overlap):,}"
        f" ({time.perf_counter() - started:.1f} s; the ledger holds one SHA-256 per node's bundle)"
    )

    _step("Patients consent to the study (level-1 copies the university collected); a few withdraw")
    ids = fed.consent(university, sorted(consenting))
    fed.submit_all([university.withdraw_consent(consent_id=ids[k], subject=k) for k in sorted(withdrawing)])
    included = (consenting - withdrawing) & overlap
    click.echo(
        f"  {len(consenting):,} consented, {len(withdrawing)} withdrew,"
        f" {len(people) - len(consenting):,} never did;"
        f" {len(included):,} patients are in both datasets with valid consent"
    )

    _step("The analyst defines the analysis; every node approves it; it is queued")
    analysis_id = fed.analysis(
        university,
        "Blood pressure and heart-rate variability",
        [("age", bp, "age"), ("sbp", bp, "sbp"), ("hrv", hrv, "hrv")],
        CALCULATIONS,
    )
    for title, filter_text, functions in CALCULATIONS:
        click.echo(f"  {title}: {filter_text or 'all'} => {', '.join(functions)}")

    _step("The nodes compute it (each checks consent in its own replica) and approve the results (k = 10)")
    started = time.perf_counter()
    status = fed.wait_for(analysis_id, ["results_approved", "results_rejected", "failed"], timeout=1800)
    click.echo(f"  {status['status'].lower()} in {time.perf_counter() - started:.1f} s")
    if status["status"] != "RESULTS_APPROVED":
        raise click.ClickException(f"the analysis did not reach approved results: {status}")

    _step("The analyst fetches every node's sealed shares, checks them against the ledger, reconstructs")
    key, _ = analyst_key()
    results = fed.results(university, key, analysis_id)
    rows = [{**people[k]} for k in sorted(included)]
    for calculation in results:
        selected = [r for r in rows if FILTERS[calculation.filter or None](r)]
        click.secho(f"\n  {calculation.name} (where {calculation.filter or 'all'})", bold=True)
        click.echo(f"    {'function':<24} {'MPC result':<40} plaintext over the consenting patients")
        for result in calculation.results:
            shown = describe(result)
            if "counts" in result:
                shown = "  ".join("<k" if c is None else str(c) for c in result["counts"])
                edges = ", ".join(f"{float(Fraction(e)):g}" for e in result["edges"])
                click.echo(f"    {'  bins':<24} {edges}")
            click.echo(f"    {result['function']:<24} {shown:<40} {plaintext(result['function'], selected)}")
    click.secho("\nDone: no node saw a record, and only approved aggregates reached the analyst.", fg="green")
