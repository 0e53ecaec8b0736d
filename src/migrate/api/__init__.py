"""The library facade: one function per command, each returning a result; nothing prints or exits.

By noun: ``run`` (plan, run, approve, rollback), ``status`` (status, flags
status), ``ledger``, ``checks`` (verify, diff, isolation-check), ``flags``
(sync), ``schema`` (schema generate), ``settings`` (environment variables to
connections and providers) and ``demo``. Every command checks its arguments
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
    from migrate.api.checks import TenantFigures, VerifyResult, diff, isolation_check, verify
    from migrate.api.flags import FlagsSync, FlagSummary, FlagSynced, flags_sync
    from migrate.api.ledger import LedgerExport, LedgerReport, ledger, ledger_export
    from migrate.api.run import approve, plan, rollback, rollback_preview, run
    from migrate.api.schema import schema_generate
    from migrate.api.settings import Environ, connect, environment
    from migrate.api.status import (
        AcceptedVersion,
        FlagsStatus,
        NextCommand,
        Status,
        StepNow,
        TenantFlags,
        TenantStatus,
        WaveStatus,
        flags_status,
        status,
    )
    from migrate.checks.diff import DiffResult
    from migrate.checks.isolation import Finding, IsolationReport
    from migrate.control.store import Holder
    from migrate.engine.gates import Approved
    from migrate.engine.rollback import Reverted, RollbackPreview, RollbackResult
    from migrate.engine.run import RunResult, StepResult, TenantResult
    from migrate.plan import Plan, render_text
    from migrate.schemagen.generate import GenerateResult
    from migrate.steps.context import ProgressEvent, ProgressSink

_HOME = {
    "AcceptedVersion": "migrate.api.status",
    "Approved": "migrate.engine.gates",
    "DiffResult": "migrate.checks.diff",
    "Environ": "migrate.api.settings",
    "Finding": "migrate.checks.isolation",
    "FlagSummary": "migrate.api.flags",
    "FlagSynced": "migrate.api.flags",
    "FlagsStatus": "migrate.api.status",
    "FlagsSync": "migrate.api.flags",
    "GenerateResult": "migrate.schemagen.generate",
    "Holder": "migrate.control.store",
    "IsolationReport": "migrate.checks.isolation",
    "LedgerExport": "migrate.api.ledger",
    "LedgerReport": "migrate.api.ledger",
    "NextCommand": "migrate.api.status",
    "Plan": "migrate.plan",
    "ProgressEvent": "migrate.steps.context",
    "ProgressSink": "migrate.steps.context",
    "Reverted": "migrate.engine.rollback",
    "RollbackPreview": "migrate.engine.rollback",
    "RollbackResult": "migrate.engine.rollback",
    "RunResult": "migrate.engine.run",
    "Status": "migrate.api.status",
    "StepNow": "migrate.api.status",
    "StepResult": "migrate.engine.run",
    "TenantFigures": "migrate.api.checks",
    "TenantFlags": "migrate.api.status",
    "TenantResult": "migrate.engine.run",
    "TenantStatus": "migrate.api.status",
    "VerifyResult": "migrate.api.checks",
    "WaveStatus": "migrate.api.status",
    "approve": "migrate.api.run",
    "connect": "migrate.api.settings",
    "diff": "migrate.api.checks",
    "environment": "migrate.api.settings",
    "flags_status": "migrate.api.status",
    "flags_sync": "migrate.api.flags",
    "isolation_check": "migrate.api.checks",
    "ledger": "migrate.api.ledger",
    "ledger_export": "migrate.api.ledger",
    "plan": "migrate.api.run",
    "render_text": "migrate.plan",
    "rollback": "migrate.api.run",
    "rollback_preview": "migrate.api.run",
    "run": "migrate.api.run",
    "schema_generate": "migrate.api.schema",
    "status": "migrate.api.status",
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
    "DiffResult",
    "Environ",
    "Finding",
    "FlagSummary",
    "FlagSynced",
    "FlagsStatus",
    "FlagsSync",
    "GenerateResult",
    "Holder",
    "IsolationReport",
    "LedgerExport",
    "LedgerReport",
    "NextCommand",
    "Plan",
    "ProgressEvent",
    "ProgressSink",
    "Reverted",
    "RollbackPreview",
    "RollbackResult",
    "RunResult",
    "Status",
    "StepNow",
    "StepResult",
    "TenantFigures",
    "TenantFlags",
    "TenantResult",
    "TenantStatus",
    "VerifyResult",
    "WaveStatus",
    "approve",
    "connect",
    "diff",
    "environment",
    "flags_status",
    "flags_sync",
    "isolation_check",
    "ledger",
    "ledger_export",
    "plan",
    "render_text",
    "rollback",
    "rollback_preview",
    "run",
    "schema_generate",
    "status",
    "verify",
]
