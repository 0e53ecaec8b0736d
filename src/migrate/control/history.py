"""The ledger against the control state: a ledger shorter than the history it must hold is broken.

Every run's start and end, and every step state transition, is written in one
transaction with its ledger entry. So whatever the control schema records — a run
in ``runs``, a step's last state in ``step_state`` — has its entry, unless entries
were deleted: from the end (the chain still verifies), from the middle with the
chain rewritten, or all of them (TRUNCATE). This finds those facts without any anchor,
and says where their entries should be.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class Missing:
    """A fact of the control schema whose ledger entry is gone."""

    fact: str  # run started | run finished | step done | step failed | step reverted | step pending
    run_id: str
    tenant: str | None
    step: str | None
    at: datetime | None

    def describe(self) -> str:
        what = (
            f"run {self.run_id[:8]} ('migrate {self.step}')"
            if self.fact.startswith("run")
            else (f"tenant {self.tenant} step {self.step} in run {self.run_id[:8]}")
        )
        fact = self.fact.replace("step pending", "step stopped")
        when = f" at {self.at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if self.at else ""
        return f"{what}: {fact.split(' ', 1)[1]}{when}"


def missing(conn: psycopg.Connection[Any], schema: str) -> list[Missing]:
    """The facts of the control schema that have no ledger entry, oldest first."""
    text = (files("migrate.control") / "ledger_history.sql").read_text()
    query = sql.SQL(text).format(schema=sql.Identifier(schema))
    return [Missing(*row) for row in conn.execute(query)]


def problems(conn: psycopg.Connection[Any], schema: str, ledger: sql.Identifier) -> list[str]:
    """One message per missing stretch of the ledger, naming where it should be."""
    gone = missing(conn, schema)
    if not gone:
        return []
    row = conn.execute(sql.SQL("SELECT count(*), max(seq), max(at) FROM {}").format(ledger)).fetchone()
    count, last_seq, last_at = row if row else (0, None, None)
    first = "; ".join(m.describe() for m in gone[:3]) + (
        f"; and {len(gone) - 3} more" if len(gone) > 3 else ""
    )
    if not count:
        return [
            f"the ledger holds no entries, but the control schema records {len(gone)} fact(s) that "
            f"each wrote one — {first}: every entry was deleted (TRUNCATE, or the table recreated)"
        ]
    assert last_at is not None  # the ledger has entries, every one dated
    after = [m for m in gone if m.at is not None and m.at > last_at]
    within = [m for m in gone if m not in after]
    out = []
    if after:
        listed = "; ".join(m.describe() for m in after[:3]) + (
            f"; and {len(after) - 3} more" if len(after) > 3 else ""
        )
        out.append(
            f"entries after entry {last_seq} (the last, at {last_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC)"
            f" are missing: the control schema records {len(after)} later fact(s) — {listed}"
        )
    for m in within[:5]:
        out.append(f"the entry for {m.describe()} is missing{_between(conn, ledger, m)}")
    if len(within) > 5:
        out.append(f"and {len(within) - 5} more facts of the control schema have no entry")
    return out


def _between(conn: psycopg.Connection[Any], ledger: sql.Identifier, m: Missing) -> str:
    """Where the entry should be: between the last entry before the fact and the first after."""
    if m.at is None:
        return ""
    row = conn.execute(
        sql.SQL(
            "SELECT (SELECT max(seq) FROM {t} WHERE at <= %s), (SELECT min(seq) FROM {t} WHERE at > %s)"
        ).format(t=ledger),
        (m.at, m.at),
    ).fetchone()
    before, after = row if row else (None, None)
    if before is None and after is not None:
        return f" (before entry {after})"
    if before is not None and after is not None:
        rewritten = ": the chain there was rewritten without it" if after == before + 1 else ""
        return f" (between entries {before} and {after}{rewritten})"
    return ""
