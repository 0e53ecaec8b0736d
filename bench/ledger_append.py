"""Benchmark: what one ledger append costs, next to one backfill step on the demo's data.

    python bench/ledger_append.py [--scale 3] [--reps 5] [--appends 500] [--dsn ADMIN_DSN]

Interleaved, per repetition:

1. a ``migrate run`` of a schema + backfill playbook for one tenant of the demo's
   sample data (``--scale 3`` is the demo's acme: 2,013 rows) into a fresh target,
   with the ledger on, and once more into another fresh target with
   ``Ledger.append`` replaced by a no-op (the only switch there is, and only here):
   the backfill step's own seconds (apply + verify; its closing transaction, where
   the append happens, comes after) and the whole run's;
2. ``--appends`` appends on that target, each timed alone, the way the engine
   makes them: inside the step's closing transaction (after ``set_status``), and
   in a transaction of their own (run_started, run_finished); then as many signed
   appends (an Ed25519 key, as ``ledger.signing_key_file`` gives the runner), each
   inside a transaction, interleaved with unsigned ones, and the signature alone.

The engine appends once per step, so the append's share of a backfill step is
``append / backfill``, and signing's share is ``(signed - unsigned append) / backfill``.
The server is ``--dsn``, else ``MIGRATE_BENCH_DSN``, else
``postgresql://postgres@127.0.0.1:5432/postgres``. Not run by pytest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from migrate import api
from migrate.api.demo import create_source
from migrate.control.ledger import Entry, Ledger, Recorded
from migrate.control.signing import entry_message, generate_key, signer_from_pem
from migrate.log import configure

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PLAYBOOK = """\
version: 1
name: bench-ledger
target: {dsn_env: BENCH_TARGET_DSN, schema: app}
source: {dsn_template_env: BENCH_SOURCE_DSN_TEMPLATE, schema: public}
tenants: [{id: acme}]
tables: auto
phases:
  - name: prepare
    steps: [{kind: schema}]
  - name: copy
    steps: [{kind: backfill}]
