"""The library facade: one function per command, each returning a result; nothing prints or exits.

By noun: ``run`` (plan, run, approve, rollback), ``status`` (status, flags
status), ``ledger``, ``checks`` (verify, diff, isolation-check), ``flags``
(sync), ``schema`` (schema generate), ``settings`` (environment variables to
connections and providers) and ``demo``. Every command checks its arguments
and the playbook before any I/O: no connection opens, no alembic runs and no
file is written for a typo. The CLI imports this package only; the result
types it renders are re-exported here.

Alembic and SQLAlchemy are imported only by the commands that create or
upgrade the control schema, so ``migrate --help`` does not pay for them.
"""

from __future__ import annotations

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
