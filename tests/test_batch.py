"""A step's state and its ledger entry, sent as one pipelined transaction, commit together or not
at all (control/batch.py, issue 18), and the chain stays whole and verifiable."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg import pq

from migrate.control import schema
from migrate.control.batch import state_transaction
from migrate.control.ledger import Entry, Ledger
from migrate.control.store import ControlStore
from migrate.plan.model import PlannedStep, StepStatus

CONTROL = "migrate_control"


def entry(action: str) -> Entry:
    return Entry(actor="t", host="h", playbook="pb", playbook_digest="d", action=action, outcome="ok")


def step_of(conn: psycopg.Connection[Any], key: str) -> Any:
    row = conn.execute(
        f"SELECT status FROM {CONTROL}.step_state WHERE tenant = 'acme' AND step_key = %s", (key,)
    ).fetchone()
    return None if row is None else row[0]


@pytest.fixture
def control(fresh_dsn: str) -> str:
    schema.upgrade(fresh_dsn, CONTROL)
    return fresh_dsn


def _start(store: ControlStore, conn: psycopg.Connection[Any], run: UUID) -> None:
    store.start_run(conn, run_id=run, digest="d", command="run", actor="t", host="h", pid=1, dry_run=False)


def _step(key: str) -> PlannedStep:
    phase, _, kind = key.partition("/")
    return PlannedStep(phase=phase, step_id=kind, kind=kind, spec=None)


def test_state_and_entry_commit_together_in_two_round_trips(control: str) -> None:
    """A done record and its entry, piped, are both there afterwards; the chain verifies, and a
    non-durable transaction (the running mark) is committed all the same."""
    store, ledger = ControlStore(CONTROL, "pb"), Ledger(CONTROL)
    with psycopg.connect(control, autocommit=True) as conn:
        run = uuid4()
        _start(store, conn, run)
        with state_transaction(conn, durable=False) as piped:
            assert piped
            store.set_status(conn, "acme", _step("copy/backfill"), StepStatus.RUNNING, run_id=run)
        with state_transaction(conn) as piped:
            store.set_status(conn, "acme", _step("copy/backfill"), StepStatus.DONE, run_id=run)
            ledger.append(conn, entry("applied"), in_transaction=piped)
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
    with psycopg.connect(control, autocommit=True) as other:
        assert step_of(other, "copy/backfill") == "done"
        assert [r.entry.action for r in ledger.entries(other)] == ["applied"]
        assert ledger.verify(other).intact


def test_a_failure_in_the_pipe_leaves_neither_and_the_connection_usable(control: str) -> None:
    """The entry fails after the state was sent: nothing of either is committed, the connection is
    idle again (rolled back), and the next append chains on as if nothing happened."""
    store, ledger = ControlStore(CONTROL, "pb"), Ledger(CONTROL)
    with psycopg.connect(control, autocommit=True) as conn:
        run = uuid4()
        _start(store, conn, run)
        ledger.append(conn, entry("first"))

        def fail_midway() -> None:
            with state_transaction(conn) as piped:
                store.set_status(conn, "acme", _step("copy/validate"), StepStatus.DONE, run_id=run)
                conn.execute("SELECT 1 / 0")  # the entry's write fails after the state's
                ledger.append(conn, entry("never"), in_transaction=piped)

        with pytest.raises(psycopg.errors.DivisionByZero):
            fail_midway()
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        assert step_of(conn, "copy/validate") is None
        ledger.append(conn, entry("second"))
        assert [r.entry.action for r in ledger.entries(conn)] == ["first", "second"]
        assert ledger.verify(conn).intact