"""


@contextmanager
def fresh_target(admin: str) -> Iterator[str]:
    name = f"tm_bench_ledger_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def one_run(playbook: Path, environ: dict[str, str], ledger_on: bool) -> tuple[float, float]:
    """(backfill step seconds, whole run seconds)."""
    started = time.perf_counter()
    if ledger_on:
        result = api.run(playbook, environ=environ)
    else:
        with mock.patch.object(Ledger, "append", return_value=None):
            result = api.run(playbook, environ=environ)
    total = time.perf_counter() - started
    if not result.ok:
        raise SystemExit(f"the run failed: {result.tenants[0].error}")
    return {s.kind: s.seconds for s in result.tenants[0].steps}["backfill"], total


def signed_appends(dsn: str, count: int) -> tuple[list[float], list[float], list[float]]:
    """Seconds per append in a transaction, unsigned and signed, interleaved; and per signature alone."""
    signer = signer_from_pem(generate_key()[0], "bench")
    plain, signed = Ledger("migrate_control"), Ledger("migrate_control", signer)
    unsigned_s, signed_s, sign_s = [], [], []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(count):
            entry = Entry("bench", "host", "bench-ledger", "d" * 64, "applied", "ok", tenant="acme",
                          details={"i": i, "rows": 15000})  # fmt: skip
            for book, into in ((plain, unsigned_s), (signed, signed_s))[:: 1 if i % 2 else -1]:
                with conn.transaction():
                    conn.execute("SELECT 1")
                    t0 = time.perf_counter()
                    book.append(conn, entry)
                    into.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            signer.sign(entry_message("f" * 64))
            sign_s.append(time.perf_counter() - t0)
    return unsigned_s, signed_s, sign_s


def appends(dsn: str, count: int) -> tuple[list[float], list[float]]:
    """Seconds per append: inside the step's closing transaction, and in a transaction of its own."""
    book = Ledger("migrate_control")
    inside, alone = [], []
    details = {
        "tables": {f"t{i}": {"rows": 1000 * i, "copied_now": 1000 * i} for i in range(6)},
        "rows": 15000,
    }
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(count):
            entry = Entry(
                "bench", "host", "bench-ledger", "d" * 64, "applied", "ok", tenant="acme", wave="main",
                phase="copy", step="copy/backfill", details={**details, "i": i},
            )  # fmt: skip
            with conn.transaction():
                conn.execute("SELECT 1")  # stands in for set_status: the transaction is open
                t0 = time.perf_counter()
                rec: Recorded = book.append(conn, entry)
                inside.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            book.append(conn, entry)
            alone.append(time.perf_counter() - t0)
            assert rec.seq > 0
    return inside, alone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=3, help="sample data scale (3 = the demo's acme)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--appends", type=int, default=500)
    parser.add_argument("--dsn", default=os.environ.get("MIGRATE_BENCH_DSN", DEFAULT_DSN))
    args = parser.parse_args(argv)
    configure(level="warning")
    source_db = f"tm_bench_ledger_src_{uuid.uuid4().hex[:8]}_acme"
    create_source(args.dsn, source_db, "acme", args.scale)
    figures: dict[str, list[float]] = {
        k: [] for k in ("on", "off", "run_on", "run_off", "inside", "alone", "unsigned", "signed", "sign")
    }
    try:
        with tempfile.TemporaryDirectory(prefix="tm-bench-") as tmp:
            playbook = Path(tmp) / "bench.yaml"
            playbook.write_text(PLAYBOOK)
            for rep in range(args.reps):
                for ledger_on in (rep % 2 == 0, rep % 2 != 0):  # alternate which goes first
                    with fresh_target(args.dsn) as target:
                        environ = {
                            "BENCH_TARGET_DSN": target,
                            "BENCH_SOURCE_DSN_TEMPLATE": make_conninfo(
                                args.dsn, dbname=source_db.replace("acme", "{tenant}")
                            ),
                            "MIGRATE_ACTOR": "bench",
                        }
                        backfill, total = one_run(playbook, environ, ledger_on)
                        figures["on" if ledger_on else "off"].append(backfill)
                        figures["run_on" if ledger_on else "run_off"].append(total)
                        if ledger_on:
                            inside, alone = appends(target, args.appends)
                            figures["inside"].append(statistics.median(inside))
                            figures["alone"].append(statistics.median(alone))
                            unsigned, signed, sign = signed_appends(target, args.appends)
                            figures["unsigned"].append(statistics.median(unsigned))
                            figures["signed"].append(statistics.median(signed))
                            figures["sign"].append(statistics.median(sign))
                print(
                    f"  rep {rep + 1}: backfill {figures['on'][-1] * 1e3:.1f} ms (ledger on),"
                    f" {figures['off'][-1] * 1e3:.1f} ms (off); append {figures['inside'][-1] * 1e3:.3f} ms"
                    f" in a transaction, {figures['alone'][-1] * 1e3:.3f} ms alone",
                    file=sys.stderr,
                )
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(source_db)))
    med = {k: statistics.median(v) for k, v in figures.items()}
    rows = 671 * args.scale
    print(f"demo data: one tenant, {rows:,} rows; medians of {args.reps} repetitions")
    print(
        f"backfill step (apply + verify): {statistics.median(figures['on'] + figures['off']) * 1e3:8.2f} ms"
    )
    print(
        f"whole run (2 steps, 4 appends), on / off: {med['run_on'] * 1e3:.1f} / {med['run_off'] * 1e3:.1f} ms"
    )
    print(f"one append in the step's transaction: {med['inside'] * 1e3:6.3f} ms")
    print(f"one append in its own transaction:    {med['alone'] * 1e3:6.3f} ms")
    backfill = statistics.median(figures["on"] + figures["off"])
    print(f"ratio append / backfill step: {med['inside'] / backfill:.4f}")
    signing = med["signed"] - med["unsigned"]
    print(
        f"signed append {med['signed'] * 1e3:.3f} ms vs unsigned {med['unsigned'] * 1e3:.3f} ms"
        f" (interleaved): signing costs {signing * 1e3:.3f} ms an entry;"
        f" the Ed25519 signature alone {med['sign'] * 1e6:.1f} µs"
    )
    print(
        f"ratio signing / backfill step: {signing / backfill:.4f} ({signing / backfill:.2%}; must stay < 1 %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
