"""Wave gates: a person opens a wave with ``migrate approve``; ledgered with who approved."""

from __future__ import annotations

from dataclasses import dataclass

from migrate.engine.run import progress_of_targets
from migrate.engine.session import Environment, Regions, TargetConnections
from migrate.errors import ArgumentError
from migrate.plan.model import Plan
from migrate.plan.waves import gate_targets, wave_states


@dataclass(frozen=True)
class Approved:
    wave: str
    actor: str
    host: str
    tenants: tuple[str, ...]
    again: bool


def approve(env: Environment | Regions, plan: Plan, wave: str) -> Approved:
    """Open a wave's gate: recorded, ledgered with who approved, in every target holding tenants of the
    wave (each names its own tenants); refused before the earlier waves are done, in any region."""
    regions = env if isinstance(env, Regions) else Regions.single(env)
    target = next((w for w in plan.waves if w.name == wave), None)
    assert target is not None  # build_plan / select_wave checked the name
    if not target.approval:
        raise ArgumentError(
            f"wave {wave} has no approval gate: it starts when the waves before it are done",
            where="--wave",
            hint="add 'approval: true' to the wave in the playbook to give it one",
        )
    by_id = {t.id: t for t in regions.loaded.tenants}
    holding = regions.holding(by_id[t] for t in target.tenants)
    pools = {name: TargetConnections(e.connect_target) for name, e in regions.envs.items()}
    try:
        progress = progress_of_targets(regions, pools, plan, set(), gate_targets(plan, wave))
        state = next(s for s in wave_states(plan, progress, set()) if s.wave.name == wave)
        if state.blocked_by is not None:
            raise ArgumentError(
                f"wave {state.blocked_by} is not finished, so wave {wave} cannot be approved yet",
                where="--wave",
                hint=f"'migrate status {regions.loaded.path}' shows what is left; approve once it is done",
            )
        again = False
        for name, theirs in holding.items():
            the_env, pool = regions.envs[name], pools[name]
            conn = pool.take()
            try:
                before = the_env.control.approvals(conn).get(wave)
                again = again or before is not None
                with conn.transaction():
                    the_env.control.approve(
                        conn, wave, digest=the_env.loaded.digest, actor=the_env.actor, host=the_env.host
                    )
                    the_env.ledger.append(
                        conn,
                        the_env.entry(
                            None,
                            "approved",
                            "ok",
                            wave=wave,
                            details={
                                "wave": wave,
                                "again": before is not None,
                                "tenants": [t.id for t in theirs],
                            },
                        ),
                    )
            finally:
                pool.give(conn)
        first = regions.first
        return Approved(wave, first.actor, first.host, tuple(target.tenants), again=again)
    finally:
        for pool in pools.values():
            pool.close()
