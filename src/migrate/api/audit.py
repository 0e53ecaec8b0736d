"""ledger show, verify, export, keys and keygen: the audit chain, read from the target, held to
what lives outside the database — its signing keys, the control state's history and the
head the runners publish (``ledger_writes`` serves the commands that write)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import psycopg
from psycopg import sql

from migrate.api.settings import (
    Environ,
    check_output,
    connect_target,
    control_exists,
    the_target,
)
from migrate.control import head as ledger_head
from migrate.control import history as ledger_history
from migrate.control.ledger import (
    Ledger,
    LedgerFilter,
    Recorded,
    Verification,
    Verifier,
    export_line,
    parse_anchor,
    parse_run,
    parse_since,
)
from migrate.control.signing import LedgerKeys, generate_key, ledger_keys
from migrate.errors import (
    ArgumentError,
    LedgerBroken,
)
from migrate.playbook import LoadedPlaybook, load_playbook


@dataclass(frozen=True)
class LedgerReport:
    entries: tuple[Recorded, ...]  # those the filter selects, oldest first
    checked: int  # entries that verified before the first break (all of them when intact)
    broken_at: int | None
    why: str | None
    head_seq: int | None = None  # the last entry that verified: publish its hash as an anchor
    head_hash: str | None = None
    anchor: str | None = None
    anchor_seq: int | None = None  # where the anchor was found; None when it was not
    warnings: tuple[str, ...] = ()  # what the connected role could do to the ledger unrefused
    control_schema: str = "migrate_control"
    problems: tuple[str, ...] = ()  # besides the chain's break: forged, backdated, missing entries
    notices: tuple[str, ...] = ()  # what the verification could not exclude, and why
    signed: int = 0  # entries whose signature checked against a trusted key
    head_checked: str | None = None  # the published head the ledger was held to
    total: int = 0  # entries in the ledger

    @property
    def failure(self) -> LedgerBroken | None:
        """Everything that is broken, as the error to report (exit 1); None when nothing is."""
        table = f"{self.control_schema}.ledger"
        lines = []
        if self.why is not None:
            held = f" (the anchor at entry {self.anchor_seq} holds)" if self.anchor_seq else ""
            lines.append(f"ledger broken at entry {self.broken_at}: {self.why}{held}")
        if self.anchor is not None and self.anchor_seq is None and self.why is None:
            lines.append(self._anchor_missing())
        lines += self.problems
        if not lines:
            return None
        message = lines[0] if len(lines) == 1 else f"{len(lines)} problems:\n  " + "\n  ".join(lines)
        return LedgerBroken(
            message,
            where=table,
            hint="entries were changed, forged or deleted behind the append-only trigger (owner or "
            "superuser rights), or appended without the ledger key; compare the ledger with your last "
            "'migrate ledger export', and see README.md, 'Who can change the ledger'",
        )

    def _anchor_missing(self) -> str:
        if not self.total:
            return f"anchor {self.anchor} is missing: the ledger holds no entries"
        return (
            f"anchor {self.anchor} is not in the ledger ({self.total} entries, chain intact): the entry "
            "it named is missing — deleted, or changed with every hash after it recomputed — or the "
            "anchor comes from another ledger"
        )


def _ledger_settings(
    playbook: Path | str, environ: Environ | None, region: str | None
) -> tuple[LoadedPlaybook, Ledger, psycopg.Connection[Any], Environ]:
    """The playbook, the ledger of its target (of ``region``, with a target per region) and a
    connection to it: an audit needs no source settings. Each region's ledger stays in its target."""
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    target = the_target(loaded, region)
    conn = connect_target(loaded, environ, target)
    return loaded, Ledger(target.control_schema), conn, environ


def _ledger_filter(tenant: str | None, run: str | None, since: str | datetime | None) -> LedgerFilter:
    return LedgerFilter(
        tenant=tenant,
        run=parse_run(run) if run is not None else None,
        since=parse_since(since) if isinstance(since, str) else since,
    )


