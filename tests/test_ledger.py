"""The audit ledger: append-only in the database, hash-chained, filtered, exported, free of secrets."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from structlog.testing import capture_logs

from migrate import api
from migrate.cli.app import main
from migrate.control import schema
from migrate.control.ledger import Entry, Ledger, entry_hash
from world import DEMO, ROOT, World

pytestmark = pytest.mark.tenants("acme", "globex", "initech")

CONTROL = "migrate_control"
TABLE = f"{CONTROL}.ledger"


def entry(i: int, **kw: Any) -> Entry:
    return Entry(**{"actor": "pytest", "host": "h", "playbook": "demo", "playbook_digest": "d" * 12,
                    "action": "applied", "outcome": "ok", "details": {"i": i}, **kw})  # fmt: skip


@pytest.fixture
def book(fresh_dsn: str) -> tuple[str, Ledger]:
    """A control schema at head with ten entries, and the ledger to read it."""
    schema.upgrade(fresh_dsn, CONTROL)
    ledger = Ledger(CONTROL)
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        for i in range(1, 11):
            ledger.append(conn, entry(i, tenant="acme" if i % 2 else "globex"))
    return fresh_dsn, ledger


def verify(dsn: str, anchor: str | None = None) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return Ledger(CONTROL).verify(conn, anchor)


def cli(monkeypatch: pytest.MonkeyPatch, dsn: str, *args: str) -> int:
    """Run a ledger command as a user would, with only the target's DSN set."""
    monkeypatch.setenv("MIGRATE_TARGET_DSN", dsn)
    return main(["ledger", *args])


def tamper(dsn: str, action: Callable[[psycopg.Connection[Any]], object]) -> None:
    """Act as a superuser who switches the append-only triggers off, edits, and switches them on."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")
        action(conn)
        for trigger in ("ledger_no_update_delete", "ledger_no_truncate"):
            conn.execute(f"ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER {trigger}")


def edit(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"UPDATE {TABLE} SET outcome = 'error', actor = 'mallory' WHERE seq = 4")


def delete(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"DELETE FROM {TABLE} WHERE seq = 5")


def swap(conn: psycopg.Connection[Any]) -> None:
    """Entries 4 and 6 trade places (their seq values)."""
    conn.execute(f"UPDATE {TABLE} SET seq = 1000 WHERE seq = 4")
    conn.execute(f"UPDATE {TABLE} SET seq = 4 WHERE seq = 6")
    conn.execute(f"UPDATE {TABLE} SET seq = 6 WHERE seq = 1000")


def forge(conn: psycopg.Connection[Any]) -> None:
    """A forged entry 5 with a correct hash over entry 4's; the later entries move up by one."""
    prev, at = conn.execute(f"SELECT hash, at FROM {TABLE} WHERE seq = 4").fetchone()  # type: ignore[misc]
    fake = entry(99, tenant="acme", action="approved")
    at = at + timedelta(microseconds=1)
    conn.execute(f"UPDATE {TABLE} SET seq = seq + 1000 WHERE seq >= 5")
    conn.execute(f"UPDATE {TABLE} SET seq = seq - 999 WHERE seq >= 1000")
    conn.execute(
        f"INSERT INTO {TABLE} (seq, at, actor, host, playbook, playbook_digest, tenant, action, outcome,"
        " details, prev_hash, hash) VALUES (5, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (at, fake.actor, fake.host, fake.playbook, fake.playbook_digest, fake.tenant, fake.action,
         fake.outcome, json.dumps(fake.details), prev, entry_hash(prev, 5, at, fake)),
    )  # fmt: skip


def rehash(conn: psycopg.Connection[Any]) -> None:
    """Entry 4 edited and its hash recomputed, as anyone who read the code could."""
    conn.execute(f"UPDATE {TABLE} SET actor = 'mallory' WHERE seq = 4")
    rewrite_from(conn, 4, through=4)


