"""`migrate diff` narrows a checksum mismatch down to the exact keys, by bisection of key ranges,
in both checksum modes, fetching keys and hashes of differing ranges only."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from databases import DatabaseFactory
from migrate import api
from migrate.checks.checksum import MODES, Mode, Side, table_shapes
from migrate.checks.diff import DiffResult, diff_table
from migrate.cli.app import main
from migrate.errors import CheckFailed
from pairs import build_pair
from world import DEMO, World

pytestmark = pytest.mark.tenants("acme")  # the world of the `copied` fixture


@pytest.fixture
def copied(world: World) -> World:
    """acme's world, migrated."""
    assert api.run(DEMO, environ=world.environ, tenants=["acme"]).ok
    return world


def changed_columns(result: DiffResult) -> dict[str, set[str]]:
    return {row.key[0]: {c.column for c in row.columns} for row in result.changed_rows}


CORRUPTIONS = {
    "changed-value": (
        "tasks",
        "UPDATE app.tasks SET title = title || '!' WHERE tenant_id = 'acme' AND id = 5",
        ([], [], {"5": {"title"}}),
    ),
    "missing-row": (
        "comments",
        "DELETE FROM app.comments WHERE tenant_id = 'acme' AND id = 7",
        (["7"], [], {}),
    ),
    "extra-row": (
        "organizations",
        "INSERT INTO app.organizations (tenant_id, id, name, plan, created_at)"
        " VALUES ('acme', 999, 'x', 'p', now())",
        ([], ["999"], {}),
    ),
    # The composite foreign keys refuse this move; an operator with FK triggers off can do it.
    "moved-tenant": (
        "comments",
        "SET session_replication_role = replica;"
        " UPDATE app.comments SET tenant_id = 'globex' WHERE tenant_id = 'acme' AND id = 9",
        (["9"], [], {}),
    ),
    "null-to-empty": (
        "attachments",
        "UPDATE app.attachments SET content = '' WHERE tenant_id = 'acme' AND id = 10",
        ([], [], {"10": {"content"}}),
    ),
    "bytea-byte": (
        "attachments",
        "UPDATE app.attachments SET content = set_byte(content, 7, (get_byte(content, 7) + 1) % 256)"
        " WHERE tenant_id = 'acme' AND id = 1",
        ([], [], {"1": {"content"}}),
    ),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_diff_locates_each_corruption_of_the_target_in_both_modes(copied: World, name: str) -> None:
    """A changed value, a missing, extra or moved row, NULL to '', a changed byte: the key and column."""
    table, corruption, (missing, extra, changed) = CORRUPTIONS[name]
    for mode in MODES:
        assert api.diff(DEMO, "acme", table, mode=mode, environ=copied.environ).equal
    with copied.target() as conn:
        conn.execute(corruption)
    for mode in MODES:
        result = api.diff(DEMO, "acme", table, mode=mode, environ=copied.environ)
        assert [k[0] for k in result.missing_keys] == missing, mode
        assert [k[0] for k in result.extra_keys] == extra, mode
        assert changed_columns(result) == changed, mode
        assert (result.missing, result.extra, result.changed) == (len(missing), len(extra), len(changed))


def test_diff_shows_null_and_empty_values_apart(copied: World) -> None:
    """The sampled changed row carries both values: NULL on the source, the empty bytea on the target."""
    with copied.target() as conn:
        conn.execute(CORRUPTIONS["null-to-empty"][1])
    (row,) = api.diff(DEMO, "acme", "attachments", environ=copied.environ).changed_rows
    (change,) = row.columns
    assert (change.column, change.source, change.target) == ("content", None, "\\x")


def test_diff_command_prints_capped_samples_with_totals_and_exits_1(
    copied: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """15 missing and 1 changed comment: 3 keys shown per kind, the totals, exit 1; equal data exits 0."""
    for key, value in copied.environ.items():
        monkeypatch.setenv(key, value)
    assert main(["diff", str(DEMO), "--tenant", "acme", "--table", "comments"]) == 0
    assert "source and target are equal" in capsys.readouterr().out
    with copied.target() as conn:
        conn.execute("DELETE FROM app.comments WHERE tenant_id = 'acme' AND id BETWEEN 101 AND 115")
        conn.execute("UPDATE app.comments SET body = 'edited' WHERE tenant_id = 'acme' AND id = 300")
    assert main(["diff", str(DEMO), "--tenant", "acme", "--table", "comments", "--sample", "3"]) == 1
    out = capsys.readouterr().out
    assert "missing in target: 15 (showing 3)\n  id=101\n  id=102\n  id=103\n" in out
    assert "changed: 1\n  id=300: body 'Comment 300 ✓ " in out
    assert "→ 'edited'" in out
    assert "15 missing, 0 extra, 1 changed;" in out


def test_diff_refuses_an_unknown_tenant_or_table(
    copied: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Input errors (exit 2) name the option and what is known instead."""
    for key, value in copied.environ.items():
        monkeypatch.setenv(key, value)
    assert main(["diff", str(DEMO), "--tenant", "acme", "--table", "task"]) == 2
    assert "--table: table 'task' is not among the tables" in capsys.readouterr().err
    assert main(["diff", str(DEMO), "--tenant", "acne", "--table", "tasks"]) == 2
    assert "did you mean 'acme'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bisection, in depth
@dataclass
class Tables:
    source: psycopg.Connection[Any]
    target: psycopg.Connection[Any]

    def diff(self, table: str, key: tuple[str, ...], mode: Mode, **kw: Any) -> DiffResult:
        (shape,) = table_shapes(self.source, "public", {table: key})
        return diff_table(
            Side(self.source, "public"),
            Side(self.target, "app", "tenant_id", "acme", label="target"),
            shape,
            mode,
            **kw,
        )


@pytest.fixture
def tables(database_factory: DatabaseFactory) -> Iterator[Tables]:
    source = psycopg.connect(database_factory.create("dsrc"), autocommit=True)
    target = psycopg.connect(database_factory.create("ddst"), autocommit=True)
    target.execute("CREATE SCHEMA app")
    try:
        yield Tables(source, target)
    finally:
        source.close()
        target.close()


EVENTS = """
CREATE TABLE {table} ({tenant_col} id bigint, account text, payload jsonb, amount numeric(12, 2),
                      note text, blob bytea, PRIMARY KEY ({tenant_key} id));
INSERT INTO {table}
SELECT {tenant} g, 'acct-' || g % 97, jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g % 3)),
       g * 0.25, CASE WHEN g % 5 = 0 THEN NULL ELSE 'note ' || g END,
       CASE WHEN g % 7 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END
FROM generate_series(1, 20000) AS g;
"""


@pytest.mark.parametrize("mode", MODES)
def test_bisection_finds_exact_keys_fetching_only_differing_ranges(tables: Tables, mode: Mode) -> None:
    """20,000 rows, 1,007 differences of every kind: exact totals and keys, few keys ever fetched."""
    tables.source.execute(EVENTS.format(table="events", tenant_col="", tenant_key="", tenant=""))
    tables.target.execute(
        EVENTS.format(
            table="app.events", tenant_col="tenant_id text,", tenant_key="tenant_id,", tenant="'acme',"
        )
    )
    tables.target.execute(
        "INSERT INTO app.events SELECT 'globex', id, account, payload, amount, note, blob"
        " FROM app.events WHERE tenant_id = 'acme'"
    )
    assert tables.diff("events", ("id",), mode).equal
    tables.target.execute(
        "UPDATE app.events SET note = '' WHERE tenant_id = 'acme' AND id = 12345;"  # NULL -> ''
        "UPDATE app.events SET payload = payload || '{\"n\": 0}' WHERE tenant_id = 'acme' AND id = 777;"
        "UPDATE app.events SET blob = set_byte(blob, 15, 0) WHERE tenant_id = 'acme' AND id = 19998;"
        "DELETE FROM app.events WHERE tenant_id = 'acme' AND (id = 5000 OR id BETWEEN 15001 AND 16000);"
        "UPDATE app.events SET tenant_id = 'initech' WHERE tenant_id = 'acme' AND id = 3;"
        "INSERT INTO app.events (tenant_id, id, account) VALUES ('acme', 0, 'x'), ('acme', 25000, 'y');"
        # The other tenant's rows differ everywhere and must not count.
        "UPDATE app.events SET note = 'changed' WHERE tenant_id = 'globex'"
    )
    result = tables.diff("events", ("id",), mode, sample=5, leaf_rows=50, fanout=4, bucket_rows=500)
    assert (result.missing, result.extra, result.changed) == (1002, 2, 3)
    assert (result.source_rows, result.target_rows) == (20000, 20000 - 1002 + 2)
    assert sorted(int(k[0]) for k in result.extra_keys) == [0, 25000]
    assert {k[0] for k in result.missing_keys} <= {"3", "5000", *map(str, range(15001, 16001))}
    assert len(result.missing_keys) == 5
    assert changed_columns(result) == {"777": {"payload"}, "12345": {"note"}, "19998": {"blob"}}
    assert result.levels >= 3, "the ranges were not bisected"
    # Keys and hashes of differing ranges only: a small fraction of the table, never whole rows.
    assert result.keys_fetched < 1000, result.keys_fetched


@pytest.mark.parametrize("mode", MODES)
def test_composite_text_keys_are_bisected_in_one_order_on_both_sides(tables: Tables, mode: Mode) -> None:
    """A (text, text) primary key with mixed case and unicode; NULL turned into '' in a text column."""
    create = (
        "CREATE TABLE {t} ({c} org text, member text, note text, PRIMARY KEY ({c2} org, member));"
        " INSERT INTO {t} SELECT {v} (ARRAY['alpha', 'Beta', 'gamma', 'Ωmega'])[1 + g % 4],"
        " 'm' || lpad(g::text, 4, '0'), CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' || g END"
        " FROM generate_series(1, 2000) AS g"
    )
    tables.source.execute(create.format(t="memberships", c="", c2="", v=""))
    tables.target.execute(
        create.format(t="app.memberships", c="tenant_id text,", c2="tenant_id,", v="'acme',")
    )
    tables.target.execute(
        "UPDATE app.memberships SET note = '' WHERE member = 'm0099';"  # g = 99: note was NULL
        "DELETE FROM app.memberships WHERE member = 'm0007';"
        "INSERT INTO app.memberships VALUES ('acme', 'Zeta', 'm9999', NULL)"
    )
    result = tables.diff("memberships", ("org", "member"), mode, leaf_rows=20, fanout=4, bucket_rows=100)
    assert result.missing_keys == (("Ωmega", "m0007"),)
    assert result.extra_keys == (("Zeta", "m9999"),)
    ((key, columns),) = [(r.key, r.columns) for r in result.changed_rows]
    assert key == ("Ωmega", "m0099")
    assert [(c.column, c.source, c.target) for c in columns] == [("note", None, "")]
    assert result.levels >= 2


@pytest.mark.parametrize("mode", MODES)
def test_diff_judges_equal_data_equal_whatever_its_spelling_and_the_session(
    database_factory: DatabaseFactory, mode: Mode
) -> None:
    """jsonb key order, numeric scale and time zones: no key reported, and a changed row names only
    the column that changed, not those spelled differently."""
    pair = build_pair(database_factory.create("esrc"), database_factory.create("edst"))
    try:
        (shape,) = table_shapes(pair.source, "public", {"things": ("id",)})
        source, target = pair.sides()
        assert diff_table(source, target, shape, mode).equal
        pair.target.execute("UPDATE app.things SET note = 'new' WHERE tenant_id = 'acme' AND id = 1")
        result = diff_table(source, target, shape, mode)
        assert changed_columns(result) == {"1": {"note"}}
    finally:
        pair.source.close()
        pair.target.close()


def test_diff_of_a_table_without_a_primary_key_says_to_verify_instead(tables: Tables) -> None:
    """Key ranges need a key: a clear refusal, not a wrong answer."""
    tables.source.execute("CREATE TABLE loose (a int)")
    tables.target.execute("CREATE TABLE app.loose (tenant_id text, a int)")
    with pytest.raises(CheckFailed, match="no primary key"):
        tables.diff("loose", (), "hash")


@pytest.mark.parametrize("mode", MODES)
def test_key_ranges_hold_the_same_keys_whatever_each_sides_collation(tables: Tables, mode: Mode) -> None:
    """A text key sorted "C" on the source and by ICU on the target: one order for ranges on both sides."""
    icu = tables.target.execute("SELECT collname FROM pg_collation WHERE collname = 'und-x-icu'").fetchone()
    if icu is None:
        pytest.skip("this server has no ICU collation")
    fill = (
        " SELECT {v} CASE WHEN g % 2 = 0 THEN 'k' ELSE 'K' END || lpad(g::text, 5, '0'), 'n' || g"
        " FROM generate_series(1, 3000) AS g"
    )
    tables.source.execute('CREATE TABLE tags (name text COLLATE "C" PRIMARY KEY, note text)')
    tables.source.execute("INSERT INTO tags" + fill.format(v=""))
    tables.target.execute(
        'CREATE TABLE app.tags (tenant_id text, name text COLLATE "und-x-icu", note text,'
        " PRIMARY KEY (tenant_id, name))"
    )
    tables.target.execute("INSERT INTO app.tags" + fill.format(v="'acme',"))
    assert tables.diff("tags", ("name",), mode, leaf_rows=20, fanout=4, bucket_rows=100).equal
    tables.target.execute("UPDATE app.tags SET note = 'x' WHERE name = 'k01234'")
    result = tables.diff("tags", ("name",), mode, leaf_rows=20, fanout=4, bucket_rows=100)
    assert (result.missing, result.extra, result.changed) == (0, 0, 1)
    assert changed_columns(result) == {"k01234": {"note"}}