def _report(
    schema: str,
    found: Verification,
    warnings: tuple[str, ...],
    entries: tuple[Recorded, ...] = (),
    audit: _Audit | None = None,
) -> LedgerReport:
    audit = audit or _Audit()
    return LedgerReport(
        entries,
        found.checked,
        found.broken_at,
        found.why,
        head_seq=found.head_seq,
        head_hash=found.head_hash,
        anchor=found.anchor,
        anchor_seq=found.anchor_seq,
        warnings=warnings,
        control_schema=schema,
        problems=(*found.forged, *found.backdated, *audit.problems),
        notices=audit.notices,
        signed=found.signed,
        head_checked=audit.head,
        total=found.entries,
    )


def ledger(
    playbook: Path | str,
    *,
    tenant: str | None = None,
    run: str | None = None,
    since: str | datetime | None = None,
    anchor: str | None = None,
    list_entries: bool = True,
    require_signatures: bool = False,
    region: str | None = None,
    environ: Environ | None = None,
) -> LedgerReport:
    """The entries the filters select, and whether the whole ledger verifies.

    ``run`` is a run id or its first characters; ``since`` a datetime, a time ago
    (``2h``) or an ISO date or time; ``anchor`` a hash published earlier, which
    proves nothing up to that entry changed. Besides the chain: every entry's
    signature (with the playbook's ledger keys), its date, the control state's
    history and the latest published head (``ledger.head_file``).
    ``require_signatures`` (or ``ledger.require_signatures``): unsigned entries, or no
    key to check them with, are problems, not notices. With a target per region,
    ``region`` names the target whose ledger it is (each region's audit stays there).
    """
    flt = _ledger_filter(tenant, run, since)
    wanted = parse_anchor(anchor) if anchor is not None else None
    loaded, book, conn, environ = _ledger_settings(playbook, environ, region)
    keys = _verifying_keys(loaded, environ)
    schema = book.schema
    with conn:
        if not control_exists(conn, schema):
            found = Verification(0, None, None, anchor=wanted)
            audited = _audit(loaded, schema, conn, found, keys, require_signatures)
            return _report(schema, found, (), (), audited)
        entries = tuple(book.entries(conn, flt)) if list_entries else ()
        found = book.verify(conn, wanted, keys)
        audit = _audit(loaded, schema, conn, found, keys, require_signatures)
        return _report(schema, found, book.privilege_warnings(conn), entries, audit)


@dataclass(frozen=True)
class LedgerExport:
    written: int  # lines written
    report: LedgerReport  # the whole chain's verification, done in the same pass


def ledger_export(
    playbook: Path | str,
    out: TextIO | Path,
    *,
    fmt: str = "jsonl",
    tenant: str | None = None,
    run: str | None = None,
    since: str | datetime | None = None,
    region: str | None = None,
    environ: Environ | None = None,
) -> LedgerExport:
    """Write the selected entries to ``out``, one canonical JSON object per line, for a SIEM.

    Each line holds every hashed field plus ``prev_hash`` and ``hash`` (and, when signed,
    ``key_id`` and ``signature``): drop those, serialise the rest with sorted keys and no
    spaces, and SHA-256 over ``prev_hash + "\\n" + that`` gives ``hash`` (migrate.control.ledger).
    Everything selected is written even when the ledger is broken; the report says so.
    A file ``out`` is replaced whole once the export is done, never left half-written.
    """
    if fmt != "jsonl":
        raise ArgumentError(f"unknown export format {fmt!r}", where="--format", hint="write --format jsonl")
    if isinstance(out, Path):
        check_output(out, "--out")
    flt = _ledger_filter(tenant, run, since)
    loaded, book, conn, environ = _ledger_settings(playbook, environ, region)
    keys = _verifying_keys(loaded, environ)
    schema = book.schema
    with conn, _written(out) as fh:
        if not control_exists(conn, schema):
            found = Verification(0, None, None)
            audited = _audit(loaded, schema, conn, found, keys, False)
            return LedgerExport(0, _report(schema, found, (), (), audited))
        written = 0
        verifier = Verifier(book, conn, None, keys)
        for rec in book.entries(conn):
            verifier.feed(rec)
            if flt.matches(rec):
                fh.write(export_line(rec) + "\n")
                written += 1
        found = verifier.result()
        audit = _audit(loaded, schema, conn, found, keys, False)
        return LedgerExport(written, _report(schema, found, book.privilege_warnings(conn), (), audit))


