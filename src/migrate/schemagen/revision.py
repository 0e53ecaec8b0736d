"""Write the shared schema as an alembic revision: a file people review, commit and apply.

``--out DIR`` is either an existing alembic script directory (it has ``env.py``:
the revision goes into ``versions/`` on top of the current head) or a new or
empty folder, which gets a small alembic project of its own (``alembic.ini``,
``env.py`` reading ``MIGRATE_TARGET_DSN``, ``script.py.mako``, ``versions/``), so
``alembic -c DIR/alembic.ini upgrade head`` applies it and ``downgrade base``
reverts it.

The revision id is a digest of the statements and of the revision it follows:
generating again from an unchanged source gives the same file, and is reported
as unchanged instead of adding a second revision that would create the tables twice.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path

from migrate.catalog.ddl import SharedSchema, Statement
from migrate.errors import ArgumentError

_SCAFFOLD = ("alembic.ini", "env.py", "script.py.mako")


@dataclass(frozen=True)
class RevisionFile:
    path: Path
    revision: str
    down_revision: str | None
    scaffolded: bool  # a new alembic project was written around it
    unchanged: bool  # the same revision was already there


def _py_string(text: str) -> str:
    """A Python literal for a statement: triple-quoted when that is safe, else repr()."""
    if "\\" not in text and '"""' not in text and not text.endswith('"'):
        return '"""' + text + '"""'
    return repr(text)


def _docstring(text: str) -> str:
    """Text that cannot end the revision's docstring early."""
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def _statements(statements: tuple[Statement, ...]) -> str:
    lines = []
    kind = None
    for st in statements:
        if st.kind != kind:
            lines.append(f"    # {st.kind}")
            kind = st.kind
        lines.append(f"    {_py_string(st.sql)},")
    return "\n".join(lines)


def revision_id(shared: SharedSchema, down_revision: str | None) -> str:
    digest = hashlib.sha256()
    for st in (*shared.upgrade, *shared.downgrade):
        digest.update(st.sql.encode())
        digest.update(b"\0")
    digest.update((down_revision or "").encode())
    return digest.hexdigest()[:12]


def render(shared: SharedSchema, *, revision: str, down_revision: str | None, sources: list[str]) -> str:
    """The revision file's text."""
    template = (files("migrate.schemagen") / "revision.py.tmpl").read_text()
    notes = "\n".join(
        " ".join(f"#   {n.severity:<7} {n.subject}: {n.detail}".split())
        for n in shared.notes
        if n.severity != "info"
    )
    values = {
        "schema": shared.schema,
        "sources": _docstring(", ".join(sources) or "(none)"),
        "tenant_tables": ", ".join(shared.tenant_tables) or "none",
        "global_tables": ", ".join(shared.global_tables) or "none",
        "revision": revision,
        "down_revision": repr(down_revision),
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "notes": notes or "#   (nothing)",
        "upgrade": _statements(shared.upgrade),
        "downgrade": _statements(shared.downgrade),
    }
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], template)


def _slug(schema: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", schema.lower()).strip("_") or "schema"


def write(shared: SharedSchema, out: Path, *, sources: list[str]) -> RevisionFile:
    """Write the revision into ``out`` (scaffolding an alembic project when it is new or empty)."""
    from alembic.script import ScriptDirectory  # 0.4 s to import: only for this command
    from alembic.util.exc import CommandError

    if out.exists() and not out.is_dir():
        raise ArgumentError(f"{out} is a file", where="--out", hint="give a folder for the alembic project")
    scaffold = not out.exists() or not any(out.iterdir())
    if not scaffold and not (out / "env.py").is_file():
        raise ArgumentError(
            f"{out} is neither empty nor an alembic script directory (no env.py)",
            where="--out",
            hint="give a new folder, or the folder of your alembic project (the one with env.py)",
        )
    down: str | None = None
    if not scaffold:
        try:
            heads = ScriptDirectory(str(out)).get_heads()
        except CommandError as exc:
            raise ArgumentError(f"cannot read the alembic revisions in {out}: {exc}", where="--out") from exc
        if len(heads) > 1:
            raise ArgumentError(
                f"{out} has several heads ({', '.join(heads)})",
                where="--out",
                hint="merge them first: alembic merge heads",
            )
        down = heads[0] if heads else None
    rev = revision_id(shared, down)
    versions = out / "versions"
    path = versions / f"{rev}_shared_schema_{_slug(shared.schema)}.py"
    if down is not None and rev != down:
        # Generating again on top of our own unchanged revision: same statements, same file.
        previous = revision_id(shared, _down_of(out, down))
        if previous == down:
            return RevisionFile(_find(versions, down), down, _down_of(out, down), False, True)
    if path.exists():
        return RevisionFile(path, rev, down, False, True)
    versions.mkdir(parents=True, exist_ok=True)
    if scaffold:
        for name in _SCAFFOLD:
            text = (files("migrate.schemagen") / f"scaffold_{name}.tmpl").read_text()
            (out / name).write_text(text.replace("{{schema}}", shared.schema))
    path.write_text(render(shared, revision=rev, down_revision=down, sources=sources))
    return RevisionFile(path, rev, down, scaffold, False)


def _down_of(out: Path, revision: str) -> str | None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(out)).get_revision(revision)
    down = script.down_revision if script is not None else None
    return down if isinstance(down, str) else None


def _find(versions: Path, revision: str) -> Path:
    found = sorted(versions.glob(f"{revision}_*.py"))
    return found[0] if found else versions / f"{revision}.py"
