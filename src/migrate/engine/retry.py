"""Retries: the one place that decides what is worth trying again, and how.

Only named, passing conditions are retried — a serialization failure, a
deadlock, a lock timeout, a lost connection — and only around a step's
``apply`` and ``verify``, which are idempotent: the backfill, run again,
resumes after its last committed checkpoint. Waits grow exponentially with
full jitter (so runners that failed together do not come back together) up to
a cap, and every retry writes one ``step_retried`` log line. Anything else —
a missing column, a type mismatch, a foreign key that does not hold — fails
the tenant at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from migrate.log import redact

# SQLSTATEs of passing conditions (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_CONDITIONS = {
    "40001": "serialization failure",
    "40P01": "deadlock",
    "55P03": "lock timeout",
    "57P01": "lost connection",  # admin_shutdown: pg_terminate_backend, a fast shutdown
    "57P02": "lost connection",  # crash_shutdown
    "57P03": "lost connection",  # cannot_connect_now: the server is starting
}


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a step is tried again after a passing fault."""

    attempts: int = 6  # in all, the first included
    first_wait: float = 0.5  # seconds; the wait before retry n is random in [0, first_wait * 2**n]
    max_wait: float = 30.0  # the cap of any one wait


def condition(exc: BaseException) -> str | None:
    """The name of the passing condition behind ``exc`` (or its causes), else None."""
    seen: BaseException | None = exc
    while seen is not None:
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


def retrying(policy: RetryPolicy, log: Any) -> Retrying:
    """A tenacity loop for one step (its body reconnects at the start of every attempt after the first)."""

    def logged(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        text = str(exc).strip() if exc else ""
        log.warning(
            "step_retried",
            condition=condition(exc) if exc else None,
            attempt=state.attempt_number + 1,
            attempts=policy.attempts,
            wait_s=round(state.next_action.sleep, 3) if state.next_action else 0.0,
            error=redact(text.splitlines()[0]) if text else type(exc).__name__,
        )

    return Retrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait_random_exponential(multiplier=policy.first_wait, max=policy.max_wait),
        retry=retry_if_exception(lambda exc: condition(exc) is not None),
        before_sleep=logged,
        reraise=True,
    )
