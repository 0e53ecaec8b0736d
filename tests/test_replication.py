"""The replication package on its own: pgoutput decoding, the net effect of a batch, its apply, and one
stream's polls against a real slot (wal_level = logical)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

from live import dsn_for
from migrate.errors import StepFailed
from migrate.replication import freeze, slots
from migrate.replication.apply import SETTINGS, Applier
from migrate.replication.changes import GONE, Fold, Image, SchemaChanged, TableMap
from migrate.replication.pgoutput import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Relation,
    Truncate,
    Update,
    decode,
    lsn_int,
    lsn_text,
)
from migrate.replication.stream import PollResult, Stream

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DOCS = TableMap("public", "docs", "app", "docs", ("id", "n", "body"), ("id",), (("tenant_id", "t1"),))
RELATION = Relation(
    16384,
    "public",
    "docs",
    "d",
    (Column("id", 23, -1, True), Column("n", 23, -1, False), Column("body", 25, -1, False)),
)


@pytest.fixture
def pair(logical_admin_dsn: str) -> Iterator[tuple[str, str]]:
    """A source and a target database on the logical server, dropped afterwards with their slots."""
    names = [f"tm_repl_{uuid.uuid4().hex[:8]}_{side}" for side in ("src", "tgt")]
    with psycopg.connect(logical_admin_dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    src, tgt = (dsn_for(logical_admin_dsn, n) for n in names)
    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE docs (id int PRIMARY KEY, n int, body text);"
            " ALTER TABLE docs ALTER body SET STORAGE EXTERNAL"
        )
    with psycopg.connect(tgt, autocommit=True) as conn:
        conn.execute(
            "CREATE SCHEMA app; CREATE TABLE app.docs (tenant_id text, id int, n int, body text,"
            " PRIMARY KEY (tenant_id, id), UNIQUE (tenant_id, n))"
        )
    yield src, tgt
    with psycopg.connect(logical_admin_dsn, autocommit=True) as conn:
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = ANY(%s)", (names,)
        ).fetchall():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def peeked(conn: psycopg.Connection[Any], slot: str, pub: str) -> list[bytes]:
    flushed = slots.flush_lsn(conn)
    with conn.transaction():
        return [p.data for p in slots.peek(conn, slot, pub, upto_lsn=flushed, max_changes=None)]


def open_capture(src: psycopg.Connection[Any], name: str = "tm_t_docs") -> None:
    slots.ensure_publication(src, name, "public", ["docs"])
    src.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))


# ----------------------------------------------------------------------------- decoding
def test_decoder_reads_real_pgoutput_messages_with_key_changes_unchanged_toast_and_truncate(
    pair: tuple[str, str],
) -> None:
    """Insert, update (unchanged TOAST), key change, delete and truncate decode to what happened."""
    with psycopg.connect(pair[0], autocommit=True) as src:
        src.execute("INSERT INTO docs VALUES (1, 1, repeat('x', 50000))")
        open_capture(src)
        src.execute("UPDATE docs SET n = 2 WHERE id = 1")
        src.execute("UPDATE docs SET id = 7 WHERE id = 1")
        src.execute("INSERT INTO docs VALUES (2, NULL, 'small')")
        src.execute("DELETE FROM docs WHERE id = 2")
        src.execute("TRUNCATE docs")
        src.execute("SELECT pg_sleep(0.3)")  # asynchronous commit: let the WAL writer flush
        messages = [decode(m) for m in peeked(src, "tm_t_docs", "tm_t_docs")]
    kinds = [type(m).__name__ for m in messages if not isinstance(m, Begin | Commit | Relation)]
    assert kinds == ["Update", "Update", "Insert", "Delete", "Truncate"]
    toast, key, insert, delete, _truncate = (
        m for m in messages if not isinstance(m, Begin | Commit | Relation)
    )
    assert isinstance(toast, Update) and toast.new == ("1", "2", UNCHANGED) and toast.old is None
    assert isinstance(key, Update) and key.old_is_key and key.old == ("1", None, None)
    assert key.new == ("7", "2", UNCHANGED)
    assert isinstance(insert, Insert) and insert.new == ("2", None, "small")
    assert isinstance(delete, Delete) and delete.old[0] == "2"
    relation = next(m for m in messages if isinstance(m, Relation))
    assert relation.column_names == ("id", "n", "body") and [c.key for c in relation.columns] == [
        True,
        False,
        False,
    ]
    commits = [m for m in messages if isinstance(m, Commit)]
    assert all(c.end_lsn > c.commit_lsn for c in commits)
    assert lsn_text(lsn_int("16/B374D848")) == "16/B374D848"


def test_decoder_refuses_an_unknown_message_instead_of_guessing() -> None:
    """A message kind it does not know (or bytes cut short) is a StepFailed, never a silent skip."""
    with pytest.raises(StepFailed, match="unknown pgoutput message kind"):
        decode(b"Z\x00")
    with pytest.raises(StepFailed, match="could not be decoded"):
        decode(b"I\x00\x00")


# ----------------------------------------------------------------------------- net effect
def fold(*changes: object, skip_before: int = 0) -> Fold:
    folded = Fold({("public", "docs"): DOCS}, skip_before=skip_before)
    for lsn, change in enumerate(changes, start=1):
        folded.add_decoded(Begin(lsn * 100, NOW, lsn))
        folded.add_decoded(RELATION)
        folded.add_decoded(change)  # type: ignore[arg-type]
        folded.add_decoded(Commit(lsn * 100, lsn * 100 + 50, NOW))
    return folded


def test_net_effect_folds_insert_update_delete_and_reinsert_per_key() -> None:
    """Insert then updates make one image; delete then re-insert keeps the last; a delete stays GONE."""
    rows = (
        fold(
            Insert(16384, ("1", "1", "a")),
            Update(16384, None, ("1", "2", UNCHANGED)),
            Insert(16384, ("2", "5", "b")),
            Delete(16384, ("2", None, None)),
            Insert(16384, ("3", "6", "c")),
            Delete(16384, ("3", None, None)),
            Insert(16384, ("3", "7", "d")),
        )
        .effects[("public", "docs")]
        .rows
    )
    assert rows == {("1",): Image(("1", "2", "a")), ("2",): GONE, ("3",): Image(("3", "7", "d"))}


def test_a_key_change_with_unchanged_toast_keeps_its_origin_and_deletes_the_old_key() -> None:
    """update id 1→7 with body unchanged: GONE at 1, an image at 7 that takes body from row 1."""
    rows = (
        fold(Update(16384, ("1", None, None), ("7", "2", UNCHANGED), old_is_key=True))
        .effects[("public", "docs")]
        .rows
    )
    assert rows == {("1",): GONE, ("7",): Image(("7", "2", UNCHANGED), origin=("1",))}


def test_truncate_forgets_earlier_changes_and_marks_the_table() -> None:
    """Changes before a TRUNCATE vanish with it; changes after it stay."""
    effect = fold(
        Insert(16384, ("1", "1", "a")), Truncate((16384,), False, False), Insert(16384, ("2", "2", "b"))
    ).effects[("public", "docs")]
    assert effect.truncated and effect.rows == {("2",): Image(("2", "2", "b"))}


def test_transactions_before_the_applied_position_are_skipped() -> None:
    """Crashed between the target's commit and the slot's advance: re-delivered transactions are skipped."""
    folded = fold(Insert(16384, ("1", "1", "a")), Insert(16384, ("2", "2", "b")), skip_before=150)
    assert folded.skipped == 1 and folded.transactions == 1
    assert list(folded.effects[("public", "docs")].rows) == [("2",)]


def test_changes_a_tables_copy_already_holds_are_skipped_for_that_table() -> None:
    """A table copied at a later snapshot (a resumed copy) takes only changes that commit at or after it."""
    late = Fold({("public", "docs"): replace(DOCS, since_lsn=250)})
    for lsn, change in enumerate((Insert(16384, ("1", "1", "a")), Insert(16384, ("3", "3", "c"))), start=2):
        late.add_decoded(Begin(lsn * 100, NOW, lsn))
        late.add_decoded(RELATION)
        late.add_decoded(change)
        late.add_decoded(Commit(lsn * 100, lsn * 100 + 50, NOW))
    assert list(late.effects[("public", "docs")].rows) == [("3",)] and late.copied_before == 1


def test_a_schema_change_in_the_stream_stops_the_fold() -> None:
    """An R message with a column the migration does not know is SchemaChanged, naming the column."""
    folded = Fold({("public", "docs"): DOCS})
    folded.add_decoded(Begin(100, NOW, 1))
    extra = Relation(
        16384,
        "public",
        "docs",
        "d",
        (
            Column("id", 23, -1, True),
            Column("n", 23, -1, False),
            Column("body", 25, -1, False),
            Column("phone", 25, -1, False),
        ),
    )
    with pytest.raises(SchemaChanged, match="column\\(s\\) added: phone"):
        folded.add_decoded(extra)


# ----------------------------------------------------------------------------- apply
def applied(tgt: str, folded: Fold) -> list[tuple[Any, ...]]:
    with psycopg.connect(tgt, autocommit=True) as conn:
        applier = Applier(conn, [DOCS])
        with conn.transaction():
            for name, value in SETTINGS.items():
                conn.execute("SELECT set_config(%s, %s, true)", (name, value))
            applier.apply(folded.ordered())
        return conn.execute("SELECT tenant_id, id, n, body FROM app.docs ORDER BY 1, 2").fetchall()


def test_values_swapped_under_a_unique_constraint_apply_by_delete_then_insert(pair: tuple[str, str]) -> None:
    """Two rows exchange unique values in one batch: the upsert collides, the delete-then-insert does not."""
    with psycopg.connect(pair[1], autocommit=True) as conn:
        conn.execute("INSERT INTO app.docs VALUES ('t1', 1, 10, 'a'), ('t1', 2, 20, 'b'), ('t2', 1, 10, 'z')")
    folded = fold(
        Update(16384, None, ("1", "99", UNCHANGED)),
        Update(16384, None, ("2", "10", UNCHANGED)),
        Update(16384, None, ("1", "20", UNCHANGED)),
    )
    assert applied(pair[1], folded) == [("t1", 1, 20, "a"), ("t1", 2, 10, "b"), ("t2", 1, 10, "z")]


def test_a_change_with_an_unchanged_value_for_a_row_the_target_lacks_fails_loudly(
    pair: tuple[str, str],
) -> None:
    """The unchanged TOASTed value would be lost: the batch fails and nothing of it is applied."""
    folded = fold(Insert(16384, ("5", "5", "e")), Update(16384, None, ("1", "2", UNCHANGED)))
    with pytest.raises(StepFailed, match="unchanged TOASTed value"):
        applied(pair[1], folded)
    with psycopg.connect(pair[1]) as conn:
        assert conn.execute("SELECT count(*) FROM app.docs").fetchone() == (0,)


def test_truncate_deletes_only_the_tenants_rows_and_a_moved_row_keeps_its_toast(
    pair: tuple[str, str],
) -> None:
    """TRUNCATE is a DELETE of that tenant's rows; a key change carries the unchanged body over."""
    with psycopg.connect(pair[1], autocommit=True) as conn:
        conn.execute("INSERT INTO app.docs VALUES ('t1', 1, 1, 'big'), ('t2', 1, 1, 'other')")
    moved = fold(Update(16384, ("1", None, None), ("7", "2", UNCHANGED), old_is_key=True))
    assert applied(pair[1], moved) == [("t1", 7, 2, "big"), ("t2", 1, 1, "other")]
    truncated = fold(Truncate((16384,), False, False))
    assert applied(pair[1], truncated) == [("t2", 1, 1, "other")]


