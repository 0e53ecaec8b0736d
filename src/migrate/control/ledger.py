"""The audit ledger: append-only (enforced by the database) and hash-chained.

Each entry's ``hash`` is SHA-256 over the previous entry's hash, a newline, and
the entry's canonical serialisation: the JSON object of its fields (``seq``,
``at`` in UTC with microseconds, ``run_id``, ``actor``, ``host``, ``playbook``,
``playbook_digest``, ``tenant``, ``wave``, ``phase``, ``step``, ``action``,
``outcome``, ``details``) with sorted keys, no spaces and UTF-8 text. An export
line (:func:`export_line`) is that object plus ``prev_hash`` and ``hash``, so a
SIEM can re-check the chain with nothing but a JSON parser and SHA-256.

Appends are serialised per control schema with a transaction-level advisory
lock, so concurrent runners never fork the chain; ``seq`` is assigned under the
lock and is part of the hash, so reordering entries breaks the chain. The lock
is held until the caller's transaction ends: append last, right before commit.

What the chain proves: :meth:`Ledger.verify` names the first entry that was
edited, deleted, reordered or inserted behind the trigger. Someone with owner or
superuser rights could rewrite every entry from some point on and recompute all
the hashes after it, and a role that may only INSERT can append an entry with a
correct hash. Three things outside the chain close those gaps:

- signatures (signing.py): with a key the playbook names, every entry carries an
  Ed25519 signature of its hash, and ``verify`` names every entry whose signature
  does not check against a trusted key, with its actor;
- the control state (history.py): every run and step state transition has its
  entries, so a ledger cut short, or emptied, is caught without any anchor;
- a published head (head.py), or an anchor: a hash published earlier must still
  be in the chain, and the ledger at least as long.

Entries are also in time order: one dated before the entry it follows was backdated.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib.resources import files
from typing import Any
from uuid import UUID

import psycopg
from psycopg import pq, sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from migrate.control import locks
from migrate.control.signing import ALGORITHM, LedgerKeys, Signer, entry_message
from migrate.errors import ArgumentError
from migrate.log import redact

GENESIS = "0" * 64
_HASH = re.compile(r"[0-9a-f]{64}")
_RUN_PREFIX = re.compile(r"[0-9a-f][0-9a-f-]{3,35}")
_AGO = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_COLUMNS = (
    "seq, at, run_id, actor, host, playbook, playbook_digest, tenant, wave, phase, step,"
    " action, outcome, details, prev_hash, hash"
)


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
    key_id: str | None = None  # the key that signed it (signing.key_id), if signed
    signature: str | None = None  # base64 Ed25519 signature of signing.entry_message(hash)


def _body(seq: int, at: datetime, entry: Entry) -> dict[str, Any]:
    body = asdict(entry)
    body["run_id"] = str(entry.run_id) if entry.run_id else None
    body["details"] = dict(entry.details)
    body["seq"] = seq
    body["at"] = at.astimezone(UTC).isoformat(timespec="microseconds")
    return body


def _dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def entry_hash(prev_hash: str, seq: int, at: datetime, entry: Entry) -> str:
    """SHA-256 over the previous hash and the canonical serialisation of the entry."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + _dumps(_body(seq, at, entry)).encode()).hexdigest()


def export_line(rec: Recorded) -> str:
    """One canonical JSON object (no newline): the hashed fields plus ``prev_hash`` and ``hash``,
    and for a signed entry ``key_id`` and ``signature`` (not hashed: they sign the hash)."""
    line = {**_body(rec.seq, rec.at, rec.entry), "prev_hash": rec.prev_hash, "hash": rec.hash}
    if rec.signature is not None:
        line |= {"key_id": rec.key_id, "signature": rec.signature}
    return _dumps(line)


def _scrub(details: Mapping[str, Any]) -> dict[str, Any]:
    """No secrets in the ledger: DSN passwords and tokens are masked before hashing."""
    clean = json.loads(redact(json.dumps(dict(details), default=str)))
    assert isinstance(clean, dict)
    return clean


