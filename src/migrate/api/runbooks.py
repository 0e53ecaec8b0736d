"""runbook: the Markdown runbook of a playbook, from the same plan ``run`` follows (no I/O but files)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from migrate.api.settings import check_output
from migrate.errors import ArgumentError
from migrate.log import redact
from migrate.plan import build_plan
from migrate.plan.runbook import Rehearsal, Setting, StepFigures, render_runbook
from migrate.playbook import LoadedPlaybook, load_playbook
from migrate.playbook.model import UnleashFlags


def runbook(
    playbook: Path | str,
    tenants: Sequence[str] | None = None,
    *,
    report: Path | None = None,
    out: Path | None = None,
) -> str:
    """The runbook as Markdown: for the playbook's tenants (or ``tenants``), with the figures of a
    rehearsal's ``--report`` file when given; also written to ``out`` (whole, or not at all) when
    given. Reads files only: no database, no flag provider."""
    if out is not None:
        check_output(out, "--out")
    loaded = load_playbook(playbook)
    plan = build_plan(loaded, tenants=tenants)
    rehearsal = read_rehearsal(report) if report is not None else None
    words = ["migrate", "runbook", str(playbook)]
    words += [w for t in tenants or () for w in ("--tenant", t)]
    words += ["--report", str(report)] if report is not None else []
    text = redact(
        render_runbook(
            plan,
            str(playbook),
            settings_of(loaded),
            rehearsal=rehearsal,
            command=" ".join(shlex.quote(w) for w in words),
        )
    )
    if out is not None:
        partial = out.with_name(out.name + ".partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(out)
    return text


def settings_of(loaded: LoadedPlaybook) -> list[Setting]:
    """The environment variables the playbook names, with what each holds."""
    pb = loaded.playbook
    targets = pb.targets_by_name()
    out = [
        Setting(
            t.dsn_env,
            "the shared target database" + (f" of region {t.region}" if len(targets) > 1 else ""),
        )
        for t in targets.values()
    ]
    if pb.source.dsn_template_env:
        out.append(Setting(pb.source.dsn_template_env, "each tenant's source DSN, with {tenant} in it"))
    for tenant in loaded.tenants:
        if tenant.source_dsn_env:
            out.append(Setting(tenant.source_dsn_env, f"tenant {tenant.id}'s source database"))
    flags = pb.flags
    if isinstance(flags, UnleashFlags):
        out += [
            Setting(flags.url_env, "the Unleash server the application reads its flags from"),
            Setting(flags.admin_token_env, "an Unleash admin token (flips)"),
            Setting(flags.client_token_env, "an Unleash client token of the environment (confirms)"),
        ]
        if not flags.environment:
            out.append(Setting(flags.environment_env, "the Unleash environment to flip in"))
    else:
        out.append(Setting(flags.file_env, "the flag file the application reads"))
    return list({s.var: s for s in out}.values())


def _bad(path: Path, why: str) -> ArgumentError:
    return ArgumentError(
        f"{path} is not a rehearsal report: {why}",
        where="--report",
        hint="give the file 'migrate run PLAYBOOK --dry-run --report FILE' wrote",
    )


def read_rehearsal(path: Path) -> Rehearsal:
    """The figures of a ``--report`` file, or an ArgumentError naming what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ArgumentError(f"cannot read {path}: {exc.strerror}", where="--report") from None
    except json.JSONDecodeError as exc:
        raise _bad(path, f"not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("report_version") != 1:
        raise _bad(path, "no report_version 1")
    if not isinstance(data.get("tenants"), list):
        raise _bad(path, "no tenants")
    steps: dict[str, dict[str, StepFigures]] = {}
    for tenant in data["tenants"]:
        if not isinstance(tenant, dict) or not isinstance(tenant.get("steps"), list):
            raise _bad(path, "a tenant without steps")
        steps[str(tenant.get("tenant"))] = {
            str(s.get("step")): _figures(s) for s in tenant["steps"] if isinstance(s, dict)
        }
    return Rehearsal(
        path=str(path),
        run_id=str(data.get("run_id", "")),
        digest=str(data.get("playbook_digest", "")),
        outcome=str(data.get("outcome", "?")),
        seconds=float(data.get("seconds") or 0.0),
        dry_run=bool(data.get("dry_run")),
        steps=steps,
    )


def _figures(step: Mapping[str, Any]) -> StepFigures:
    details = step.get("details") if isinstance(step.get("details"), dict) else {}
    assert isinstance(details, dict)
    rows = details.get("copied_now")
    freeze = details.get("freeze_seconds")
    if freeze is None and isinstance(details.get("freeze_ms"), int | float):
        freeze = details["freeze_ms"] / 1000
    return StepFigures(
        outcome=str(step.get("outcome", "?")),
        seconds=float(step.get("seconds") or 0.0),
        rows=int(rows) if isinstance(rows, int) else None,
        freeze_seconds=float(freeze) if isinstance(freeze, int | float) else None,
    )