@contextmanager
def _written(out: TextIO | Path) -> Iterator[TextIO]:
    """``out`` itself, or a file beside the path that replaces it only when the block ends well."""
    if not isinstance(out, Path):
        yield out
        return
    partial = out.with_name(out.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as fh:
            yield fh
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- ledger keys and head
@dataclass(frozen=True)
class _Audit:
    """What the ledger is held to besides its chain: the control state, the published head, keys."""

    problems: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()
    head: str | None = None


def _verifying_keys(loaded: LoadedPlaybook, environ: Environ) -> LedgerKeys:
    """The keys ``verify`` trusts: the signing key's public half, or ``ledger.public_key_file``."""
    return ledger_keys(
        loaded.playbook.ledger, environ, resolve=loaded.resolve, where=loaded.where, need_signer=False
    )


def _audit(
    loaded: LoadedPlaybook,
    schema: str,
    conn: psycopg.Connection[Any],
    found: Verification,
    keys: LedgerKeys,
    require_signatures: bool,
) -> _Audit:
    """The ledger against the control state, the latest published head and the signing keys."""
    pb = loaded.playbook
    problems: list[str] = []
    notices: list[str] = []
    if control_exists(conn, schema):
        problems += ledger_history.problems(conn, schema, sql.Identifier(schema, "ledger"))
    head_text = None
    if pb.ledger.head_file is not None:
        path = loaded.resolve(pb.ledger.head_file)
        row = conn.execute("SELECT current_database()").fetchone()
        published = ledger_head.latest(path, row[0] if row else "", schema)
        if published is None:
            if found.entries:
                notices.append(
                    f"no head has been published to {path} yet: a ledger shortened from its end is caught "
                    "only by the control state's history until a run publishes one"
                )
        elif control_exists(conn, schema):
            problems += ledger_head.check(conn, schema, published, keys)
            head_text = f"entry {published.seq} ({published.hash[:12]}…), published {published.published_at}"
        else:
            problems.append(f"{published.describe()}, but the control schema {schema} is gone")
    require = require_signatures or pb.ledger.require_signatures
    if not keys.configured:
        text = (
            "no ledger key is configured (ledger.signing_key_env, signing_key_file or public_key_file): "
            "entries are not checked against a key, so forgery by a database role that may INSERT into "
            "the ledger is not excluded"
        )
        (problems if require else notices).append(text)
    elif found.unsigned_before is not None:
        last = found.unsigned_before - 1
        span = f"entry {last}" if last == 1 else f"entries 1 to {last}"
        text = (
            f"{span} carry no signature (written before the ledger was signed): forgery of those is "
            "not excluded"
        )
        (problems if require else notices).append(text)
    return _Audit(tuple(problems), tuple(notices), head_text)


@dataclass(frozen=True)
class LedgerKey:
    key_id: str
    algorithm: str
    public_key: str  # PEM
    recorded_at: datetime


def ledger_public_keys(
    playbook: Path | str, *, region: str | None = None, environ: Environ | None = None
) -> tuple[LedgerKey, ...]:
    """The public keys the ledger's entries were signed with, as recorded in the control schema."""
    _loaded, book, conn, _environ = _ledger_settings(playbook, environ, region)
    schema = book.schema
    with conn:
        if conn.execute("SELECT to_regclass(%s)", (f'"{schema}".ledger_keys',)).fetchone() in (None, (None,)):
            return ()
        rows = conn.execute(
            sql.SQL("SELECT key_id, algorithm, public_key, recorded_at FROM {} ORDER BY recorded_at").format(
                sql.Identifier(schema, "ledger_keys")
            )
        ).fetchall()
    return tuple(LedgerKey(*row) for row in rows)


def ledger_keygen(out: Path | str) -> tuple[Path, Path, str]:
    """A new Ed25519 ledger key: OUT (private, mode 0600) and OUT.pub; (private, public, key id)."""
    private_path = check_output(Path(out), "--out")  # a missing folder is an input error, not a bug
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise ArgumentError(f"{path} exists: a key is never overwritten", where="--out")
    private, public, key_id = generate_key()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    public_path.write_bytes(public)
    return private_path, public_path, key_id