# ----------------------------------------------------------------------------- filters
@dataclass(frozen=True)
class LedgerFilter:
    """Which entries to show or export; the chain is always verified whole."""

    tenant: str | None = None
    run: str | None = None  # a run id, or its first characters as `migrate run` prints them
    since: datetime | None = None

    def matches(self, rec: Recorded) -> bool:
        e = rec.entry
        return (
            (self.tenant is None or e.tenant == self.tenant)
            and (self.run is None or (e.run_id is not None and str(e.run_id).startswith(self.run)))
            and (self.since is None or rec.at >= self.since)
        )

    def where(self) -> tuple[sql.Composable, list[Any]]:
        conds: list[sql.Composable] = []
        params: list[Any] = []
        if self.tenant is not None:
            conds.append(sql.SQL("tenant = %s"))
            params.append(self.tenant)
        if self.run is not None:
            conds.append(sql.SQL("run_id::text LIKE %s"))
            params.append(self.run + "%")
        if self.since is not None:
            conds.append(sql.SQL("at >= %s"))
            params.append(self.since)
        if not conds:
            return sql.SQL(""), params
        return sql.SQL("WHERE ") + sql.SQL(" AND ").join(conds), params


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``2h``, ``30m``, ``7d`` ago, or an ISO 8601 date or time (UTC unless it says otherwise)."""
    value = text.strip()
    if m := _AGO.fullmatch(value):
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[m[2]]: int(m[1])})
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ArgumentError(
            f"cannot read --since {text!r}",
            where="--since",
            hint="write a time ago (90m, 2h, 7d) or an ISO date or time (2026-11-23, 2026-11-23T14:00Z)",
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_run(text: str) -> str:
    """A run id, whole or its first characters (at least 4), as ``migrate run`` prints it."""
    value = text.strip().lower()
    if not _RUN_PREFIX.fullmatch(value):
        raise ArgumentError(
            f"{text!r} is not a run id",
            where="--run",
            hint="give the run id, or its first 8 characters as 'migrate run' prints them (run d07e3eb3: …)",
        )
    return value


def parse_anchor(text: str) -> str:
    """A published entry hash: all 64 hex digits (a prefix is too easy to forge a match for)."""
    value = text.strip().lower()
    if not _HASH.fullmatch(value):
        raise ArgumentError(
            f"--anchor must be a whole entry hash (64 hex digits), not {text!r}",
            where="--anchor",
            hint="use a hash printed by 'migrate ledger verify' or exported by 'migrate ledger export'",
        )
    return value


# ----------------------------------------------------------------------------- verification
@dataclass(frozen=True)
class Verification:
    """What ``verify`` found: how far the chain holds, where it breaks, whether the anchor is in it."""

    checked: int  # entries that verified, in order, before the first break (all of them if none)
    head_seq: int | None  # the last entry that verified
    head_hash: str | None
    broken_at: int | None = None  # the entry named as broken (missing, changed, out of order, inserted)
    why: str | None = None
    anchor: str | None = None
    anchor_seq: int | None = None  # the entry whose hash is the anchor; None: not found (or not asked)
    entries: int = 0  # entries read, whether they verified or not
    last_seq: int | None = None  # the highest seq read
    forged: tuple[str, ...] = ()  # entries whose signature does not check, each with its actor
    backdated: tuple[str, ...] = ()  # entries dated before the entry they follow
    unsigned_before: int | None = None  # entries 1 .. n - 1 precede the first signed one, unsigned
    signed: int = 0  # entries whose signature checked
    keys_configured: bool = False  # signatures were checked against trusted keys

    @property
    def intact(self) -> bool:
        return self.broken_at is None

    @property
    def anchor_missing(self) -> bool:
        return self.anchor is not None and self.anchor_seq is None


@cache
def _privileges_sql() -> str:
    return files("migrate.resources").joinpath("ledger_privileges.sql").read_text()


class Ledger:
    """The ledger table of one control schema, written through a given connection."""

    def __init__(self, schema: str, signer: Signer | None = None) -> None:
        self.schema = schema
        self.signer = signer
        self.table = sql.Identifier(schema, "ledger")
        # One chain per control schema: two schemas in one database do not wait for each other.
        self._lock_key = f"{locks.LEDGER}:{schema}"
        self._last = sql.SQL(
            "SELECT clock_timestamp(), %s::jsonb, l.seq, l.hash FROM (SELECT 1) AS one"
            " LEFT JOIN LATERAL (SELECT seq, hash FROM {} ORDER BY seq DESC LIMIT 1) AS l ON true"
        ).format(self.table)
        self._insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            self.table,
            sql.SQL(_COLUMNS),
            sql.SQL(", ").join(sql.Placeholder() for _ in _COLUMNS.split(",")),
        )
        # Signed: the entry and its key in one statement (the key row exists once; no extra trip).
        self._insert_signed = sql.SQL(
            "WITH k AS (INSERT INTO {} (key_id, algorithm, public_key) VALUES (%s, %s, %s)"
            " ON CONFLICT (key_id) DO NOTHING)"
            " INSERT INTO {} ({}, key_id, signature) VALUES ({}, %s, %s)"
        ).format(
            sql.Identifier(schema, "ledger_keys"),
            self.table,
            sql.SQL(_COLUMNS),
            sql.SQL(", ").join(sql.Placeholder() for _ in _COLUMNS.split(",")),
        )

    def append(
        self, conn: psycopg.Connection[Any], entry: Entry, *, in_transaction: bool | None = None
    ) -> Recorded:
        """Append one entry inside the caller's transaction (or its own, in autocommit).

        ``in_transaction``: the caller says so — in pipeline mode the connection cannot tell
        (a ``BEGIN`` still in the pipe shows as a query under way, engine/sinks.py).
        """
        details = Jsonb(_scrub(entry.details))
        in_tx = (
            conn.info.transaction_status == pq.TransactionStatus.INTRANS
            if in_transaction is None
            else in_transaction
        )
        with nullcontext() if in_tx else conn.transaction():
            # Its own statement: the next one's snapshot is taken after the lock is granted.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._lock_key,))
            row = conn.execute(self._last, (details,)).fetchone()
            assert row is not None
            at, stored, last_seq, last_hash = row
            # Hash the details as the database gives them back (jsonb normalises numbers),
            # so verify, which reads them back, computes the same hash.
            entry = Entry(**{**asdict(entry), "details": stored})
            seq, prev = (1, GENESIS) if last_seq is None else (last_seq + 1, last_hash)
            digest = entry_hash(prev, seq, at, entry)
            values = (
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
                Jsonb(stored),
                prev,
                digest,
            )
            if self.signer is None:
                conn.execute(self._insert, values)
                return Recorded(seq, at, entry, prev, digest)
            signer = self.signer
            signature = signer.sign(entry_message(digest))
            key = (signer.key_id, ALGORITHM, signer.public.pem)
            conn.execute(self._insert_signed, (*key, *values, signer.key_id, signature))
        return Recorded(seq, at, entry, prev, digest, signer.key_id, signature)

    def entries(
        self,
        conn: psycopg.Connection[Any],
        flt: LedgerFilter | None = None,
        *,
        tenant: str | None = None,
    ) -> Iterator[Recorded]:
        """The entries in sequence order, those ``flt`` (or ``tenant``) selects."""
        if flt is None:
            flt = LedgerFilter(tenant=tenant)
        where, params = flt.where()
        # Control schemas before revision 0004 have no signature columns: read them as NULL.
        signed = self.has_signatures(conn)
        keys = sql.SQL(", key_id, signature" if signed else ", NULL AS key_id, NULL AS signature")
        query = sql.SQL("SELECT {}{} FROM {} {} ORDER BY seq").format(
            sql.SQL(_COLUMNS), keys, self.table, where
        )
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params or None)
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
                yield Recorded(
                    row["seq"],
                    row["at"],
                    entry,
                    row["prev_hash"],
                    row["hash"],
                    row["key_id"],
                    row["signature"],
                )

    def has_signatures(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether the control schema has the signature columns (revision 0004)."""
        row = conn.execute(
            "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass(%s)"
            " AND attname = 'signature' AND NOT attisdropped)",
            (self.table.as_string(conn),),
        ).fetchone()
        return bool(row and row[0])

    def verify(
        self, conn: psycopg.Connection[Any], anchor: str | None = None, keys: LedgerKeys | None = None
    ) -> Verification:
        """Walk every entry: the chain up to its first break (named), and every entry's date and,
        with ``keys``, signature (each failure named)."""
        verifier = Verifier(self, conn, anchor, keys)
        for rec in self.entries(conn):
            verifier.feed(rec)
        return verifier.result()

    def _seq_of_hash(self, conn: psycopg.Connection[Any], digest: str) -> int | None:
        row = conn.execute(sql.SQL("SELECT seq FROM {} WHERE hash = %s").format(self.table), (digest,))
        found = row.fetchone()
        return None if found is None else int(found[0])

    def privilege_warnings(self, conn: psycopg.Connection[Any]) -> tuple[str, ...]:
        """What the connected role could do to the ledger that the database would not refuse."""
        row = conn.execute(_privileges_sql(), {"ledger": self.table.as_string(conn)}).fetchone()
        if row is None:
            return ()
        role, superuser, owns, privileges, triggers = row
        warnings = []
        if superuser:
            warnings.append(
                f"role '{role}' is a superuser: the database cannot stop it from switching the "
                "ledger's trigger off and rewriting entries; what shows it is outside its reach: "
                "signatures (with a key the database does not hold) and a published head or anchor"
            )
        elif owns:
            warnings.append(
                f"role '{role}' owns the ledger table, its schema or its trigger function: it can "
                "grant itself UPDATE and DELETE and switch the trigger off"
            )
        elif privileges:
            warnings.append(
                f"role '{role}' holds {', '.join(privileges)} on the ledger: only the trigger refuses "
                "them; revoke them (README.md, 'The audit ledger')"
            )
        states = dict(t.split(":", 1) for t in triggers)
        for name in ("ledger_no_update_delete", "ledger_no_truncate"):
            if name not in states:
                warnings.append(f"the ledger's append-only trigger {name} is missing")
            elif states[name] == "D":
                warnings.append(f"the ledger's append-only trigger {name} is disabled")
            elif states[name] != "A":
                warnings.append(
                    f"the ledger's trigger {name} is not ENABLE ALWAYS: "
                    "SET session_replication_role = replica switches it off"
                )
        return tuple(warnings)


