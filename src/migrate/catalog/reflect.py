"""Read a source schema from the catalog: tables, columns, keys, types, indexes, views.

The catalog's own renderings (``format_type``, ``pg_get_expr``,
``pg_get_constraintdef``, ``pg_get_indexdef``, ``pg_get_viewdef``) are kept as
text: they are PostgreSQL's canonical spelling of a type, a default or a
definition, not user input, and they are what the shared schema must say to hold
and check the same values. They are read with ``search_path = pg_catalog``, so
every name outside ``pg_catalog`` comes schema-qualified and can be moved to the
target schema without guessing (see sqltext.py).

``reflect()`` is what every tenant's run needs (tables, columns, keys); the
generator and the schema step read the rest with ``reflect_schema()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib.resources import files
from typing import Any

import psycopg

from migrate.catalog.sqltext import tokens
from migrate.errors import StepFailed


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type() with search_path = pg_catalog, e.g. "numeric(12,2)", "public.mood"
    not_null: bool
    default: str | None  # pg_get_expr(); None for identity, serial and generated columns
    identity: bool
    identity_kind: str = ""  # "a" GENERATED ALWAYS, "d" BY DEFAULT, "" none
    generated: str | None = None  # expression of a STORED generated column
    serial: bool = False  # default was nextval() of a sequence the column owns
    collation: str | None = None  # COLLATE clause when not the type's default
    comment: str | None = None
    sequence: str | None = None  # the schema's sequence a nextval() default draws from, unowned

    @property
    def defaulted(self) -> bool:
        """An insert may leave it out: identity, serial or a default (generated columns excluded)."""
        return bool(self.identity_kind) or self.serial or self.default is not None

    @property
    def sequenced(self) -> bool:
        """Numbered by a sequence (identity or serial): the consolidation report names it."""
        return bool(self.identity_kind) or self.serial


@dataclass(frozen=True)
class Key:
    """A primary key or unique constraint."""

    name: str
    columns: tuple[str, ...]
    deferrable: bool = False
    deferred: bool = False
    nulls_not_distinct: bool = False


@dataclass(frozen=True)
class ForeignKey:
    name: str
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]
    ref_schema: str | None = None  # None: the same schema
    on_update: str = "a"  # pg_constraint.confupdtype: a no action, r restrict, c cascade, n null, d default
    on_delete: str = "a"
    match_full: bool = False
    deferrable: bool = False
    deferred: bool = False
    delete_set_columns: tuple[str, ...] = ()  # ON DELETE SET NULL (cols) / SET DEFAULT (cols)


@dataclass(frozen=True)
class Check:
    name: str
    definition: str  # pg_get_constraintdef(): "CHECK ((estimate >= (0)::numeric))"
    validated: bool = True


@dataclass(frozen=True)
class Index:
    """An index no constraint owns: secondary, partial or on expressions."""

    name: str
    definition: str  # pg_get_indexdef()
    unique: bool
    method: str  # btree, gin, gist, …


@dataclass(frozen=True)
class SourceTable:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    uniques: tuple[tuple[str, ...], ...]
    foreign_keys: tuple[ForeignKey, ...]
    primary_key_name: str | None = None
    unique_keys: tuple[Key, ...] = ()
    checks: tuple[Check, ...] = ()
    indexes: tuple[Index, ...] = ()
    partition_key: str | None = None  # pg_get_partkeydef(), e.g. "RANGE (created_at)"
    primary_key_info: Key | None = None
    comment: str | None = None
    # Declared on its partitions: they order the load (a payment partition's key to rental means
    # payment loads after rental) as the table's own do.
    partition_foreign_keys: tuple[ForeignKey, ...] = ()

    @property
    def all_foreign_keys(self) -> tuple[ForeignKey, ...]:
        return self.foreign_keys + self.partition_foreign_keys

    @property
    def column_names(self) -> tuple[str, ...]:
        """The columns a copy writes: every column but the generated ones, which the target computes."""
        return tuple(c.name for c in self.columns if c.generated is None)

    def signature(self) -> tuple[tuple[str, str], ...]:
        """(name, type) of every column: what must match between tenants."""
        return tuple((c.name, c.type) for c in self.columns)


@dataclass(frozen=True)
class SourceSequence:
    """A sequence no column owns that a column default draws from: carried with its settings."""

    name: str
    type: str  # smallint, integer or bigint
    start: int
    increment: int
    minimum: int
    maximum: int
    cache: int
    cycle: bool


@dataclass(frozen=True)
class Partition:
    name: str
    parent: str
    bound: str  # pg_get_expr(relpartbound): "FOR VALUES FROM (…) TO (…)" or "DEFAULT"
    partition_key: str | None = None  # set when the partition is partitioned itself
    # Declared on the partition itself (not its share of the parent's): carried onto the same
    # partition of the shared table, made tenant-aware as the parent's are.
    keys: tuple[tuple[str, Key], ...] = ()  # ("PRIMARY KEY" | "UNIQUE", key)
    foreign_keys: tuple[ForeignKey, ...] = ()
    checks: tuple[Check, ...] = ()
    indexes: tuple[Index, ...] = ()

    def as_table(self, columns: tuple[Column, ...] = ()) -> SourceTable:
        """Its own keys, foreign keys and indexes in a table's shape, for the DDL builder."""
        pk = next((k for kind, k in self.keys if kind == "PRIMARY KEY"), None)
        return SourceTable(
            name=self.name,
            columns=columns,
            primary_key=pk.columns if pk else (),
            uniques=tuple(k.columns for kind, k in self.keys if kind == "UNIQUE"),
            foreign_keys=self.foreign_keys,
            primary_key_name=pk.name if pk else None,
            unique_keys=tuple(k for kind, k in self.keys if kind == "UNIQUE"),
            checks=self.checks,
            indexes=self.indexes,
            primary_key_info=pk,
        )


