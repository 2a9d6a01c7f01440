"""The Kafka topics of a ledger and their message formats (a contract: see README).

``dfg.<ledger>.entries`` -- one partition, so that order is total; the record at
offset ``o`` is entry ``o + 1``. Key: the aggregate id (16 bytes, raw UUID). Value:
the entry's canonical bytes, exactly as stored and hashed. Headers: ``seq``,
``leaf`` (hex RFC 9162 leaf hash), ``aggregate``, ``version``, ``event``.

``dfg.<ledger>.checkpoints`` -- one partition, checkpoints in increasing size. Key:
the size (decimal ASCII). Value: the C2SP checkpoint note (UTF-8). Header: ``size``.

``dfg.<ledger>.cosignatures`` -- witnesses' cosignatures, any order. Key: the
witness name. Value: JSON ``{"witness", "size", "cosignature"}`` (the C2SP line).

Headers are conveniences for routing and monitoring: a follower checks every one of
them against the value, which is the only thing it trusts after verifying it.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Final

from ledger.merkle import leaf_hash
from ledger.store import StoredEntry

_LEDGER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,200}$")
PARTITION: Final = 0
#: The largest tree size a record may name (SQLite's and PostgreSQL's 64-bit integers).
MAX_SIZE: Final = 2**63 - 1


class MessageError(ValueError):
    """A record on a ledger topic is not in the documented format."""


@dataclass(frozen=True)
class Topics:
    entries: str
    checkpoints: str
    cosignatures: str

    @classmethod
    def for_ledger(cls, name: str, prefix: str = "dfg") -> Topics:
        """Default names ``<prefix>.<ledger>.entries`` etc.; ``name`` is the chain id."""
        for part in (prefix, name):
            check_topic_part(part)
        return cls(
            f"{prefix}.{name}.entries", f"{prefix}.{name}.checkpoints", f"{prefix}.{name}.cosignatures"
        )

    def all(self) -> tuple[str, str, str]:
        return (self.entries, self.checkpoints, self.cosignatures)


def check_topic_part(part: str) -> None:
    """A chain id or prefix that can be part of a Kafka topic's name, or ``ValueError``."""
    if not _LEDGER_NAME.match(part):
        raise ValueError(f"{part!r} cannot name Kafka topics (lowercase letters, digits, . _ -)")


Headers = list[tuple[str, bytes]]


def entry_record(stored: StoredEntry) -> tuple[bytes, bytes, Headers]:
    """(key, value, headers) of an entry on the entries topic."""
    headers = [
        ("seq", str(stored.seq).encode()),
        ("leaf", leaf_hash(stored.canonical).hex().encode()),
        ("aggregate", str(stored.aggregate_id).encode()),
        ("version", str(stored.version).encode()),
        ("event", stored.event_type.encode()),
    ]
    return stored.aggregate_id.bytes, stored.canonical, headers


def _headers(raw: Any) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for name, value in raw or ():
        if name in found:
            raise MessageError(f"header {name!r} appears twice")
        found[name] = bytes(value or b"")
    return found


def entry_from_record(key: bytes | None, value: bytes | None, headers: Any) -> StoredEntry:
    """The entry a record carries, with the columns its headers claim (unverified: the
    replica checks them against what the entry's transaction produces)."""
    h = _headers(headers)
    try:
        seq = int(h["seq"])
        aggregate = uuid.UUID(h["aggregate"].decode())
        version = int(h["version"])
        event = h["event"].decode()
        leaf = h["leaf"].decode()
    except (KeyError, ValueError) as exc:
        raise MessageError(f"an entry record lacks a valid header: {exc}") from exc
    if value is None or key != aggregate.bytes:
        raise MessageError(f"entry record {seq}: its key is not its aggregate id, or it has no value")
    if leaf != leaf_hash(value).hex():
        raise MessageError(f"entry record {seq}: its leaf header is not the leaf hash of its value")
    return StoredEntry(seq=seq, aggregate_id=aggregate, version=version, event_type=event, canonical=value)


def record_seq(headers: Any) -> int:
    """The ``seq`` header of an entry record (the relay checks the topic with it)."""
    try:
        return int(_headers(headers)["seq"])
    except (KeyError, ValueError) as exc:
        raise MessageError(f"an entry record has no valid seq header: {exc}") from exc


def checkpoint_record(size: int, note: str) -> tuple[bytes, bytes, Headers]:
    return str(size).encode(), note.encode(), [("size", str(size).encode())]


def checkpoint_from_record(value: bytes | None) -> str:
    if value is None:
        raise MessageError("a checkpoint record has no value")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError("a checkpoint record is not UTF-8") from exc


@dataclass(frozen=True)
class CosignatureMessage:
    witness: str
    size: int
    cosignature: str

    def record(self) -> tuple[bytes, bytes, Headers]:
        value = json.dumps(
            {"witness": self.witness, "size": self.size, "cosignature": self.cosignature},
            sort_keys=True,
            separators=(",", ":"),
        )
        return self.witness.encode(), value.encode(), []

    @classmethod
    def from_record(cls, value: bytes | None) -> CosignatureMessage:
        """The message, or ``MessageError``: members of exactly the documented JSON types
        (anyone who can write to the topic can send anything; nothing is coerced)."""
        try:
            doc = json.loads(value or b"")
        except (ValueError, RecursionError) as exc:
            raise MessageError(f"a cosignature record is not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise MessageError("a cosignature record is not a JSON object")
        witness, size, line = doc.get("witness"), doc.get("size"), doc.get("cosignature")
        if not isinstance(witness, str) or not isinstance(line, str):
            raise MessageError("a cosignature record needs the strings 'witness' and 'cosignature'")
        if type(size) is not int or not 1 <= size <= MAX_SIZE:
            raise MessageError(f"a cosignature record's 'size' must be an integer from 1 to {MAX_SIZE}")
        return cls(witness, size, line)
