"""Which functions, aggregates and triggers the shared schema carries, and their statements.

A function is carried when the tool can tell it only computes from its arguments (or, for a
trigger function, from the row it fires for): its body names none of the schema's
relations and runs no dynamic SQL, it is written in SQL or PL/pgSQL, and its signature does
not use a table's row type (which gains ``tenant_id`` in the shared schema). It is
re-created in the shared schema with its ``search_path`` pinned to that schema (then
``pg_catalog``), so an unqualified name in its body can never resolve to another schema's
object. A function that reads tables would, called by a role exempt from row-level
security, see every tenant's rows: the tool cannot prove it safe, so it names it and the
relations it reads, and a person acknowledges leaving it behind (``schema: leave_behind``).

An aggregate is carried when its transition, final and combine functions are (or are
built in) and it uses no option the tool does not re-create. A trigger is carried when it
fires per row (it sees that row only, and so that row's tenant) and its function is
carried or built in (``tsvector_update_trigger``). Whatever depends on something left
behind is left behind with it, saying so.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from psycopg import sql

from migrate.catalog import sqltext
from migrate.catalog.reflect import Routine, SourceSchema, Trigger, layered_order

_LANGUAGES = ("sql", "plpgsql")


@dataclass(frozen=True)
class Verdicts:
    """What the build carries, and why the rest cannot be."""

    routines: tuple[Routine, ...]  # carried, in creation order
    triggers: tuple[Trigger, ...]  # carried
    blocked: Mapping[str, str]  # subject ("function public.f(integer)") -> why


def subject(schema: str, r: Routine) -> str:
    return f"{r.kind_word} {schema}.{r.signature}"


def trigger_subject(schema: str, t: Trigger) -> str:
    return f"trigger {schema}.{t.table}.{t.name}"


def _names(text: str) -> set[str]:
    return {t.name for t in sqltext.tokens(text) if t.kind in ("ident", "qident") and t.name}


def _problem(r: Routine, source: SourceSchema, relations: Collection[str]) -> str | None:
    if r.kind == "w":
        return "a window function: written in C, it cannot be re-created by the tool"
    if r.kind == "a":
        agg = r.aggregate
        if agg is None or agg.kind != "n" or agg.unsupported:
            return "an ordered-set, moving or serialised aggregate: the tool re-creates plain aggregates only"
        return None
    if r.language not in _LANGUAGES:
        return f"written in {r.language}: the tool re-creates SQL and PL/pgSQL functions only"
    tables = set(source.tables)
    for text in (r.result, r.arguments):
        rowtypes = sorted(_names(text) & tables)
        if rowtypes:
            return (
                f"its signature uses the row type of table {', '.join(rowtypes)}, which gains "
                "tenant_id in the shared schema"
            )
    words = _names(r.body)
    read = sorted(words & set(relations))
    if read:
        return (
            f"reads {', '.join(read)}: called by a role exempt from row-level security it would see "
            "every tenant's rows"
        )
    if r.language == "plpgsql" and "execute" in words:
        return "runs dynamic SQL (EXECUTE): the tool cannot tell which tables it reads"
    return None


def _calls(r: Routine, schema: str, by_name: Mapping[str, list[Routine]]) -> set[str]:
    """Subjects of this schema's routines it calls (by name: overloads count together)."""
    names: set[str] = set()
    if r.aggregate is not None:
        for part in (r.aggregate.transition, r.aggregate.final, r.aggregate.combine):
            toks = [t for t in sqltext.tokens(part or "") if t.name]
            if len(toks) == 2 and toks[0].name == schema:
                names.add(str(toks[1].name))
    else:
        names = _names(r.body)
    return {subject(schema, q) for n in names & set(by_name) for q in by_name[n] if q is not r}