# ----------------------------------------------------------------------------- streams
class MemoryProgress:
    def __init__(self, lsn: int = 0) -> None:
        self.lsn = lsn
        self.saved = 0

    def applied(self) -> int:
        return self.lsn

    def save(self, conn: psycopg.Connection[Any], lsn: int, poll: PollResult) -> None:
        self.lsn = lsn
        self.saved += 1


def stream(src: psycopg.Connection[Any], tgt: psycopg.Connection[Any], progress: MemoryProgress) -> Stream:
    return Stream(
        source=src, target=tgt, slot="tm_t_docs", publication="tm_t_docs", maps=[DOCS], progress=progress
    )


def test_an_empty_poll_moves_the_slot_past_other_databases_wal(
    pair: tuple[str, str], logical_admin_dsn: str
) -> None:
    """A quiet tenant on a busy server: polls that find nothing advance the slot to the flushed position."""
    with psycopg.connect(pair[0], autocommit=True) as src, psycopg.connect(pair[1], autocommit=True) as tgt:
        open_capture(src)
        before = slots.slot(src, "tm_t_docs")
        with psycopg.connect(logical_admin_dsn, autocommit=True) as other:
            other.execute("CREATE TEMP TABLE busy AS SELECT g FROM generate_series(1, 20000) g")
            other.execute("SELECT pg_switch_wal()")
        polled = stream(src, tgt, MemoryProgress()).poll()
        after = slots.slot(src, "tm_t_docs")
    assert polled.empty and before is not None and after is not None
    assert lsn_int(str(after.confirmed_flush_lsn)) > lsn_int(str(before.confirmed_flush_lsn))


