"""A principal: an organisation, a node, an auditor or a citizen, with its keys and roles.

Keys are recorded as public JWKs under ``<principal>#<thumbprint>`` ids, so a key id
names its owner and is bound to one key forever. Validity of a key at a point in the
log is the state of this aggregate at that point: replaying in order is enough.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate

from domain.aggregate import LedgerAggregate
from domain.errors import DomainError
from domain.jwk import PublicJwk
from domain.times import optional_time, parse_time


@dataclass(frozen=True)
class KeyState:
    kid: str
    jwk: dict[str, str]
    not_before: datetime | None
    not_after: datetime | None
    revoked: str | None  # reason, once revoked

    def usable_at(self, at: datetime) -> str | None:
        """None when the key may sign at ``at``; otherwise the refusal code."""
        if self.revoked is not None:
            return "key_revoked"
        if self.not_before is not None and at < self.not_before:
            return "key_not_yet_valid"
        if self.not_after is not None and at >= self.not_after:
            return "key_expired"
        return None


def _key_state(kid: str, jwk: dict[str, str], not_before: str | None, not_after: str | None) -> KeyState:
    return KeyState(
        kid=kid,
        jwk=jwk,
        not_before=parse_time(not_before) if not_before else None,
        not_after=parse_time(not_after) if not_after else None,
        revoked=None,
    )


class Principal(LedgerAggregate):
    """Aggregate root for one principal id."""

    class Admitted(Aggregate.Created):
        principal: str
        kind: str
        roles: list[str]
        display_name: str | None
        custodian: str | None
        keys: list[dict[str, Any]]
        admitted_by: str
        ledger: dict[str, str] | None

    class KeyAdded(Aggregate.Event):
        kid: str
        jwk: dict[str, str]
        not_before: str | None
        not_after: str | None
        added_by: str

        def apply(self, aggregate: Principal) -> None:
            aggregate.keys[self.kid] = _key_state(self.kid, self.jwk, self.not_before, self.not_after)

    class KeyRotated(Aggregate.Event):
        old_kid: str
        kid: str
        jwk: dict[str, str]
        rotated_by: str

        def apply(self, aggregate: Principal) -> None:
            old = aggregate.keys[self.old_kid]
            aggregate.keys[self.old_kid] = KeyState(
                old.kid, old.jwk, old.not_before, old.not_after, "superseded"
            )
            aggregate.keys[self.kid] = _key_state(self.kid, self.jwk, None, None)

    class KeyRevoked(Aggregate.Event):
        kid: str
        reason: str
        revoked_by: str

        def apply(self, aggregate: Principal) -> None:
            old = aggregate.keys[self.kid]
            aggregate.keys[self.kid] = KeyState(old.kid, old.jwk, old.not_before, old.not_after, self.reason)

    class RoleGranted(Aggregate.Event):
        role: str
        granted_by: str

        def apply(self, aggregate: Principal) -> None:
            aggregate.roles = aggregate.roles | {self.role}

    class RoleRevoked(Aggregate.Event):
        role: str
        revoked_by: str

        def apply(self, aggregate: Principal) -> None:
            aggregate.roles = aggregate.roles - {self.role}

    class EncryptionKeySet(Aggregate.Event):
        """The X25519 key data providers seal a node's share bundles to."""

        jwk: dict[str, str]

        def apply(self, aggregate: Principal) -> None:
            aggregate.encryption_key = self.jwk

    class PolicySet(Aggregate.Event):
        """A node organisation's output policy (min cell size, extremes, approval)."""

        policy: dict[str, Any]

        def apply(self, aggregate: Principal) -> None:
            aggregate.policy = self.policy

    def set_policy(self, policy: dict[str, Any], *, at: datetime) -> None:
        if self.policy == policy:
            raise DomainError("nothing_to_change", "this policy is already set")
        self.trigger_event(self.PolicySet, timestamp=at, policy=policy)

    def set_encryption_key(self, jwk: dict[str, str], *, at: datetime) -> None:
        if self.encryption_key == jwk:
            raise DomainError("nothing_to_change", "this encryption key is already set")
        self.trigger_event(self.EncryptionKeySet, timestamp=at, jwk=jwk)

    def __init__(
        self,
        principal: str,
        kind: str,
        roles: list[str],
        display_name: str | None,
        custodian: str | None,
        keys: list[dict[str, Any]],
        admitted_by: str,
        ledger: dict[str, str] | None,
    ) -> None:
        self.principal = principal
        self.kind = kind
        self.roles: frozenset[str] = frozenset(roles)
        self.display_name = display_name
        self.custodian = custodian
        self.admitted_by = admitted_by
        self.encryption_key: dict[str, str] | None = None
        self.policy: dict[str, Any] | None = None
        self.ledger = ledger
        self.keys: dict[str, KeyState] = {
            k["kid"]: _key_state(k["kid"], k["jwk"], k.get("not_before"), k.get("not_after")) for k in keys
        }

    # --- commands ------------------------------------------------------------------

    @classmethod
    def admit(
        cls,
        *,
        aggregate_id: uuid.UUID,
        principal: str,
        kind: str,
        display_name: str | None,
        custodian: str | None,
        jwk: PublicJwk | None,
        admitted_by: str,
        at: datetime,
        ledger: dict[str, str] | None = None,
    ) -> Principal:
        keys = [] if jwk is None else [_key_entry(principal, jwk)]
        return cls._create(
            cls.Admitted,
            id=aggregate_id,
            timestamp=at,
            principal=principal,
            kind=kind,
            roles=[kind],
            display_name=display_name,
            custodian=custodian,
            keys=keys,
            admitted_by=admitted_by,
            ledger=ledger,
        )

    def add_key(
        self,
        jwk: PublicJwk,
        not_before: datetime | None,
        not_after: datetime | None,
        *,
        by: str,
        at: datetime,
    ) -> None:
        kid = self.kid_for(jwk)
        if kid in self.keys:
            raise DomainError("key_exists", f"{kid} is already registered")
        if not_before and not_after and not_after <= not_before:
            raise DomainError("invalid_key_validity", "not_after must be later than not_before")
        if not_after is not None and not_after <= at:
            raise DomainError("invalid_key_validity", "not_after is already in the past")
        self.trigger_event(
            self.KeyAdded,
            timestamp=at,
            kid=kid,
            jwk=jwk.as_dict(),
            not_before=optional_time(not_before),
            not_after=optional_time(not_after),
            added_by=by,
        )

    def rotate_key(self, old_kid: str, jwk: PublicJwk, *, by: str, at: datetime) -> None:
        self._require_active_key(old_kid)
        kid = self.kid_for(jwk)
        if kid in self.keys:
            raise DomainError("key_exists", f"{kid} is already registered")
        self.trigger_event(
            self.KeyRotated,
            timestamp=at,
            old_kid=old_kid,
            kid=kid,
            jwk=jwk.as_dict(),
            rotated_by=by,
        )

    def revoke_key(self, kid: str, reason: str, *, by: str, at: datetime) -> None:
        self._require_active_key(kid)
        if "operator" in self.roles and not any(
            other != kid and key.revoked is None and (key.not_after is None or at < key.not_after)
            for other, key in self.keys.items()
        ):
            # The federation's administration would be locked for good if it were the last
            # operator's (no one else could add a key); an operator to be retired loses the
            # role first, from another operator, and then its keys.
            raise DomainError(
                "last_operator_key",
                f"{kid} is the last key of operator {self.principal}: add or rotate in another first",
            )
        self.trigger_event(self.KeyRevoked, timestamp=at, kid=kid, reason=reason, revoked_by=by)

    def grant_role(self, role: str, *, by: str, at: datetime) -> None:
        if role in self.roles:
            raise DomainError("role_already_granted", f"{self.principal} already has role {role}")
        if self.kind == "citizen" or role == "citizen":
            raise DomainError("role_not_grantable", "citizens hold the citizen role only")
        self.trigger_event(self.RoleGranted, timestamp=at, role=role, granted_by=by)

    def revoke_role(self, role: str, *, by: str, at: datetime) -> None:
        if role not in self.roles:
            raise DomainError("role_not_held", f"{self.principal} does not have role {role}")
        self.trigger_event(self.RoleRevoked, timestamp=at, role=role, revoked_by=by)

    # --- queries -------------------------------------------------------------------

    def kid_for(self, jwk: PublicJwk) -> str:
        return f"{self.principal}#{jwk.thumbprint()}"

    def _require_active_key(self, kid: str) -> None:
        key = self.keys.get(kid)
        if key is None:
            raise DomainError("unknown_key", f"{kid} is not a key of {self.principal}")
        if key.revoked is not None:
            raise DomainError("key_revoked", f"{kid} is already revoked ({key.revoked})")


def _key_entry(principal: str, jwk: PublicJwk) -> dict[str, Any]:
    return {"kid": f"{principal}#{jwk.thumbprint()}", "jwk": jwk.as_dict()}
