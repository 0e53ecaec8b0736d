"""The copy's progress for people: bars on a terminal, a line now and then everywhere else.

Both are ``ProgressSink``s for ``api.run`` (and ``api.rollback``'s retries), called from
the run's worker threads. Totals are exact: each tenant is sized by counting its rows
in the snapshot its copy reads (``tenant_sized``), again after a retry for what is left;
a tenant not sized yet counts as the mean of those that are, so the overall figure
covers the whole run from the start. Rates and ETAs come from the rows actually
copied, over the time they took. A passing fault that is tried again (``retrying``)
is always said, on its own line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeRemainingColumn
from rich.text import Text

if TYPE_CHECKING:
    from migrate.api import ProgressEvent

PLAIN_EVERY = 10.0
"""Seconds between two progress lines when there is no terminal (a CI log stays short)."""


class Totals:
    """Rows copied and to copy, per tenant and in all, from the events (callers hold a lock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.tenants = 0
        self.finished = 0
        self.sized: dict[str, int] = {}
        self.copied: dict[str, int] = {}

    def add(self, event: ProgressEvent) -> None:
        if event.kind == "run_started":
            self.tenants = event.tenants
        elif event.kind == "tenant_sized":
            # Sized again after a retry: what is left, on top of what this run copied already.
            self.sized[event.tenant] = self.copied.get(event.tenant, 0) + event.rows
        elif event.kind == "chunk_copied":
            self.copied[event.tenant] = self.copied.get(event.tenant, 0) + event.rows
        elif event.kind == "tenant_finished":
            self.finished += 1

    def tenant_total(self, tenant: str) -> int | None:
        return self.sized.get(tenant)

    @property
    def rows(self) -> int:
        return sum(self.copied.values())

    @property
    def total(self) -> float | None:
        """Every tenant's rows: the sized ones exactly, the others as their mean; never below done."""
        if not self.sized:
            return None
        known = sum(self.sized.values())
        unsized = max(0, self.tenants - len(self.sized))
        return max(float(self.rows), known + unsized * known / len(self.sized))

    def line(self) -> str:
        """One line for a log: tenants done, rows of all, rate and time left from what was copied."""
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.rows / elapsed
        total = self.total
        text = f"progress: {self.finished} of {self.tenants} tenant(s) done; {self.rows:,}"
        if total is not None and total > 0:
            text += f" of {int(total):,} rows ({100 * self.rows / total:.0f} %)"
        else:
            text += " rows"
        text += f", {rate:,.0f} rows/s"
        if total is not None and rate > 0 and total > self.rows:
            text += f", about {timedelta(seconds=round((total - self.rows) / rate))} left"
        return text


class _RowRate(ProgressColumn):
    """Rows per second of a task (rich's own speed columns count bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} rows/s", style="progress.data.speed")


class _Rows(ProgressColumn):
    def render(self, task: Task) -> Text:
        total = "?" if task.total is None else f"{int(task.total):,}"
        return Text(f"{int(task.completed):,}/{total} rows", style="progress.download")


class CopyProgress:
    """On a terminal: a bar per tenant at work (rows, rows/s, ETA) and one overall."""

    def __init__(self, console: Console) -> None:
        self._lock = threading.Lock()
        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            _Rows(),
            _RowRate(),
            TimeRemainingColumn(),
            console=console,
            redirect_stderr=True,
            redirect_stdout=False,
        )
        self._overall = self._bars.add_task("all tenants", total=None)
        self._tasks: dict[str, TaskID] = {}
        self._totals = Totals()

    def __enter__(self) -> CopyProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            self._totals.add(event)
            task = self._tasks.get(event.tenant)
            if event.kind == "retrying" and event.note:
                self._bars.console.print(event.note, markup=False, highlight=False)
            elif event.kind == "tenant_started":
                self._tasks[event.tenant] = self._bars.add_task(event.tenant, total=None)
            elif event.kind == "tenant_sized" and task is not None:
                self._bars.update(task, total=max(self._totals.tenant_total(event.tenant) or 0, 1))
            elif event.kind == "chunk_copied" and task is not None:
                self._bars.update(task, advance=event.rows, description=f"{event.tenant} {event.table}")
                self._bars.update(self._overall, advance=event.rows)
            elif event.kind == "changes_applied" and task is not None:
                self._bars.update(task, description=f"{event.tenant} catch-up: {_lag(event)}")
            elif event.kind == "tenant_finished" and task is not None:
                self._bars.remove_task(self._tasks.pop(event.tenant))
            self._bars.update(
                self._overall,
                total=self._totals.total,
                description=f"all tenants ({self._totals.finished}/{self._totals.tenants} done)",
            )


class PlainProgress:
    """Without a terminal: a progress line every ``every`` seconds while rows move, and each retry."""

    def __init__(
        self, console: Console, *, every: float = PLAIN_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._console = console
        self._lock = threading.Lock()
        self._every = every
        self._clock = clock
        self._totals = Totals(clock)
        self._said = clock()

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            self._totals.add(event)
            if event.kind == "retrying" and event.note:
                self._say(event.note)
            elif event.kind == "chunk_copied" and self._clock() - self._said >= self._every:
                self._said = self._clock()
                self._say(self._totals.line())
            elif event.kind == "changes_applied" and self._clock() - self._said >= self._every:
                self._said = self._clock()
                self._say(f"{event.tenant} catch-up: {_lag(event)}")

    def _say(self, line: str) -> None:
        self._console.print(line, markup=False, highlight=False, soft_wrap=True)


def _lag(event: ProgressEvent) -> str:
    """'1,234 changes, lag 56 kB / 0.42 s' for a catch-up poll."""
    size = event.bytes
    shown = f"{size} B" if size < 1024 else f"{size / 1024:,.0f} kB"
    if size >= 1024**2:
        shown = f"{size / 1024**2:,.1f} MB"
    return f"{event.rows:,} changes, lag {shown} / {event.seconds:.2f} s"
