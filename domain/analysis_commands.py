"""Transaction bodies of the analysis platform: catalogs, datasources and their variables,
data views, analyses with calculations and a merge specification, node approvals,
computation tasks and results. Shapes only; rules live in the aggregates and handlers.
Wire names are the contract (docs/analyses.md).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from domain.commands import Code, Codes, Command, PrincipalId, Sha256Hex, ShortText, Uuid

#: Variable aliases and names: what the calculation language calls a NAME.
VariableName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
LongText = Annotated[str, Field(max_length=4000)]
DEFAULT_MODULUS = str(2**127 - 1)


def _decimal_text(value: str) -> str:
    """Numbers that are not integers travel as decimal strings (the ledger has no floats)."""
    try:
        number = Decimal(value)
    except InvalidOperation as exc:
        raise ValueError(f"{value!r} is not a decimal number") from exc
    if not number.is_finite():
        raise ValueError("a decimal number is finite")
    return value


DecimalText = Annotated[str, Field(max_length=40), AfterValidator(_decimal_text)]


def _modulus(value: str) -> str:
    if not value.isdigit() or len(value) > 200:
        raise ValueError("the modulus is a decimal integer")
    number = int(value)
    if number < 2**31 or not _probably_prime(number):
        raise ValueError("the modulus is a prime of at least 2^31")
    return value


def _probably_prime(n: int) -> bool:
    """Miller-Rabin with fixed bases: deterministic far beyond 2^64, and the modulus is
    public and chosen by the analyst, so adversarial composites only hurt their own run."""
    if n % 2 == 0:
        return n == 2
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


# --- catalogs, datasources, variables ------------------------------------------------


class CreateCatalog(Command):
    catalog_id: Uuid
    name: ShortText
    description: LongText = ""


class UpdateCatalog(Command):
    catalog_id: Uuid
    name: ShortText | None = None
    description: LongText | None = None


class OriginKind(StrEnum):
    FHIR = "fhir"
    TABULAR = "tabular"


class Origin(Command):
    """Where a datasource's records come from: FHIR resources of a type, or a table."""

    kind: Annotated[OriginKind, Field(strict=False)]
    resource: Annotated[str, Field(pattern=r"^[A-Z][A-Za-z]{1,63}$")] | None = None
    format: Literal["csv", "parquet"] | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> Origin:
        if self.kind is OriginKind.FHIR and (self.resource is None or self.format is not None):
            raise ValueError("a FHIR origin names its resource type (e.g. Observation), no format")
        if self.kind is OriginKind.TABULAR and (self.format is None or self.resource is not None):
            raise ValueError("a tabular origin names its format (csv or parquet), no resource")
        return self


class CreateDatasource(Command):
    datasource_id: Uuid
    catalog_id: Uuid
    name: ShortText
    description: LongText = ""
    origin: Origin
    keys: Annotated[list[VariableName], Field(min_length=1, max_length=8)] = Field(
        description="Pseudonymous subject keys the records carry (what merges join on)."
    )
    data_categories: Codes

    @field_validator("keys")
    @classmethod
    def _distinct(cls, keys: list[str]) -> list[str]:
        if len(set(keys)) != len(keys):
            raise ValueError("keys must be distinct")
        return keys


class UpdateDatasource(Command):
    datasource_id: Uuid
    name: ShortText | None = None
    description: LongText | None = None


class VariableType(StrEnum):
    INTEGER = "integer"
    DECIMAL = "decimal"
    BOOLEAN = "boolean"
    CATEGORY = "category"


class VariableSpec(Command):
    """A variable of a datasource: type, unit (UCUM) and the allowed range that MPC
    fixed-point encoding and histogram bins rely on."""

    datasource_id: Uuid
    name: VariableName
    type: Annotated[VariableType, Field(strict=False)]
    unit: Annotated[str, Field(max_length=40)] = ""
    min: DecimalText | None = None
    max: DecimalText | None = None
    categories: Annotated[list[Code], Field(max_length=256)] | None = None
    description: LongText = ""

    @model_validator(mode="after")
    def _range(self) -> VariableSpec:
        if self.type is VariableType.CATEGORY:
            if not self.categories or self.min is not None or self.max is not None:
                raise ValueError("a category variable lists its categories and has no numeric range")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError("categories must be distinct")
        elif self.categories is not None:
            raise ValueError("only category variables have categories")
        if self.type in (VariableType.INTEGER, VariableType.DECIMAL):
            if self.min is None or self.max is None:
                raise ValueError("a numeric variable has an allowed range: min and max")
            if Decimal(self.min) >= Decimal(self.max):
                raise ValueError("min must be below max")
        return self