class Verifier:
    """Checks entries one by one, in sequence order, as they are read (one pass, any size)."""

    def __init__(
        self,
        ledger: Ledger,
        conn: psycopg.Connection[Any],
        anchor: str | None = None,
        keys: LedgerKeys | None = None,
    ) -> None:
        self.ledger, self.conn, self.anchor = ledger, conn, anchor
        self.keys = keys if keys is not None and keys.configured else None
        self.read = 0
        self.last_seq: int | None = None
        self.last_at: tuple[int, datetime] | None = None
        self.forged: list[str] = []
        self.backdated: list[str] = []
        self.first_signed: int | None = None
        self.unsigned_first: int | None = None  # the first unsigned entry before any signed one
        self.signed = 0
        self.prev, self.expected = GENESIS, 1
        # Hashes of the last entries that verified (seq -> hash): a break found at entry n may
        # name an earlier entry, and the head reported is then the one before that.
        self.recent: dict[int, str] = {}
        self.anchor_seq: int | None = None
        self.broken_at: int | None = None
        self.why: str | None = None

    def feed(self, rec: Recorded) -> bool:
        """True while the chain holds (this entry included); False from the first break on.

        Every entry is dated and (with keys) signature-checked, before and after a break.
        """
        self.read += 1
        self.last_seq = rec.seq if self.last_seq is None else max(self.last_seq, rec.seq)
        self._dated(rec)
        if self.keys is not None:
            self._signed(rec)
        if self.broken_at is not None:
            return False
        problem = self._check(rec)
        if problem is not None:
            self.broken_at, self.why = problem
            if self.anchor_seq is not None and self.anchor_seq >= self.broken_at:
                self.anchor_seq = None  # the anchor sits in what no longer verifies
            return False
        self.prev, self.expected = rec.hash, rec.seq + 1
        self.recent[rec.seq] = rec.hash
        self.recent.pop(rec.seq - 2, None)
        if rec.hash == self.anchor:
            self.anchor_seq = rec.seq
        return True

    def _dated(self, rec: Recorded) -> None:
        """Appends take the time under the append lock: an entry older than the one before is backdated."""
        if self.last_at is not None and rec.at < self.last_at[1]:
            before, when = self.last_at
            self.backdated.append(
                f"entry {rec.seq} (actor {rec.entry.actor}) is dated {_utc(rec.at)}, before entry "
                f"{before} ({_utc(when)}) that it follows: it was backdated, or the server's clock "
                "stepped back"
            )
        self.last_at = (rec.seq, rec.at)

    def _signed(self, rec: Recorded) -> None:
        """The entry's signature checks against a trusted key, over the hash its content gives."""
        assert self.keys is not None
        who = f"entry {rec.seq} (actor {rec.entry.actor}, {_utc(rec.at)})"
        if rec.signature is None or rec.key_id is None:
            if self.first_signed is None:
                self.unsigned_first = self.unsigned_first or rec.seq
                return  # written before signing began; the report says forgery is not excluded there
            self.forged.append(f"{who} is not signed, though every entry from {self.first_signed} on is")
            return
        key = self.keys.trusted.get(rec.key_id)
        if key is None:
            self.forged.append(f"{who} is signed with key {rec.key_id}, which is not a trusted key")
            return
        if entry_hash(rec.prev_hash, rec.seq, rec.at, rec.entry) != rec.hash:
            self.forged.append(f"{who}: its content no longer matches the hash its signature covers")
            return
        if not key.verify(entry_message(rec.hash), rec.signature):
            self.forged.append(f"{who}: its signature does not check with key {rec.key_id}")
            return
        self.signed += 1
        if self.first_signed is None:
            self.first_signed = rec.seq

    def _check(self, rec: Recorded) -> tuple[int, str] | None:
        n = self.expected
        if rec.seq != n:
            gone = f"entry {n} is" if rec.seq == n + 1 else f"entries {n} to {rec.seq - 1} are"
            return n, f"{gone} missing: deleted (entry {rec.seq} follows entry {n - 1})"
        self_ok = entry_hash(rec.prev_hash, rec.seq, rec.at, rec.entry) == rec.hash
        if rec.prev_hash == self.prev:
            if self_ok:
                return None
            return n, f"entry {n} was changed after it was written: its content no longer matches its hash"
        # The link to the previous entry is broken: find the entry this one was written after.
        after = self.ledger._seq_of_hash(self.conn, rec.prev_hash) if rec.prev_hash != GENESIS else 0
        if after is not None and after >= n:
            return n, (
                f"entry {n} is out of order: it was written right after the entry now numbered "
                f"{after}; entries were reordered (their seq values changed)"
            )
        if after is not None:
            self.recent[after] = rec.prev_hash  # entry `after` verified: it is the head to report
            first = after + 1
            forged = f"entry {first} was" if first == n - 1 else f"entries {first} to {n - 1} were"
            written = f"right after entry {after}" if after else "as the first entry"
            return first, f"{forged} inserted: entry {n} was written {written}"
        if self_ok:
            return n - 1, (
                f"entry {n - 1} was rewritten and its hash recomputed: entry {n} still names "
                f"the hash entry {n - 1} had when entry {n} was written"
            )
        return n, (
            f"entry {n} does not follow entry {n - 1} and does not match its own hash: an entry "
            "before it was deleted and the later ones renumbered, or it was changed"
        )

    def result(self) -> Verification:
        # Entries 1 .. n - 1 verified whenever the walk reached entry n, so everything before the
        # named entry holds.
        last = self.expected - 1 if self.broken_at is None else self.broken_at - 1
        unsigned_before = None
        if self.keys is not None and self.unsigned_first is not None:
            unsigned_before = self.first_signed or (self.last_seq or 0) + 1
        return Verification(
            checked=last,
            head_seq=last or None,
            head_hash=self.recent.get(last),
            broken_at=self.broken_at,
            why=self.why,
            anchor=self.anchor,
            anchor_seq=self.anchor_seq,
            entries=self.read,
            last_seq=self.last_seq,
            forged=tuple(self.forged),
            backdated=tuple(self.backdated),
            unsigned_before=unsigned_before,
            signed=self.signed,
            keys_configured=self.keys is not None,
        )


def _utc(when: datetime) -> str:
    return f"{when.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
