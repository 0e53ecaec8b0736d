"""Exact data: every difference a person would call one is caught by `verify` and named by `diff`,
on every schema `run` can load (foreign-key cycles too)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from databases import DatabaseFactory
from kill import application_name, checkpoints, sessions_gone, start_run
from migrate import api
from migrate.cli.app import main
from world import CYCLE, World, custom_world

# One row per awkward value; the rest are plain filler rows.
AWKWARD = """
CREATE TABLE readings (
    id  int PRIMARY KEY,
    f4  real,
    f8  double precision,
    js  json,
    n   numeric,
    t   text,
    arr int[],
    tx  text[],
    at  timestamptz,
    tt  timetz
);
INSERT INTO readings VALUES
  (1, 0, 0, '{"b":1,"a":2}', 'NaN', '', '{1,NULL}', '{a,NULL}', '2024-05-01 12:00:00+02', '12:00:00+01'),
  (2, 'NaN', 'Infinity', '[1, 2]', 1.5, NULL, '{}', '{}', 'infinity', '00:00:00+00');
INSERT INTO readings (id, f8, t) SELECT g, g / 7.0, 'row ' || g FROM generate_series(3, 200) AS g;
"""


def playbook(tmp_path: Path, name: str = "exact") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"version: 1\nname: {name}\n"
        "target: {dsn_env: MIGRATE_TARGET_DSN, schema: app}\n"
        "source: {dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE, schema: public}\n"
        "tenants: [{id: acme}]\n"
        "phases:\n  - name: copy\n    steps:\n      - kind: schema\n      - kind: backfill\n"
        "      - kind: validate\n"
    )
    return path


@pytest.fixture(scope="module")
def awkward(session_databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """acme's `readings`, migrated once for the module; each test puts back what it changed."""
    factory = session_databases.scoped()
    tmp = tmp_path_factory.mktemp("exact")
    try:
        world = custom_world(factory, tmp, AWKWARD, ("acme",))
        result = api.run(playbook(tmp), environ=world.environ)
        assert result.ok, result.tenants[0].error
        world.playbook = playbook(tmp)  # type: ignore[attr-defined]
        yield world
    finally:
        factory.close()


# (column, the target's new value as SQL, the row): the source holds the value of AWKWARD.
CHANGES = {
    "float4-minus-zero": ("f4", "'-0'", 1),
    "float8-minus-zero": ("f8", "'-0'", 1),
    "json-key-order": ("js", """'{"a":2,"b":1}'""", 1),
    "json-whitespace": ("js", """'{"b": 1,"a":2}'""", 1),
    "json-duplicate-key": ("js", """'{"b":1,"a":2,"a":2}'""", 1),
    "numeric-nan": ("n", "0", 1),
    "float-nan": ("f4", "'Infinity'", 2),
    "infinity-sign": ("f8", "'-Infinity'", 2),
    "empty-to-null": ("t", "NULL", 1),
    "null-to-empty": ("t", "''", 2),
    "array-null-dropped": ("arr", "'{1}'", 1),
    "array-null-to-zero": ("arr", "'{1,0}'", 1),
    "array-null-to-empty-text": ("tx", """'{a,""}'""", 1),
    "timestamptz-infinity": ("at", "'-infinity'", 2),
    "timetz-offset": ("tt", "'11:00:00+00'", 1),
}


def _set(world: World, column: str, value: str, key: int) -> str:
    """Set one value on the target; returns the SQL that puts the old one back."""
    with world.target() as conn:
        (old,) = conn.execute(
            f"SELECT quote_nullable({column}::text) FROM app.readings WHERE tenant_id = 'acme' AND id = %s",
            (key,),
        ).fetchone()  # type: ignore[misc]
        conn.execute(
            f"UPDATE app.readings SET {column} = {value} WHERE tenant_id = 'acme' AND id = %s", (key,)
        )
    return f"UPDATE app.readings SET {column} = {old} WHERE tenant_id = 'acme' AND id = {key}"