@dataclass(frozen=True)
class Aggregate:
    """How an aggregate is made: its transition function and state, and what the tool cannot re-create."""

    kind: str  # n normal, o ordered-set, h hypothetical-set
    transition: str  # regproc text, qualified outside pg_catalog
    state_type: str
    final: str | None = None
    combine: str | None = None
    initial: str | None = None
    unsupported: bool = False  # moving-aggregate, sort operator, serial/final-extra options


@dataclass(frozen=True)
class Routine:
    """A function, procedure or aggregate of the source schema (none of an extension's)."""

    name: str
    args: str  # the input argument types, "integer, integer": with the name, how a person names it
    kind: str  # f function, p procedure, a aggregate, w window function
    language: str
    definition: str | None  # pg_get_functiondef(): functions and procedures
    body: str  # prosrc: what it runs (its relations are read from here)
    returns_trigger: bool = False
    security_definer: bool = False
    result: str = ""
    arguments: str = ""  # pg_get_function_arguments(): with names and defaults
    aggregate: Aggregate | None = None
    dependents: tuple[str, ...] = ()  # "view public.film_list", "trigger public.film.t", …

    @property
    def kind_word(self) -> str:
        return {"a": "aggregate", "p": "procedure", "w": "window function"}.get(self.kind, "function")

    @property
    def signature(self) -> str:
        return f"{self.name}({self.args})"


@dataclass(frozen=True)
class Trigger:
    """A user trigger declared on a table or a partition (not a clone of its parent's)."""

    table: str
    name: str
    definition: str  # pg_get_triggerdef()
    per_row: bool
    function_schema: str
    function: str  # name(argument types)
    enabled: str = "O"  # pg_trigger.tgenabled: O origin, D disabled, R replica, A always


@dataclass(frozen=True)
class UserType:
    """An enum, domain or composite type of the source schema."""

    name: str
    kind: str  # e enum, d domain, c composite
    labels: tuple[str, ...] = ()
    base_type: str | None = None
    not_null: bool = False
    default: str | None = None
    constraint_names: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()  # composite: (name, type)


@dataclass(frozen=True)
class View:
    name: str
    definition: str  # pg_get_viewdef()
    options: tuple[str, ...]  # reloptions, e.g. "security_barrier=true"
    reads: tuple[str, ...]  # relations of the same schema it reads


@dataclass(frozen=True)
class Uncarried:
    """Something of the source the shared schema does not re-create, and why."""

    kind: str  # trigger, function, rule, policy, sequence, extension, …
    name: str
    detail: str