def decide(source: SourceSchema, relations: Collection[str]) -> Verdicts:
    """Which routines and triggers are carried; ``relations``: every relation name of the schema."""
    schema = source.name
    by_name: dict[str, list[Routine]] = {}
    for r in source.routines:
        by_name.setdefault(r.name, []).append(r)
    by_subject = {subject(schema, r): r for r in source.routines}
    blocked: dict[str, str] = {}
    for key, r in by_subject.items():
        problem = _problem(r, source, relations)
        if problem is not None:
            blocked[key] = problem
    calls = {key: _calls(r, schema, by_name) for key, r in by_subject.items()}
    changed = True
    while changed:  # calling something left behind leaves the caller behind
        changed = False
        for key in by_subject:
            if key in blocked:
                continue
            gone = sorted(c for c in calls[key] if c in blocked)
            if gone:
                blocked[key] = f"calls {gone[0]}, which is not carried"
                changed = True
    keep = {k: calls[k] & (set(by_subject) - set(blocked)) for k in by_subject if k not in blocked}
    order = layered_order(keep, lambda waiting, _done: waiting)
    triggers: list[Trigger] = []
    for t in source.triggers:
        key = trigger_subject(schema, t)
        function = f"function {t.function_schema}.{t.function}"
        if not t.per_row:
            blocked[key] = "fires once per statement, not per row: it is not bound to one tenant's row"
        elif t.function_schema == schema and function in blocked:
            blocked[key] = f"runs {function}, which is not carried"
        elif t.function_schema not in (schema, "pg_catalog"):
            blocked[key] = f"runs {function} of another schema"
        else:
            triggers.append(t)
    return Verdicts(tuple(by_subject[k] for k in order), tuple(triggers), blocked)


def _requalify_body(text: str, rq: Callable[[str], str]) -> str:
    """Requalify inside the dollar-quoted body too (a call of another carried function)."""
    out = []
    for tok in sqltext.tokens(text):
        if tok.kind == "dollar":
            tag_end = tok.text.index("$", 1) + 1
            tag = tok.text[:tag_end]
            out.append(tag + rq(tok.text[tag_end : -len(tag)]) + tag)
        else:
            out.append(tok.text)
    return "".join(out)


def routine_sql(r: Routine, *, schema: sql.Identifier, search_path: str, rq: Callable[[str], str]) -> str:
    """CREATE FUNCTION / PROCEDURE / AGGREGATE in the shared schema, with the pinned search_path."""
    if r.aggregate is not None:
        agg = r.aggregate
        parts = [f"SFUNC = {rq(agg.transition)}", f"STYPE = {rq(agg.state_type)}"]
        if agg.final:
            parts.append(f"FINALFUNC = {rq(agg.final)}")
        if agg.combine:
            parts.append(f"COMBINEFUNC = {rq(agg.combine)}")
        if agg.initial is not None:
            parts.append(f"INITCOND = {sql.Literal(agg.initial).as_string(None)}")
        return (
            sql.SQL("CREATE AGGREGATE {}.{}").format(schema, sql.Identifier(r.name)).as_string(None)
            + f"({rq(r.args)}) ({', '.join(parts)})"
        )
    lines = (r.definition or "").rstrip().split("\n")
    start = next(
        (i for i, line in enumerate(lines) if line.startswith("AS ") or line.startswith("BEGIN ATOMIC")),
        len(lines),
    )
    header = [line for line in lines[:start] if not line.strip().upper().startswith("SET SEARCH_PATH")]
    header[0] = header[0].replace("CREATE OR REPLACE ", "CREATE ", 1)
    header.append(f" SET search_path TO {search_path}")
    return rq("\n".join(header)) + "\n" + _requalify_body("\n".join(lines[start:]), rq)


def drop_sql(r: Routine, *, schema: sql.Identifier, rq: Callable[[str], str]) -> str:
    what = {"a": "AGGREGATE", "p": "PROCEDURE"}.get(r.kind, "FUNCTION")
    name = sql.SQL("{}.{}").format(schema, sql.Identifier(r.name)).as_string(None)
    return f"DROP {what} IF EXISTS {name}({rq(r.args)})"
