"""Principals and their keys with the entries that added and revoked them: what anyone
needs to verify a signature made at any point of the log."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from domain.times import parse_time
from ledger.entry import Entry
from projections.base import Cursor, read_text, stored_text

NAME = "principals"
#: The prefix of the event types this view reads.
PRINCIPAL_EVENTS = "Principal."


class PrincipalsView:
    name = NAME
    tables = ("principals", "principal_keys", "principal_encryption_keys", "principal_policies")
    #: 2: display names are stored as JSON (``stored_text``: PostgreSQL refuses U+0000)
    version = 2

    def create(self, cursor: Cursor) -> None:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS principals ("
            " principal TEXT PRIMARY KEY, kind TEXT NOT NULL, roles TEXT NOT NULL, display_name TEXT,"
            " custodian TEXT, admitted_seq INTEGER NOT NULL, admitted_by TEXT NOT NULL,"
            " aggregate_id TEXT NOT NULL UNIQUE)"
        )
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS principal_keys ("
            " kid TEXT PRIMARY KEY, principal TEXT NOT NULL, jwk TEXT NOT NULL, added_seq INTEGER NOT NULL,"
            " not_before TEXT, not_after TEXT, revoked_seq INTEGER, revoked_reason TEXT)"
        )
        # a principal's keys are read by principal: without it each lookup reads every key
        cursor.execute("CREATE INDEX IF NOT EXISTS principal_keys_principal ON principal_keys (principal)")
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS principal_encryption_keys ("
            " principal TEXT PRIMARY KEY, jwk TEXT NOT NULL, set_seq INTEGER NOT NULL)"
        )
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS principal_policies ("
            " principal TEXT PRIMARY KEY, policy TEXT NOT NULL, set_seq INTEGER NOT NULL)"
        )

    def _encryption_key(self, cursor: Cursor, principal: str, jwk: dict[str, str], seq: int) -> None:
        cursor.execute("DELETE FROM principal_encryption_keys WHERE principal = ?", (principal,))
        cursor.execute(
            "INSERT INTO principal_encryption_keys VALUES (?, ?, ?)", (principal, json.dumps(jwk), seq)
        )

    def apply(self, cursor: Cursor, entries: Sequence[Entry]) -> None:
        for entry in entries:
            if not entry.event_type.startswith(PRINCIPAL_EVENTS):
                continue
            data = entry.data
            kind = entry.event_type.split(".", 1)[1]
            if kind == "Admitted":
                cursor.execute(
                    "INSERT INTO principals VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        data["principal"],
                        data["kind"],
                        json.dumps(sorted(data["roles"])),
                        stored_text(data["display_name"]),
                        data["custodian"],
                        entry.seq,
                        data["admitted_by"],
                        str(entry.aggregate_id),
                    ),
                )
                for key in data["keys"]:
                    self._add_key(cursor, data["principal"], key["kid"], key["jwk"], entry.seq, None, None)
                continue
            cursor.execute(
                "SELECT principal FROM principals WHERE aggregate_id = ?",
                (str(entry.aggregate_id),),
            )
            principal = str(cursor.fetchone()[0])
            if kind == "KeyAdded":
                self._add_key(
                    cursor,
                    principal,
                    data["kid"],
                    data["jwk"],
                    entry.seq,
                    data["not_before"],
                    data["not_after"],
                )
            elif kind == "KeyRotated":
                self._revoke(cursor, data["old_kid"], entry.seq, "superseded")
                self._add_key(cursor, principal, data["kid"], data["jwk"], entry.seq, None, None)
            elif kind == "KeyRevoked":
                self._revoke(cursor, data["kid"], entry.seq, data["reason"])
            elif kind in ("RoleGranted", "RoleRevoked"):
                cursor.execute("SELECT roles FROM principals WHERE principal = ?", (principal,))
                roles = set(json.loads(cursor.fetchone()[0]))
                roles = roles | {data["role"]} if kind == "RoleGranted" else roles - {data["role"]}
                cursor.execute(
                    "UPDATE principals SET roles = ? WHERE principal = ?",
                    (json.dumps(sorted(roles)), principal),
                )
            elif kind == "EncryptionKeySet":
                self._encryption_key(cursor, principal, data["jwk"], entry.seq)
            elif kind == "PolicySet":
                cursor.execute("DELETE FROM principal_policies WHERE principal = ?", (principal,))
                cursor.execute(
                    "INSERT INTO principal_policies VALUES (?, ?, ?)",
                    (principal, json.dumps(data["policy"]), entry.seq),
                )

    def _add_key(
        self,
        cursor: Cursor,
        principal: str,
        kid: str,
        jwk: dict[str, str],
        seq: int,
        not_before: str | None,
        not_after: str | None,
    ) -> None:
        cursor.execute(
            "INSERT INTO principal_keys (kid, principal, jwk, added_seq, not_before, not_after)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (kid, principal, json.dumps(jwk, sort_keys=True), seq, not_before, not_after),
        )

    def _revoke(self, cursor: Cursor, kid: str, seq: int, reason: str) -> None:
        cursor.execute(
            "UPDATE principal_keys SET revoked_seq = ?, revoked_reason = ? WHERE kid = ?",
            (seq, reason, kid),
        )


def principal(cursor: Cursor, principal_id: str) -> dict[str, Any] | None:
    cursor.execute(
        "SELECT principal, kind, roles, display_name, custodian, admitted_seq, admitted_by"
        " FROM principals WHERE principal = ?",
        (principal_id,),
    )
    row = cursor.fetchone()
    if row is None:
        return None
    cursor.execute(
        "SELECT kid, jwk, added_seq, not_before, not_after, revoked_seq, revoked_reason FROM principal_keys"
        " WHERE principal = ? ORDER BY added_seq",
        (principal_id,),
    )
    keys = [
        {
            "kid": k[0],
            "jwk": json.loads(k[1]),
            "added_seq": k[2],
            "not_before": k[3],
            "not_after": k[4],
            "revoked_seq": k[5],
            "revoked_reason": k[6],
        }
        for k in cursor.fetchall()
    ]
    cursor.execute("SELECT jwk FROM principal_encryption_keys WHERE principal = ?", (principal_id,))
    encryption = cursor.fetchone()
    cursor.execute("SELECT policy FROM principal_policies WHERE principal = ?", (principal_id,))
    policy = cursor.fetchone()
    return {
        "principal": row[0],
        "kind": row[1],
        "roles": json.loads(row[2]),
        "display_name": read_text(row[3]),
        "custodian": row[4],
        "admitted_seq": row[5],
        "admitted_by": row[6],
        "keys": keys,
        "encryption_key": json.loads(encryption[0]) if encryption else None,
        "policy": json.loads(policy[0]) if policy else None,
    }


def snapshot(cursor: Cursor) -> dict[str, Any]:
    cursor.execute("SELECT principal FROM principals ORDER BY principal")
    ids = [r[0] for r in cursor.fetchall()]
    out = {}
    for pid in ids:
        found = principal(cursor, pid)
        if found is not None:
            out[pid] = found
    return out


def witness_keys(
    cursor: Cursor, at: datetime, role: str = "node_operator"
) -> dict[str, list[dict[str, str]]]:
    """The keys usable at ``at`` (not revoked, and within ``not_before`` and
    ``not_after``, as the ledger decides who may sign) of every principal holding
    ``role`` (witnesses are node operators), by principal id."""
    cursor.execute(
        "SELECT p.principal, p.roles, k.jwk, k.not_before, k.not_after FROM principals p"
        " JOIN principal_keys k ON k.principal = p.principal WHERE k.revoked_seq IS NULL"
        " ORDER BY p.principal, k.added_seq"
    )
    found: dict[str, list[dict[str, str]]] = {}
    for principal_id, roles, jwk, not_before, not_after in cursor.fetchall():
        if (not_before and at < parse_time(not_before)) or (not_after and at >= parse_time(not_after)):
            continue
        if role in json.loads(roles):
            found.setdefault(principal_id, []).append(json.loads(jwk))
    return found


def principal_by_seq(cursor: Cursor, admitted_seq: int) -> str | None:
    """The principal admitted by entry ``admitted_seq`` (an organisation's number)."""
    cursor.execute("SELECT principal FROM principals WHERE admitted_seq = ?", (admitted_seq,))
    row = cursor.fetchone()
    return None if row is None else str(row[0])
