"""ledger show, verify and export: the audit chain, read from the target."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import psycopg

from migrate.api.settings import (
    Environ,
    check_output,
    connect,
    control_exists,
    target_dsn,
)
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

    @property
    def failure(self) -> LedgerBroken | None:
        """The chain's first break, else a missing anchor, as the error to report (exit 1)."""
        table = f"{self.control_schema}.ledger"
        if self.why is not None:
            held = f" (the anchor at entry {self.anchor_seq} holds)" if self.anchor_seq else ""
            return LedgerBroken(
                f"ledger broken at entry {self.broken_at}: {self.why}{held}",
                where=table,
                hint="someone with owner or superuser rights changed the table behind its trigger; "
                "compare it with your last 'migrate ledger export' to see what changed",
            )
        if self.anchor is not None and self.anchor_seq is None:
            return LedgerBroken(
                f"anchor {self.anchor} is not in the ledger ({self.checked} entries, chain intact): "
                "the entry it named was changed or removed and the hashes after it recomputed",
                where=table,
                hint="check that the anchor comes from this target and control schema; if it does, "
                "compare the ledger with the export that published the anchor",
            )
        return None


def _ledger_settings(
    playbook: Path | str, environ: Environ | None
) -> tuple[LoadedPlaybook, Ledger, psycopg.Connection[Any]]:
    """The playbook, its ledger and a target connection: an audit needs no source settings."""
    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    dsn = target_dsn(loaded, environ)
    conn = connect(dsn, what="the target database", var=loaded.playbook.target.dsn_env)
    return loaded, Ledger(loaded.playbook.target.control_schema), conn


def _ledger_filter(tenant: str | None, run: str | None, since: str | datetime | None) -> LedgerFilter:
    return LedgerFilter(
        tenant=tenant,
        run=parse_run(run) if run is not None else None,
        since=parse_since(since) if isinstance(since, str) else since,
    )


def _report(
    schema: str, found: Verification, warnings: tuple[str, ...], entries: tuple[Recorded, ...] = ()
) -> LedgerReport:
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
    )


def ledger(
    playbook: Path | str,
    *,
    tenant: str | None = None,
    run: str | None = None,
    since: str | datetime | None = None,
    anchor: str | None = None,
    list_entries: bool = True,
    environ: Environ | None = None,
) -> LedgerReport:
    """The entries the filters select, and whether the whole chain (and the anchor) verifies.

    ``run`` is a run id or its first characters; ``since`` a datetime, a time ago
    (``2h``) or an ISO date or time; ``anchor`` a hash published earlier, which
    proves nothing up to that entry changed.
    """
    flt = _ledger_filter(tenant, run, since)
    wanted = parse_anchor(anchor) if anchor is not None else None
    loaded, book, conn = _ledger_settings(playbook, environ)
    schema = loaded.playbook.target.control_schema
    with conn:
        if not control_exists(conn, schema):
            return LedgerReport((), 0, None, None, anchor=wanted, control_schema=schema)
        entries = tuple(book.entries(conn, flt)) if list_entries else ()
        found = book.verify(conn, wanted)
        return _report(schema, found, book.privilege_warnings(conn), entries)


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
    environ: Environ | None = None,
) -> LedgerExport:
    """Write the selected entries to ``out``, one canonical JSON object per line, for a SIEM.

    Each line holds every hashed field plus ``prev_hash`` and ``hash``: drop those
    two, serialise the rest with sorted keys and no spaces, and SHA-256 over
    ``prev_hash + "\\n" + that`` gives ``hash`` (migrate.control.ledger).
    Everything selected is written even when the chain is broken; the report says so.
    A file ``out`` is replaced whole once the export is done, never left half-written.
    """
    if fmt != "jsonl":
        raise ArgumentError(f"unknown export format {fmt!r}", where="--format", hint="write --format jsonl")
    if isinstance(out, Path):
        check_output(out, "--out")
    flt = _ledger_filter(tenant, run, since)
    loaded, book, conn = _ledger_settings(playbook, environ)
    schema = loaded.playbook.target.control_schema
    with conn, _written(out) as fh:
        if not control_exists(conn, schema):
            return LedgerExport(0, LedgerReport((), 0, None, None, control_schema=schema))
        written = 0
        verifier = Verifier(book, conn)
        for rec in book.entries(conn):
            verifier.feed(rec)
            if flt.matches(rec):
                fh.write(export_line(rec) + "\n")
                written += 1
        return LedgerExport(written, _report(schema, verifier.result(), book.privilege_warnings(conn)))


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
