"""Publications and logical replication slots on a database: create, read, advance, drop.

**Order.** The publication first, then the slot: a publication created after
the slot makes decoding fail (*publication "p" does not exist*). The slot is
created on a ``replication=database`` connection with ``(SNAPSHOT 'export')``;
every copy transaction imports that snapshot (``SET TRANSACTION SNAPSHOT``),
so the copy and the changes meet with no gap and no overlap. Creating a slot
waits for every transaction that holds an xid: the wait is bounded by
``lock_timeout`` (the walsender honours it) and the blockers are named.

**Reading** is SQL-level (``pg_logical_slot_peek_binary_changes``, protocol 1)
in a read-only transaction with pinned renderings, so values come as the target
parses them. Decoding sees only WAL that is *flushed*: with asynchronous commit
a transaction can be committed, yet not decodable for a moment. So a poll's
upper bound is ``pg_current_wal_flush_lsn()`` read before the peek — never
``pg_current_wal_lsn()``, the write position — and an empty poll may advance
the slot to that bound (a quiet tenant on a busy server must not hold WAL).
A non-empty poll advances to the end of its last whole transaction, after the
target committed it. A fence (``fence``) is a synchronously committed logical
message: its position is flushed, and every transaction that committed before
it lies below it.

**Names** are ``tm_<playbook>_<tenant>``, lower-case letters, digits and ``_``,
at most 63 bytes (a hash keeps them apart when they had to be shortened).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from migrate.errors import StepFailed
from migrate.replication.pgoutput import lsn_int, lsn_text

MAX_NAME = 63
PREFIX = "tm_"
# The decoding session renders values as the target will parse them.
READ_SETTINGS = {
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}


def slot_name(playbook: str, tenant: str, prefix: str = PREFIX) -> str:
    """The slot (and publication) of one playbook's tenant: ``tm_<playbook>_<tenant>``, ≤ 63 bytes
    (``tmr_…`` for the reverse path on the shared database)."""
    raw = f"{prefix}{playbook}_{tenant}"
    clean = re.sub(r"[^a-z0-9_]", "_", raw.lower())
    if clean == raw and len(clean) <= MAX_NAME:
        return clean
    digest = hashlib.sha256(f"{playbook}\x00{tenant}".encode()).hexdigest()[:8]
    return f"{clean[: MAX_NAME - 9]}_{digest}"


@dataclass(frozen=True)
class SlotInfo:
    name: str
    plugin: str | None
    database: str | None
    active: bool
    active_pid: int | None
    restart_lsn: str | None
    confirmed_flush_lsn: str | None
    wal_status: str | None
    retained_bytes: int | None  # WAL the server keeps for it
    lag_bytes: int | None  # flushed WAL not yet confirmed by the slot


_SLOTS = (
    "SELECT s.slot_name, s.plugin, s.database, s.active, s.active_pid, s.restart_lsn::text,"
    " s.confirmed_flush_lsn::text, s.wal_status,"
    " pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint,"
    " pg_wal_lsn_diff(pg_current_wal_flush_lsn(), s.confirmed_flush_lsn)::bigint"
    " FROM pg_replication_slots s WHERE s.slot_name = ANY(%s)"
)


def slots(conn: psycopg.Connection[Any], names: Sequence[str]) -> dict[str, SlotInfo]:
    """What the server says about the named slots (the missing ones are absent)."""
    rows = conn.execute(_SLOTS, (list(names),)).fetchall()
    return {r[0]: SlotInfo(*r) for r in rows}


def slot(conn: psycopg.Connection[Any], name: str) -> SlotInfo | None:
    return slots(conn, [name]).get(name)


# ----------------------------------------------------------------------------- publications
def ensure_publication(conn: psycopg.Connection[Any], name: str, schema: str, tables: Sequence[str]) -> None:
    """The publication of exactly ``tables`` (via the partition root), created or corrected.

    Run in a READ WRITE transaction of its own: the migrator's source sessions are
    read-only by default.
    """
    listed = sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables)
    with conn.transaction():
        conn.execute("SET TRANSACTION READ WRITE")
        exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
        if exists:
            conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(name), listed))
        else:
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)").format(
                    sql.Identifier(name), listed
                )
            )


def drop_publication(conn: psycopg.Connection[Any], name: str) -> bool:
    with conn.transaction():
        conn.execute("SET TRANSACTION READ WRITE")
        gone = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
    return gone is not None


# ----------------------------------------------------------------------------- slots
@dataclass(frozen=True)
class CreatedSlot:
    name: str
    consistent_lsn: int
    snapshot: str  # valid while the replication connection that made it stays open and idle


def blockers(conn: psycopg.Connection[Any]) -> list[str]:
    """Transactions that hold an xid now, oldest first: what a new slot waits for."""
    rows = conn.execute(
        "SELECT pid, usename, datname, state, round(extract(epoch FROM clock_timestamp() - xact_start))::int"
        " FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
        " ORDER BY xact_start LIMIT 5"
    ).fetchall()
    return [f"pid {p} ({u} on {d}, {s}, {age} s in its transaction)" for p, u, d, s, age in rows]


def create_slot(
    replication: psycopg.Connection[Any],
    probe: psycopg.Connection[Any],
    name: str,
    *,
    wait_seconds: float,
    temporary: bool = False,
) -> CreatedSlot:
    """A pgoutput slot with an exported snapshot, on a ``replication=database`` connection.

    Persistent, or ``temporary`` (gone with the connection: it only exports an exact
    snapshot and its position, for a copy resumed after the first snapshot was lost).
    ``probe`` (a normal connection to the same database) names the transactions the
    slot waited for when it times out.
    """
    replication.execute(f"SET lock_timeout = {int(wait_seconds * 1000)}")
    started = time.monotonic()
    try:
        # Identifiers cannot be parameters of a replication command; the name is [a-z0-9_] only.
        assert re.fullmatch(r"[a-z0-9_]{1,63}", name)
        kind = "TEMPORARY LOGICAL" if temporary else "LOGICAL"
        row = replication.execute(
            f"CREATE_REPLICATION_SLOT {name} {kind} pgoutput (SNAPSHOT 'export')"
        ).fetchone()
    except psycopg.errors.LockNotAvailable as exc:
        held = blockers(probe)
        raise StepFailed(
            f"creating replication slot {name} waited {time.monotonic() - started:.1f} s for transactions "
            "that were open before it, and gave up" + (": " + "; ".join(held) if held else ""),
            hint="a new slot waits for every transaction that holds an xid: end or wait out those "
            "transactions, then run again (cutover.slot_wait sets how long to wait)",
        ) from exc
    assert row is not None
    return CreatedSlot(name=str(row[0]), consistent_lsn=lsn_int(str(row[1])), snapshot=str(row[2]))


def drop_slot(conn: psycopg.Connection[Any], name: str) -> bool:
    """Drop the slot if it exists; True when it did. An active slot (a reader attached) is refused."""
    info = slot(conn, name)
    if info is None:
        return False
    if info.active:
        raise StepFailed(
            f"replication slot {name} is in use by backend {info.active_pid}",
            hint="another runner reads it: wait for it to stop, then run again",
        )
    conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
    return True


def flush_lsn(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
    assert row is not None
    return lsn_int(str(row[0]))


def fence(conn: psycopg.Connection[Any], label: str) -> int:
    """A flushed position after every transaction committed so far (see the module docstring)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION READ WRITE")
        conn.execute("SELECT set_config('synchronous_commit', 'on', true)")
        conn.execute("SELECT pg_logical_emit_message(true, 'tenant-migrate', %s)", (label,))
    return flush_lsn(conn)