@dataclass(frozen=True)
class SourceSchema:
    """All of one source schema the shared schema is generated from."""

    name: str
    tables: dict[str, SourceTable]
    partitions: tuple[Partition, ...] = ()
    types: tuple[UserType, ...] = ()
    views: tuple[View, ...] = ()
    uncarried: tuple[Uncarried, ...] = ()
    extensions: tuple[str, ...] = field(default=())
    sequences: tuple[SourceSequence, ...] = ()
    routines: tuple[Routine, ...] = ()
    triggers: tuple[Trigger, ...] = ()
    extension_schemas: tuple[tuple[str, str], ...] = ()  # (extension, the schema it lives in)
    # Comments on views, functions, triggers, constraints, indexes and types:
    # (pg_identify_object type, identity, text, the object's name, its table or None).
    comments: tuple[tuple[str, str, str, str, str | None], ...] = ()
    # What a restriction to some tables left out (tables, and views that read them): never
    # silently — the shared schema's build names each one unless it is acknowledged.
    omitted: tuple[Uncarried, ...] = ()

    def restricted(self, names: Iterable[str], *, globals_: Iterable[str] = ()) -> SourceSchema:
        """Only these tables (their partitions, the views that read only them or ``globals_``,
        all types); every other table and view is recorded in ``omitted``."""
        keep = set(names)
        known = keep | (set(globals_) & set(self.tables))
        parts = _partition_roots(self.partitions)
        views = self.views
        while True:  # a view that reads a view left out is left out too
            names = {w.name for w in views}
            kept = tuple(v for v in views if set(v.reads) <= known | names)
            if len(kept) == len(views):
                break
            views = kept
        view_names = {w.name for w in views}
        dropped = [v for v in self.views if v not in views]
        omitted = [
            Uncarried("table", f"{self.name}.{n}", "not in the playbook's tables")
            for n in sorted(set(self.tables) - known)
        ]
        omitted += [
            Uncarried(
                "view",
                f"{self.name}.{v.name}",
                "reads " + ", ".join(sorted(set(v.reads) - known - view_names)) + ", which are not migrated",
            )
            for v in dropped
        ]
        return SourceSchema(
            name=self.name,
            tables={n: t for n, t in self.tables.items() if n in keep},
            partitions=tuple(p for p in self.partitions if parts.get(p.name) in keep),
            types=self.types,
            views=views,
            omitted=(*self.omitted, *omitted),
            uncarried=self.uncarried,
            extensions=self.extensions,
            sequences=tuple(
                s
                for s in self.sequences
                if any(c.sequence == s.name for n in keep if n in self.tables for c in self.tables[n].columns)
            ),
            routines=self.routines,
            comments=self.comments,
            triggers=tuple(t for t in self.triggers if t.table in keep or parts.get(t.table) in keep),
            extension_schemas=self.extension_schemas,
        )


def _partition_roots(partitions: Sequence[Partition]) -> dict[str, str]:
    parent = {p.name: p.parent for p in partitions}
    roots: dict[str, str] = {}
    for name in parent:
        root = name
        while root in parent:
            root = parent[root]
        roots[name] = root
    return roots


def partition_roots(schema: SourceSchema) -> dict[str, str]:
    """Each partition's root table."""
    return _partition_roots(schema.partitions)


def _sql(name: str) -> str:
    return (files("migrate.catalog") / name).read_text()


