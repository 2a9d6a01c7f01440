"""Reading a FHIR R5 Bundle of Observations as records for ``dfg provider upload``.

Parsed and validated with ``fhir.resources``. Each Observation (and each component of
one, e.g. a blood-pressure panel) whose code matches a datasource variable gives that
variable's value for the Observation's subject:

* **which variable:** a coding whose ``code`` equals the variable's name, or the coding
  mapped to it with ``--code VARIABLE=SYSTEM|CODE`` (e.g. ``sbp=http://loinc.org|8480-6``);
* **the subject:** ``subject.reference`` ``Patient/<pseudonym>``, or
  ``subject.identifier.value`` -- the pseudonym consents name on the ledger;
* **the value:** ``valueQuantity`` (its UCUM ``code``, or else its ``unit``, must equal
  the variable's unit when the variable declares one), ``valueInteger``,
  ``valueBoolean`` or ``valueCodeableConcept`` / ``valueString`` for categories;
* **several observations of one variable for one subject:** the latest by
  ``effectiveDateTime`` (or ``effectiveInstant``/``issued``) counts; when they cannot
  be ordered the upload is refused.

Observations with status ``entered-in-error`` or ``cancelled`` are skipped. Anything
else that does not fit stops the upload before anything is shared, naming the entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateways.provider_upload import UploadError, Variable

SKIPPED_STATUSES = frozenset({"entered-in-error", "cancelled"})


def parse_codes(values: Sequence[str]) -> dict[tuple[str, str], str]:
    """``VARIABLE=SYSTEM|CODE`` options -> {(system, code): variable}."""
    codes = {}
    for value in values:
        variable, sep, coding = value.partition("=")
        system, bar, code = coding.rpartition("|")
        if not sep or not variable or not bar or not code:
            raise UploadError(f"--code takes VARIABLE=SYSTEM|CODE, not {value!r}")
        codes[(system, code)] = variable
    return codes


def _first_problem(exc: ValidationError) -> str:
    """Where and what, e.g. "entry.0.resource.subject: Value is expected ...", and how
    many more there are (pydantic's text starts with a count line that names neither)."""
    problems = exc.errors()
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"] if part != "root")
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where + ': ' if where else ''}{first['msg']}{more}"


def read_bundle(
    path: Path, key_column: str, variables: Sequence[Variable], codes: Mapping[tuple[str, str], str]
) -> list[dict[str, str]]:
    """One record per subject (as CSV rows would be), values as text."""
    from fhir.resources.bundle import Bundle

    try:
        bundle = Bundle.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise UploadError(f"{path} is not a valid FHIR Bundle: {_first_problem(exc)}") from exc
    except ValueError as exc:
        raise UploadError(f"{path} is not a valid FHIR Bundle: {exc}") from exc
    by_name = {v.name: v for v in variables}
    records: dict[str, dict[str, str]] = {}
    when: dict[tuple[str, str], datetime | None] = {}
    for number, entry in enumerate(bundle.entry or [], start=1):
        resource: Any = entry.resource
        if resource is None or resource.get_resource_type() != "Observation":
            continue
        if resource.status in SKIPPED_STATUSES:
            continue
        where = f"entry {number}"
        subject = _subject(resource, where)
        effective = resource.effectiveDateTime or resource.effectiveInstant or resource.issued
        parts = [resource, *(resource.component or [])]
        for part in parts:
            name = _variable_of(part.code, by_name, codes)
            if name is None:
                continue
            text = _value(part, by_name[name], where)
            if text is None:
                continue
            key = (subject, name)
            if key in when:
                previous = when[key]
                if previous is None or effective is None:
                    raise UploadError(
                        f"{where}: a second {name} for subject {subject}, and no effective time"
                        " to pick the latest"
                    )
                if effective <= previous:
                    continue
            when[key] = effective
            records.setdefault(subject, {key_column: subject})[name] = text
    if not records:
        raise UploadError(f"{path} has no Observation of the datasource's variables ({', '.join(by_name)})")
    names = [v.name for v in variables]  # a variable without an observation is missing (empty)
    return [{key_column: s, **dict.fromkeys(names, ""), **records[s]} for s in sorted(records)]


def _subject(resource: Any, where: str) -> str:
    subject = resource.subject
    if subject is not None and subject.reference and subject.reference.startswith("Patient/"):
        return str(subject.reference.removeprefix("Patient/"))
    if subject is not None and subject.identifier is not None and subject.identifier.value:
        return str(subject.identifier.value)
    raise UploadError(f"{where}: the Observation names no subject (Patient/<pseudonym> or an identifier)")


def _variable_of(
    code: Any, by_name: Mapping[str, Variable], codes: Mapping[tuple[str, str], str]
) -> str | None:
    for coding in (code.coding or []) if code is not None else []:
        mapped = codes.get((coding.system or "", coding.code or ""))
        if mapped in by_name:
            return mapped
        if not codes and coding.code in by_name:
            return str(coding.code)
    return None


def _value(part: Any, variable: Variable, where: str) -> str | None:
    """The value as text, the unit checked; None when the part has no value."""
    quantity = part.valueQuantity
    if quantity is not None:
        unit = quantity.code or quantity.unit or ""
        if variable.unit and unit != variable.unit:
            raise UploadError(f"{where}: {variable.name} is in {variable.unit!r}, not {unit!r}")
        return None if quantity.value is None else str(quantity.value)
    if part.valueInteger is not None:
        return str(part.valueInteger)
    if part.valueBoolean is not None:
        return "true" if part.valueBoolean else "false"
    concept = part.valueCodeableConcept
    if concept is not None and concept.coding:
        return str(concept.coding[0].code)
    if part.valueString is not None:
        return str(part.valueString)
    return None
