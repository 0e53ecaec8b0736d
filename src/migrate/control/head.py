"""The ledger's head, published outside the database after every run, rollback and approval.

A head line says: in this database and control schema, the ledger had ``count``
entries and entry ``seq`` had hash ``hash``, written at ``at``; published at
``published_at`` by ``event``. Lines are appended to the file the playbook names
(``ledger.head_file``), one JSON object each, signed when the runner holds the ledger
key. Put it where no database role can write (another host's mount, a repository, a
WORM bucket synced from it): then deleting the ledger's last entries, or all of them,
or rewriting it with recomputed hashes, leaves the latest head naming an entry that is
gone or different, which ``ledger verify`` reports.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from migrate.control.signing import LedgerKeys, Signer, head_message
from migrate.errors import SettingsError


@dataclass(frozen=True)
class Head:
    database: str
    control_schema: str
    seq: int
    hash: str
    count: int
    at: str  # the head entry's time, ISO 8601 UTC
    published_at: str
    event: str  # run | rollback | approve | rehearsal …
    key_id: str | None = None
    signature: str | None = None

    def unsigned_line(self) -> str:
        body = {k: v for k, v in asdict(self).items() if k not in ("key_id", "signature")}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def describe(self) -> str:
        return (
            f"the head published at {self.published_at} ({self.event}) names entry {self.seq} of {self.count}"
        )


def current(conn: psycopg.Connection[Any], schema: str, event: str) -> Head | None:
    """The ledger's head now; None while it is empty."""
    row = conn.execute(
        sql.SQL(
            "SELECT current_database(), l.seq, l.hash, l.at, (SELECT count(*) FROM {t})"
            " FROM {t} l ORDER BY l.seq DESC LIMIT 1"
        ).format(t=sql.Identifier(schema, "ledger"))
    ).fetchone()
    if row is None:
        return None
    database, seq, digest, at, count = row
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return Head(database, schema, seq, digest, count, at.astimezone(UTC).isoformat(), now, event)


def writable(path: Path, where: str) -> None:
    """Refuse a head file that cannot be appended to, before any work is done (exit 2)."""
    folder = path.parent
    if not folder.is_dir():
        raise SettingsError(f"the folder of the ledger head file {path} does not exist", where=where)
    target = path if path.exists() else folder
    if not os.access(target, os.W_OK):
        raise SettingsError(f"the ledger head file {path} is not writable by this user", where=where)


def publish(path: Path, head: Head, signer: Signer | None) -> Head:
    """Append ``head`` (signed when there is a key) as one line; skip it if the last line says the same."""
    if signer is not None:
        head = replace(head, key_id=signer.key_id, signature=signer.sign(head_message(head.unsigned_line())))
    last = latest(path, head.database, head.control_schema)
    if last is not None and (last.seq, last.hash, last.count) == (head.seq, head.hash, head.count):
        return last
    # One write of one line with O_APPEND: concurrent runners never interleave their lines.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (head.line() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return head


def latest(path: Path, database: str, schema: str) -> Head | None:
    """The head with the highest seq published for this database and control schema (the last of equals)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SettingsError(
            f"cannot read the ledger head file {path}: {exc.strerror}", where=str(path)
        ) from None
    best: Head | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            head = Head(**json.loads(line))
        except (ValueError, TypeError):
            raise SettingsError(
                f"line {number} of the ledger head file is not a head this tool wrote", where=str(path)
            ) from None
        if (head.database, head.control_schema) != (database, schema):
            continue
        if best is None or head.seq >= best.seq:
            best = head
    return best


def check(conn: psycopg.Connection[Any], schema: str, head: Head, keys: LedgerKeys | None) -> list[str]:
    """What in the ledger contradicts ``head``: entries missing, a different hash, a forged head line."""
    problems = []
    if keys is not None and keys.configured and head.signature is not None:
        key = keys.trusted.get(head.key_id or "")
        if key is None or not key.verify(head_message(head.unsigned_line()), head.signature):
            problems.append(
                f"{head.describe()}, but its signature does not check with a trusted key: the head "
                "file was edited"
            )
    table = sql.Identifier(schema, "ledger")
    row = conn.execute(
        sql.SQL("SELECT count(*), max(seq), (SELECT hash FROM {t} WHERE seq = %s) FROM {t}").format(t=table),
        (head.seq,),
    ).fetchone()
    count, last, digest = row if row else (0, None, None)
    if not count or last is None:
        problems.append(
            f"{head.describe()}, but the ledger holds no entries: entries 1 to {head.seq} are missing"
        )
    elif last < head.seq:
        problems.append(
            f"{head.describe()}, but the ledger ends at entry {last}: entries {last + 1} to {head.seq} "
            "are missing (deleted from its end)"
        )
    elif digest != head.hash:
        problems.append(
            f"{head.describe()}, but entry {head.seq} has another hash now: it, or an entry before it, "
            "was changed and the hashes after it recomputed"
        )
    elif count < head.count:
        problems.append(
            f"{head.describe()}, but the ledger holds {count} entries: {head.count - count} were deleted "
            "and the rest renumbered"
        )
    return problems