@contextmanager
def catalog_rendering(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """One transaction with search_path = pg_catalog, so renderings qualify every other name.

    The setting is transaction-local and put back explicitly: on a connection that is
    not autocommit, ``transaction()`` is only a savepoint (shared/notes/postgres.md, 2).
    """
    # A transaction of its own ends the setting by itself; only a savepoint needs it put back.
    own = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction():
        row = conn.execute(
            "SELECT current_setting('search_path'), set_config('search_path', 'pg_catalog', true)"
        ).fetchone()
        try:
            yield
        finally:
            if not own and conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
                conn.execute("SELECT set_config('search_path', %s, true)", (row[0] if row else "",))


def _read_tables(conn: psycopg.Connection[Any], schema: str) -> dict[str, SourceTable]:
    cols: dict[str, list[Column]] = {}
    comments: dict[str, str | None] = {}
    for (
        table,
        name,
        type_,
        not_null,
        default,
        identity,
        generated,
        serial,
        collation,
        comment,
        table_comment,
        sequence,
    ) in conn.execute(_sql("reflect_columns.sql"), {"schema": schema}):
        comments[table] = table_comment
        cols.setdefault(table, []).append(
            Column(
                name=name,
                type=type_,
                not_null=not_null,
                default=None if identity or generated or serial else default,
                identity=bool(identity),
                identity_kind=identity,
                generated=default if generated else None,
                serial=bool(serial),
                collation=collation,
                comment=comment,
                sequence=None if identity or generated or serial else sequence,
            )
        )
    pks, uniques, fks, checks = _read_constraints(conn, schema, partitions=False)
    parent = {
        name: up
        for name, _key, up, _bound in conn.execute(_sql("reflect_partitions.sql"), {"schema": schema})
        if up is not None
    }
    on_partitions: dict[str, list[ForeignKey]] = {}
    for part, keys in _read_constraints(conn, schema, partitions=True)[2].items():
        root = part
        while root in parent:
            root = parent[root]
        on_partitions.setdefault(root, []).extend(keys)
    return {
        name: SourceTable(
            name=name,
            columns=tuple(columns),
            primary_key=pks[name].columns if name in pks else (),
            uniques=tuple(k.columns for k in uniques.get(name, ())),
            foreign_keys=tuple(fks.get(name, ())),
            primary_key_name=pks[name].name if name in pks else None,
            unique_keys=tuple(uniques.get(name, ())),
            checks=tuple(checks.get(name, ())),
            primary_key_info=pks.get(name),
            comment=comments.get(name),
            partition_foreign_keys=tuple(on_partitions.get(name, ())),
        )
        for name, columns in cols.items()
    }


_Constraints = tuple[
    dict[str, Key], dict[str, list[Key]], dict[str, list[ForeignKey]], dict[str, list[Check]]
]


def _read_constraints(conn: psycopg.Connection[Any], schema: str, *, partitions: bool) -> _Constraints:
    """Keys, foreign keys and checks by table: of the tables, or those declared on partitions."""
    pks: dict[str, Key] = {}
    uniques: dict[str, list[Key]] = {}
    fks: dict[str, list[ForeignKey]] = {}
    checks: dict[str, list[Check]] = {}
    for (
        table,
        cname,
        ctype,
        columns,
        ref_table,
        ref_schema,
        ref_columns,
        deferrable,
        deferred,
        on_update,
        on_delete,
        match,
        set_columns,
        nulls_not_distinct,
        validated,
        definition,
    ) in conn.execute(_sql("reflect_constraints.sql"), {"schema": schema, "partitions": partitions}):
        if ctype in ("p", "u"):
            key = Key(cname, tuple(columns), deferrable, deferred, nulls_not_distinct)
            if ctype == "p":
                pks[table] = key
            else:
                uniques.setdefault(table, []).append(key)
        elif ctype == "f":
            fks.setdefault(table, []).append(
                ForeignKey(
                    name=cname,
                    columns=tuple(columns),
                    ref_table=ref_table,
                    ref_columns=tuple(ref_columns),
                    ref_schema=None if ref_schema == schema else ref_schema,
                    on_update=on_update,
                    on_delete=on_delete,
                    match_full=match == "f",
                    deferrable=deferrable,
                    deferred=deferred,
                    delete_set_columns=tuple(set_columns or ()),
                )
            )
        elif ctype == "c":
            checks.setdefault(table, []).append(Check(cname, definition, validated))
    return pks, uniques, fks, checks


def _read_indexes(conn: psycopg.Connection[Any], schema: str, *, partitions: bool) -> dict[str, list[Index]]:
    indexes: dict[str, list[Index]] = {}
    for table, name, definition, unique, method in conn.execute(
        _sql("reflect_indexes.sql"), {"schema": schema, "partitions": partitions}
    ):
        indexes.setdefault(table, []).append(Index(name, definition, unique, method))
    return indexes


def _read_routines(conn: psycopg.Connection[Any], schema: str) -> list[Routine]:
    out = []
    for (
        name,
        args,
        kind,
        language,
        definition,
        body,
        returns_trigger,
        secdef,
        result,
        arguments,
        aggkind,
        transition,
        state_type,
        final,
        combine,
        initial,
        unsupported,
        dependents,
    ) in conn.execute(_sql("reflect_routines.sql"), {"schema": schema}):
        aggregate = None
        if kind == "a":
            aggregate = Aggregate(aggkind, transition, state_type, final, combine, initial, bool(unsupported))
        out.append(
            Routine(
                name=name,
                args=args,
                kind=kind,
                language=language,
                definition=definition,
                body=body or "",
                returns_trigger=bool(returns_trigger),
                security_definer=bool(secdef),
                result=result,
                arguments=arguments,
                aggregate=aggregate,
                dependents=tuple(sorted(d for d in dependents or () if d)),
            )
        )
    return out


def reflect(conn: psycopg.Connection[Any], schema: str) -> dict[str, SourceTable]:
    """Every ordinary or partitioned table of ``schema`` (partitions excluded), by name."""
    with catalog_rendering(conn):
        return _read_tables(conn, schema)


def reflect_schema(conn: psycopg.Connection[Any], schema: str) -> SourceSchema:
    """Tables with their indexes and partitioning, types, views, and what cannot be carried."""
    with catalog_rendering(conn):
        tables = _read_tables(conn, schema)
        indexes = _read_indexes(conn, schema, partitions=False)
        own_pks, own_uniques, own_fks, own_checks = _read_constraints(conn, schema, partitions=True)
        own_indexes = _read_indexes(conn, schema, partitions=True)
        keys: dict[str, str] = {}
        partitions: list[Partition] = []
        for name, key, parent, bound in conn.execute(_sql("reflect_partitions.sql"), {"schema": schema}):
            if parent is None:
                keys[name] = key
            else:
                own_keys = [("PRIMARY KEY", own_pks[name])] if name in own_pks else []
                own_keys += [("UNIQUE", k) for k in own_uniques.get(name, ())]
                partitions.append(
                    Partition(
                        name,
                        parent,
                        bound,
                        key,
                        keys=tuple(own_keys),
                        foreign_keys=tuple(own_fks.get(name, ())),
                        checks=tuple(own_checks.get(name, ())),
                        indexes=tuple(own_indexes.get(name, ())),
                    )
                )
        types = [
            UserType(
                name=name,
                kind=kind,
                labels=tuple(labels or ()),
                base_type=base,
                not_null=not_null,
                default=default,
                constraint_names=tuple(cnames or ()),
                constraints=tuple(cdefs or ()),
                attributes=tuple(zip(anames or (), atypes or (), strict=True)),
            )
            for name, kind, labels, base, not_null, default, cnames, cdefs, anames, atypes in conn.execute(
                _sql("reflect_types.sql"), {"schema": schema}
            )
        ]
        views = [
            View(name, definition, tuple(options), tuple(sorted(reads)))
            for name, definition, options, reads in conn.execute(
                _sql("reflect_views.sql"), {"schema": schema}
            )
        ]
        sequences = [
            SourceSequence(name, type_, int(start), int(inc), int(lo), int(hi), int(cache), bool(cycle))
            for name, type_, start, inc, lo, hi, cache, cycle in conn.execute(
                _sql("reflect_sequences.sql"), {"schema": schema}
            )
        ]
        uncarried = [
            Uncarried(kind, name, detail or "")
            for kind, name, detail in conn.execute(_sql("reflect_uncarried.sql"), {"schema": schema})
        ]
        routines = _read_routines(conn, schema)
        triggers = [
            Trigger(table, name, definition, per_row, fschema, function, enabled)
            for table, name, definition, per_row, fschema, function, enabled in conn.execute(
                _sql("reflect_triggers.sql"), {"schema": schema}
            )
        ]
        comments = [
            (kind, identity, text, name, table)
            for kind, identity, text, name, table in conn.execute(
                _sql("reflect_comments.sql"), {"schema": schema}
            )
        ]
        extension_schemas = [
            (name, schema_)
            for name, schema_ in conn.execute(
                "SELECT x.extname, n.nspname FROM pg_extension x"
                " JOIN pg_namespace n ON n.oid = x.extnamespace WHERE x.extname <> 'plpgsql' ORDER BY 1"
            )
        ]
    for name, table in list(tables.items()):
        tables[name] = replace(table, indexes=tuple(indexes.get(name, ())), partition_key=keys.get(name))
    return SourceSchema(
        name=schema,
        tables=tables,
        partitions=tuple(_parents_first(partitions)),
        types=tuple(_types_in_order(types, schema)),
        views=tuple(_views_in_order(views)),
        uncarried=tuple(u for u in uncarried if u.kind != "extension"),
        extensions=tuple(f"{u.name} ({u.detail})" for u in uncarried if u.kind == "extension"),
        sequences=tuple(sequences),
        routines=tuple(routines),
        triggers=tuple(triggers),
        extension_schemas=tuple(extension_schemas),
        comments=tuple(comments),
    )


def _parents_first(partitions: list[Partition]) -> list[Partition]:
    names = {p.name for p in partitions}
    done: set[str] = set()
    out: list[Partition] = []
    pending = sorted(partitions, key=lambda p: p.name)
    while pending:
        ready = [p for p in pending if p.parent not in names or p.parent in done]
        if not ready:  # cannot happen in a catalog; keep whatever is left rather than loop
            ready = pending
        for p in ready:
            out.append(p)
            done.add(p.name)
        pending = [p for p in pending if p.name not in done]
    return out


def _types_in_order(types: list[UserType], schema: str) -> list[UserType]:
    """Enums first, then domains and composites after the local types they use."""
    by_name = {t.name: t for t in types}

    def uses(t: UserType) -> set[str]:
        texts = [t.base_type or ""] + [type_ for _n, type_ in t.attributes]
        found: set[str] = set()
        for text in texts:
            toks = list(tokens(text))
            for i, tok in enumerate(toks[:-2]):
                if tok.name == schema and toks[i + 1].text == "." and toks[i + 2].name in by_name:
                    found.add(str(toks[i + 2].name))
        return found - {t.name}

    deps = {t.name: uses(t) for t in types}
    names = layered_order(deps, _all_waiting, key=lambda n: (by_name[n].kind != "e", n))
    return [by_name[n] for n in names]


def _views_in_order(views: list[View]) -> list[View]:
    by_name = {v.name: v for v in views}
    deps = {n: {r for r in v.reads if r in by_name} for n, v in by_name.items()}
    return [by_name[n] for n in layered_order(deps, _all_waiting)]


def layered_order(
    deps: Mapping[str, set[str]],
    on_cycle: Callable[[list[str], set[str]], list[str]],
    *,
    key: Callable[[str], Any] = lambda n: n,
) -> list[str]:
    """Names after everything they depend on, one layer at a time (sorted by ``key`` within a
    layer). When nothing is ready the rest is a cycle: ``on_cycle(waiting, done)`` says what
    goes next, or raises. The one topological sort behind tables, types and views."""
    ordered: list[str] = []
    done: set[str] = set()
    while len(done) < len(deps):
        waiting = sorted(n for n in deps if n not in done)
        ready = [n for n in waiting if deps[n] <= done] or on_cycle(waiting, done)
        ready.sort(key=key)
        ordered += ready
        done.update(ready)
    return ordered


def _all_waiting(waiting: list[str], _done: set[str]) -> list[str]:
    return waiting


def fk_dependencies(tables: Iterable[SourceTable]) -> tuple[dict[str, SourceTable], dict[str, set[str]]]:
    """Tables by name, and the tables of this schema each one's foreign keys point to (not itself)."""
    by_name = {t.name: t for t in tables}
    deps = {
        t.name: {
            fk.ref_table
            for fk in t.all_foreign_keys
            if fk.ref_table != t.name and fk.ref_table in by_name and fk.ref_schema is None
        }
        for t in by_name.values()
    }
    return by_name, deps


def fk_order(tables: Iterable[SourceTable]) -> list[SourceTable]:
    """Parents before children (alphabetical among equals); self-references allowed.

    A cycle between tables cannot be loaded parent-first: it is named, with the fix.
    """

    def refuse(waiting: list[str], _done: set[str]) -> list[str]:
        raise StepFailed(
            f"tables {', '.join(waiting)} reference each other in a cycle",
            hint="list the tables in the playbook in a loadable order; cyclic foreign keys "
            "are not supported yet",
        )

    by_name, deps = fk_dependencies(tables)
    return [by_name[n] for n in layered_order(deps, refuse)]


def select_tables(
    reflected: dict[str, SourceTable],
    wanted: Sequence[str] | None,
    *,
    schema: str,
    exclude: Iterable[str] = (),
    order: Callable[[Iterable[SourceTable]], list[SourceTable]] = fk_order,
) -> list[SourceTable]:
    """The playbook's tables (all when ``auto``, less ``exclude``, e.g. global tables) in ``order``
    (foreign-key order by default; the backfill passes its cycle-aware load order)."""
    skip = set(exclude)
    if wanted is None:
        return order(t for t in reflected.values() if t.name not in skip)
    missing = [t for t in wanted if t not in reflected]
    if missing:
        raise StepFailed(
            f"table(s) {', '.join(missing)} not found in source schema '{schema}'",
            hint=f"the source has: {', '.join(sorted(reflected)) or 'no tables'}",
        )
    return order(reflected[t] for t in wanted if t not in skip)
