"""Wave gates: a person opens a wave with ``migrate approve``; ledgered with who approved."""

from __future__ import annotations

from dataclasses import dataclass

from migrate.engine.session import Environment, TargetConnections
from migrate.errors import ArgumentError
from migrate.plan.model import Plan
from migrate.plan.waves import wave_states


@dataclass(frozen=True)
class Approved:
    wave: str
    actor: str
    host: str
    tenants: tuple[str, ...]
    again: bool


def approve(env: Environment, plan: Plan, wave: str) -> Approved:
    """Open a wave's gate: recorded, ledgered with who approved; refused before the earlier waves are done."""
    target = next((w for w in plan.waves if w.name == wave), None)
    assert target is not None  # build_plan / select_wave checked the name
    if not target.approval:
        raise ArgumentError(
            f"wave {wave} has no approval gate: it starts when the waves before it are done",
            where="--wave",
            hint="add 'approval: true' to the wave in the playbook to give it one",
        )
    targets = TargetConnections(env.connect_target)
    conn = targets.take()
    try:
        progress = env.control.progress(conn)
        state = next(s for s in wave_states(plan, progress, set()) if s.wave.name == wave)
        if state.blocked_by is not None:
            raise ArgumentError(
                f"wave {state.blocked_by} is not finished, so wave {wave} cannot be approved yet",
                where="--wave",
                hint=f"'migrate status {env.loaded.path}' shows what is left; approve once it is done",
            )
        before = env.control.approvals(conn).get(wave)
        with conn.transaction():
            env.control.approve(conn, wave, digest=env.loaded.digest, actor=env.actor, host=env.host)
            env.ledger.append(
                conn,
                env.entry(
                    None,
                    "approved",
                    "ok",
                    wave=wave,
                    details={"wave": wave, "again": before is not None, "tenants": list(target.tenants)},
                ),
            )
        return Approved(wave, env.actor, env.host, tuple(target.tenants), again=before is not None)
    finally:
        targets.give(conn)
        targets.close()