def rewrite_from(conn: psycopg.Connection[Any], first: int, through: int | None = None) -> None:
    """Recompute the hashes of entries ``first``..``through`` (default: to the end) as a forger would."""
    prev = conn.execute(f"SELECT hash FROM {TABLE} WHERE seq = %s", (first - 1,)).fetchone()[0]  # type: ignore[index]
    for rec in list(Ledger(CONTROL).entries(conn)):
        if rec.seq < first or (through is not None and rec.seq > through):
            continue
        digest = entry_hash(prev, rec.seq, rec.at, rec.entry)
        conn.execute(f"UPDATE {TABLE} SET prev_hash = %s, hash = %s WHERE seq = %s", (prev, digest, rec.seq))
        prev = digest


# ----------------------------------------------------------------------------- the database refuses
def test_the_database_refuses_edits_even_with_replication_triggers_off(book: tuple[str, Ledger]) -> None:
    """UPDATE, DELETE and TRUNCATE are refused even for a superuser under session_replication_role=replica."""
    dsn, _ = book
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in (
            f"UPDATE {TABLE} SET outcome = 'ok'",
            f"DELETE FROM {TABLE}",
            f"TRUNCATE {TABLE}",
        ):
            with conn.transaction():
                conn.execute("SET LOCAL session_replication_role = replica")
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                    conn.execute(statement)
        assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == (10,)


def test_ledger_chain_verifies_after_a_run_and_the_database_refuses_edits(world: World) -> None:
    """The ledger verifies after a run; UPDATE and DELETE are refused by the database itself."""
    api.run(DEMO, environ=world.environ)
    report = api.ledger(DEMO, environ=world.environ)
    assert report.why is None and report.checked == len(report.entries) > 10
    with world.target() as conn:
        for statement in (
            "UPDATE migrate_control.ledger SET outcome = 'ok'",
            "DELETE FROM migrate_control.ledger",
            "TRUNCATE migrate_control.ledger",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)


def test_ledger_verify_names_an_entry_edited_behind_the_trigger_after_a_run(world: World) -> None:
    """After a real run, a superuser who switches the trigger off to edit an entry is caught at it."""
    api.run(DEMO, environ=world.environ, tenants=["acme"])
    tamper(world.target_dsn, lambda c: c.execute(f"UPDATE {TABLE} SET actor = 'mallory' WHERE seq = 3"))
    report = api.ledger(DEMO, environ=world.environ)
    assert report.broken_at == 3 and report.why and "changed" in report.why
    assert report.failure is not None and report.failure.exit_code == 1


def test_warnings_name_a_trigger_that_is_off_or_skipped_in_replica_mode(book: tuple[str, Ledger]) -> None:
    """The ledger says when its trigger is disabled, or (downgraded to 0001) fires in origin mode only."""
    dsn, ledger = book

    def warnings() -> tuple[str, ...]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return ledger.privilege_warnings(conn)

    assert [w for w in warnings() if "trigger" in w and "superuser" not in w] == []
    schema.downgrade(dsn, CONTROL, "0001")
    assert sum("not ENABLE ALWAYS" in w for w in warnings()) == 2
    schema.upgrade(dsn, CONTROL)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER ledger_no_truncate")
    assert "the ledger's append-only trigger ledger_no_truncate is disabled" in warnings()
    assert verify(dsn).intact


# ----------------------------------------------------------------------------- verify names the break
@pytest.mark.parametrize(
    ("action", "broken_at", "says"),
    [
        (edit, 4, "entry 4 was changed after it was written"),
        (delete, 5, "entry 5 is missing"),
        (swap, 4, "entry 4 is out of order"),
        (forge, 5, "entry 5 was inserted"),
        (rehash, 4, "entry 4 was rewritten and its hash recomputed"),
    ],
    ids=["edited", "deleted", "reordered", "forged-in-the-middle", "edited-and-rehashed"],
)
def test_verify_names_the_entry_a_superuser_tampered_with(
    book: tuple[str, Ledger],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    action: Callable[[psycopg.Connection[Any]], None],
    broken_at: int,
    says: str,
) -> None:
    """Each tampering behind the trigger makes `ledger verify` exit 1 naming the entry and what happened."""
    dsn, _ = book
    assert cli(monkeypatch, dsn, "verify", str(DEMO)) == 0
    capsys.readouterr()
    tamper(dsn, action)
    found = verify(dsn)
    assert (found.broken_at, found.checked) == (broken_at, broken_at - 1)
    assert found.why is not None and found.why.startswith(says), found.why
    assert cli(monkeypatch, dsn, "verify", str(DEMO)) == 1
    err = capsys.readouterr().err
    assert f"ledger broken at entry {broken_at}: {says}" in err


