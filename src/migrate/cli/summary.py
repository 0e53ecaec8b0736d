"""``migrate status`` for many tenants: a summary by wave and state that fits on one screen.

Per-tenant rows come with ``--tenant``, ``--state`` or ``--all`` (and by default while
the playbook has at most ``ROWS_UP_TO`` tenants); ``--json`` is always complete. The
summary counts tenants per wave and state, lists the tenants that need a person first
(failed, interrupted, unknown, an unfinished rollback; at most ``ATTENTION`` of them,
with how to see the rest), and totals validation and flags.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console

from migrate.cli.grid import Grid

if TYPE_CHECKING:
    from migrate import api

ROWS_UP_TO = 20
"""Tenants shown one row each by default; above this, a summary unless asked for rows."""

ATTENTION = 8
"""Tenants listed by name in the summary under 'needs attention'."""

# The states, in the order a person reads them: what needs someone first.
_URGENT = ("rollback failed", "rollback interrupted", "flag state unknown", "failed", "interrupted")
_ORDER = (*_URGENT, "running", "in progress", "rolled back", "not started", "done")


def status_summary(console: Console, result: api.Status, now: Sequence[str]) -> None:
    """Counts per wave and state, the tenants that need attention, validation and flags in totals."""
    book = shlex.quote(result.path or "PLAYBOOK")
    tenants = result.tenants
    counts = Counter((t.wave, t.state) for t in tenants)
    present = [s for s in _ORDER if any(state == s for _w, state in counts)]
    present += sorted({state for _w, state in counts} - set(present))
    grid = Grid(
        ("wave", "tenants", *present),
        title=f"tenants by wave and state ({len(tenants)} in all)",
        right=frozenset({"tenants", *present}),
    )
    for wave in result.waves:
        mine = [t for t in tenants if t.wave == wave.name]
        if mine:
            cells = (f"{n:,}" if (n := counts[(wave.name, s)]) else "" for s in present)
            grid.add_row(wave.name, f"{len(mine):,}", *cells)
    grid.print(console)
    urgent = [(t, line) for t, line in zip(tenants, now, strict=True) if t.state in _URGENT]
    if urgent:
        console.print(f"needs attention ({len(urgent)}):", markup=False)
        for t, line in urgent[:ATTENTION]:
            console.print(f"  {t.tenant} ({t.state}): {line or t.error or '-'}", markup=False)
        if len(urgent) > ATTENTION:
            states = sorted({t.state for t, _ in urgent[ATTENTION:]})
            more = " ".join(f"--state {s.replace(' ', '-')}" for s in states)
            console.print(
                f"  … and {len(urgent) - ATTENTION} more: migrate status {book} {more}", markup=False
            )
    held = [t for t in tenants if t.holder is not None]
    if held:
        console.print(f"running now: {len(held)} tenant(s) held by a runner", markup=False)
    checked = [t for t in tenants if t.validated is not None]
    if checked:
        differ = [t.tenant for t in checked if not t.validated]
        shown = ", ".join(differ[:ATTENTION]) + (" …" if len(differ) > ATTENTION else "")
        console.print(
            f"validation: {len(checked) - len(differ):,} tenant(s) match"
            + (f", {len(differ):,} differ ({shown})" if differ else ""),
            markup=False,
        )
    if result.flags_error is not None:
        console.print(f"flags unavailable: {result.flags_error}", markup=False)
    for flag in result.flags:
        on = sum(1 for t in tenants if t.flags.get(flag.flag))
        console.print(f"flag {flag.flag}: on for {on:,} of {len(tenants):,} tenant(s)", markup=False)
    console.print(
        f"(a row per tenant: migrate status {book} --all, or --tenant T, or --state STATE)", markup=False
    )
