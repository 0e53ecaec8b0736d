"""The control schema's alembic migrations, and secrets kept out of logs."""

from __future__ import annotations

import psycopg

from migrate.control import schema
from migrate.log import redact


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'ctl'")}


def test_control_schema_upgrades_downgrades_and_upgrades_again(fresh_dsn: str) -> None:
    """Upgrade creates every table; a second upgrade is a no-op; downgrade to base removes them."""
    schema.upgrade(fresh_dsn, "ctl")
    want = {"alembic_version", "runs", "step_state", "checkpoints", "ledger"}
    want |= {"approvals", "playbook_versions", "holders", "ledger_keys", "residency", "rollbacks"}
    want |= {"captures", "freezes", "reverse_paths", "shared_freezes"}
    assert tables(fresh_dsn) == want
    schema.upgrade(fresh_dsn, "ctl")
    schema.downgrade(fresh_dsn, "ctl", "base")
    assert tables(fresh_dsn) == {"alembic_version"}
    schema.upgrade(fresh_dsn, "ctl")
    assert tables(fresh_dsn) == want


def test_upgrading_a_control_schema_with_runs_keeps_each_playbook_at_the_version_of_its_last_run(
    fresh_dsn: str,
) -> None:
    """0003 records, per playbook, the digest of its last real run: an upgrade never looks like a replan."""
    schema.upgrade(fresh_dsn, "ctl", "0002")
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        for digest, minutes, dry in (("old", 10, False), ("last", 5, False), ("rehearsed", 1, True)):
            conn.execute(
                "INSERT INTO ctl.runs (run_id, playbook, playbook_digest, command, actor, host, pid, dry_run,"
                " started_at) VALUES (gen_random_uuid(), 'demo', %s, 'run', 'a', 'h', 1, %s,"
                " now() - make_interval(mins => %s))",
                (digest, dry, minutes),
            )
    schema.upgrade(fresh_dsn, "ctl")
    with psycopg.connect(fresh_dsn) as conn:
        rows = conn.execute("SELECT playbook, playbook_digest FROM ctl.playbook_versions").fetchall()
    assert rows == [("demo", "last")]


def test_redact_masks_dsn_passwords_and_tokens() -> None:
    """Passwords in URLs and key=value DSNs, and authorization headers, never reach a log line."""
    text = redact("postgresql://app:s3cret@db/x password=hunter2 Authorization: Bearer tok123")
    assert "s3cret" not in text and "hunter2" not in text and "tok123" not in text
    assert "postgresql://app:***@db/x" in text