def test_an_anchor_catches_a_chain_rewritten_with_recomputed_hashes(
    book: tuple[str, Ledger], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rewriting entries 3.. and every hash after them fools the chain, not a hash published before."""
    dsn, _ = book
    assert cli(monkeypatch, dsn, "verify", str(DEMO)) == 0
    out = capsys.readouterr().out
    head = re.search(r"head: entry 10 ([0-9a-f]{64})", out)
    assert head, out
    anchor = head[1]
    assert cli(monkeypatch, dsn, "verify", str(DEMO), "--anchor", anchor) == 0
    assert "anchor found at entry 10: nothing up to it has changed" in capsys.readouterr().out

    def rewrite(conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"UPDATE {TABLE} SET outcome = 'error' WHERE seq = 3")
        rewrite_from(conn, 3)

    tamper(dsn, rewrite)
    assert verify(dsn).intact, "a consistent rewrite passes the chain alone: that is what anchors are for"
    assert verify(dsn, anchor).anchor_missing
    assert cli(monkeypatch, dsn, "verify", str(DEMO), "--anchor", anchor) == 1
    assert f"anchor {anchor} is not in the ledger" in capsys.readouterr().err
    # An anchor published before the rewritten entry still holds.
    with psycopg.connect(dsn) as conn:
        second = conn.execute(f"SELECT hash FROM {TABLE} WHERE seq = 2").fetchone()[0]  # type: ignore[index]
    assert cli(monkeypatch, dsn, "verify", str(DEMO), "--anchor", second) == 0
    assert cli(monkeypatch, dsn, "verify", str(DEMO), "--anchor", anchor[:12]) == 2


def test_details_hash_the_same_after_the_database_normalises_them(fresh_dsn: str) -> None:
    """Numbers jsonb rewrites (1e20, 1e-7), nesting and unicode still verify after a round trip."""
    schema.upgrade(fresh_dsn, CONTROL)
    ledger = Ledger(CONTROL)
    details = {"big": 1e20, "small": 1e-7, "f": 0.1 + 0.2, "n": [1.50, "ü", {"b": None, "a": True}]}
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        written = ledger.append(conn, entry(1, details=details))
        ledger.append(conn, entry(2))
        (read, _second) = list(ledger.entries(conn))
    assert read.hash == written.hash and read.entry == written.entry
    assert verify(fresh_dsn).intact


# ----------------------------------------------------------------------------- concurrency
def test_eight_concurrent_writers_never_fork_the_chain(fresh_dsn: str) -> None:
    """8 writers, each on its own connection, append 500 entries each: one chain, 1..4000, in order."""
    schema.upgrade(fresh_dsn, CONTROL)
    ledger = Ledger(CONTROL)
    writers, each = 8, 500
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def write(w: int) -> None:
        try:
            with psycopg.connect(fresh_dsn, autocommit=True) as conn:
                # What is tested is the chain, not durability: no fsync per commit keeps it ~2x faster.
                conn.execute("SET synchronous_commit = off")
                start.wait()
                for i in range(each):
                    ledger.append(conn, entry(i, tenant=f"w{w}"))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    assert not errors, errors[:3]
    found = verify(fresh_dsn)
    assert found.intact and found.checked == found.head_seq == writers * each, found
    with psycopg.connect(fresh_dsn) as conn:
        order = conn.execute(f"SELECT tenant, (details->>'i')::int FROM {TABLE} ORDER BY seq").fetchall()
    for w in range(writers):
        assert [i for t, i in order if t == f"w{w}"] == list(range(each))
    print(f"\n8 x 500 appends: {seconds:.1f} s")


# ----------------------------------------------------------------------------- show and export
def test_show_filters_by_tenant_run_and_since(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--tenant, --run (as `run` prints it) and --since select entries; the whole chain is still checked."""
    first = api.run(DEMO, environ=world.environ, tenants=["acme"])
    second = api.run(DEMO, environ=world.environ, tenants=["globex"])
    everything = api.ledger(DEMO, environ=world.environ)
    acme = api.ledger(DEMO, environ=world.environ, tenant="acme")
    assert acme.entries and {r.entry.tenant for r in acme.entries} == {"acme"}
    assert acme.checked == everything.checked == len(everything.entries)
    run2 = api.ledger(DEMO, environ=world.environ, run=str(second.run_id)[:8])
    assert run2.entries and {r.entry.run_id for r in run2.entries} == {second.run_id}
    assert api.ledger(DEMO, environ=world.environ, run=str(first.run_id), tenant="globex").entries == ()
    assert len(api.ledger(DEMO, environ=world.environ, since="1h").entries) == len(everything.entries)
    later = everything.entries[-1].at + timedelta(seconds=1)
    assert api.ledger(DEMO, environ=world.environ, since=later.isoformat()).entries == ()

    for key, value in world.environ.items():
        monkeypatch.setenv(key, value)
    assert main(["ledger", "show", str(DEMO), "--run", str(second.run_id)[:8], "--since", "2h"]) == 0
    out = capsys.readouterr()
    assert "globex" in out.out and "acme" not in out.out and "chain intact" in out.out
    assert "is a superuser" in out.err  # the tests connect as one: the ledger says what that means
    for bad in (["--since", "yesterday"], ["--run", "not-a-run!"]):
        assert main(["ledger", "show", str(DEMO), *bad]) == 2
        assert "hint:" in capsys.readouterr().err


def test_export_writes_canonical_json_lines_a_siem_can_verify_alone(
    book: tuple[str, Ledger],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """Each line is canonical JSON with seq, at, prev_hash and hash; SHA-256 alone re-checks the chain."""
    dsn, _ = book
    out = tmp_path / "ledger.jsonl"
    assert cli(monkeypatch, dsn, "export", str(DEMO), "--format", "jsonl", "--out", str(out)) == 0
    assert "exported 10 entries" in capsys.readouterr().err
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 10 and not list(tmp_path.glob("*.partial"))
    prev = "0" * 64
    for n, line in enumerate(lines, 1):
        obj = json.loads(line)
        assert line == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert obj["seq"] == n and obj["prev_hash"] == prev and obj["at"].endswith("+00:00")
        body = {k: v for k, v in obj.items() if k not in ("prev_hash", "hash")}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(f"{prev}\n{canonical}".encode()).hexdigest() == obj["hash"]
        prev = obj["hash"]

    assert cli(monkeypatch, dsn, "export", str(DEMO), "--tenant", "globex") == 0
    streamed = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["seq"] for x in streamed] == [2, 4, 6, 8, 10]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert cli(monkeypatch, dsn, "export", str(DEMO), "--since", future) == 0
    assert capsys.readouterr().out == ""
    assert cli(monkeypatch, dsn, "export", str(DEMO), "--format", "csv") == 2

    tamper(dsn, edit)
    assert cli(monkeypatch, dsn, "export", str(DEMO), "--out", str(out)) == 1, (
        "a broken chain fails the export"
    )
    assert len(out.read_text().splitlines()) == 10, "but everything is exported, for the investigation"
    assert "ledger broken at entry 4" in capsys.readouterr().err


# ----------------------------------------------------------------------------- who may write
def readme_grants(runner: str, owner: str) -> str:
    """The statements README.md gives to hand the ledger to another owner, with these role names."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", readme, flags=re.S)
    block = next(b for b in blocks if "ledger OWNER TO" in b)
    return re.sub(r"\bmigrate_owner\b", owner, re.sub(r"\bmigrator\b", runner, block))


def drop_roles(world: World, *roles: str) -> None:
    """Drop what the roles own and were granted in the world's databases, then the roles.

    DROP OWNED, not DROP DATABASE: dropping a database forces a checkpoint, seconds on a busy server.
    """
    with psycopg.connect(world.admin_dsn, autocommit=True) as conn:
        found = [
            r for r in roles if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (r,)).fetchone()
        ]
    if not found:
        return
    names = sql.SQL(", ").join(sql.Identifier(r) for r in found)
    dsns = [world.target_dsn] + [world.source_dsn(t) for t in world.tenants]
    for dsn in dsns:
        try:
            conn = psycopg.connect(dsn, autocommit=True)
        except psycopg.OperationalError:
            continue  # a database the test dropped
        with conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(names))
    with psycopg.connect(world.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(names))


@pytest.fixture
def runner_roles(world: World) -> Iterator[tuple[str, str]]:
    """A migrator role (BYPASSRLS, CREATE on the target, SELECT on the sources) and an owner's name."""
    tag = uuid.uuid4().hex[:8]
    runner, owner = f"tm_runner_{tag}", f"tm_owner_{tag}"
    with psycopg.connect(world.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN BYPASSRLS").format(sql.Identifier(runner)))
    with world.target() as conn:
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(str(conninfo_to_dict(world.target_dsn)["dbname"])), sql.Identifier(runner)
            )
        )
    for tenant in world.tenants:
        with world.source(tenant) as conn:
            conn.execute(
                sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(runner))
            )
    try:
        yield runner, owner
    finally:
        drop_roles(world, runner, owner)


