"""What the isolation check found: findings (they fail it), informational findings, notes."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from typing import Literal

Severity = Literal["error", "info"]


@dataclass(frozen=True)
class Finding:
    table: str
    rule: str
    detail: str
    fix: str  # for an informational finding: the mitigation
    severity: Severity = "error"

    def line(self) -> str:
        if self.severity == "info":
            return f"info: {self.table}: {self.rule}: {self.detail} (mitigation: {self.fix})"
        return f"{self.table}: {self.rule}: {self.detail} (fix: {self.fix})"


@dataclass(frozen=True)
class IsolationReport:
    schema: str
    app_role: str
    findings: tuple[Finding, ...]  # each fails the check (exit 1)
    tables: tuple[str, ...]  # tenant tables found in the catalog
    probes: int  # live probes run whose outcome was judged
    notes: tuple[str, ...] = ()  # what could not be probed, and why
    informational: tuple[Finding, ...] = ()  # what RLS cannot hide; never a failure
    probed: tuple[str, ...] = ()  # tenant tables the probes acted on as the application
    tenant_context: str = "session"  # the behaviour the schema was held to

    @property
    def ok(self) -> bool:
        return not self.findings


@dataclass
class Collector:
    """Findings, informational findings and notes as the rules and probes make them."""

    findings: list[Finding] = field(default_factory=list)
    informational: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def find(self, table: str, rule: str, detail: str, fix: str) -> None:
        self.findings.append(Finding(table, rule, detail, fix))

    def inform(self, table: str, rule: str, detail: str, mitigation: str) -> None:
        self.informational.append(Finding(table, rule, detail, mitigation, "info"))

    def note(self, text: str) -> None:
        self.notes.append(text)


def dedupe(findings: list[Finding]) -> tuple[Finding, ...]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for f in findings:
        if (f.table, f.rule, f.detail) not in seen:
            seen.add((f.table, f.rule, f.detail))
            out.append(f)
    return tuple(out)


def sql_text(name: str) -> str:
    """One of this package's SQL files."""
    return (files("migrate.checks.isolation") / name).read_text()
