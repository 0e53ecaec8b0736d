"""The ledger holds against a determined insider: every tampering exits 1 naming the entry or the range.

Issue 16. One module-wide world runs the demo playbook with a ledger key and a head
file (a run, a rollback across the cut-over, a run again), so the ledger holds real
entries of every kind, each signed. Every test gets a copy of that target (CREATE
DATABASE … TEMPLATE), a head file of its own with the copy's head published as the
runner would after its last run, tampers the way an insider can, and runs
`migrate ledger verify` as a user would.

Tampering behind the trigger is done as a superuser (who can switch it off); forging
appends as a role that holds nothing but USAGE, SELECT and INSERT — created with a
unique name and dropped after the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from databases import DatabaseFactory
from migrate import api
from migrate.cli.app import main
from migrate.control import head as ledger_head
from migrate.control.ledger import Entry, Ledger, entry_hash
from migrate.control.signing import signer_from_pem
from world import DEMO, ROOT, make_world

CONTROL = "migrate_control"
TABLE = f"{CONTROL}.ledger"


def playbook_text(ledger: str) -> str:
    """The demo playbook with a ledger block (paths made absolute: it is written elsewhere)."""
    text = DEMO.read_text().replace("../flags/demo.json", str(ROOT / "flags" / "demo.json"))
    return text + ("\nledger:\n" + ledger if ledger else "")


@dataclass(frozen=True)
class Built:
    template: str  # the target database, after run, rollback, run
    key: Path
    public: Path
    environ: dict[str, str]


@pytest.fixture(scope="module")
def built(session_databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """The demo playbook run with a ledger key and a head file, rolled back across the cut-over, run again;
    its databases go when the module ends."""
    database_factory = session_databases.scoped()
    try:
        yield _build(database_factory, tmp_path_factory)
    finally:
        database_factory.close()


def _build(database_factory: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("signed")
    key, public, _key_id = api.ledger_keygen(tmp / "ledger.pem")
    world = make_world(database_factory, tmp, tenants=(("acme", 1), ("globex", 1), ("initech", 1)))
    playbook = tmp / "demo.yaml"
    playbook.write_text(playbook_text(f"  signing_key_file: {key}\n  head_file: {tmp / 'head.jsonl'}\n"))
    env = world.environ
    assert api.run(playbook, environ=env).ok
    api.rollback(playbook, "globex", "pre-copy", discard_writes_since_cutover=True, environ=env)
    assert api.run(playbook, environ=env).ok
    report = api.ledger(playbook, environ=env)
    assert report.failure is None and report.signed == report.total > 30, report.failure
    return Built(str(conninfo_to_dict(world.target_dsn)["dbname"]), key, public, env)


@dataclass(frozen=True)
class Ledgered:
    dsn: str
    playbook: Path  # signing key and head file
    head: Path
    built: Built

    def environ(self) -> dict[str, str]:
        return {**self.built.environ, "MIGRATE_TARGET_DSN": self.dsn}

    def last(self) -> int:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(f"SELECT max(seq) FROM {TABLE}").fetchone()
        assert row is not None
        return int(row[0])


def publish(dsn: str, path: Path, key: Path) -> None:
    """What the runner does after every run: append the ledger's head, signed, to the head file."""
    with psycopg.connect(dsn) as conn:
        head = ledger_head.current(conn, CONTROL, "run")
    assert head is not None
    ledger_head.publish(path, head, signer_from_pem(key.read_bytes(), str(key)))


@pytest.fixture
def ledgered(built: Built, database_factory: DatabaseFactory, tmp_path: Path) -> Iterator[Ledgered]:
    """A copy of the built target, its head published to a head file of this test's own."""
    dsn = database_factory.create("ledger", template=built.template)
    head = tmp_path / "head.jsonl"
    playbook = tmp_path / "demo.yaml"
    playbook.write_text(playbook_text(f"  signing_key_file: {built.key}\n  head_file: {head}\n"))
    publish(dsn, head, built.key)
    yield Ledgered(dsn, playbook, head, built)
    database_factory.drop(str(conninfo_to_dict(dsn)["dbname"]))