class CreateVariable(VariableSpec):
    pass


class UpdateVariable(VariableSpec):
    pass


class CommitShares(Command):
    """A data provider delivered its records' shares to the nodes: the ledger keeps a
    commitment (SHA-256) to each node's sealed bundle, the row count and the
    fixed-point precision the values were encoded with -- never shares or values."""

    datasource_id: Uuid
    commitments: Annotated[dict[PrincipalId, Sha256Hex], Field(min_length=2, max_length=16)]
    records: Annotated[int, Field(ge=0, le=10**9)]
    fixed_point_precision: Annotated[int, Field(ge=0, le=64)] = 16


class SetEncryptionKey(Command):
    """A node operator's X25519 key: data providers seal each node's shares to it."""

    jwk: dict[str, str]

    @field_validator("jwk")
    @classmethod
    def _x25519(cls, jwk: dict[str, str]) -> dict[str, str]:
        problem = x25519_problem(jwk)
        if problem is not None:
            raise ValueError(problem)
        return jwk


def x25519_problem(jwk: dict[str, str]) -> str | None:
    """Why ``jwk`` is not a public X25519 key as the nodes use them, or None."""
    if set(jwk) - {"kty", "crv", "x", "use"} or jwk.get("kty") != "OKP" or jwk.get("crv") != "X25519":
        return "an X25519 public key: {kty: OKP, crv: X25519, x}, nothing private"
    x = jwk.get("x", "")
    if len(x) != 43 or not x.replace("-", "").replace("_", "").isalnum():
        return "x is 32 bytes, unpadded base64url"
    return None


# --- data views ---------------------------------------------------------------------------


class ViewVariable(Command):
    alias: VariableName
    datasource_id: Uuid
    variable: VariableName


class CreateDataView(Command):
    data_view_id: Uuid
    name: ShortText
    variables: Annotated[list[ViewVariable], Field(min_length=1, max_length=256)]

    @field_validator("variables")
    @classmethod
    def _distinct_aliases(cls, variables: list[ViewVariable]) -> list[ViewVariable]:
        aliases = [v.alias for v in variables]
        if len(set(aliases)) != len(aliases):
            raise ValueError("aliases must be distinct")
        return variables


class SendDataView(Command):
    data_view_id: Uuid


class DuplicateDataView(Command):
    data_view_id: Uuid
    new_data_view_id: Uuid
    name: ShortText | None = None


# --- analyses -------------------------------------------------------------------------------


class ConsentRequestSpec(Command):
    """What citizens are asked to consent to for this analysis."""

    purpose: Code
    data_categories: Codes


class CreateAnalysis(Command):
    analysis_id: Uuid
    name: ShortText
    note: LongText = ""
    data_view_id: Uuid
    analysts: Annotated[list[PrincipalId], Field(max_length=32)] = Field(default_factory=list)
    consent: ConsentRequestSpec
    modulus: Annotated[str, AfterValidator(_modulus)] = DEFAULT_MODULUS
    fixed_point_precision: Annotated[int, Field(ge=0, le=64)] = 16


class UpdateAnalysis(Command):
    analysis_id: Uuid
    name: ShortText | None = None
    note: LongText | None = None
    modulus: Annotated[str, AfterValidator(_modulus)] | None = None
    fixed_point_precision: Annotated[int, Field(ge=0, le=64)] | None = None


class AnalysisRef(Command):
    analysis_id: Uuid


class DuplicateAnalysis(Command):
    analysis_id: Uuid
    new_analysis_id: Uuid
    name: ShortText | None = None


class MergeSpec(Command):
    """Inner join of the data view's datasources on one pseudonymous key."""

    key: VariableName
    join: Literal["inner"] = "inner"


class SetMerge(Command):
    analysis_id: Uuid
    merge: MergeSpec


class AnalysisCatalog(Command):
    analysis_id: Uuid
    catalog_id: Uuid


class AnalysisDatasource(Command):
    analysis_id: Uuid
    datasource_id: Uuid


