"""The audit ledger: append-only (a trigger refuses UPDATE, DELETE, TRUNCATE)
and hash-chained (each entry's hash covers the previous hash and the entry).

Appends are serialised with a transaction-level advisory lock, so concurrent
runners never fork the chain; the sequence number is assigned under that lock
and is part of the hash, so reordering two entries breaks the chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from migrate.log import redact

GENESIS = "0" * 64
_LOCK_KEY = "migrate.ledger.append"


@dataclass(frozen=True)
class Entry:
    """What an entry says; ``seq``, ``at`` and the hashes are set on append."""

    actor: str
    host: str
    playbook: str
    playbook_digest: str
    action: str
    outcome: str
    run_id: UUID | None = None
    tenant: str | None = None
    wave: str | None = None
    phase: str | None = None
    step: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recorded:
    seq: int
    at: datetime
    entry: Entry
    prev_hash: str
    hash: str


def _canonical(seq: int, at: datetime, entry: Entry) -> bytes:
    body = asdict(entry)
    body["run_id"] = str(entry.run_id) if entry.run_id else None
    body["details"] = dict(entry.details)
    body["seq"] = seq
    body["at"] = at.astimezone(UTC).isoformat(timespec="microseconds")
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def entry_hash(prev_hash: str, seq: int, at: datetime, entry: Entry) -> str:
    """SHA-256 over the previous hash and the canonical serialisation of the entry."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + _canonical(seq, at, entry)).hexdigest()


def _scrub(details: Mapping[str, Any]) -> dict[str, Any]:
    """No secrets in the ledger: DSN passwords and tokens are masked before hashing."""
    clean = json.loads(redact(json.dumps(dict(details), default=str)))
    assert isinstance(clean, dict)
    return clean


class Ledger:
    """The ledger table of one control schema, written through a given connection."""

    def __init__(self, schema: str) -> None:
        self.table = sql.Identifier(schema, "ledger")

    def append(self, conn: psycopg.Connection[Any], entry: Entry) -> Recorded:
        """Append one entry inside the caller's transaction (or its own, in autocommit)."""
        entry = Entry(**{**asdict(entry), "details": _scrub(entry.details)})
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_LOCK_KEY,))
            last = conn.execute(
                sql.SQL("SELECT seq, hash, clock_timestamp() FROM {} ORDER BY seq DESC LIMIT 1").format(
                    self.table
                )
            ).fetchone()
            if last is None:
                now = conn.execute("SELECT clock_timestamp()").fetchone()
                assert now is not None
                seq, prev, at = 1, GENESIS, now[0]
            else:
                seq, prev, at = last[0] + 1, last[1], last[2]
            digest = entry_hash(prev, seq, at, entry)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (seq, at, run_id, actor, host, playbook, playbook_digest, tenant,"
                    " wave, phase, step, action, outcome, details, prev_hash, hash)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                ).format(self.table),
                (
                    seq,
                    at,
                    entry.run_id,
                    entry.actor,
                    entry.host,
                    entry.playbook,
                    entry.playbook_digest,
                    entry.tenant,
                    entry.wave,
                    entry.phase,
                    entry.step,
                    entry.action,
                    entry.outcome,
                    Jsonb(dict(entry.details)),
                    prev,
                    digest,
                ),
            )
        return Recorded(seq, at, entry, prev, digest)

    def entries(self, conn: psycopg.Connection[Any], *, tenant: str | None = None) -> Iterator[Recorded]:
        """Every entry in sequence order (optionally one tenant's)."""
        query = sql.SQL("SELECT * FROM {} {} ORDER BY seq").format(
            self.table, sql.SQL("WHERE tenant = %s") if tenant else sql.SQL("")
        )
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, (tenant,) if tenant else None)
            for row in cur:
                entry = Entry(
                    actor=row["actor"],
                    host=row["host"],
                    playbook=row["playbook"],
                    playbook_digest=row["playbook_digest"],
                    action=row["action"],
                    outcome=row["outcome"],
                    run_id=row["run_id"],
                    tenant=row["tenant"],
                    wave=row["wave"],
                    phase=row["phase"],
                    step=row["step"],
                    details=row["details"],
                )
                yield Recorded(row["seq"], row["at"], entry, row["prev_hash"], row["hash"])

    def verify(self, conn: psycopg.Connection[Any]) -> tuple[int, str | None]:
        """(entries checked, None) when the chain holds, else (seq, why) of the first break."""
        prev, expected_seq, count = GENESIS, 1, 0
        for rec in self.entries(conn):
            if rec.seq != expected_seq:
                return rec.seq, f"entry {expected_seq} is missing (next is {rec.seq})"
            if rec.prev_hash != prev:
                return rec.seq, f"entry {rec.seq} does not follow entry {rec.seq - 1}"
            if entry_hash(prev, rec.seq, rec.at, rec.entry) != rec.hash:
                return rec.seq, f"entry {rec.seq} was changed after it was written"
            prev, expected_seq, count = rec.hash, expected_seq + 1, count + 1
        return count, None