@dataclass(frozen=True)
class Said:
    code: int
    out: str
    err: str

    def __iter__(self) -> Iterator[Any]:
        return iter((self.code, self.err))


def verify(
    ledgered: Ledgered,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
    playbook: Path | None = None,
) -> Said:
    """`migrate ledger verify` as a user runs it: exit code, stdout, stderr (unpacks to code, stderr)."""
    for key, value in ledgered.environ().items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    code = main(["ledger", "verify", str(playbook or ledgered.playbook), *args])
    said = capsys.readouterr()
    return Said(code, said.out, said.err)


def behind_the_trigger(dsn: str, action: Callable[[psycopg.Connection[Any]], object]) -> None:
    """A superuser switches the append-only triggers off, tampers, and switches them on again."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")
        action(conn)
        conn.execute(f"ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER ledger_no_update_delete")
        conn.execute(f"ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER ledger_no_truncate")


@pytest.fixture
def inserter(ledgered: Ledgered, database_factory: DatabaseFactory) -> Iterator[str]:
    """A DSN as a role that may only read and append to the ledger (USAGE, SELECT, INSERT): no key."""
    role = f"tm_forger_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(role)
    with psycopg.connect(database_factory.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(ident))
    with psycopg.connect(ledgered.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA migrate_control TO {}").format(ident))
        conn.execute(sql.SQL("GRANT SELECT, INSERT ON migrate_control.ledger TO {}").format(ident))
    try:
        yield make_conninfo(ledgered.dsn, user=role)
    finally:
        with psycopg.connect(ledgered.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        with psycopg.connect(database_factory.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(ident))


def append_as(dsn: str, actor: str, *, backdate: timedelta = timedelta(0)) -> int:
    """Append an entry with a correct hash over the last one, as whoever ``dsn`` connects as."""
    fake = Entry(actor=actor, host="laptop", playbook="demo", playbook_digest="0" * 12,
                 action="approved", outcome="ok", wave="main", details={"wave": "main"})  # fmt: skip
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        row = conn.execute(f"SELECT seq, hash, at FROM {TABLE} ORDER BY seq DESC LIMIT 1").fetchone()
        assert row is not None
        seq, prev, last_at = row[0] + 1, row[1], row[2]
        at = last_at + timedelta(milliseconds=5) - backdate
        conn.execute(
            f"INSERT INTO {TABLE} (seq, at, actor, host, playbook, playbook_digest, wave, action, outcome,"
            " details, prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)",
            (seq, at, fake.actor, fake.host, fake.playbook, fake.playbook_digest, fake.wave, fake.action,
             fake.outcome, '{"wave": "main"}', prev, entry_hash(prev, seq, at, fake)),
        )  # fmt: skip
    return int(seq)


def rewrite_from(conn: psycopg.Connection[Any], first: int) -> None:
    """Recompute every hash from entry ``first`` on, as anyone who read the code could (no key)."""
    prev = conn.execute(f"SELECT hash FROM {TABLE} WHERE seq = %s", (first - 1,)).fetchone()[0]  # type: ignore[index]
    for rec in list(Ledger(CONTROL).entries(conn)):
        if rec.seq < first:
            continue
        digest = entry_hash(prev, rec.seq, rec.at, rec.entry)
        conn.execute(f"UPDATE {TABLE} SET prev_hash = %s, hash = %s WHERE seq = %s", (prev, digest, rec.seq))
        prev = digest


# ----------------------------------------------------------------------------- no false alarm
def test_a_signed_ledger_after_run_rollback_and_run_verifies_with_its_head(
    ledgered: Ledgered, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run, rollback across the cut-over, run: every entry signed, history complete, the head holds."""
    said = verify(ledgered, monkeypatch, capsys)
    assert said.code == 0, said.err
    assert "forgery" not in said.err and "warning: no head" not in said.err
    assert "chain intact" in said.out and "entries signed with a trusted key, every one checks" in said.out
    assert "published head holds: entry" in said.out


