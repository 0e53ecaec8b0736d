"""Machine reports of a run for CI: ``--report FILE.json`` and ``--junit FILE.xml``.

Both say, per tenant and per step, the outcome, the time it took and the
validation figures; both are written whole or not at all (a ``.partial`` file
renamed into place), so a CI job never reads half a report.
"""

from __future__ import annotations

import io
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from migrate.log import redact, redact_value

if TYPE_CHECKING:
    from migrate.api import RunResult, StepResult, TenantResult

REPORT_VERSION = 1


def _error(tenant: TenantResult) -> dict[str, Any] | None:
    if tenant.error is None:
        return None
    return {
        "type": type(tenant.error).__name__,
        "message": redact(tenant.error.message),
        "where": tenant.error.where,
        "hint": tenant.error.hint,
    }


def _validation(step: StepResult) -> dict[str, Any] | None:
    if "tables" not in step.details or "match" not in step.details:  # not a validation's figures
        return None
    return {
        "match": step.details.get("match"),
        "mode": step.details.get("mode"),
        "tables": step.details["tables"],
    }


def report_json(result: RunResult, playbook: str) -> dict[str, Any]:
    """The run as one JSON document (version 1): run, waves, tenants, steps."""
    return {
        "report_version": REPORT_VERSION,
        "run_id": str(result.run_id),
        "playbook": playbook,
        "playbook_digest": result.digest,
        "dry_run": result.dry_run,
        "outcome": result.outcome,
        "seconds": round(result.seconds, 3),
        "warnings": list(result.warnings),
        "replanned": list(result.replanned) if result.replanned else None,
        "waves": [{"wave": w.name, "stage": w.stage, "note": w.note} for w in result.waves],
        "tenants": [
            {
                "tenant": t.tenant,
                "wave": t.wave,
                "outcome": t.outcome,
                "note": t.note,
                "seconds": round(t.seconds, 3),
                "rows_copied": t.rows_copied_now,
                "error": _error(t),
                "steps": [
                    {
                        "step": s.key,
                        "kind": s.kind,
                        "outcome": s.outcome,
                        "seconds": round(s.seconds, 3),
                        "validation": _validation(s),
                        "details": json.loads(json.dumps(dict(s.details), default=str)),
                    }
                    for s in t.steps
                ],
            }
            for t in result.tenants
        ],
    }


def report_junit(result: RunResult, playbook: str) -> ET.Element:
    """JUnit XML: one testsuite per tenant, one testcase per step (CI systems show it natively)."""
    label = "rehearsal" if result.dry_run else "run"
    suites = ET.Element("testsuites", name=f"migrate {label} {playbook}", time=f"{result.seconds:.3f}")
    for tenant in result.tenants:
        suite = ET.SubElement(suites, "testsuite", name=tenant.tenant, time=f"{tenant.seconds:.3f}")
        counts = {"failures": 0, "skipped": 0}
        for step in (s for s in tenant.steps if s.kind != "rollback_point"):
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"{tenant.tenant}.{step.key.split('/')[0]}",
                name=step.key,
                time=f"{step.seconds:.3f}",
            )
            validation = _validation(step)
            if validation is not None:
                ET.SubElement(case, "system-out").text = json.dumps(validation, sort_keys=True, default=str)
            if step.outcome == "failed":
                counts["failures"] += 1
                failure = ET.SubElement(
                    case, "failure", message=redact(step.error or "failed"), type="failed"
                )
                failure.text = tenant.error.hint if tenant.error and tenant.error.hint else None
            elif step.outcome in ("skipped", "stopped"):
                counts["skipped"] += 1
                ET.SubElement(
                    case, "skipped", message="already done" if step.outcome == "skipped" else "stopped"
                )
        if tenant.outcome != "done" and not any(s.outcome in ("failed", "stopped") for s in tenant.steps):
            # Locked, waiting or not started: no step ran, the tenant itself is the testcase.
            case = ET.SubElement(suite, "testcase", classname=tenant.tenant, name=tenant.outcome, time="0")
            message = redact(tenant.error.message) if tenant.error else (tenant.note or tenant.outcome)
            if tenant.outcome == "locked":
                counts["failures"] += 1
                ET.SubElement(case, "failure", message=message, type="locked")
            else:
                counts["skipped"] += 1
                ET.SubElement(case, "skipped", message=f"{tenant.outcome}: {message}")
        suite.set("tests", str(len(suite.findall("testcase"))))
        suite.set("failures", str(counts["failures"]))
        suite.set("errors", "0")
        suite.set("skipped", str(counts["skipped"]))
    return suites


@contextmanager
def _whole(path: Path) -> Iterator[IO[str]]:
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def write_json(path: Path, result: RunResult, playbook: str) -> None:
    document = json.loads(json.dumps(report_json(result, playbook), default=str))
    with _whole(path) as fh:
        json.dump(redact_value(document), fh, indent=2, sort_keys=False)
        fh.write("\n")


def write_junit(path: Path, result: RunResult, playbook: str) -> None:
    tree = ET.ElementTree(report_junit(result, playbook))
    ET.indent(tree)
    text = io.StringIO()
    tree.write(text, encoding="unicode", xml_declaration=True)
    with _whole(path) as fh:
        fh.write(redact(text.getvalue()) + "\n")
