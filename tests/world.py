"""A small world for tests: a target database, per-tenant source databases and a flag file.

Built on a test's database factory (tests/databases.py), which every database of the world
is registered with, so it goes with the test's others; conftest's ``world`` fixture makes one
for the tenants ``@pytest.mark.tenants`` names.
The playbook is ``playbooks/demo.yaml`` (or one written by the test) and settings travel in
an ``environ`` dict, never in ``os.environ``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from databases import DatabaseFactory, dsn_for
from migrate.api.demo import create_source

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "playbooks" / "demo.yaml"
TABLES = ("organizations", "users", "projects", "tasks", "comments", "attachments")


@dataclass
class World:
    admin_dsn: str
    target_dsn: str
    prefix: str
    flag_file: Path
    tenants: dict[str, int] = field(default_factory=dict)

    @property
    def environ(self) -> dict[str, str]:
        template = dsn_for(self.admin_dsn, f"{self.prefix}{{tenant}}")
        return {
            "MIGRATE_TARGET_DSN": self.target_dsn,
            "MIGRATE_SOURCE_DSN_TEMPLATE": template,
            "MIGRATE_FLAG_FILE": str(self.flag_file),
            "MIGRATE_ACTOR": "pytest",
        }

    def source_dsn(self, tenant: str) -> str:
        return dsn_for(self.admin_dsn, f"{self.prefix}{tenant}")

    def target(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.target_dsn, autocommit=True)

    def source(self, tenant: str) -> psycopg.Connection[Any]:
        return psycopg.connect(self.source_dsn(tenant), autocommit=True)

    def target_counts(self, tenant: str) -> dict[str, int]:
        with self.target() as conn:
            return {
                t: conn.execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(sql.Identifier("app", t)),
                    (tenant,),
                ).fetchone()[0]  # type: ignore[index]
                for t in TABLES
            }

    def source_counts(self, tenant: str) -> dict[str, int]:
        with self.source(tenant) as conn:
            return {
                t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]  # type: ignore[index]
                for t in TABLES
            }


def tenants_of(*names: str, **scales: int) -> tuple[tuple[str, int], ...]:
    """The (tenant, scale) pairs of ``@pytest.mark.tenants("globex", acme=2)``: a bare name is scale 1."""
    return (*((name, 1) for name in names), *scales.items())


def make_world(
    factory: DatabaseFactory,
    tmp_path: Path,
    tenants: Iterable[tuple[str, int]] = (("acme", 2), ("globex", 1), ("initech", 1)),
) -> World:
    """Target + one source database per tenant (sample SaaS schema at the given scale)."""
    prefix = f"tm_test_w{uuid.uuid4().hex[:8]}_"
    target = factory.create("target")
    world = World(factory.admin_dsn, target, prefix, tmp_path / "flags.json")
    for tenant, scale in tenants:
        factory.register(f"{prefix}{tenant}")  # before it exists: a half-built source goes too
        create_source(factory.admin_dsn, f"{prefix}{tenant}", tenant, scale)
        world.tenants[tenant] = scale
    return world


def custom_world(factory: DatabaseFactory, tmp_path: Path, ddl: str, tenants: tuple[str, ...]) -> World:
    """A target and one source per tenant, each built by ``ddl`` (with its rows)."""
    prefix = f"tm_test_b{uuid.uuid4().hex[:8]}_"
    world = World(factory.admin_dsn, factory.create("target"), prefix, tmp_path / "flags.json")
    for tenant in tenants:
        name = f"{prefix}{tenant}"
        factory.register(name)
        with psycopg.connect(factory.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with psycopg.connect(dsn_for(factory.admin_dsn, name), autocommit=True) as conn:
            conn.execute(ddl)
        world.tenants[tenant] = 1
    return world


# A cycle (teams ⇄ members) and a self-reference (members.mentor_id) that the backfill loads in
# chunks and the rollback deletes in batches.
CYCLE = """
CREATE TABLE teams (id bigint PRIMARY KEY, name text NOT NULL, lead_id bigint);
CREATE TABLE members (
    id bigint PRIMARY KEY,
    team_id bigint NOT NULL REFERENCES teams (id),
    mentor_id bigint REFERENCES members (id),
    name text NOT NULL
);
ALTER TABLE teams ADD FOREIGN KEY (lead_id) REFERENCES members (id);
BEGIN;
SET CONSTRAINTS ALL IMMEDIATE;
INSERT INTO teams SELECT t, 'team ' || t, NULL FROM generate_series(1, 20) AS t;
-- Mentors come later in key order than the members they mentor: forward references across chunks.
INSERT INTO members SELECT m, 1 + m % 20, NULL, 'member ' || m FROM generate_series(1, 400) AS m;
UPDATE members SET mentor_id = 1 + (id + 150) % 400;
UPDATE teams SET lead_id = 400 - id;
COMMIT;
"""


def corrupt_globex_as_it_is_copied(world: World) -> None:
    """A trigger on the shared table (COPY fires it) changes one of globex's tasks as it is written."""
    with world.target() as conn:
        conn.execute(
            "CREATE FUNCTION app.corrupt() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN IF NEW.tenant_id = 'globex' AND NEW.id = 5 THEN NEW.title := NEW.title || '!'; END IF;"
            " RETURN NEW; END $$;"
            " CREATE TRIGGER corrupt BEFORE INSERT ON app.tasks FOR EACH ROW EXECUTE FUNCTION app.corrupt();"
            # ALWAYS: the copy runs with the shared tables' user triggers off (replica mode, so a
            # carried trigger cannot rewrite copied rows); this one stands for corruption in transit.
            " ALTER TABLE app.tasks ENABLE ALWAYS TRIGGER corrupt"
        )
