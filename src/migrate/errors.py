"""The one error tree of tenant-migrate, rendered once by the CLI.

::

    MigrateError                    every error the tool means to raise
    ├── InputError                  exit 2: the user can fix it by editing or typing
    │   ├── PlaybookError           a playbook or inventory file: file:line:field
    │   ├── ArgumentError           a command-line argument or option
    │   ├── SettingsError           an environment variable, a DSN, a password, a database name
    │   └── ResidencyRefused        a database is not in the tenant's region (or says none): no row moves
    └── RunFailure                  exit 1: the input was fine, the work did not succeed
        ├── StepFailed              a step's apply, verify or revert failed (tenant/phase/step)
        │   └── FlagStateUnknown    a flip was made but could not be confirmed in time
        ├── Unreachable             a server did not answer (refused, timed out, restarting)
        ├── CheckFailed             counts or checksums differ, an isolation probe got through
        ├── TenantLocked            another runner holds the tenant
        ├── LedgerBroken            the audit chain does not verify
        └── Interrupted             exit 130: stopped at a safe point on request (Ctrl-C, SIGTERM)

The exit codes are one contract, the same for every command and for source and
target alike: 0 success; 1 a step or check failed, or a server did not answer at
run time; 2 bad input or settings; 130 stopped on request at a safe point; 70 a
bug (internal error).

Anything else escaping to the CLI is a bug: it is reported as "internal error"
with the log file, and a traceback only with ``--debug``.

Every error carries ``message`` (what happened), ``where`` (``file:line: field``
or ``tenant/phase/step``) and ``hint`` (what to write or run instead). Driver
errors (psycopg, httpx, pydantic) are translated where they are caught, with
``raise … from exc``, so the original stays in the log and never in the message
shown to the user when it could hold a secret; ``from_driver`` is the one
translation of a database error met while working (redacted, placed).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from migrate.log import redact


class MigrateError(Exception):
    """Root of the tree: a message, where it happened and what to do instead."""

    exit_code: int = 1

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        hint: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint
        # Figures of a step that failed part-way (a cut-over's timings), for its state and ledger entry.
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        return f"{prefix}{self.message}"


class InputError(MigrateError):
    """The input is wrong (exit 2): a playbook, an argument or a setting."""

    exit_code = 2


class PlaybookError(InputError):
    """A playbook or inventory file does not load or does not make sense."""


class ArgumentError(InputError):
    """A command-line argument or option is wrong."""


class SettingsError(InputError):
    """An environment variable is missing or wrong: a DSN that does not parse, a password or a
    database name the server refuses. A server that does not answer is ``Unreachable``."""


class ResidencyRefused(InputError):
    """A target (or source) database does not carry the tenant's region: refused before any row moves.

    The settings point a tenant at a database whose recorded region is another one, or a
    regional target has no recorded region yet (``migrate residency set``)."""


class RunFailure(MigrateError):
    """The input was right but the work failed (exit 1)."""

    exit_code = 1


class StepFailed(RunFailure):
    """A step's apply, verify or revert failed for one tenant."""


class FlagStateUnknown(StepFailed):
    """A flag was written but its flip could not be confirmed in time: on or off is unknown.

    ``details`` are the step's figures (the snapshot to restore), recorded with the failure so
    the next run or rollback reads the real state first and acts on it.
    """

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        hint: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, where=where, hint=hint, details=details)


class Unreachable(RunFailure):
    """A server did not answer (connection refused, timed out, shutting down or starting up).

    Exit 1, not 2: the settings may well be right, the server was down when it was needed.
    """


class CheckFailed(RunFailure):
    """A validation or isolation check found a difference."""


class TenantLocked(RunFailure):
    """Another runner works on this tenant now."""


class LedgerBroken(RunFailure):
    """The ledger's hash chain does not verify."""


class Interrupted(RunFailure):
    """The run was asked to stop (Ctrl-C, SIGTERM) and stopped at a safe point; ``run`` resumes it."""

    exit_code = 130


def from_driver(exc: BaseException, where: str, *, as_type: type[RunFailure] | None = None) -> MigrateError:
    """The error to report for ``exc`` met at ``where``; never mutates ``exc``.

    A MigrateError keeps its own place, or gets ``where`` on a copy; anything else (a
    psycopg error) becomes a StepFailed (or ``as_type``) whose message is the driver's,
    redacted — psycopg names tables and columns, never the DSN, but redact anyway.
    """
    if isinstance(exc, MigrateError):
        if exc.where is not None:
            return exc
        placed = copy.copy(exc)  # keeps what a subclass carries (FlagStateUnknown's details)
        placed.where = where
        return placed
    return (as_type or StepFailed)(redact(str(exc).strip()), where=where)
