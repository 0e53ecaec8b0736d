"""A transaction of control-schema writes sent as one pipeline (issue 18: per-tenant fixed cost).

A step's ``running`` mark, its ``done`` record with its ledger entry, and the holder of a
tenant's lock are small transactions of a statement or three. Sent one statement at a time
each costs a round trip for ``BEGIN``, for every statement and for ``COMMIT``; sent as a
pipeline it costs one (two when the ledger reads its last entry in between).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from psycopg import pq


@contextmanager
def state_transaction(conn: psycopg.Connection[Any], *, durable: bool = True) -> Iterator[bool]:
    """One transaction of state and ledger writes, sent as a pipeline: ``BEGIN``, the writes and
    ``COMMIT`` travel together, so it costs two round trips (the ledger reads its last entry
    once) instead of one per statement. Yields whether the writes are inside a pipe (then
    ``Ledger.append`` must be told it is in a transaction: the connection cannot tell).

    ``durable=False`` commits without waiting for the WAL flush (``synchronous_commit`` off for
    this transaction only): for a step's ``running`` mark, which nothing depends on being
    durable. WAL is one stream, flushed in order, so any later durable commit — the step's
    work, its ``done`` — flushes the mark first; a server crash can lose the mark only together
    with everything after it, which is a crash before the step started. A ``kill -9`` of the
    runner loses nothing either way (the server has the commit).

    Only on an idle autocommit connection (the runner's); otherwise an ordinary transaction.
    """
    if not conn.autocommit or conn.info.transaction_status != pq.TransactionStatus.IDLE:
        with conn.transaction():
            yield False
        return
    try:
        with conn.pipeline():
            conn.execute("BEGIN")
            if not durable:
                conn.execute("SET LOCAL synchronous_commit TO off")
            yield True
            conn.execute("COMMIT")
    except BaseException:
        if not conn.closed and conn.info.transaction_status != pq.TransactionStatus.IDLE:
            with suppress(psycopg.Error):
                conn.execute("ROLLBACK")
        raise
