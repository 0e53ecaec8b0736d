"""Helpers of the rollback tests: demo variants, and what the flag file and the shared tables hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from psycopg import sql

from migrate.adapters.flagfile import FileFlagProvider
from world import DEMO, World

FLAG = "tenant-shared-db"
DISCARD = "--discard-writes-since-cutover"


def demo_variant(tmp_path: Path, name: str, *replacements: tuple[str, str]) -> Path:
    """The demo playbook with some lines replaced, written next to the test's files."""
    text = DEMO.read_text().replace("../flags/demo.json", str(DEMO.parent.parent / "flags" / "demo.json"))
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def flag_file(world: World) -> Any:
    return json.loads(world.flag_file.read_text())


def flag_on(world: World) -> list[str]:
    """The tenants the cut-over flag is on for, as the flag file lists them."""
    return FileFlagProvider(world.flag_file).tenants(FLAG)


def shared_rows(world: World, tenant: str) -> dict[str, int]:
    """The tenant's rows in EVERY table of the shared schema with a tenant_id, not only the demo's six."""
    with world.target() as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.columns"
                " WHERE table_schema = 'app' AND column_name = 'tenant_id' ORDER BY 1"
            )
        ]
        counts = {}
        for table in tables:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(sql.Identifier("app", table)),
                (tenant,),
            ).fetchone()
            assert row is not None
            counts[table] = int(row[0])
        return counts


def step_states(world: World, tenant: str) -> dict[str, str]:
    with world.target() as conn:
        rows = conn.execute(
            "SELECT step_key, status FROM migrate_control.step_state WHERE tenant = %s", (tenant,)
        ).fetchall()
    return {r[0]: r[1] for r in rows}


def ledger(world: World, tenant: str | None = None) -> list[tuple[str, str, str | None, str]]:
    """(action, outcome, step, actor) of the ledger's entries, oldest first; one tenant's, or all."""
    with world.target() as conn:
        rows = conn.execute(
            "SELECT action, outcome, step, actor FROM migrate_control.ledger"
            " WHERE %s::text IS NULL OR tenant = %s ORDER BY seq",
            (tenant, tenant),
        ).fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def chunked(tmp_path: Path) -> Path:
    """The demo with chunks (and so revert batches) of 100 rows."""
    return demo_variant(
        tmp_path, "chunked", ("      - kind: backfill", "      - {kind: backfill, chunk_rows: 100}")
    )
