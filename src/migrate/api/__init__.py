"""The library facade: one function per command, each returning a result; nothing prints or exits.

By noun: ``runs`` (plan, run, approve, rollback), ``runbooks`` (runbook), ``state`` (status, flags
status), ``audit`` (ledger show, verify, export), ``checks`` (verify, diff,
isolation-check), ``flags`` (sync), ``schema`` (schema generate), ``residency``
(residency set and report), ``settings`` (environment variables to connections
and providers) and ``demo``. No module is
named like a command function (``api.run`` is always the function, whichever
module was imported first). Every command checks its arguments
and the playbook before any I/O: no connection opens, no alembic runs and no
file is written for a typo. The CLI imports this package only; the result
types it renders are re-exported here.

Names are imported on first use (PEP 562): ``import migrate.api`` costs nothing,
so ``migrate --help`` pays for no database driver, and alembic and SQLAlchemy are
imported only by the commands that create or upgrade the control schema.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from migrate.api.audit import (
        LedgerExport,
        LedgerKey,
        LedgerReport,
        ledger,
        ledger_export,
        ledger_keygen,
        ledger_public_keys,
    )
    from migrate.api.checks import (
        PlaybookIsolation,
        TargetIsolation,
        TenantFigures,
        VerifyResult,
        diff,
        isolation_check,
        isolation_check_targets,
        readiness,
        verify,
    )
    from migrate.api.flags import FlagsSync, FlagSummary, FlagSynced, flags_sync
    from migrate.api.residency import (
        ResidencyRecorded,
        ResidencyReport,
        TargetResidency,
        TenantResidency,
        residency_report,
        residency_set,
    )
    from migrate.api.runbooks import runbook
    from migrate.api.runs import approve, plan, rollback, rollback_preview, run
    from migrate.api.schema import schema_generate
    from migrate.api.settings import Environ, connect, environment, environments
    from migrate.api.state import (
        AcceptedVersion,
        CaptureNow,
        FlagsStatus,
        FrozenNow,
        NextCommand,
        SlotNow,
        Status,
        StepNow,
        TargetStatus,
        TenantFlags,
        TenantStatus,
        WaveStatus,
        flags_status,
        status,
    )
    from migrate.checks.diff import DiffResult
    from migrate.checks.isolation import Finding, IsolationReport
    from migrate.checks.readiness import Missing, Readiness
    from migrate.control.rollbacks import UnfinishedRollback
    from migrate.control.store import Holder
    from migrate.engine.gates import Approved
    from migrate.engine.rollback import Reverted, RollbackPreview, RollbackResult
    from migrate.engine.run import RunResult, StepResult, TenantResult
    from migrate.plan import Plan, render_text
    from migrate.schemagen.generate import GenerateResult
    from migrate.steps.context import ProgressEvent, ProgressSink

_HOME = {
    "AcceptedVersion": "migrate.api.state",
    "Approved": "migrate.engine.gates",
    "CaptureNow": "migrate.api.state",
    "FrozenNow": "migrate.api.state",
    "SlotNow": "migrate.api.state",
    "DiffResult": "migrate.checks.diff",
    "Environ": "migrate.api.settings",
    "Finding": "migrate.checks.isolation",
    "FlagSummary": "migrate.api.flags",
    "FlagSynced": "migrate.api.flags",
    "FlagsStatus": "migrate.api.state",
    "FlagsSync": "migrate.api.flags",
    "GenerateResult": "migrate.schemagen.generate",
    "Holder": "migrate.control.store",
    "IsolationReport": "migrate.checks.isolation",
    "LedgerExport": "migrate.api.audit",
    "LedgerKey": "migrate.api.audit",
    "LedgerReport": "migrate.api.audit",
    "Missing": "migrate.checks.readiness",
    "NextCommand": "migrate.api.state",
    "Plan": "migrate.plan",
    "Readiness": "migrate.checks.readiness",
    "PlaybookIsolation": "migrate.api.checks",
    "ProgressEvent": "migrate.steps.context",
    "ProgressSink": "migrate.steps.context",
    "ResidencyRecorded": "migrate.api.residency",
    "ResidencyReport": "migrate.api.residency",
    "Reverted": "migrate.engine.rollback",
    "RollbackPreview": "migrate.engine.rollback",
    "RollbackResult": "migrate.engine.rollback",
    "RunResult": "migrate.engine.run",
    "Status": "migrate.api.state",
    "StepNow": "migrate.api.state",
    "StepResult": "migrate.engine.run",
    "TargetIsolation": "migrate.api.checks",
    "TargetResidency": "migrate.api.residency",
    "TargetStatus": "migrate.api.state",
    "TenantFigures": "migrate.api.checks",
    "TenantFlags": "migrate.api.state",
    "TenantResidency": "migrate.api.residency",
    "TenantResult": "migrate.engine.run",
    "TenantStatus": "migrate.api.state",
    "UnfinishedRollback": "migrate.control.rollbacks",
    "VerifyResult": "migrate.api.checks",
    "WaveStatus": "migrate.api.state",
    "approve": "migrate.api.runs",
    "connect": "migrate.api.settings",
    "diff": "migrate.api.checks",
    "environment": "migrate.api.settings",
    "environments": "migrate.api.settings",
    "flags_status": "migrate.api.state",
    "flags_sync": "migrate.api.flags",
    "isolation_check": "migrate.api.checks",
    "isolation_check_targets": "migrate.api.checks",
    "ledger": "migrate.api.audit",
    "ledger_export": "migrate.api.audit",
    "ledger_keygen": "migrate.api.audit",
    "ledger_public_keys": "migrate.api.audit",
    "plan": "migrate.api.runs",
    "render_text": "migrate.plan",
    "residency_report": "migrate.api.residency",
    "residency_set": "migrate.api.residency",
    "readiness": "migrate.api.checks",
    "rollback": "migrate.api.runs",
    "rollback_preview": "migrate.api.runs",
    "run": "migrate.api.runs",
    "runbook": "migrate.api.runbooks",
    "schema_generate": "migrate.api.schema",
    "status": "migrate.api.state",
    "verify": "migrate.api.checks",
}


def __getattr__(name: str) -> Any:
    """Import a command or result type where it lives, the first time it is asked for."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'migrate.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = [
    "AcceptedVersion",
    "Approved",
    "CaptureNow",
    "DiffResult",
    "Environ",
    "Finding",
    "FlagSummary",
    "FlagSynced",
    "FlagsStatus",
    "FlagsSync",
    "FrozenNow",
    "GenerateResult",
    "Holder",
    "IsolationReport",
    "LedgerExport",
    "LedgerKey",
    "LedgerReport",
    "Missing",
    "NextCommand",
    "Plan",
    "PlaybookIsolation",
    "ProgressEvent",
    "ProgressSink",
    "Readiness",
    "ResidencyRecorded",
    "ResidencyReport",
    "Reverted",
    "RollbackPreview",
    "RollbackResult",
    "RunResult",
    "SlotNow",
    "Status",
    "StepNow",
    "StepResult",
    "TargetIsolation",
    "TargetResidency",
    "TargetStatus",
    "TenantFigures",
    "TenantFlags",
    "TenantResidency",
    "TenantResult",
    "TenantStatus",
    "UnfinishedRollback",
    "VerifyResult",
    "WaveStatus",
    "approve",
    "connect",
    "diff",
    "environment",
    "environments",
    "flags_status",
    "flags_sync",
    "isolation_check",
    "isolation_check_targets",
    "ledger",
    "ledger_export",
    "ledger_keygen",
    "ledger_public_keys",
    "plan",
    "readiness",
    "render_text",
    "residency_report",
    "residency_set",
    "rollback",
    "rollback_preview",
    "run",
    "runbook",
    "schema_generate",
    "status",
    "verify",
]
