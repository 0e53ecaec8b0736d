"""Retries: the one place that decides what is worth trying again, how, and for how long.

Only named, passing conditions are retried — a serialization failure, a
deadlock, a lock timeout, a lost connection, a server that does not answer
(refused, shutting down, starting up: a restart, a failover) — and only around
work that is idempotent (a step's ``apply`` and ``verify``; the backfill, run
again, resumes after its last committed checkpoint; a rollback, run again,
reverts what is left). Anything else — a missing column, a type mismatch, a
foreign key that does not hold, a password the server refuses — fails at once.

**An outage gets time, not a number of attempts.** A database restart takes
seconds to a minute; a fixed count of quick attempts gave up after ~10 s. The
policy is a budget in seconds (``MIGRATE_RETRY_SECONDS``, 60 by default), counted
from the first failure since the work last made progress (a committed chunk), so
a long copy that meets two short outages an hour apart gets the whole budget for
each. Waits grow exponentially with full jitter (runners that failed together do
not come back together) up to ``max_wait``, short enough that a server that is
back is found within seconds, and never past the budget. Every retry writes one
``step_retried`` log event (info) and tells the caller (a line on the terminal). When the
budget is spent the error says the server was unreachable for N s — exit 1, never
"check your settings".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from migrate.errors import MigrateError, Unreachable
from migrate.log import redact

# SQLSTATEs of passing conditions (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_CONDITIONS = {
    "40001": "serialization failure",
    "40P01": "deadlock",
    "55P03": "lock timeout",
    "57P01": "lost connection",  # admin_shutdown: pg_terminate_backend, a fast shutdown
    "57P02": "lost connection",  # crash_shutdown
    "57P03": "lost connection",  # cannot_connect_now: the server is starting or shutting down
    "53300": "lost connection",  # too_many_connections: a failover's stampede
}

DEFAULT_SECONDS = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """How long, and how patiently, passing faults are tried again."""

    seconds: float = DEFAULT_SECONDS  # the outage budget: from the first failure since progress
    first_wait: float = 0.5  # seconds; the wait before retry n is random in [0, first_wait * 2**n]
    max_wait: float = 5.0  # the cap of any one wait


def condition(exc: BaseException) -> str | None:
    """The name of the passing condition behind ``exc`` (or its causes), else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, Unreachable):
            return "server unreachable"
        if isinstance(seen, psycopg.Error):
            state = seen.sqlstate
            if state in _CONDITIONS:
                return _CONDITIONS[state]
            if state is not None and state.startswith("08"):  # connection_exception
                return "lost connection"
            if state is None and isinstance(seen, psycopg.OperationalError):
                return "lost connection"  # raised by the client: the server went away
        seen = seen.__cause__
    return None


@dataclass
class Outage:
    """How long passing faults have kept some work from moving on: since the first failure after
    its last progress (``progressed``), by ``clock``."""

    clock: Callable[[], float] = time.monotonic
    _since: float | None = field(default=None, init=False)

    def progressed(self) -> None:
        self._since = None

    def failed(self) -> None:
        if self._since is None:
            self._since = self.clock()

    @property
    def seconds(self) -> float:
        return 0.0 if self._since is None else self.clock() - self._since


def _first_line(exc: BaseException | None) -> str:
    text = (exc.message if isinstance(exc, MigrateError) else str(exc)).strip() if exc is not None else ""
    return redact(text.splitlines()[0]) if text else type(exc).__name__


def _said(exc: BaseException | None) -> str:
    """A passing fault in a few words: 'the target database does not answer (…)', 'lost connection (…)'."""
    if isinstance(exc, Unreachable):
        server, _, why = exc.message.partition(" does not answer: ")
        return f"{server} does not answer ({redact(why.splitlines()[0]) if why else 'no answer'})"
    return f"{condition(exc) if exc else 'a passing fault'} ({_first_line(exc)})"


def retrying(
    policy: RetryPolicy,
    log: Any,
    outage: Outage,
    *,
    what: str,
    tell: Callable[[str], None] = lambda _line: None,
) -> Retrying:
    """A tenacity loop for idempotent work (its body reconnects at the start of every attempt
    after the first); ``tell`` gets one line per retry for a person, ``what`` names the work."""

    def passing(exc: BaseException) -> bool:
        if condition(exc) is None:
            return False
        outage.failed()
        return True

    def spent(state: RetryCallState) -> bool:
        return outage.seconds >= policy.seconds

    base = wait_random_exponential(multiplier=policy.first_wait, max=policy.max_wait)

    def wait(state: RetryCallState) -> float:
        return max(0.0, min(base(state), policy.seconds - outage.seconds))

    def logged(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        pause = state.next_action.sleep if state.next_action else 0.0
        why = condition(exc) if exc else None
        log.info(  # the person's line is ``tell``'s; the event is for whoever asks for the log
            "step_retried",
            condition=why,
            attempt=state.attempt_number + 1,
            outage_s=round(outage.seconds, 3),
            budget_s=policy.seconds,
            wait_s=round(pause, 3),
            error=_first_line(exc),
        )
        tell(
            f"{what}: {_said(exc)}; trying again in {pause:.1f} s "
            f"(attempt {state.attempt_number + 1}, {outage.seconds:.0f} s of at most {policy.seconds:.0f} s)"
        )

    return Retrying(
        stop=spent,
        wait=wait,
        retry=retry_if_exception(passing),
        before_sleep=logged,
        reraise=True,
    )


def gave_up(exc: BaseException, outage: Outage, policy: RetryPolicy, *, where: str) -> MigrateError | None:
    """The error to report when retries of a passing fault ran out: the server was unreachable for
    N s (exit 1, with what to do), or None when ``exc`` is no passing fault."""
    why = condition(exc)
    if why is None or policy.seconds <= 0 or outage.seconds <= 0:
        return None  # no passing fault, or no retries asked for (a rehearsal): the fault as it is
    seen: BaseException | None = exc
    server, reason = "the database", f"{why}: {_first_line(exc)}"
    while seen is not None:
        if isinstance(seen, Unreachable):
            server, _, said = seen.message.partition(" does not answer: ")
            reason = redact(said.splitlines()[0]) if said else "no answer"
            break
        seen = seen.__cause__
    return Unreachable(
        f"{server} was unreachable for {outage.seconds:.0f} s ({reason}); "
        f"gave up after the {policy.seconds:.0f} s retry budget",
        where=where,
        hint="nothing is lost: every committed chunk and step is recorded. Once the server answers, "
        "run the same command again (it resumes); MIGRATE_RETRY_SECONDS sets the budget",
    )