def test_a_batch_applied_but_not_advanced_is_not_applied_again(
    pair: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between the target's commit and the slot's advance: the next poll skips what the target has."""
    with psycopg.connect(pair[0], autocommit=True) as src, psycopg.connect(pair[1], autocommit=True) as tgt:
        open_capture(src)
        src.execute("INSERT INTO docs VALUES (1, 1, 'a'); INSERT INTO docs VALUES (2, 2, 'b')")
        progress = MemoryProgress()
        slots.fence(src, "flush")
        with monkeypatch.context() as patched:
            patched.setattr(slots, "advance", lambda *a: None)  # the crash: no advance after the commit
            first = stream(src, tgt, progress).poll()
        again = stream(src, tgt, progress).poll()
        assert first.transactions == 1 and again.transactions == 0 and again.skipped == 1
        assert progress.saved == 1
        assert tgt.execute("SELECT count(*) FROM app.docs").fetchone() == (2,)


def test_the_fence_covers_a_commit_the_server_has_not_flushed_yet(pair: tuple[str, str]) -> None:
    """With asynchronous commit a commit may lie beyond pg_current_wal_lsn(); never beyond the fence."""
    with psycopg.connect(pair[0], autocommit=True) as src, psycopg.connect(pair[1], autocommit=True) as tgt:
        open_capture(src)
        progress = MemoryProgress()
        drained = 0
        for n in range(20):  # asynchronous commit, then at once a fence and a drain up to it
            src.execute("SET synchronous_commit = off")
            src.execute("INSERT INTO docs VALUES (%s, %s, 'x')", (n, n))
            drained += stream(src, tgt, progress).poll(upto=slots.fence(src, "t"), max_changes=None).changes
        assert drained == 20
        assert tgt.execute("SELECT count(*) FROM app.docs").fetchone() == (20,)


def test_the_barrier_waits_for_a_write_begun_before_the_revoke(pair: tuple[str, str]) -> None:
    """A transaction that wrote before the REVOKE and commits after it is waited out by the barrier."""
    with psycopg.connect(pair[0], autocommit=True) as src:
        src.execute("GRANT INSERT, SELECT ON docs TO tm_app")
        app = psycopg.connect(pair[0].replace("user=postgres", "user=tm_app"), autocommit=True)
        app.execute("BEGIN")
        app.execute("INSERT INTO docs VALUES (1, 1, 'late')")
        freeze.revoke(src, "public", ["docs"], ["tm_app"])
        threading.Timer(0.3, app.commit).start()
        waited = freeze.barrier(src, "public", ["docs"], lock_timeout=0.1, bound=5.0, give_up=10.0)
        assert waited.seconds >= 0.25 and not waited.terminated
        assert src.execute("SELECT count(*) FROM docs").fetchone() == (1,)
        app.close()


def test_the_barrier_terminates_a_straggler_after_its_bound_and_names_it(pair: tuple[str, str]) -> None:
    """An application session idle in a transaction that wrote is terminated after the bound, named."""
    with psycopg.connect(pair[0], autocommit=True) as src:
        src.execute("GRANT INSERT, SELECT ON docs TO tm_app")
        app = psycopg.connect(pair[0].replace("user=postgres", "user=tm_app"), autocommit=True)
        app.execute("BEGIN")
        app.execute("INSERT INTO docs VALUES (1, 1, 'never')")
        freeze.revoke(src, "public", ["docs"], ["tm_app"])
        waited = freeze.barrier(src, "public", ["docs"], lock_timeout=0.05, bound=0.2, give_up=5.0)
        assert len(waited.terminated) == 1 and "tm_app" in waited.terminated[0]
        assert src.execute("SELECT count(*) FROM docs").fetchone() == (0,)
        app.close()


# ----------------------------------------------------------------------------- reverse direction
REVERSE = TableMap(
    "app",
    "docs",
    "public",
    "docs",
    ("id", "n", "body"),
    ("id",),
    stream_columns=("tenant_id", "id", "n", "body"),
    dropped=(("tenant_id", "t1"),),
)
SHARED = Relation(
    16390,
    "app",
    "docs",
    "d",
    (
        Column("tenant_id", 25, -1, True),
        Column("id", 23, -1, True),
        Column("n", 23, -1, False),
        Column("body", 25, -1, False),
    ),
)


def reverse_fold(*changes: object) -> Fold:
    folded = Fold({("app", "docs"): REVERSE})
    for lsn, change in enumerate(changes, start=1):
        folded.add_decoded(Begin(lsn * 100, NOW, lsn))
        folded.add_decoded(SHARED)
        folded.add_decoded(change)  # type: ignore[arg-type]
        folded.add_decoded(Commit(lsn * 100, lsn * 100 + 50, NOW))
    return folded


def test_a_reverse_stream_drops_the_tenant_column_and_keys_rows_by_the_old_key() -> None:
    """Shared rows come back as the tenant's own: tenant_id checked and gone, keyed by id alone."""
    rows = (
        reverse_fold(
            Insert(16390, ("t1", "1", "1", "a")),
            Update(16390, ("t1", "1", None, None), ("t1", "9", "2", UNCHANGED), old_is_key=True),
            Insert(16390, ("t1", "2", "5", "b")),
            Delete(16390, ("t1", "2", None, None)),
        )
        .effects[("app", "docs")]
        .rows
    )
    assert rows == {("1",): GONE, ("9",): Image(("9", "2", "a")), ("2",): GONE}


def test_a_reverse_stream_refuses_another_tenants_row() -> None:
    """A row of another tenant (the row filter changed by hand) stops the fold: never applied."""
    with pytest.raises(StepFailed, match="another tenant's row"):
        reverse_fold(Insert(16390, ("t2", "1", "1", "a")))
