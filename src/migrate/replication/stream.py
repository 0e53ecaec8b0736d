"""One change stream: a slot on one database feeding an applier on another, batch by batch.

``Stream.poll`` is the whole loop body: note the flushed position, peek the
slot's whole transactions up to it, fold them, apply the net effect and record
the batch's end (``Progress.save``) in ONE transaction on the applying
connection, commit, and only then advance the slot. A crash between the commit
and the advance re-delivers transactions the target already has: the fold skips
those that begin before the recorded position. Nothing here knows which way the
stream runs (source → shared schema now, shared schema → old database for a
reverse sync): the table maps, the applying connection and the progress say it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg

from migrate.errors import StepFailed
from migrate.replication import slots
from migrate.replication.apply import SETTINGS, Applier, ApplyStats
from migrate.replication.changes import Fold, TableMap
from migrate.replication.pgoutput import lsn_int


class Progress(Protocol):
    """Where a stream keeps its applied position; ``save`` runs inside the apply transaction."""

    def applied(self) -> int:
        """The end of the last batch applied (0: none)."""
        ...

    def save(self, conn: psycopg.Connection[Any], lsn: int, poll: PollResult) -> None:
        """Record ``lsn`` (and the poll's figures) on ``conn``, in the caller's transaction."""
        ...


@dataclass(frozen=True)
class PollResult:
    """What one poll found and did."""

    transactions: int
    changes: int
    skipped: int  # transactions applied before (a crash between commit and advance), not again
    end_lsn: int | None  # the slot's new position (None: unchanged)
    upto_lsn: int  # the bound the poll read to
    lag_bytes: int  # flushed WAL the slot had not confirmed when the poll began
    lag_seconds: float  # age of the oldest transaction the poll found (0: none)
    seconds: float
    applied: ApplyStats | None = None
    capped: bool = False  # the poll stopped at its change limit: more is waiting

    @property
    def empty(self) -> bool:
        return self.transactions == 0


class Stream:
    """A slot (``source``) whose changes ``applier`` writes through ``target``."""

    def __init__(
        self,
        *,
        source: psycopg.Connection[Any],
        target: psycopg.Connection[Any],
        slot: str,
        publication: str,
        maps: Sequence[TableMap],
        progress: Progress,
    ) -> None:
        self.source = source
        self.target = target
        self.slot = slot
        self.publication = publication
        self.maps: Mapping[tuple[str, str], TableMap] = {m.source_name: m for m in maps}
        self.progress = progress
        self.applier = Applier(target, list(maps))

    def _confirmed(self, upto: int) -> int:
        """Where the slot stands now (its confirmed position), or StepFailed when it is gone or lost."""
        info = slots.slot(self.source, self.slot)
        if info is None:
            raise StepFailed(
                f"replication slot {self.slot} does not exist any more, so changes since the copy "
                "cannot be read",
                hint="copy the tenant again: 'migrate rollback … --to pre-copy' (it drops what is "
                "left), then run",
            )
        if info.wal_status == "lost":
            raise slots.lost(psycopg.Error("can no longer get changes"), self.slot) or StepFailed("slot lost")
        return lsn_int(info.confirmed_flush_lsn) if info.confirmed_flush_lsn else upto

    def poll(self, *, upto: int | None = None, max_changes: int | None = 20_000) -> PollResult:
        """Apply the next batch (at most about ``max_changes`` changes, whole transactions)."""
        started = time.monotonic()
        bound = upto if upto is not None else slots.flush_lsn(self.source)
        confirmed = self._confirmed(bound)
        lag_bytes = max(0, bound - confirmed)
        applied_at = self.progress.applied()
        fold = Fold(self.maps, skip_before=applied_at)
        rows = 0
        try:
            with self.source.transaction():
                self.source.execute("SET TRANSACTION READ ONLY")
                for peeked in slots.peek(
                    self.source, self.slot, self.publication, upto_lsn=bound, max_changes=max_changes
                ):
                    fold.add(peeked.data)
                    rows += 1
        except psycopg.Error as exc:
            gone = slots.lost(exc, self.slot)
            if gone is None:
                raise
            raise gone from exc
        if fold.in_transaction:
            raise StepFailed(
                "the change stream ended inside a transaction",
                hint="this is a bug in tenant-migrate: report it with the log",
            )
        lag_seconds = (
            (datetime.now(UTC) - fold.first_commit).total_seconds() if fold.first_commit is not None else 0.0
        )
        stats: ApplyStats | None = None
        end = fold.end_lsn
        capped = max_changes is not None and rows >= max_changes
        if end is not None and fold.transactions:
            result = PollResult(
                fold.transactions,
                fold.changes,
                fold.skipped,
                end,
                bound,
                lag_bytes,
                max(0.0, lag_seconds),
                0.0,
            )
            with self.target.transaction():
                for name, value in SETTINGS.items():
                    self.target.execute("SELECT set_config(%s, %s, true)", (name, value))
                stats = self.applier.apply(fold.ordered())
                self.progress.save(self.target, end, result)
        elif end is None and not capped:
            # Nothing of ours committed before the bound (other databases' WAL only): move past it,
            # or a quiet tenant on a busy server holds WAL for ever.
            end = bound
        if end is not None and end > confirmed:
            slots.advance(self.source, self.slot, end)
        else:
            end = None
        return PollResult(
            transactions=fold.transactions,
            changes=fold.changes,
            skipped=fold.skipped,
            end_lsn=end,
            upto_lsn=bound,
            lag_bytes=lag_bytes,
            lag_seconds=max(0.0, lag_seconds),
            seconds=time.monotonic() - started,
            applied=stats,
            capped=capped,
        )
