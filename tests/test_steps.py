"""Every step kind through apply → verify → apply → revert → apply → verify on real PostgreSQL,
and the checks that must catch a bad copy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from live import APP_ROLE, FLAG, LiveWorld, live_world
from migrate import api
from migrate.engine.session import tenant_session
from migrate.errors import CheckFailed, StepFailed
from migrate.playbook import load_playbook
from migrate.playbook.model import STEP_KINDS, STEP_SPECS, BackfillStep, Step, ValidateStep
from migrate.steps import KINDS, StepContext, step_for
from world import DEMO, TABLES, World

pytestmark = pytest.mark.tenants("acme", "globex")


@pytest.fixture
def ctx(world: World) -> Iterator[StepContext]:
    from migrate.control import schema

    schema.upgrade(world.target_dsn, "migrate_control")
    env = api.environment(load_playbook(DEMO), world.environ, flag_file="create")
    tenant = env.loaded.tenants[0]
    with tenant_session(env, tenant, uuid4()) as context:
        yield context


SPECS: list[Step] = [spec.example() for spec in STEP_SPECS]  # every kind, in playbook order
# Kinds that read change capture or freeze the source run on a live world (wal_level = logical, an
# application role, an online playbook); the backfill runs on both, offline and online.
OFFLINE = [s for s in SPECS if not (s.capture or s.freezes or s.citus_only)]
# Kinds for a Citus target only go through the same suite on a real cluster (tests/test_citus.py).
CITUS = [s for s in SPECS if s.citus_only]
ONLINE = [s for s in SPECS if s.capture or s.freezes or s.kind in ("schema", "backfill")]
# What each online kind builds on, in order (an online playbook has no validate or flag before its cut-over).
ONLINE_CHAIN = ["schema", "backfill", "catchup", "cutover", "finalise"]


def test_every_step_kind_has_an_implementation_and_goes_through_the_conformance_suite() -> None:
    """A kind is a spec and an implementation: neither exists without the other, so none goes untested."""
    assert [s.kind for s in SPECS] == list(KINDS) == list(STEP_KINDS)
    assert {s.kind for s in OFFLINE} | {s.kind for s in ONLINE} | {s.kind for s in CITUS} == set(STEP_KINDS)


def effect(ctx: StepContext, world: World) -> tuple[object, ...]:
    """What the world looks like: shared tables, the tenant's rows, the flag."""
    from migrate.adapters.flagfile import FileFlagProvider

    with world.target() as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = %s", (ctx.target_schema,)
        ).fetchone()
    counts = world.target_counts("acme") if tables and tables[0] else {}
    flag = FileFlagProvider(world.flag_file).tenants("tenant-shared-db") if world.flag_file.exists() else []
    return tables, tuple(sorted(counts.items())), tuple(flag)


def conformance(spec: Step, ctx: StepContext, earlier: list[Step], world_now: Callable[[], object]) -> None:
    """apply → verify → apply (no change) → revert → revert again → apply → verify."""
    for step in earlier:  # what the step builds on
        step_for(step).apply(ctx)
    before = world_now()
    impl = step_for(spec)
    details = impl.apply(ctx)
    impl.verify(ctx, details)
    after = world_now()
    again = impl.apply(ctx)
    impl.verify(ctx, again)
    assert world_now() == after, "a second apply changed the world"
    undone = impl.revert(ctx, details)
    impl.verify_reverted(ctx, undone)
    if spec.moves != "nothing":
        assert world_now() == before, "revert did not restore the world"
    impl.verify_reverted(ctx, impl.revert(ctx, details))  # idempotent revert
    details = impl.apply(ctx)
    impl.verify(ctx, details)
    assert world_now() == after


@pytest.mark.parametrize("spec", OFFLINE, ids=lambda s: s.kind)
def test_step_conformance_apply_is_idempotent_and_revert_undoes_it(
    spec: Step, ctx: StepContext, world: World
) -> None:
    """Every offline kind, on the demo's world, after the kinds it builds on."""
    conformance(spec, ctx, OFFLINE[: OFFLINE.index(spec)], lambda: effect(ctx, world))


@pytest.fixture
def live(logical_admin_dsn: str, tmp_path: Path) -> Iterator[LiveWorld]:
    with live_world(logical_admin_dsn, tmp_path, {"acme": 1}) as world:
        world.write_playbook(finalise=True)
        yield world


def live_effect(world: LiveWorld) -> tuple[object, ...]:
    """The live world: shared tables, the tenant's rows, the flag, what the application may write, slots."""
    from migrate.adapters.flagfile import FileFlagProvider

    with world.target() as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'app'").fetchone()
    counts = world.target_counts("acme") if tables and tables[0] else {}
    flag = FileFlagProvider(world.flag_file).tenants(FLAG) if world.flag_file.exists() else []
    with world.source("acme") as conn:
        writable = conn.execute(
            "SELECT relname, has_table_privilege(%s, oid, 'INSERT, UPDATE, DELETE') FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY 1",
            (APP_ROLE,),
        ).fetchall()
        slots = conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()")
        held = tuple(r[0] for r in slots)
    return tables, tuple(sorted(counts.items())), tuple(flag), tuple(writable), held