# ----------------------------------------------------------------------------- the tamper suite
def test_edit_is_named_by_chain_and_signature(
    ledgered: Ledgered, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry edited behind the trigger: the chain breaks there and its signature no longer covers it."""
    behind_the_trigger(
        ledgered.dsn, lambda c: c.execute(f"UPDATE {TABLE} SET outcome = 'error' WHERE seq = 5")
    )
    code, err = verify(ledgered, monkeypatch, capsys)
    assert code == 1
    assert "ledger broken at entry 5: entry 5 was changed after it was written" in err
    assert (
        "entry 5 (actor pytest" in err
        and "its content no longer matches the hash its signature covers" in err
    )


def test_delete_in_the_middle_is_named(
    ledgered: Ledgered, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry deleted from the middle: named as missing."""
    behind_the_trigger(ledgered.dsn, lambda c: c.execute(f"DELETE FROM {TABLE} WHERE seq = 7"))
    code, err = verify(ledgered, monkeypatch, capsys)
    assert code == 1 and "ledger broken at entry 7: entry 7 is missing" in err


def test_delete_from_the_tail_is_caught_by_the_control_state_and_the_published_head(
    ledgered: Ledgered, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last 3 entries deleted: the chain still verifies, but the history and the head name the gap."""
    last = ledgered.last()
    behind_the_trigger(ledgered.dsn, lambda c: c.execute(f"DELETE FROM {TABLE} WHERE seq > %s", (last - 3,)))
    code, err = verify(ledgered, monkeypatch, capsys)
    assert code == 1
    assert f"entries after entry {last - 3} (the last, at" in err and "('migrate run'): finished at" in err
    assert f"entries {last - 2} to {last} are missing (deleted from its end)" in err


def test_reorder_is_named(
    ledgered: Ledgered, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Entries 4 and 6 swap their places: named as out of order."""

    def swap(conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"UPDATE {TABLE} SET seq = 100000 WHERE seq = 4")
        conn.execute(f"UPDATE {TABLE} SET seq = 4 WHERE seq = 6")
        conn.execute(f"UPDATE {TABLE} SET seq = 6 WHERE seq = 100000")

    behind_the_trigger(ledgered.dsn, swap)
    code, err = verify(ledgered, monkeypatch, capsys)
    assert code == 1 and "ledger broken at entry 4: entry 4 is out of order" in err


def test_a_chain_rewritten_with_recomputed_hashes_is_named_entry_by_entry(
    ledgered: Ledgered, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Entry 4 edited and every hash after it recomputed: the chain holds, no signature does, nor the head."""
    last = ledgered.last()

    def rewrite(conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"UPDATE {TABLE} SET actor = 'mallory' WHERE seq = 4")
        rewrite_from(conn, 4)

    behind_the_trigger(ledgered.dsn, rewrite)
    code, err = verify(ledgered, monkeypatch, capsys)
    assert code == 1 and "ledger broken at entry" not in err, "the chain itself is consistent"
    assert "entry 4 (actor mallory" in err
    for seq in range(5, last + 1):
        assert f"entry {seq} (actor " in err and f"{seq} (actor" in err
    assert err.count("its signature does not check") == last - 3
    assert f"entry {last} has another hash now" in err


def test_an_append_forged_by_a_role_with_insert_only_names_the_entry_and_its_actor(
    ledgered: Ledgered, inserter: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A role with only SELECT and INSERT appends as alice with a correct hash: unsigned, named with alice."""
    with (
        psycopg.connect(inserter, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(f"UPDATE {TABLE} SET outcome = 'ok' WHERE seq = 1")
    forged = append_as(inserter, "alice")
    code, err = verify(ledgered, monkeypatch, capsys)
    assert code == 1
    assert f"entry {forged} (actor alice" in err and "is not signed, though every entry from 1 on is" in err


def test_without_a_key_a_forged_append_passes_but_forgery_is_said_not_excluded(
    ledgered: Ledgered, inserter: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    """No key: the chain cannot see the forgery, and verify says so; --require-signatures then fails."""
    append_as(inserter, "alice")
    keyless = tmp_path / "keyless.yaml"
    keyless.write_text(playbook_text(""))
    code, err = verify(ledgered, monkeypatch, capsys, playbook=keyless)
    assert code == 0
    assert "forgery by a database role that may INSERT into the ledger is not excluded" in err
    code, err = verify(ledgered, monkeypatch, capsys, "--require-signatures", playbook=keyless)
    assert code == 1 and "forgery by a database role that may INSERT into the ledger is not excluded" in err


def test_a_backdated_append_is_named_with_or_without_a_key(
    ledgered: Ledgered, inserter: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    """An append dated a day before the last entry: named as backdated, and as unsigned with a key."""
    forged = append_as(inserter, "alice", backdate=timedelta(days=1))
    code, err = verify(ledgered, monkeypatch, capsys)
    assert code == 1
    assert f"entry {forged} (actor alice) is dated" in err and f"before entry {forged - 1}" in err
    assert "backdated" in err and "is not signed" in err
    keyless = tmp_path / "keyless.yaml"
    keyless.write_text(playbook_text(""))
    code, err = verify(ledgered, monkeypatch, capsys, playbook=keyless)
    assert code == 1 and f"entry {forged} (actor alice) is dated" in err


def test_truncate_is_caught_by_the_control_state_and_the_head(
    ledgered: Ledgered, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """TRUNCATE behind the trigger: no more 'no entries yet' — the runs and the head name what is gone."""
    last = ledgered.last()
    behind_the_trigger(ledgered.dsn, lambda c: c.execute(f"TRUNCATE {TABLE}"))
    code, err = verify(ledgered, monkeypatch, capsys)
    assert code == 1
    assert "the ledger holds no entries, but the control schema records" in err and "TRUNCATE" in err
    assert f"entries 1 to {last} are missing" in err


# ----------------------------------------------------------------------------- each check on its own
def test_truncation_is_caught_without_any_anchor_or_head(
    ledgered: Ledgered, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No key, no head file, no anchor: the control state alone catches a cut tail and a TRUNCATE."""
    bare = tmp_path / "bare.yaml"
    bare.write_text(playbook_text(""))
    last = ledgered.last()
    behind_the_trigger(ledgered.dsn, lambda c: c.execute(f"DELETE FROM {TABLE} WHERE seq > %s", (last - 2,)))
    code, err = verify(ledgered, monkeypatch, capsys, playbook=bare)
    assert code == 1 and f"entries after entry {last - 2} (the last" in err
    behind_the_trigger(ledgered.dsn, lambda c: c.execute(f"TRUNCATE {TABLE}"))
    code, err = verify(ledgered, monkeypatch, capsys, playbook=bare)
    assert code == 1 and "the ledger holds no entries, but the control schema records" in err


def test_the_head_catches_a_tail_cut_with_the_control_state_to_match(
    ledgered: Ledgered, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An owner who also deletes the runs and step states the cut entries recorded is caught by the head."""
    last = ledgered.last()

    def cut_everything(conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"DELETE FROM {TABLE} WHERE seq > %s", (last - 3,))
        conn.execute("DELETE FROM migrate_control.step_state")
        conn.execute("DELETE FROM migrate_control.runs")

    behind_the_trigger(ledgered.dsn, cut_everything)
    code, err = verify(ledgered, monkeypatch, capsys)
    assert code == 1 and f"entries {last - 2} to {last} are missing" in err
    assert "control schema records" not in err, "the history alone would not have caught this one"


def test_a_missing_anchor_says_it_is_missing_not_that_hashes_were_recomputed(
    ledgered: Ledgered, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An anchor whose entry was deleted is reported missing; after TRUNCATE, with no entries at all."""
    bare = tmp_path / "bare.yaml"
    bare.write_text(playbook_text(""))
    last = ledgered.last()
    with psycopg.connect(ledgered.dsn) as conn:
        anchor = conn.execute(f"SELECT hash FROM {TABLE} WHERE seq = %s", (last,)).fetchone()[0]  # type: ignore[index]
    behind_the_trigger(ledgered.dsn, lambda c: c.execute(f"DELETE FROM {TABLE} WHERE seq = %s", (last,)))
    code, err = verify(ledgered, monkeypatch, capsys, "--anchor", anchor, playbook=bare)
    assert code == 1 and f"anchor {anchor} is not in the ledger ({last - 1} entries, chain intact)" in err
    assert "the entry it named is missing — deleted, or changed with every hash after it recomputed" in err
    behind_the_trigger(ledgered.dsn, lambda c: c.execute(f"TRUNCATE {TABLE}"))
    code, err = verify(ledgered, monkeypatch, capsys, "--anchor", anchor, playbook=bare)
    assert code == 1 and f"anchor {anchor} is missing: the ledger holds no entries" in err
    assert "recomputed" not in err


def test_an_edited_head_file_is_caught_by_its_signature(
    ledgered: Ledgered, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A head line altered without the key (here: a lower count, to cover deleted entries) is named."""
    line = ledgered.head.read_text().splitlines()[-1]
    count = int(line.split('"count":', 1)[1].split(",", 1)[0])
    forged = line.replace(f'"count":{count},', f'"count":{count - 5},', 1)
    with ledgered.head.open("a") as fh:
        fh.write(forged + "\n")
    code, err = verify(ledgered, monkeypatch, capsys)
    assert code == 1 and "its signature does not check with a trusted key: the head file was edited" in err


# ----------------------------------------------------------------------------- keys
def test_an_auditor_verifies_with_the_public_key_alone_and_keys_are_exportable(
    ledgered: Ledgered, inserter: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    """`ledger keys` prints the recorded public key; with only that key (no private one) forgery is caught."""
    for key, value in ledgered.environ().items():
        monkeypatch.setenv(key, value)
    assert main(["ledger", "keys", str(ledgered.playbook)]) == 0
    printed = capsys.readouterr().out
    public = tmp_path / "exported.pub"
    public.write_text(printed)
    assert ledgered.built.public.read_text().strip() in printed
    auditor = tmp_path / "auditor.yaml"
    auditor.write_text(playbook_text(f"  public_key_file: {public}\n  head_file: {ledgered.head}\n"))
    code, err = verify(ledgered, monkeypatch, capsys, playbook=auditor)
    assert code == 0, err
    forged = append_as(inserter, "alice")
    code, err = verify(ledgered, monkeypatch, capsys, playbook=auditor)
    assert code == 1 and f"entry {forged} (actor alice" in err


def test_a_runner_without_the_key_the_playbook_names_refuses_before_writing(
    built: Built, database_factory: DatabaseFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A key variable that is unset, or a key file others can read: exit 2 before anything is ledgered."""
    dsn = database_factory.create("nokey", template=built.template)
    with psycopg.connect(dsn) as conn:
        before = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    playbook = tmp_path / "env.yaml"
    playbook.write_text(playbook_text("  signing_key_env: MIGRATE_TEST_LEDGER_KEY\n"))
    for key, value in {**built.environ, "MIGRATE_TARGET_DSN": dsn}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MIGRATE_TEST_LEDGER_KEY", raising=False)
    assert main(["run", str(playbook), "--tenant", "acme"]) == 2
    assert "MIGRATE_TEST_LEDGER_KEY is not set" in capsys.readouterr().err
    loose = tmp_path / "loose.pem"
    loose.write_bytes(built.key.read_bytes())
    loose.chmod(0o644)
    playbook.write_text(playbook_text(f"  signing_key_file: {loose}\n"))
    assert main(["run", str(playbook), "--tenant", "acme"]) == 2
    assert "readable by other users" in capsys.readouterr().err
    with psycopg.connect(dsn) as conn:
        assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == before, "nothing was ledgered"
    monkeypatch.setenv("MIGRATE_TEST_LEDGER_KEY", built.key.read_text())
    playbook.write_text(playbook_text("  signing_key_env: MIGRATE_TEST_LEDGER_KEY\n"))
    assert main(["run", str(playbook), "--tenant", "acme", "--replan"]) == 0
    with psycopg.connect(dsn) as conn:
        after = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    assert before is not None and after is not None and after[0] > before[0]
    database_factory.drop(str(conninfo_to_dict(dsn)["dbname"]))