def as_role(dsn: str, role: str) -> str:
    return make_conninfo(dsn, user=role)


def test_the_documented_runner_role_holds_only_insert_and_select(
    world: World, runner_roles: tuple[str, str]
) -> None:
    """With README's grants, the runner migrates and appends, but cannot edit, drop or unguard the ledger."""
    runner, owner = runner_roles
    environ = {
        **world.environ,
        "MIGRATE_TARGET_DSN": as_role(world.target_dsn, runner),
        "MIGRATE_SOURCE_DSN_TEMPLATE": as_role(world.environ["MIGRATE_SOURCE_DSN_TEMPLATE"], runner),
    }
    assert api.run(DEMO, environ=environ, tenants=["acme"]).ok
    as_owner = api.ledger(DEMO, environ=environ)
    assert any("owns the ledger table" in w for w in as_owner.warnings), as_owner.warnings

    with world.target() as conn:  # a superuser applies README's statements
        conn.execute(readme_grants(runner, owner))
    assert api.run(DEMO, environ=environ).ok, "the runner still runs: it migrates and appends"
    report = api.ledger(DEMO, environ=environ)
    assert report.why is None and report.warnings == () and report.checked > 10

    with psycopg.connect(environ["MIGRATE_TARGET_DSN"], autocommit=True) as conn:
        for statement in (
            f"UPDATE {TABLE} SET outcome = 'ok'",
            f"DELETE FROM {TABLE}",
            f"TRUNCATE {TABLE}",
            f"ALTER TABLE {TABLE} DISABLE TRIGGER USER",
            f"DROP TABLE {TABLE}",
            f"CREATE OR REPLACE FUNCTION {CONTROL}.ledger_refuse_change() RETURNS trigger"
            " LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        conn.execute(f"GRANT UPDATE, DELETE ON {TABLE} TO {runner}")  # only a warning: nothing granted
        assert conn.execute(
            f"SELECT has_table_privilege('{TABLE}', 'UPDATE'), has_table_privilege('{TABLE}', 'DELETE')"
        ).fetchone() == (False, False)


# ----------------------------------------------------------------------------- no secrets
def secret_dsns(world: World, role: str, password: str) -> tuple[str, str]:
    """The target as key=value and the source template as a URL, both carrying the password."""
    params = conninfo_to_dict(world.admin_dsn)
    host, port = params.get("host", "127.0.0.1"), params.get("port", 5432)
    target = make_conninfo(world.target_dsn, user=role, password=password)
    template = f"postgresql://{role}:{password}@{host}:{port}/{world.prefix}{{tenant}}"
    return target, template


@pytest.fixture
def login_role(world: World) -> Iterator[tuple[str, str]]:
    """A login role WITH PASSWORD (trust auth ignores it; the DSNs carry it anyway)."""
    role, password = f"tm_secret_{uuid.uuid4().hex[:8]}", f"Pw{uuid.uuid4().hex}"
    with psycopg.connect(world.admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    try:
        yield role, password
    finally:
        drop_roles(world, role)


def test_no_password_or_token_reaches_the_ledger_the_output_or_the_logs(
    world: World,
    login_role: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A run with a DSN password and Unleash tokens set, and a failing tenant: neither appears anywhere."""
    role, password = login_role
    target, template = secret_dsns(world, role, password)
    token = f"*:production.{uuid.uuid4().hex}"
    secrets = {
        "MIGRATE_TARGET_DSN": target,
        "MIGRATE_SOURCE_DSN_TEMPLATE": template,
        "UNLEASH_API_TOKEN": token,
        "UNLEASH_ADMIN_TOKEN": token,
        "MIGRATE_UNLEASH_TOKEN": token,
    }
    environ = {**world.environ, **secrets}
    with capture_logs() as logs:  # raw events, before any redaction
        assert api.run(DEMO, environ=environ, tenants=["acme"]).ok
        shown = [repr(api.ledger(DEMO, environ=environ)), repr(api.status(DEMO, environ=environ))]

    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    with psycopg.connect(world.admin_dsn, autocommit=True) as conn:  # initech's source goes away
        conn.execute(
            sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(f"{world.prefix}initech"))
        )
    # A source database that does not exist is a setting to fix: exit 2, as for the target.
    assert main(["run", str(DEMO), "--jobs", "2"]) == 2
    assert main(["status", str(DEMO), "--json"]) == 0
    assert main(["ledger", "show", str(DEMO)]) == 0
    assert main(["ledger", "verify", str(DEMO)]) == 0
    assert main(["ledger", "export", str(DEMO), "--out", str(tmp_path / "l.jsonl")]) == 0
    printed = capsys.readouterr()
    assert "initech" in printed.out and "does not exist" in printed.out + printed.err  # the failure is told

    with world.target() as conn:
        stored = [
            str(row)
            for table in ("ledger", "runs", "step_state", "checkpoints")
            for row in conn.execute(
                sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(CONTROL, table))
            )
        ]
    assert len(stored) > 20
    haystacks = {
        "control tables": "\n".join(stored),
        "stdout": printed.out,
        "stderr (logs, errors)": printed.err,
        "captured log events": repr(logs),
        "api results": "\n".join(shown),
        "export": (tmp_path / "l.jsonl").read_text(),
    }
    for where, text in haystacks.items():
        for secret in (password, token, token.split(".")[1]):
            assert secret not in text, f"{secret[:6]}… found in {where}"


def test_a_malformed_dsn_is_an_input_error_that_does_not_echo_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """libpq quotes the piece of a DSN it cannot parse; that piece, the password here, is not shown."""
    password = "pa%zz" + uuid.uuid4().hex[:8]
    monkeypatch.setenv("MIGRATE_TARGET_DSN", f"postgresql://u:{password}@127.0.0.1/db")
    assert main(["ledger", "verify", str(DEMO)]) == 2
    err = capsys.readouterr().err
    assert "MIGRATE_TARGET_DSN" in err and "not a valid connection string" in err
    assert password not in err and password[5:] not in err