@dataclass(frozen=True)
class Peeked:
    lsn: int
    data: bytes


def peek(
    conn: psycopg.Connection[Any],
    slot_name: str,
    publication: str,
    *,
    upto_lsn: int,
    max_changes: int | None,
    fetch: int = 2000,
) -> Iterator[Peeked]:
    """The slot's messages of transactions that commit before ``upto_lsn``, streamed (whole transactions).

    Must run inside a transaction (the caller's, read-only is fine): the rows come
    through a server-side cursor, so a big backlog never sits in memory at once.
    """
    for name, value in READ_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, true)", (name, value))
    query = (
        "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s,"
        " 'proto_version', '1', 'publication_names', %s)"
    )
    with conn.cursor(name=f"peek_{slot_name}") as cur:
        cur.itersize = fetch
        cur.execute(query, (slot_name, lsn_text(upto_lsn), max_changes, publication))
        for lsn, data in cur:
            yield Peeked(lsn_int(lsn), bytes(data))


def advance(conn: psycopg.Connection[Any], slot_name: str, lsn: int) -> None:
    """Move the slot's confirmed position to ``lsn`` (the end of a whole transaction, or a flushed bound)."""
    conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot_name, lsn_text(lsn)))


def lost(exc: psycopg.Error, name: str) -> StepFailed | None:
    """The error to give when a slot is gone or invalidated; None for any other error."""
    text = str(exc)
    if isinstance(exc, psycopg.errors.UndefinedObject) and "replication slot" in text:
        why = "does not exist any more"
    elif "can no longer get changes" in text or "invalidated" in text:
        why = "was invalidated: the server removed WAL it still needed (max_slot_wal_keep_size)"
    else:
        return None
    return StepFailed(
        f"replication slot {name} {why}, so changes since the copy cannot be read",
        hint="copy the tenant again: 'migrate rollback … --to pre-copy' (it drops what is left), then run",
    )
