"""The up-front checks of an online (or frozen offline) migration, per selected tenant, before any I/O
that changes something: no control schema, no publication, no slot, no REVOKE.

``run`` calls ``check_online`` after the arguments and the playbook passed and
before the control schema is created or upgraded. For every selected tenant that
still has change capture or a freeze ahead, its source is read (catalog views and
settings only) and the problems are raised as one SettingsError (exit 2) naming
each setting and its fix (``replication/checks.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress

import psycopg

from migrate.api.settings import control_exists
from migrate.control.capture import CaptureStore
from migrate.engine.session import Regions, tenant_tables
from migrate.errors import SettingsError
from migrate.plan import Plan, StepStatus
from migrate.replication import checks, slots


def check_online(regions: Regions, plan: Plan) -> None:
    """Raise SettingsError for the first selected tenant whose databases cannot take what remains."""
    pb = regions.loaded.playbook
    online = pb.cutover.mode == "online"
    known: set[str] = set()  # the slots the control schemas know of: this playbook's runs made them
    target_problems: dict[str, list[checks.Problem]] = {}
    for name in regions.holding(tp.tenant for tp in plan.tenants):
        env = regions.envs[name]
        with env.connect_target() as target:
            schema = env.target.control_schema
            if control_exists(target, schema):
                with suppress(psycopg.errors.UndefinedTable):  # a control schema from before revision 0006
                    known |= {c.slot for c in CaptureStore(schema, pb.name).captures(target).values()}
            target_problems[name] = checks.apply_problems(target) if online else []
    names = {t.id: slots.slot_name(pb.name, t.id) for t in regions.loaded.tenants}
    for tp in plan.tenants:
        ahead = [s.spec for s in tp.steps if s.spec is not None and s.status is not StepStatus.DONE]
        capture = online and any(s.kind in ("backfill", "catchup", "cutover") for s in ahead)
        freeze = any(s.freezes for s in ahead)
        if not capture and not freeze:
            continue
        env = regions.of(tp.tenant)
        problems: list[checks.Problem] = list(target_problems.get(env.name, []))
        with env.connect_source(tp.tenant) as source:
            tables = [t.name for t in tenant_tables(env, source)]
            if capture:
                problems += checks.capture_problems(
                    source,
                    schema=pb.source.schema_,
                    tables=tables,
                    slot=names[tp.tenant.id],
                    publication=names[tp.tenant.id],
                    known_slots=known,
                    playbook_slots=list(names.values()),
                    slot_wait=pb.cutover.slot_wait,
                )
            if freeze:
                problems += checks.freeze_problems(
                    source, schema=pb.source.schema_, tables=tables, roles=pb.source.app_roles
                )
        if problems:
            raise SettingsError(
                f"tenant '{tp.tenant.id}' cannot be migrated {'online' if online else 'with a freeze'} "
                "as its databases stand:\n" + "\n".join(f"  - {p}" for p in _unique(problems)),
                where=f"tenant {tp.tenant.id}",
                hint="fix each, then run again; nothing was created or changed",
            )


def _unique(problems: Sequence[checks.Problem]) -> list[checks.Problem]:
    return list(dict.fromkeys(problems))
