"""Command handlers: plain functions that authorise a signer and let an aggregate decide.

Each handler returns the one aggregate that now holds exactly one new pending event:
one accepted transaction, one ledger entry. State is read through ``State`` (the
sequencer's unit of work); time is passed in. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain import analysis_handlers, rules
from domain import commands as c
from domain.analysis_commands import ANALYSIS_COMMANDS
from domain.consent import Consent
from domain.errors import DomainError
from domain.identifiers import consent_aggregate_id, principal_aggregate_id
from domain.principal import Principal

ORGANISATION_ROLES = frozenset({c.Kind.SERVICE_PROVIDER, c.Kind.DATA_PROVIDER, c.Kind.ANALYST_ORG})

#: Which roles may sign which transaction type: the first gate (``decide``); the handlers
#: add the per-type rules. "self": any principal acting on itself (the handler checks
#: that it is itself, or an operator). Documented in docs/transactions.md.
MAY_SIGN: dict[str, frozenset[str]] = {
    "ledger.genesis": frozenset({"genesis"}),
    "ledger.adopt_rules": frozenset({c.Kind.OPERATOR}),
    "principal.admit": frozenset({c.Kind.OPERATOR, c.Kind.IDENTITY_SERVICE}),
    "principal.grant_role": frozenset({c.Kind.OPERATOR}),
    "principal.revoke_role": frozenset({c.Kind.OPERATOR}),
    "key.add": frozenset({c.Kind.OPERATOR, "self"}),
    "key.rotate": frozenset({c.Kind.OPERATOR, "self"}),
    "key.revoke": frozenset({c.Kind.OPERATOR, "self"}),
    "consent.request": ORGANISATION_ROLES,
    "consent.give": ORGANISATION_ROLES | {c.Kind.CITIZEN, c.Kind.IDENTITY_SERVICE},
    "consent.decline": frozenset({c.Kind.CITIZEN, c.Kind.IDENTITY_SERVICE}),
    "consent.withdraw": ORGANISATION_ROLES | {c.Kind.CITIZEN, c.Kind.IDENTITY_SERVICE},
    "consent.utilize": ORGANISATION_ROLES,
    **analysis_handlers.MAY_SIGN,
}

#: Transaction type -> body model, every type. The wire names are the contract.
COMMANDS: dict[str, type[c.Command]] = {**c.LEDGER_COMMANDS, **ANALYSIS_COMMANDS}


class State(Protocol):
    """What a handler may read: aggregates as of the entry being decided."""

    def principal(self, principal_id: str) -> Principal | None: ...

    def consent(self, aggregate_id: UUID) -> Consent | None: ...

    def aggregate(self, aggregate_id: UUID) -> Aggregate | None: ...

    def is_empty(self) -> bool: ...

    def rules(self) -> int:
        """The rules version in effect for the entry being decided (``domain.rules``)."""
        ...


def _require_role(signer: Principal, *roles: str) -> None:
    if not signer.roles.intersection(roles):
        raise DomainError(
            "role_not_allowed",
            f"{signer.principal} (roles {', '.join(sorted(signer.roles)) or 'none'}) may not do this;"
            f" needs one of {', '.join(sorted(roles))}",
        )


def _existing_principal(state: State, principal_id: str) -> Principal:
    principal = state.principal(principal_id)
    if principal is None:
        raise DomainError("unknown_principal", f"{principal_id} is not admitted on this ledger")
    return principal


def _signer(signer: Principal | None) -> Principal:
    if signer is None:  # pragma: no cover - the ledger resolves signers before deciding
        raise DomainError("unknown_signer", "the signer is not admitted")
    return signer


def genesis(cmd: c.Genesis, signer: Principal | None, at: datetime, state: State) -> Aggregate:
    if not state.is_empty():
        raise DomainError("genesis_exists", "this ledger already has a genesis entry")
    if cmd.ledger.rules is not None:
        rules.require_known(cmd.ledger.rules)
    return Principal.admit(
        aggregate_id=principal_aggregate_id(cmd.operator),
        principal=cmd.operator,
        kind=c.Kind.OPERATOR,
        display_name=cmd.display_name,
        custodian=None,
        jwk=cmd.jwk,
        admitted_by=cmd.operator,
        at=at,
        ledger=cmd.ledger.model_dump(exclude_none=True),  # no "rules" in a version 1 genesis
    )


def adopt_rules(cmd: c.AdoptRules, signer: Principal | None, at: datetime, state: State) -> Aggregate:
    by = _signer(signer)
    current = state.rules()
    if cmd.version <= current:
        raise DomainError("rules_not_newer", f"this ledger follows rules version {current} already")
    rules.require_known(cmd.version)
    adopted = state.aggregate(rules.RULES_AGGREGATE_ID)
    if isinstance(adopted, rules.LedgerRules):
        adopted.adopt(version=cmd.version, by=by.principal, at=at)
        return adopted
    return rules.LedgerRules.adopt_first(version=cmd.version, by=by.principal, at=at)


def admit(cmd: c.AdmitPrincipal, signer: Principal | None, at: datetime, state: State) -> Aggregate:
    by = _signer(signer)
    if c.Kind.OPERATOR not in by.roles:
        _require_role(by, c.Kind.IDENTITY_SERVICE)
        if cmd.kind is not c.Kind.CITIZEN:
            raise DomainError("role_not_allowed", "an identity service admits citizens only")
    if state.principal(cmd.principal) is not None:
        raise DomainError("principal_exists", f"{cmd.principal} is already admitted")
    if cmd.custodian is not None:
        custodian = _existing_principal(state, cmd.custodian)
        if c.Kind.IDENTITY_SERVICE not in custodian.roles:  # said so: it is not the signer's role
            raise DomainError(
                "role_not_allowed",
                f"the custodian {custodian.principal} is no identity service"
                f" (roles {', '.join(sorted(custodian.roles)) or 'none'})",
            )
    return Principal.admit(
        aggregate_id=principal_aggregate_id(cmd.principal),
        principal=cmd.principal,
        kind=cmd.kind,
        display_name=cmd.display_name,
        custodian=cmd.custodian,
        jwk=cmd.jwk,
        admitted_by=by.principal,
        at=at,
    )


def grant_role(cmd: c.GrantRole, signer: Principal | None, at: datetime, state: State) -> Aggregate:
    by = _signer(signer)
    target = _existing_principal(state, cmd.principal)
    target.grant_role(cmd.role, by=by.principal, at=at)
    return target


def revoke_role(cmd: c.RevokeRole, signer: Principal | None, at: datetime, state: State) -> Aggregate:
    by = _signer(signer)
    target = _existing_principal(state, cmd.principal)
    if target.principal == by.principal and cmd.role == c.Kind.OPERATOR:
        raise DomainError("role_not_allowed", "an operator cannot remove its own operator role")
    target.revoke_role(cmd.role, by=by.principal, at=at)
    return target


def _key_target(principal_id: str, signer: Principal | None, state: State) -> tuple[Principal, Principal]:
    by = _signer(signer)
    if principal_id != by.principal:
        _require_role(by, c.Kind.OPERATOR)
    target = by if principal_id == by.principal else _existing_principal(state, principal_id)
    return by, target


def add_key(cmd: c.AddKey, signer: Principal | None, at: datetime, state: State) -> Aggregate:
    by, target = _key_target(cmd.principal, signer, state)
    target.add_key(cmd.jwk, cmd.not_before, cmd.not_after, by=by.principal, at=at)
    return target


def rotate_key(cmd: c.RotateKey, signer: Principal | None, at: datetime, state: State) -> Aggregate:
    by, target = _key_target(cmd.principal, signer, state)
    target.rotate_key(cmd.old_kid, cmd.jwk, by=by.principal, at=at)
    return target


def revoke_key(cmd: c.RevokeKey, signer: Principal | None, at: datetime, state: State) -> Aggregate:
    by, target = _key_target(cmd.principal, signer, state)
    target.revoke_key(cmd.kid, cmd.reason, by=by.principal, at=at)
    return target


def _acting_for_subject(by: Principal, subject: str, state: State) -> bool:
    """True when ``by`` is the subject, or the subject's custodial wallet: the identity
    service named at admission, for as long as it holds that role (a wallet whose role
    was revoked speaks for nobody, whatever other roles it has)."""
    if by.principal == subject:
        return True
    citizen = state.principal(subject)
    return citizen is not None and citizen.custodian == by.principal and c.Kind.IDENTITY_SERVICE in by.roles


def request_consent(cmd: c.RequestConsent, signer: Principal | None, at: datetime, state: State) -> Aggregate:
    by = _signer(signer)
    aggregate_id = consent_aggregate_id(by.principal, cmd.consent_id)
    if state.consent(aggregate_id) is not None:
        raise DomainError("consent_exists", f"consent {cmd.consent_id} already exists")
    return Consent.request(
        aggregate_id=aggregate_id,
        consent_id=cmd.consent_id,
        controller=by.principal,
        subject=cmd.subject,
        terms=cmd.terms,
        at=at,
    )


def give_consent(cmd: c.GiveConsent, signer: Principal | None, at: datetime, state: State) -> Aggregate:
    by = _signer(signer)
    consent_id = str(cmd.consent_id)  # once: hashed into the aggregate id and recorded
    aggregate_id = consent_aggregate_id(cmd.controller, consent_id)
    existing = state.consent(aggregate_id)
    if cmd.level == 1:
        # Level 1: a copy recorded by the controller for someone who is not a platform user.
        _require_role(by, *ORGANISATION_ROLES)
        if by.principal != cmd.controller:
            raise DomainError("not_controller", "a level 1 consent is recorded by its controller")
        subject = state.principal(cmd.subject)
        if subject is not None and subject.kind == c.Kind.CITIZEN:
            raise DomainError(
                "subject_is_platform_user",
                f"{cmd.subject} is a platform user and gives consent themselves (level 2)",
            )
        if existing is not None:
            raise DomainError("consent_exists", f"consent {cmd.consent_id} already exists")
        return _new_given_consent(
            cmd, consent_id, aggregate_id, by, at, "a level 1 consent carries its terms"
        )
    if not _acting_for_subject(by, cmd.subject, state):
        raise DomainError(
            "not_subject", "a level 2 consent is given by the subject or their custodial wallet"
        )
    _existing_principal(state, cmd.controller)
    if existing is None:
        return _new_given_consent(
            cmd, consent_id, aggregate_id, by, at, "no request to answer: the consent needs its terms"
        )
    if existing.subject != cmd.subject:
        raise DomainError("not_subject", f"consent {cmd.consent_id} belongs to another subject")
    existing.accept_request(terms=cmd.terms, method=cmd.method, by=by.principal, at=at)
    return existing


def _new_given_consent(
    cmd: c.GiveConsent, consent_id: str, aggregate_id: UUID, by: Principal, at: datetime, terms_required: str
) -> Consent:
    if cmd.terms is None:
        raise DomainError("terms_required", terms_required)
    return Consent.give_new(
        aggregate_id=aggregate_id,
        consent_id=consent_id,
        controller=cmd.controller,
        subject=cmd.subject,
        terms=cmd.terms,
        level=cmd.level,
        method=cmd.method,
        by=by.principal,
        at=at,
    )


def _consent_of_subject(controller: str, consent_id: UUID, subject: str, state: State) -> Consent:
    consent = state.consent(consent_aggregate_id(controller, consent_id))
    if consent is None or consent.subject != subject:
        raise DomainError("unknown_consent", f"no consent {consent_id} of {controller} for this subject")
    return consent


def decline_consent(cmd: c.DeclineConsent, signer: Principal | None, at: datetime, state: State) -> Aggregate:
    by = _signer(signer)
    if not _acting_for_subject(by, cmd.subject, state):
        raise DomainError("not_subject", "only the subject or their custodial wallet declines")
    consent = _consent_of_subject(cmd.controller, cmd.consent_id, cmd.subject, state)
    consent.decline(by=by.principal, at=at)
    return consent


def withdraw_consent(
    cmd: c.WithdrawConsent, signer: Principal | None, at: datetime, state: State
) -> Aggregate:
    by = _signer(signer)
    consent = _consent_of_subject(cmd.controller, cmd.consent_id, cmd.subject, state)
    records_copy = consent.level == 1 and by.principal == consent.controller
    if not records_copy and not _acting_for_subject(by, cmd.subject, state):
        raise DomainError(
            "not_subject",
            "a consent is withdrawn by its subject (or wallet); a level 1 copy also by its controller",
        )
    consent.withdraw(by=by.principal, at=at)
    return consent


def utilize_consent(cmd: c.UtilizeConsent, signer: Principal | None, at: datetime, state: State) -> Aggregate:
    by = _signer(signer)
    consent = state.consent(consent_aggregate_id(by.principal, cmd.consent_id))
    if consent is None:
        raise DomainError("unknown_consent", f"{by.principal} has no consent {cmd.consent_id}")
    if len(set(cmd.data_categories)) != len(cmd.data_categories) and state.rules() >= 2:
        raise DomainError(
            "repeated_category", "data_categories names a category more than once (rules version 2)"
        )
    consent.utilize(purpose=cmd.purpose, data_categories=list(cmd.data_categories), at=at)
    return consent


HANDLERS: dict[str, Callable[..., Aggregate]] = {
    "ledger.genesis": genesis,
    "ledger.adopt_rules": adopt_rules,
    "principal.admit": admit,
    "principal.grant_role": grant_role,
    "principal.revoke_role": revoke_role,
    "key.add": add_key,
    "key.rotate": rotate_key,
    "key.revoke": revoke_key,
    "consent.request": request_consent,
    "consent.give": give_consent,
    "consent.decline": decline_consent,
    "consent.withdraw": withdraw_consent,
    "consent.utilize": utilize_consent,
    **analysis_handlers.HANDLERS,
}

#: Every event type that may appear in an entry, by its wire name.
EVENT_TYPES: dict[str, type[Aggregate.Event]] = {
    "LedgerRules.Adopted": rules.LedgerRules.Adopted,
    "LedgerRules.Upgraded": rules.LedgerRules.Upgraded,
    "Principal.Admitted": Principal.Admitted,
    "Principal.KeyAdded": Principal.KeyAdded,
    "Principal.KeyRotated": Principal.KeyRotated,
    "Principal.KeyRevoked": Principal.KeyRevoked,
    "Principal.RoleGranted": Principal.RoleGranted,
    "Principal.RoleRevoked": Principal.RoleRevoked,
    "Principal.EncryptionKeySet": Principal.EncryptionKeySet,
    "Principal.PolicySet": Principal.PolicySet,
    "Consent.Requested": Consent.Requested,
    "Consent.Given": Consent.Given,
    "Consent.RequestAccepted": Consent.RequestAccepted,
    "Consent.Declined": Consent.Declined,
    "Consent.Withdrawn": Consent.Withdrawn,
    "Consent.Utilized": Consent.Utilized,
    **analysis_handlers.EVENT_TYPES,
}


def decide(
    tx_type: str, command: c.Command, signer: Principal | None, at: datetime, state: State
) -> Aggregate:
    """The one entry point: the role gate of ``MAY_SIGN``, then the type's handler;
    nothing is decided by a rules version this software does not know (a ledger that a
    newer release created or moved on, opened by this one): the rules it has could
    accept what that version refuses."""
    rules.require_known(state.rules())
    allowed = MAY_SIGN[tx_type]
    if signer is not None and "self" not in allowed and not signer.roles.intersection(allowed):
        raise DomainError(
            "role_not_allowed",
            f"{signer.principal} (roles {', '.join(sorted(signer.roles)) or 'none'}) may not sign {tx_type};"
            f" needs one of {', '.join(sorted(allowed))}",
        )
    return HANDLERS[tx_type](command, signer, at, state)


#: Aggregate classes by the prefix of their event names.
AGGREGATES: dict[str, type[Aggregate]] = {
    "LedgerRules": rules.LedgerRules,
    "Principal": Principal,
    "Consent": Consent,
    **analysis_handlers.AGGREGATES,
}

if not set(COMMANDS) == set(HANDLERS) == set(MAY_SIGN):  # pragma: no cover - a programming error
    raise RuntimeError("every transaction type needs a body model, a handler and a MAY_SIGN entry")
