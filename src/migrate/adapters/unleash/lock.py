"""The lock that serialises writers of one flag across runners (trap 3: lost updates).

A lock in this process would not stop another runner on another machine. Every
runner of a playbook reaches its target database, so the lock is a PostgreSQL
advisory lock there, on a connection of its own: session-level, so a runner that
dies releases it with its connection, and the wait is bounded by ``lock_timeout``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg

from migrate.control import locks
from migrate.errors import StepFailed

FlagLock = Callable[[str], AbstractContextManager[None]]
"""Holds the lock for one key (a flag in one environment) while the block runs."""


def advisory_lock(connect: Callable[[], psycopg.Connection[Any]], *, wait_seconds: float = 60.0) -> FlagLock:
    """A lock per key, shared by every runner that reaches the database ``connect`` opens."""

    @contextmanager
    def hold(key: str) -> Iterator[None]:
        with connect() as conn:
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(wait_seconds * 1000)}ms",))
            try:
                conn.execute("SELECT pg_advisory_lock(hashtext(%s), hashtext(%s))", (locks.FLAG, key))
            except psycopg.errors.LockNotAvailable as exc:
                raise StepFailed(
                    f"waited {wait_seconds:.0f} s for the lock of flag {key!r}: another runner holds it",
                    hint="run again when that runner has finished flipping",
                ) from exc
            try:
                yield
            finally:
                if not conn.closed:
                    conn.execute("SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))", (locks.FLAG, key))

    return hold
