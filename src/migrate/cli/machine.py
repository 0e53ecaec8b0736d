"""``--json`` for the commands a person scripts: plan, rollback, verify, diff, approve (run's is its
report, status's and the others' live beside their text in render.py). Keys are added, never renamed."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from migrate.api import Approved, DiffResult, Plan, Readiness, RollbackResult, VerifyResult


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "playbook": plan.playbook,
        "digest": plan.digest,
        "waves": [{"name": w.name, "approval": w.approval, "tenants": list(w.tenants)} for w in plan.waves],
        "tenants": [
            {
                "tenant": tp.tenant.id,
                "wave": tp.tenant.wave,
                "region": tp.tenant.region,
                "tier": tp.tenant.tier,
                "steps": [
                    {
                        "key": s.key,
                        "phase": s.phase,
                        "step": s.step_id,
                        "kind": s.kind,
                        "status": s.status.value,
                        "describe": s.spec.describe(plan.target_schema, plan.tables) if s.spec else None,
                        "checks": s.spec.checks() if s.spec else None,
                    }
                    for s in tp.steps
                ],
            }
            for tp in plan.tenants
        ],
    }


def rollback_json(result: RollbackResult) -> dict[str, Any]:
    return {
        "run_id": str(result.run_id),
        "point": result.point,
        "tenants": list(result.tenants),
        "nothing": result.nothing,
        "steps": [
            {
                "tenant": r.tenant,
                "step": r.key,
                "kind": r.kind,
                "seconds": round(r.seconds, 3),
                "summary": r.summary,
                "details": dict(r.details),
            }
            for r in result.steps
        ],
        "cutovers_discarded": [c.describe() for c in result.discarded],
        "seconds_to_flags": None if result.seconds_to_flags is None else round(result.seconds_to_flags, 3),
        "seconds": round(result.seconds_total, 3),
        "stopped": result.stopped,
        "unfinished": list(result.unfinished),
        "resume": result.resume,
    }


def verify_json(result: VerifyResult) -> dict[str, Any]:
    return {
        "playbook": result.playbook,
        "digest": result.digest,
        "match": result.match,
        "tenants": [
            {
                "tenant": t.tenant,
                "mode": t.mode,
                "seconds": round(t.seconds, 3),
                "match": t.match,
                "tables": [{"table": f.table, **f.as_details()} for f in t.tables],
            }
            for t in result.tenants
        ],
    }


def diff_json(tenant: str, result: DiffResult) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    return {"tenant": tenant, "equal": result.equal, **data}


def approve_json(result: Approved) -> dict[str, Any]:
    return {**dataclasses.asdict(result), "tenants": list(result.tenants)}


def readiness_json(result: Sequence[Readiness]) -> dict[str, Any]:
    return {
        "ready": all(r.ok for r in result),
        "tenants": [
            {
                "tenant": r.tenant,
                "schema": r.schema,
                "app_role": r.app_role,
                "ready": r.ok,
                "missing": [dataclasses.asdict(m) for m in r.missing],
                "insert_proved": list(r.proved),
                "sequences": dict(r.sequences),
            }
            for r in result
        ],
    }
