"""The keys of `migrate status --json` that README.md documents: one list for every test that reads it."""

from __future__ import annotations

# The --json keys README.md documents ('Status'): renaming one breaks scripts, so it breaks this test.
TOP_KEYS = {
    "playbook",
    "path",
    "digest",
    "accepted",
    "playbook_changed",
    "started",
    "waves",
    "tenants",
    "holders",
    "slots",
    "flags",
    "next",
    "targets",
}
TARGET_KEYS = {"name", "region", "dsn_env", "database", "recorded_region", "started"}
WAVE_KEYS = {"name", "stage", "tenants", "finished", "blocked_by", "approval"}
TENANT_KEYS = {
    "tenant",
    "region",
    "target",
    "wave",
    "state",
    "phase",
    "last_step",
    "step",
    "steps_done",
    "steps_total",
    "points_passed",
    "rows",
    "validated",
    "figures",
    "error",
    "flags",
    "held_by",
    "capture",
    "frozen",
    "freeze_seconds",
    "reverse",
    "shared_frozen",
    "rolled_back",
    "rollback",
}
HOLDER_KEYS = {
    "tenant",
    "host",
    "pid",
    "since",
    "run_id",
    "command",
    "backend_pid",
    "application",
    "describe",
}
