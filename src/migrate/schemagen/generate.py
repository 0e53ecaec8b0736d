"""``migrate schema generate``: reflect the sources, build the shared schema, report, write.

The first source is the model of the shared schema; every source (one is enough)
feeds the consolidation report. The revision is written even when the report has
errors: the schema is right, the data is what must change before any copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from migrate.catalog.citus import distribute
from migrate.catalog.ddl import Note, Options, SharedSchema, build
from migrate.catalog.reflect import SourceSchema, reflect_schema
from migrate.log import get_logger
from migrate.schemagen.consolidate import UniqueAcrossTenants, consolidate
from migrate.schemagen.revision import RevisionFile, write
from migrate.schemagen.sources import Sources

_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class GenerateResult:
    revision: RevisionFile
    shared: SharedSchema
    sources: tuple[str, ...]
    notes: tuple[Note, ...]  # the generation's and the consolidation's, errors first

    @property
    def errors(self) -> tuple[Note, ...]:
        return tuple(n for n in self.notes if n.severity == "error")

    @property
    def ok(self) -> bool:
        return not self.errors


def generate(
    sources: Sources,
    *,
    source_schema: str,
    options: Options,
    out: Path,
    unique_across: Sequence[UniqueAcrossTenants] = (),
    groups: Mapping[str, Sequence[str]] | None = None,
    tables: Sequence[str] | None = None,
    citus: bool = False,
) -> GenerateResult:
    """Reflect every source, write the revision built from the first, and report on all of them —
    per group of sources (``groups``: a target's name → its sources' labels) when given: sources
    that land in different shared databases cannot collide."""
    log = get_logger()
    schemas: dict[str, SourceSchema] = sources.each(lambda _label, conn: reflect_schema(conn, source_schema))
    first = next(iter(schemas))
    model = schemas[first]
    missing: list[Note] = []
    if tables is not None:
        # The playbook's tables only: every other table (and the views over it) is named by the
        # build, never silently left out; a table the playbook names that the source lacks is drift.
        missing = [
            Note(
                "error",
                "table-missing",
                name,
                f"the playbook names table {name}, which source {first} does not have",
                "bring the source to the schema version that has it, or remove it from 'tables:'",
            )
            for name in tables
            if name not in model.tables
        ]
        model = model.restricted([*tables, *options.global_tables], globals_=options.global_tables)
    shared = build(model, options)
    if citus:  # created and distributed in foreign-key order; what Citus refuses joins the notes
        shared = distribute(shared, model, options)
        shared = replace(
            shared,
            notes=(
                *shared.notes,
                *(
                    Note(
                        "info",
                        "citus-unique-across-tenants",
                        f"{u.table}({', '.join(u.columns)})",
                        "a unique key without the distribution column cannot be enforced on Citus: the "
                        "report checks today's values only",
                        "keep the values unique in the application, or claim each in a reference table "
                        "keyed by the value",
                    )
                    for u in unique_across
                ),
            ),
        )
    notes = [*missing, *shared.notes]
    if groups is None:
        notes += consolidate(sources, schemas, options, unique_across)
    for target, labels in (groups or {}).items():
        found = consolidate(
            sources.only(labels),
            {label: schemas[label] for label in labels},
            options,
            unique_across,
        )
        notes += [replace(note, target=target) for note in found]
    notes.sort(key=lambda n: _ORDER[n.severity])
    revision = write(shared, out, sources=sources.labels)
    log.info(
        "schema_generated",
        revision=revision.revision,
        path=str(revision.path),
        unchanged=revision.unchanged,
        tenant_tables=len(shared.tenant_tables),
        errors=sum(1 for n in notes if n.severity == "error"),
    )
    return GenerateResult(revision, shared, tuple(sources.labels), tuple(notes))