@pytest.mark.parametrize("case", list(CHANGES))
def test_one_changed_value_fails_verify_and_diff_names_its_row(
    awkward: World, case: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One value changed on the target in a way its type's own equality may not see: verify exits 1
    naming the table, diff exits 1 naming the row and the column."""
    for name, value in awkward.environ.items():
        monkeypatch.setenv(name, value)
    book = str(awkward.playbook)  # type: ignore[attr-defined]
    column, value, key = CHANGES[case]
    undo = _set(awkward, column, value, key)
    try:
        assert main(["verify", book, "--tenant", "acme"]) == 1
        assert "MISMATCH acme/readings: checksums differ" in capsys.readouterr().out
        assert main(["diff", book, "--tenant", "acme", "--table", "readings"]) == 1
        out = capsys.readouterr().out
        assert f"changed: 1\n  id={key}: {column} " in out, out
    finally:
        with awkward.target() as conn:
            conn.execute(undo)
    assert main(["verify", book, "--tenant", "acme"]) == 0


def test_an_equal_instant_in_another_offset_is_no_difference(
    awkward: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """timestamptz holds an instant: the same instant written with another offset is equal."""
    for name, value in awkward.environ.items():
        monkeypatch.setenv(name, value)
    undo = _set(awkward, "at", "'2024-05-01 10:00:00+00'", 1)
    try:
        assert main(["verify", str(awkward.playbook), "--tenant", "acme"]) == 0  # type: ignore[attr-defined]
    finally:
        with awkward.target() as conn:
            conn.execute(undo)


CYCLE_AND_MORE = (
    CYCLE + "CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'x');"
)


def test_verify_and_diff_work_on_a_foreign_key_cycle(
    database_factory: DatabaseFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """teams ⇄ members reference each other: `run` loads them, and verify and diff read them — the
    whole playbook, a table of the cycle, and an unrelated table."""
    world = custom_world(database_factory, tmp_path, CYCLE_AND_MORE, ("acme",))
    book = playbook(tmp_path)
    assert api.run(book, environ=world.environ).ok
    for name, value in world.environ.items():
        monkeypatch.setenv(name, value)
    assert main(["verify", str(book), "--tenant", "acme"]) == 0
    assert main(["verify", str(book), "--tenant", "acme", "--table", "notes"]) == 0
    assert main(["diff", str(book), "--tenant", "acme", "--table", "teams"]) == 0
    capsys.readouterr()
    with world.target() as conn:
        conn.execute("UPDATE app.members SET name = 'renamed' WHERE tenant_id = 'acme' AND id = 7")
    assert main(["verify", str(book), "--tenant", "acme", "--table", "members"]) == 1
    assert "MISMATCH acme/members" in capsys.readouterr().out
    assert main(["diff", str(book), "--tenant", "acme", "--table", "members"]) == 1
    assert "changed: 1\n  id=7: name 'member 7' → 'renamed'" in capsys.readouterr().out


# No primary key, every column nullable, no unique key; rows that repeat and rows of NULLs only.
KEYLESS = """
CREATE TABLE notes (id int PRIMARY KEY, body text);
INSERT INTO notes SELECT g, 'n' || g FROM generate_series(1, 50) AS g;
CREATE TABLE events (at timestamptz, kind text, payload jsonb, note_id int REFERENCES notes);
INSERT INTO events VALUES
  ('2024-01-01 00:00+00', 'login', '{"ip": "10.0.0.1"}', 1),
  ('2024-01-01 00:00+00', 'login', '{"ip": "10.0.0.1"}', 1),
  (NULL, NULL, NULL, NULL),
  (NULL, NULL, NULL, NULL),
  (NULL, '', NULL, NULL);
INSERT INTO events SELECT timestamptz '2024-01-01' + (g % 97) * interval '1 min', 'k' || (g % 5),
    jsonb_build_object('g', g % 13), 1 + g % 50
FROM generate_series(1, {rows}) AS g;
"""


def sorted_rows(conn: psycopg.Connection[Any], table: str, tenant: str | None = None) -> list[str]:
    where = sql.SQL(" WHERE tenant_id = %s") if tenant else sql.SQL("")
    query = sql.SQL("SELECT ROW(at, kind, payload, note_id)::text AS r FROM {}{} ORDER BY r").format(
        sql.SQL(table), where
    )
    with conn.transaction():
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        return [r[0] for r in conn.execute(query, (tenant,) if tenant else ())]


def test_a_keyless_table_with_repeated_and_null_rows_arrives_exactly_and_diff_names_rows_by_content(
    database_factory: DatabaseFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """events has no key at all: it is copied whole, every repeated row as often as in the source;
    one duplicate gone or one value changed fails verify, and diff names the rows by their content."""
    world = custom_world(database_factory, tmp_path, KEYLESS.replace("{rows}", "2000"), ("acme",))
    book = playbook(tmp_path)
    result = api.run(book, environ=world.environ)
    assert result.ok, result.tenants[0].error
    with world.source("acme") as src, world.target() as dst:
        assert sorted_rows(src, "events") == sorted_rows(dst, "app.events", "acme")
    for name, value in world.environ.items():
        monkeypatch.setenv(name, value)
    assert main(["diff", str(book), "--tenant", "acme", "--table", "events"]) == 0
    capsys.readouterr()
    with world.target() as conn:  # one of the two identical logins, one of the two all-NULL rows
        conn.execute(
            "DELETE FROM app.events WHERE ctid IN (SELECT ctid FROM app.events WHERE tenant_id = 'acme'"
            " AND kind = 'login' LIMIT 1)"
        )
        conn.execute("UPDATE app.events SET kind = 'x' WHERE tenant_id = 'acme' AND kind = ''")
    assert main(["verify", str(book), "--tenant", "acme", "--table", "events"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH acme/events: row counts differ (rows 2,005 vs 2,004" in out, out
    assert main(["diff", str(book), "--tenant", "acme", "--table", "events"]) == 1
    out = capsys.readouterr().out
    assert "missing in target: 2\n" in out, out
    assert """  row=("2024-01-01 00:00:00+00",login,"{""ip"": ""10.0.0.1""}",1)\n""" in out
    assert '  row=(,"",,)\n' in out
    assert "extra in target: 1\n  row=(,x,,)\n" in out
    assert "2 missing, 1 extra, 0 changed" in out


def test_a_keyless_table_killed_mid_copy_is_all_or_nothing_and_the_next_run_is_exact(
    database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """kill -9 while the keyless table streams: none of its rows stay behind (one transaction with
    its checkpoint); the next run copies it whole again, and validation passes."""
    world = custom_world(database_factory, tmp_path, KEYLESS.replace("{rows}", "400000"), ("acme",))
    book = playbook(tmp_path)
    runner = start_run(world, book, "acme")
    deadline = time.monotonic() + 60
    with psycopg.connect(world.admin_dsn, autocommit=True) as mon:
        while time.monotonic() < deadline:
            row = mon.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                " AND query LIKE 'COPY %%events%%'",
                (application_name(runner.pid),),
            ).fetchone()
            if row and row[0]:
                break
            assert runner.proc.poll() is None, runner.output()
            time.sleep(0.005)
        else:
            raise AssertionError("the copy of events never started")
    time.sleep(0.05)  # into the stream
    os.kill(runner.pid, signal.SIGKILL)
    runner.proc.wait(10)
    assert sessions_gone(world, runner.pid)
    with world.target() as conn:
        (held,) = conn.execute("SELECT count(*) FROM app.events").fetchone()  # type: ignore[misc]
    marked = checkpoints(world, "acme").get("events")
    # All or nothing, and the checkpoint says which: none of its rows (what a kill mid-stream
    # leaves), or every one of them with a done checkpoint — never a part.
    assert (held, marked) == (0, None) or (held == 400_005 and marked is not None and marked[1]), (
        held,
        marked,
    )
    result = api.run(book, environ=world.environ)
    assert result.ok, result.tenants[0].error
    with world.source("acme") as src, world.target() as dst:
        assert sorted_rows(src, "events") == sorted_rows(dst, "app.events", "acme")