def online_id(spec: Step) -> str:
    return f"{spec.kind}-online" if spec.kind in ("schema", "backfill") else spec.kind


@pytest.mark.parametrize("spec", ONLINE, ids=online_id)
def test_online_step_conformance_apply_is_idempotent_and_revert_undoes_it(
    spec: Step, live: LiveWorld
) -> None:
    """Every kind that captures changes or freezes the source (and the online backfill), on a live world."""
    from migrate.control import schema

    schema.upgrade(live.target_dsn, "migrate_control")
    env = api.environment(load_playbook(live.playbook), live.environ, flag_file="create")
    chain = [s for k in ONLINE_CHAIN for s in ONLINE if s.kind == k]
    earlier = chain[: chain.index(spec)] if spec in chain else []
    with tenant_session(env, env.loaded.tenants[0], uuid4()) as ctx:
        conformance(spec, ctx, earlier, lambda: live_effect(live))


def copied(ctx: StepContext) -> None:
    for spec in OFFLINE[:2]:
        step_for(spec).apply(ctx)


@pytest.mark.parametrize(
    "corruption",
    [
        "UPDATE app.tasks SET title = title || '!' WHERE tenant_id = 'acme' AND id = 5",
        "DELETE FROM app.comments WHERE tenant_id = 'acme' AND id = 7",
        "INSERT INTO app.organizations (tenant_id, id, name, plan, created_at) "
        "VALUES ('acme', 999, 'x', 'p', now())",
        # The composite foreign keys refuse this move; an operator with FK triggers off can do it.
        "SET session_replication_role = replica;"
        " UPDATE app.comments SET tenant_id = 'globex' WHERE tenant_id = 'acme' AND id = 9",
        "UPDATE app.tasks SET estimate = NULL WHERE tenant_id = 'acme' AND id = 1",
        "UPDATE app.attachments SET content = set_byte(content, 0, (get_byte(content, 0) + 1) % 256)"
        " WHERE tenant_id = 'acme' AND id = 1",
        "UPDATE app.tasks SET title = NULL::text || '' WHERE false",  # control: no change
    ],
    ids=[
        "changed-value",
        "missing-row",
        "extra-row",
        "moved-tenant",
        "value-to-null",
        "bytea-byte",
        "no-change",
    ],
)
def test_validate_catches_each_corruption_of_the_target(
    corruption: str, ctx: StepContext, world: World
) -> None:
    """A changed, missing, extra or moved row, a NULL, a flipped byte: validate fails, naming the table."""
    copied(ctx)
    with world.target() as conn:
        conn.execute(corruption)
    impl = step_for(ValidateStep(kind="validate"))
    details = impl.apply(ctx)
    if "WHERE false" in corruption:
        impl.verify(ctx, details)
        return
    with pytest.raises(CheckFailed) as info:
        impl.verify(ctx, details)
    table = corruption.split(" app.")[1].split()[0]
    assert table in info.value.message


def test_validate_judges_equal_data_equal_under_another_time_zone(ctx: StepContext) -> None:
    """timestamptz read under a different session time zone on each side is still equal."""
    copied(ctx)
    ctx.source.execute("SET TIME ZONE 'Asia/Kolkata'")
    ctx.target.execute("SET TIME ZONE 'America/Los_Angeles'")
    impl = step_for(ValidateStep(kind="validate"))
    impl.verify(ctx, impl.apply(ctx))


def test_backfill_refuses_rows_no_checkpoint_accounts_for(ctx: StepContext, world: World) -> None:
    """Rows of the tenant already in a shared table without a checkpoint are never duplicated nor deleted."""
    copied(ctx)
    with world.target() as conn:
        conn.execute("DELETE FROM migrate_control.checkpoints WHERE table_name = 'attachments'")
    with pytest.raises(StepFailed, match="no checkpoint accounts for"):
        step_for(BackfillStep(kind="backfill")).apply(ctx)
    assert world.target_counts("acme") == world.source_counts("acme")


def test_backfill_revert_leaves_other_tenants_rows(world: World) -> None:
    """Rolling one tenant's backfill back deletes its rows only."""
    assert api.run(DEMO, environ=world.environ, tenants=["acme", "globex"]).ok
    globex = world.target_counts("globex")
    env = api.environment(load_playbook(DEMO), world.environ, flag_file="create")
    with tenant_session(env, env.loaded.tenants[0], uuid4()) as c:
        step_for(BackfillStep(kind="backfill")).revert(c, {})
    assert world.target_counts("acme") == dict.fromkeys(TABLES, 0)
    assert world.target_counts("globex") == globex