class CalculationSpec(Command):
    analysis_id: Uuid
    calculation_id: Uuid
    name: ShortText
    filter: Annotated[str, Field(max_length=2000)] = ""
    functions: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=500)]], Field(min_length=1, max_length=32)
    ]


class CreateCalculation(CalculationSpec):
    pass


class UpdateCalculation(CalculationSpec):
    pass


class DuplicateCalculation(Command):
    analysis_id: Uuid
    calculation_id: Uuid
    new_calculation_id: Uuid


class DeleteCalculation(Command):
    analysis_id: Uuid
    calculation_id: Uuid


class SendAnalysis(Command):
    """Send the analysis to the computation nodes' organisations; it is locked from now."""

    analysis_id: Uuid
    nodes: Annotated[list[PrincipalId], Field(min_length=2, max_length=16)]

    @field_validator("nodes")
    @classmethod
    def _distinct(cls, nodes: list[str]) -> list[str]:
        if len(set(nodes)) != len(nodes):
            raise ValueError("nodes must be distinct")
        return nodes


class ApproveAnalysis(Command):
    analysis_id: Uuid
    approve: bool = True
    reason: Annotated[str, Field(max_length=500)] = ""


class TaskRef(Command):
    analysis_id: Uuid
    task_id: Annotated[int, Field(ge=1, le=10_000)]


class FinishTask(TaskRef):
    commitment: Sha256Hex = Field(description="SHA-256 commitment to this node's output shares.")


class FailTask(TaskRef):
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class ApproveResults(Command):
    analysis_id: Uuid
    approve: bool = True
    reason: Annotated[str, Field(max_length=500)] = ""


class RequestResultAccess(Command):
    """The analyst asks for the result shares, encrypted to this public key (a JWK)."""

    analysis_id: Uuid
    recipient_jwk: dict[str, str]

    @field_validator("recipient_jwk")
    @classmethod
    def _okp_or_ec(cls, jwk: dict[str, str]) -> dict[str, str]:
        if jwk.get("kty") not in ("OKP", "EC") or "d" in jwk:
            raise ValueError("a public OKP (X25519) or EC key, without private parts")
        # JWK member names are ASCII (RFC 7517's registry); any other would sort one way
        # in an entry's canonical JSON (by code point) and another in RFC 8785 (UTF-16).
        if len(jwk) > 16 or not all(name.isascii() for name in jwk):
            raise ValueError("a JWK has at most 16 members, with ASCII names")
        return jwk


class NodePolicy(Command):
    """A node organisation's output policy: it approves results only if every released
    statistic aggregates at least ``min_cell`` records (checked inside the MPC), ``min``
    and ``max`` only if ``release_extremes``, automatically or after a person approves."""

    min_cell: Annotated[int, Field(ge=1, le=10_000)] = 10
    release_extremes: bool = False
    approval: Literal["automatic", "manual"] = "manual"


ANALYSIS_COMMANDS: dict[str, type[Command]] = {
    "catalog.create": CreateCatalog,
    "catalog.update": UpdateCatalog,
    "datasource.create": CreateDatasource,
    "datasource.update": UpdateDatasource,
    "datasource.commit_shares": CommitShares,
    "node.set_encryption_key": SetEncryptionKey,
    "node.set_policy": NodePolicy,
    "variable.create": CreateVariable,
    "variable.update": UpdateVariable,
    "data_view.create": CreateDataView,
    "data_view.send": SendDataView,
    "data_view.duplicate": DuplicateDataView,
    "analysis.create": CreateAnalysis,
    "analysis.update": UpdateAnalysis,
    "analysis.delete": AnalysisRef,
    "analysis.duplicate": DuplicateAnalysis,
    "analysis.set_merge": SetMerge,
    "analysis.add_catalog": AnalysisCatalog,
    "analysis.remove_catalog": AnalysisCatalog,
    "analysis.add_datasource": AnalysisDatasource,
    "analysis.remove_datasource": AnalysisDatasource,
    "calculation.create": CreateCalculation,
    "calculation.update": UpdateCalculation,
    "calculation.duplicate": DuplicateCalculation,
    "calculation.delete": DeleteCalculation,
    "analysis.send": SendAnalysis,
    "analysis.approve": ApproveAnalysis,
    "analysis.queue": AnalysisRef,
    "task.claim": TaskRef,
    "task.finish": FinishTask,
    "task.fail": FailTask,
    "results.approve": ApproveResults,
    "results.request_access": RequestResultAccess,
}
