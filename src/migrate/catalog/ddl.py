"""The shared schema's DDL from a source schema: the one source of truth.

``build()`` turns a reflected source schema into the ordered statements of the
shared schema — what ``migrate schema generate`` writes into an alembic revision
and what the schema step runs when the shared tables are missing — together with
the notes on what it changed or could not carry.

Every tenant table gains ``tenant_id`` as its first column and as the leading
column of every primary key, unique constraint, foreign key between tenant tables
and btree index, so two tenants' ``id = 1`` never collide, no row can point at
another tenant's row, and the tables stay valid for Citus
``create_distributed_table(…, 'tenant_id')`` (global tables become reference
tables: ``create_reference_table``). RLS is ENABLED and FORCED with one policy,
USING and WITH CHECK, on ``NULLIF(current_setting('app.tenant_id', true), '')``: a
connection that never set a tenant (NULL) and one whose ``SET LOCAL`` ended (``''``)
both match no row, and a CHECK makes ``''`` impossible to store in a text tenant
column. With ``tenant_context="transaction"`` the policy also demands that
``app.tenant_xact_start`` be the current transaction's start, so a tenant left on a
pooled connection by a session-level ``SET`` matches nothing (README, "Tenant context").
Identifiers are quoted by ``sql.Identifier``; types, defaults and expressions are
the source catalog's own renderings moved to the target schema (sqltext.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Literal

from psycopg import sql

from migrate.catalog import TENANT_COLUMN, TENANT_SETTING, TENANT_XACT_SETTING, XACT_START, routines, sqltext
from migrate.catalog.reflect import (
    Column,
    ForeignKey,
    Index,
    Key,
    SourceSchema,
    SourceSequence,
    SourceTable,
    View,
    partition_roots,
)
from migrate.catalog.tenantjoin import tenant_joins
from migrate.errors import StepFailed

POLICY = "tenant_isolation"

TenantType = Literal["text", "uuid"]
# session: whatever set app.tenant_id on the connection counts (SET LOCAL is the contract);
# transaction: only a tenant set in the current transaction counts (app.tenant_xact_start).
TenantContext = Literal["session", "transaction"]


# What the application runs first in every transaction (both settings end with it). The start
# time is what a session-level SET cannot carry over: a later transaction on that connection
# starts later. (An xid would be unique by construction, but assigning one to every read-only
# transaction burns xids, fails on a standby and is parallel-unsafe: bench/tenant_context.py.)
def set_tenant_sql(*, local: bool = True) -> str:
    """The statement that sets the tenant (one parameter); ``local=False`` is the pooled-connection
    mistake the isolation check reproduces (a session-level SET)."""
    flag = "true" if local else "false"
    return (
        f"SELECT set_config('{TENANT_SETTING}', %s, {flag}),"
        f" set_config('{TENANT_XACT_SETTING}', {XACT_START}, {flag})"
    )


SET_TENANT_SQL = set_tenant_sql()

Severity = Literal["error", "warning", "info"]

_ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


@dataclass(frozen=True)
class Options:
    """How the shared schema is shaped: where, which tenant column, which application role."""

    schema: str
    tenant_column: str = TENANT_COLUMN
    tenant_type: TenantType = "text"
    app_role: str | None = None
    global_tables: frozenset[str] = frozenset()
    tenant_context: TenantContext = "session"
    # Objects a person chose to leave behind (playbook schema.leave_behind, --leave-behind), by
    # the name the report gives them, e.g. "function public.f(integer)": reported, not blocking.
    leave_behind: frozenset[str] = frozenset()


LEAVE_BEHIND_FIX = (
    "carry it by hand after the revision, or acknowledge leaving it behind in the playbook: "
    'schema: {{leave_behind: [{{object: "{subject}", reason: "…"}}]}} (or --leave-behind "{subject}")'
)


@dataclass(frozen=True)
class Statement:
    sql: str
    # role | extension | schema | type | sequence | function | table | comment | partition | check
    # | foreign_key | index | trigger | rls | view | grant
    kind: str
    object: str = ""  # the table (or type, view) the statement belongs to


@dataclass(frozen=True)
class Note:
    """Something the generation changed, could not carry, or that needs a person."""

    severity: Severity
    rule: str
    subject: str
    detail: str
    fix: str = ""
    target: str = ""  # the target (region) a consolidation finding is about, with a target per region


@dataclass(frozen=True)
class SharedSchema:
    schema: str
    upgrade: tuple[Statement, ...]
    downgrade: tuple[Statement, ...]
    notes: tuple[Note, ...]
    tenant_tables: tuple[str, ...]
    global_tables: tuple[str, ...]
    types: tuple[str, ...] = ()
    views: tuple[str, ...] = ()
    partitions: tuple[str, ...] = field(default=())
    carried: tuple[str, ...] = ()  # every source object re-created, as the report names it
    left_behind: tuple[str, ...] = ()  # acknowledged: not re-created


def _text(composed: sql.Composable) -> str:
    return composed.as_string(None)


def tenant_predicate(options: Options) -> sql.Composable:
    """The policy's USING and WITH CHECK: the row's tenant is the one the application set.

    ``tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), ''))``: NULL (no
    rows) when the setting was never made, and when it reads ``''`` — which it does on a
    connection after a ``SET LOCAL`` ended (shared/notes/postgres.md, pitfall 3); without
    the NULLIF, rows stored with ``tenant_id = ''`` would be one bucket every tenant-less
    request shares, and ``''::uuid`` would raise. The sub-select makes PostgreSQL work the
    tenant out once per query (an InitPlan, still usable as an index condition) instead of
    once per row: as a plain expression the NULLIF cost 1.1x on a scan of 400,000 rows
    (bench/tenant_context.py). In transaction mode the tenant counts only if
    ``app.tenant_xact_start`` is this transaction's start, tested once per query the same
    way (a plain conjunct cost 1.2x).
    """
    predicate = sql.SQL("{} = (SELECT {})").format(
        sql.Identifier(options.tenant_column), tenant_value(options)
    )
    if options.tenant_context == "transaction":
        predicate = sql.SQL("{} AND (SELECT current_setting({}, true) = {})").format(
            predicate, sql.Literal(TENANT_XACT_SETTING), sql.SQL(XACT_START)
        )
    return predicate


def tenant_value(options: Options) -> sql.Composable:
    """The tenant the application set, NULL when none (never ``''``), in the column's type."""
    value = sql.SQL("NULLIF(current_setting({}, true), '')").format(sql.Literal(TENANT_SETTING))
    if options.tenant_type == "uuid":
        return sql.SQL("{}::uuid").format(value)
    return value


def tenant_check(options: Options) -> sql.Composable | None:
    """The column check that makes ``''`` impossible to store (text only: a uuid cannot be '')."""
    if options.tenant_type != "text":
        return None
    column = options.tenant_column
    return sql.SQL("CONSTRAINT {} CHECK ({} <> '')").format(
        sql.Identifier(f"{column}_not_empty"[:63]), sql.Identifier(column)
    )


class _Builder:
    def __init__(self, source: SourceSchema, options: Options) -> None:
        self.source = source
        self.o = options
        self.up: list[Statement] = []
        self.notes: list[Note] = []
        parts = {p.name for p in source.partitions}
        self.carried = (
            set(source.tables) | parts | {t.name for t in source.types} | {v.name for v in source.views}
        )
        self.tenant = {n for n in source.tables if n not in options.global_tables}
        self.sequence_names = {q.name for q in source.sequences}
        self.roots = partition_roots(source)
        # What a function body may read: every relation of the schema (not its types: a domain
        # called "year" is no table, and EXTRACT(YEAR …) no read).
        relations = set(source.tables) | parts | {v.name for v in source.views}
        relations |= {u.name.split(".")[-1] for u in source.uncarried if u.kind.endswith(("view", "table"))}
        relations |= {u.name.split(".")[-1] for u in source.omitted if u.kind in ("table", "view")}
        self.verdicts = routines.decide(source, relations)
        self.carried |= {r.name for r in self.verdicts.routines}
        self.blocked: dict[str, str] = dict(self.verdicts.blocked)
        self.views_sql: dict[str, str] = {}
        self.carried_objects: list[str] = []

    # ------------------------------------------------------------------ helpers
    def rq(self, text: str) -> str:
        return sqltext.requalify(text, self.source.name, self.o.schema, self.carried)

    def ident(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.o.schema, name)

    def add(self, kind: str, obj: str, composed: sql.Composable | str) -> None:
        text = composed if isinstance(composed, str) else _text(composed)
        self.up.append(Statement(text, kind, obj))

    def note(self, severity: Severity, rule: str, subject: str, detail: str, fix: str = "") -> None:
        self.notes.append(Note(severity, rule, subject, detail, fix))

    def is_tenant(self, table: str) -> bool:
        """A tenant table, or a partition of one."""
        return self.roots.get(table, table) in self.tenant

    def owner(self, table: str) -> str:
        """The table a statement belongs to: a partition's root (the schema step creates them together)."""
        return self.roots.get(table, table)

    def keycols(self, table: str, columns: Iterable[str]) -> sql.Composable:
        names = list(columns)
        if self.is_tenant(table):
            names = [self.o.tenant_column, *names]
        return sql.SQL(", ").join(sql.Identifier(n) for n in names)

    # ------------------------------------------------------------------ objects
    def role_check(self) -> None:
        role = self.o.app_role
        if role is None:
            return
        # Refuse to apply rather than grant to a role that would bypass the policies anyway.
        template = (files("migrate.catalog") / "role_check.sql").read_text().strip()
        self.add("role", "", sql.SQL(template).format(role=sql.Literal(role)))

    def types(self) -> None:
        for t in self.source.types:
            name = self.ident(t.name)
            if t.kind == "e":
                self.add(
                    "type",
                    t.name,
                    sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
                        name, sql.SQL(", ").join(sql.Literal(label) for label in t.labels)
                    ),
                )
            elif t.kind == "c":
                attrs = sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(self.rq(type_)))
                    for n, type_ in t.attributes
                )
                self.add("type", t.name, sql.SQL("CREATE TYPE {} AS ({})").format(name, attrs))
            else:
                parts: list[sql.Composable] = [
                    sql.SQL("CREATE DOMAIN {} AS {}").format(name, sql.SQL(self.rq(t.base_type or "")))
                ]
                if t.default is not None:
                    parts.append(sql.SQL("DEFAULT {}").format(sql.SQL(self.rq(t.default))))
                if t.not_null:
                    parts.append(sql.SQL("NOT NULL"))
                for cname, definition in zip(t.constraint_names, t.constraints, strict=True):
                    if definition.strip().upper() == "NOT NULL":
                        continue  # PostgreSQL 17 lists the domain's NOT NULL as a constraint too
                    parts.append(
                        sql.SQL("CONSTRAINT {} {}").format(
                            sql.Identifier(cname), sql.SQL(self.rq(definition))
                        )
                    )
                self.add("type", t.name, sql.SQL(" ").join(parts))

    def sequences(self) -> None:
        """Sequences no column owns that a default draws from: one per shared schema, every tenant's."""
        for q in self.source.sequences:
            self.add("sequence", q.name, _sequence(self.ident(q.name), q))

    def column(self, col: Column) -> sql.Composable:
        parts: list[sql.Composable] = [sql.Identifier(col.name), sql.SQL(self.rq(col.type))]
        if col.collation:
            parts.append(sql.SQL("COLLATE {}").format(sql.SQL(self.rq(col.collation))))
        if col.generated is not None:
            parts.append(sql.SQL("GENERATED ALWAYS AS ({}) STORED").format(sql.SQL(self.rq(col.generated))))
        elif col.identity_kind == "a":
            parts.append(sql.SQL("GENERATED ALWAYS AS IDENTITY"))
        elif col.identity_kind == "d" or col.serial:
            parts.append(sql.SQL("GENERATED BY DEFAULT AS IDENTITY"))
        if col.not_null:
            parts.append(sql.SQL("NOT NULL"))
        if col.default is not None:
            if col.sequence is not None and col.sequence in self.sequence_names:
                # The sequence is carried (sequences()): the default draws from the shared one.
                # Built here, not requalified: the name sits inside a regclass literal.
                qualified = _text(self.ident(col.sequence))
                parts.append(sql.SQL("DEFAULT nextval({}::regclass)").format(sql.Literal(qualified)))
            elif col.default.startswith("nextval("):
                self.note(
                    "warning",
                    "default-not-carried",
                    f"column {col.name}",
                    f"default {col.default} uses a sequence the column does not own; the shared "
                    "column has no default",
                    "create the sequence in the target and set the default by hand",
                )
            else:
                parts.append(sql.SQL("DEFAULT {}").format(sql.SQL(self.rq(col.default))))
        return sql.SQL(" ").join(parts)

    def key(self, table: str, kind: str, key: Key) -> sql.Composable:
        flags = " NULLS NOT DISTINCT" if key.nulls_not_distinct else ""
        tail = " DEFERRABLE" if key.deferrable else ""
        tail += " INITIALLY DEFERRED" if key.deferred else ""
        return sql.SQL("CONSTRAINT {} {}{} ({}){}").format(
            sql.Identifier(key.name),
            sql.SQL(kind),
            sql.SQL(flags),
            self.keycols(table, key.columns),
            sql.SQL(tail),
        )

    def table(self, t: SourceTable) -> None:
        if t.name in self.tenant and any(c.name == self.o.tenant_column for c in t.columns):
            raise StepFailed(
                f"source table {t.name} already has a column {self.o.tenant_column}",
                hint="choose another tenant column (--tenant-column) or declare the table global",
            )
        parts: list[sql.Composable] = []
        if t.name in self.tenant:
            parts.append(
                sql.SQL("{} {} NOT NULL DEFAULT {}").format(
                    sql.Identifier(self.o.tenant_column), sql.SQL(self.o.tenant_type), tenant_value(self.o)
                )
            )
        parts += [self.column(c) for c in t.columns]
        guard = tenant_check(self.o) if t.name in self.tenant else None
        if t.primary_key:
            pk = t.primary_key_info or Key(t.primary_key_name or f"{t.name}_pkey", t.primary_key)
            parts.append(self.key(t.name, "PRIMARY KEY", pk))
        uniques = t.unique_keys or tuple(
            Key(f"{t.name}_{'_'.join(cols)}_key"[:63], cols) for cols in t.uniques
        )
        for key in uniques:
            parts.append(self.key(t.name, "UNIQUE", key))
        for check in t.checks:
            if check.validated:
                parts.append(
                    sql.SQL("CONSTRAINT {} {}").format(
                        sql.Identifier(check.name), sql.SQL(self.rq(check.definition))
                    )
                )
        if guard is not None:
            parts.append(guard)
        tail: sql.Composable = sql.SQL("")
        if t.partition_key:
            tail = sql.SQL(" PARTITION BY {}").format(sql.SQL(self.rq(t.partition_key)))
        self.add(
            "table",
            t.name,
            sql.SQL("CREATE TABLE {} (\n    {}\n){}").format(
                self.ident(t.name), sql.SQL(",\n    ").join(parts), tail
            ),
        )
        if t.comment is not None:
            self.add(
                "comment",
                t.name,
                sql.SQL("COMMENT ON TABLE {} IS {}").format(self.ident(t.name), sql.Literal(t.comment)),
            )
        for col in t.columns:
            if col.comment is not None:
                self.add(
                    "comment",
                    t.name,
                    sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
                        self.ident(t.name), sql.Identifier(col.name), sql.Literal(col.comment)
                    ),
                )
        for check in t.checks:
            if not check.validated:  # the definition ends in NOT VALID: existing rows are not checked
                self.add(
                    "check",
                    t.name,
                    sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                        self.ident(t.name), sql.Identifier(check.name), sql.SQL(self.rq(check.definition))
                    ),
                )

    def partitions(self) -> None:
        roots = partition_roots(self.source)
        for p in self.source.partitions:
            tail: sql.Composable = sql.SQL("")
            if p.partition_key:
                tail = sql.SQL(" PARTITION BY {}").format(sql.SQL(self.rq(p.partition_key)))
            self.add(
                "partition",
                roots[p.name],
                sql.SQL("CREATE TABLE {} PARTITION OF {} {}{}").format(
                    self.ident(p.name), self.ident(p.parent), sql.SQL(self.rq(p.bound)), tail
                ),
            )

    def partition_objects(self) -> None:
        """Keys, checks, foreign keys and indexes declared on a partition itself (not its parent)."""
        for p in self.source.partitions:
            t = p.as_table()
            for kind, key in p.keys:
                self.add(
                    "check",
                    self.owner(p.name),
                    sql.SQL("ALTER TABLE {} ADD {}").format(self.ident(p.name), self.key(p.name, kind, key)),
                )
            for check in p.checks:
                self.add(
                    "check",
                    self.owner(p.name),
                    sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                        self.ident(p.name), sql.Identifier(check.name), sql.SQL(self.rq(check.definition))
                    ),
                )
            for fk in p.foreign_keys:
                self.foreign_key(t, fk)
            for index in p.indexes:
                self.index(t, index)

    def covered(self, t: SourceTable, columns: tuple[str, ...]) -> bool:
        """An index already leads with (tenant_id, columns…): the FK needs no index of its own."""
        prefixes = [t.primary_key, *t.uniques]
        for index in t.indexes:
            if index.method == "btree":
                prefixes.append(tuple(_index_columns(index)))
        return any(p[: len(columns)] == columns for p in prefixes)

    def foreign_key(self, t: SourceTable, fk: ForeignKey) -> None:
        subject = f"{t.name}.{fk.name}"
        if fk.ref_schema is not None:
            self.note(
                "warning",
                "foreign-key-not-carried",
                subject,
                f"references {fk.ref_schema}.{fk.ref_table}, outside the source schema",
                "add it by hand once the referenced table exists in the target",
            )
            return
        if fk.ref_table not in self.source.tables and fk.ref_table not in self.roots:
            return  # the referenced table is not part of this shared schema (restricted set)
        child_tenant, parent_tenant = self.is_tenant(t.name), self.is_tenant(fk.ref_table)
        if parent_tenant and not child_tenant:
            self.note(
                "error",
                "global-references-tenant",
                subject,
                f"global table {t.name} references tenant table {fk.ref_table}: no single row can "
                "satisfy it for every tenant",
                f"declare {fk.ref_table} global too, or {t.name} a tenant table",
            )
            return
        both = child_tenant and parent_tenant
        cols = (self.o.tenant_column, *fk.columns) if both else fk.columns
        refs = (self.o.tenant_column, *fk.ref_columns) if both else fk.ref_columns
        clauses = ""
        if fk.match_full and both:
            self.note(
                "warning",
                "match-full-dropped",
                subject,
                "MATCH FULL cannot hold with a tenant column that is never NULL; the key is MATCH SIMPLE",
            )
        elif fk.match_full:
            clauses += " MATCH FULL"
        on_update = fk.on_update
        if both and on_update in ("n", "d"):
            self.note(
                "warning",
                "on-update-changed",
                subject,
                f"ON UPDATE {_ACTIONS[on_update]} would also clear {self.o.tenant_column}; it is NO ACTION",
                "update the referencing rows in the application",
            )
            on_update = "a"
        if on_update != "a":
            clauses += f" ON UPDATE {_ACTIONS[on_update]}"
        if fk.on_delete != "a":
            clauses += f" ON DELETE {_ACTIONS[fk.on_delete]}"
            if fk.on_delete in ("n", "d") and both:
                # Only the source's own columns: tenant_id must never be cleared (PostgreSQL 15+).
                setcols = fk.delete_set_columns or fk.columns
                clauses += " (" + _text(sql.SQL(", ").join(sql.Identifier(c) for c in setcols)) + ")"
        if fk.deferrable:
            clauses += " DEFERRABLE" + (" INITIALLY DEFERRED" if fk.deferred else "")
        self.add(
            "foreign_key",
            self.owner(t.name),
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}){}").format(
                self.ident(t.name),
                sql.Identifier(fk.name),
                sql.SQL(", ").join(sql.Identifier(c) for c in cols),
                self.ident(fk.ref_table),
                sql.SQL(", ").join(sql.Identifier(c) for c in refs),
                sql.SQL(clauses),
            ),
        )
        lead = tuple(fk.columns)
        if not self.covered(t, lead):
            # FK checks and tenant deletes look up the referencing side: index it, tenant first.
            self.add(
                "index",
                self.owner(t.name),
                sql.SQL("CREATE INDEX {} ON {} ({})").format(
                    sql.Identifier(f"{fk.name}_idx"[:63]),
                    self.ident(t.name),
                    self.keycols(t.name, fk.columns),
                ),
            )

    def index(self, t: SourceTable, index: Index) -> None:
        toks = list(sqltext.tokens(index.definition))
        on = sqltext.find_keyword(toks, "ON")
        using = sqltext.find_keyword(toks, "USING", on + 1)
        paren = next((i for i in range(using, len(toks)) if toks[i].text == "("), -1)
        if min(on, using, paren) < 0:
            self.note("warning", "index-not-carried", f"{t.name}.{index.name}", "unexpected definition")
            return
        rest = self.rq("".join(tok.text for tok in toks[paren + 1 :]))
        lead = ""
        if self.is_tenant(t.name):
            if index.method == "btree":
                lead = _text(sql.Identifier(self.o.tenant_column)) + ", "
            else:
                self.note(
                    "info",
                    "index-without-tenant-column",
                    f"{t.name}.{index.name}",
                    f"a {index.method} index cannot lead with {self.o.tenant_column} without the "
                    f"btree_{index.method} extension; it is carried as it is",
                )
        self.add(
            "index",
            self.owner(t.name),
            sql.SQL("CREATE {}INDEX {} ON {} USING {} ({}").format(
                sql.SQL("UNIQUE ") if index.unique else sql.SQL(""),
                sql.Identifier(index.name),
                self.ident(t.name),
                sql.SQL(index.method),
                sql.SQL(lead + rest),
            ),
        )

    def rls(self, table: str, owner: str) -> None:
        qualified = self.ident(table)
        predicate = tenant_predicate(self.o)
        self.add("rls", owner, sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(qualified))
        self.add("rls", owner, sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(qualified))
        self.add(
            "rls",
            owner,
            sql.SQL("CREATE POLICY {} ON {} USING ({}) WITH CHECK ({})").format(
                sql.Identifier(POLICY), qualified, predicate, predicate
            ),
        )

    def plan_views(self) -> None:
        """Each view with the tenant equality on its joins (tenantjoin.py), or why it cannot be carried."""
        tenant = {n for n in set(self.source.tables) | set(self.roots) if self.is_tenant(n)}
        names = {v.name for v in self.source.views}
        for v in self.source.views:
            key = f"view {self.source.name}.{v.name}"
            needs = sorted(
                s
                for s in self.blocked
                if s.startswith(("function ", "aggregate ")) and key in self._dependents(s)
            )
            gone = [r for r in v.reads if f"view {self.source.name}.{r}" in self.blocked]
            if needs:
                self.blocked[key] = f"calls {needs[0]}, which is not carried"
                continue
            if gone:
                self.blocked[key] = f"reads view {gone[0]}, which is not carried"
                continue
            rewritten = tenant_joins(
                v.definition,
                schema=self.source.name,
                tenant_tables=tenant,
                views=names,
                column=self.o.tenant_column,
            )
            if rewritten.sql is None:
                self.blocked[key] = rewritten.reason
            else:
                self.views_sql[v.name] = rewritten.sql

    def _dependents(self, subject: str) -> tuple[str, ...]:
        for r in self.source.routines:
            if routines.subject(self.source.name, r) == subject:
                return r.dependents
        return ()

    def view(self, v: View) -> None:
        if v.name not in self.views_sql:
            return
        options = [o for o in v.options if not o.lower().startswith("security_invoker=")]
        options.insert(0, "security_invoker=true")
        self.add(
            "view",
            v.name,
            sql.SQL("CREATE VIEW {} WITH ({}) AS\n{}").format(
                self.ident(v.name),
                sql.SQL(", ").join(sql.SQL(o) for o in options),
                sql.SQL(self.rq(self.views_sql[v.name])),
            ),
        )
        self.carried_objects.append(f"view {self.source.name}.{v.name}")

    def extensions(self) -> None:
        for name, schema in self.source.extension_schemas:
            self.add(
                "extension",
                name,
                sql.SQL("CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}").format(
                    sql.Identifier(name), sql.Identifier(schema)
                ),
            )
            self.carried_objects.append(f"extension {name}")

    def comments(self) -> None:
        """The source's comments on what the shared schema carries (tables' and columns' come with them)."""
        functions = {r.name for r in self.verdicts.routines}
        triggers = {t.name for t in self.verdicts.triggers}
        tables = set(self.source.tables) | set(self.roots)
        types = {t.name for t in self.source.types}
        for kind, identity, text, name, table in self.source.comments:
            carried = {
                "view": (name in self.views_sql, "view", name),
                "function": (name in functions, "function", name),
                "aggregate": (name in functions, "function", name),
                "procedure": (name in functions, "function", name),
                "trigger": (name in triggers and table in tables, "comment", self.owner(table or "")),
                "table constraint": (table in tables, "comment", self.owner(table or "")),
                "index": (table in tables, "comment", self.owner(table or "")),
                "type": (name in types, "type", name),
                "domain": (name in types, "type", name),
            }.get(kind, (False, "", ""))
            if not carried[0]:
                continue
            keyword = "CONSTRAINT" if kind == "table constraint" else kind.upper()
            moved = sqltext.requalify(identity, self.source.name, self.o.schema, self.carried | {name})
            self.add(
                carried[1],
                carried[2],
                sql.SQL("COMMENT ON {} {} IS {}").format(sql.SQL(keyword), sql.SQL(moved), sql.Literal(text)),
            )

    def search_path(self) -> str:
        """A carried function's pinned search_path: the shared schema, the extensions', then pg_catalog."""
        schemas = [self.o.schema, *(s for _n, s in self.source.extension_schemas)]
        return ", ".join(_text(sql.Identifier(s)) for s in dict.fromkeys(schemas)) + ", pg_catalog"

    def routines(self) -> None:
        schema = sql.Identifier(self.o.schema)
        for r in self.verdicts.routines:
            self.add(
                "function",
                r.name,
                routines.routine_sql(r, schema=schema, search_path=self.search_path(), rq=self.rq),
            )
            key = routines.subject(self.source.name, r)
            self.carried_objects.append(key)
            used = f"; used by {', '.join(r.dependents)}, created after it" if r.dependents else ""
            self.note(
                "info",
                "carried",
                key,
                f"re-created in schema {self.o.schema}"
                + ("" if r.aggregate is not None else " with search_path pinned to it")
                + used,
            )

    def triggers(self) -> None:
        for t in self.verdicts.triggers:
            self.add("trigger", self.owner(t.table), self.rq(t.definition))
            if t.enabled == "D":
                self.add(
                    "trigger",
                    self.owner(t.table),
                    sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(
                        self.ident(t.table), sql.Identifier(t.name)
                    ),
                )
            self.carried_objects.append(routines.trigger_subject(self.source.name, t))

    def grants(self) -> None:
        role = self.o.app_role
        if role is None:
            return
        who = sql.Identifier(role)
        self.add(
            "grant", "", sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(self.o.schema), who)
        )
        for name in sorted(self.source.tables):
            # Never TRUNCATE: it ignores row-level security and would empty every tenant.
            privileges = "SELECT, INSERT, UPDATE, DELETE" if name in self.tenant else "SELECT"
            self.add(
                "grant",
                name,
                sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(privileges), self.ident(name), who),
            )
        for v in self.source.views:
            if v.name in self.views_sql:
                self.add(
                    "grant", v.name, sql.SQL("GRANT SELECT ON {} TO {}").format(self.ident(v.name), who)
                )
        for q in self.source.sequences:
            # Identity columns draw without a privilege; a default's nextval() needs USAGE.
            self.add(
                "grant",
                q.name,
                sql.SQL("GRANT USAGE, SELECT ON SEQUENCE {} TO {}").format(self.ident(q.name), who),
            )

    def downgrade(self) -> list[Statement]:
        down: list[Statement] = []
        for v in reversed([v for v in self.source.views if v.name in self.views_sql]):
            down.append(
                Statement(_text(sql.SQL("DROP VIEW IF EXISTS {}").format(self.ident(v.name))), "view", v.name)
            )
        if self.source.tables:
            # One statement: the foreign keys between them (cycles too) go with them.
            names = sql.SQL(", ").join(self.ident(n) for n in sorted(self.source.tables))
            down.append(Statement(_text(sql.SQL("DROP TABLE IF EXISTS {}").format(names)), "table"))
        schema = sql.Identifier(self.o.schema)
        for r in reversed(self.verdicts.routines):
            down.append(Statement(routines.drop_sql(r, schema=schema, rq=self.rq), "function", r.name))
        for q in reversed(self.source.sequences):
            down.append(
                Statement(
                    _text(sql.SQL("DROP SEQUENCE IF EXISTS {}").format(self.ident(q.name))),
                    "sequence",
                    q.name,
                )
            )
        for t in reversed(self.source.types):
            what = "DOMAIN" if t.kind == "d" else "TYPE"
            down.append(
                Statement(
                    _text(sql.SQL("DROP {} IF EXISTS {}").format(sql.SQL(what), self.ident(t.name))),
                    "type",
                    t.name,
                )
            )
        if self.o.app_role is not None:
            down.append(
                Statement(
                    _text(
                        sql.SQL("REVOKE USAGE ON SCHEMA {} FROM {}").format(
                            sql.Identifier(self.o.schema), sql.Identifier(self.o.app_role)
                        )
                    ),
                    "grant",
                )
            )
        return down

    def build(self) -> SharedSchema:
        unknown = sorted(self.o.global_tables - set(self.source.tables))
        if unknown:
            self.note(
                "warning",
                "global-table-unknown",
                ", ".join(unknown),
                "declared global but not a table of the source schema",
                "check the spelling in the playbook or --global",
            )
        self.role_check()
        self.extensions()
        self.add(
            "schema", "", sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.o.schema))
        )
        self.types()
        self.sequences()
        self.routines()
        for name in sorted(self.source.tables):
            self.table(self.source.tables[name])
        self.partitions()
        for name in sorted(self.source.tables):
            t = self.source.tables[name]
            for fk in t.foreign_keys:
                self.foreign_key(t, fk)
            for index in t.indexes:
                self.index(t, index)
        self.partition_objects()
        self.triggers()
        roots = partition_roots(self.source)
        for name in sorted(self.tenant):
            self.rls(name, name)
        for p in self.source.partitions:
            if roots[p.name] in self.tenant:
                # Reading a partition directly skips the parent's policies: each needs its own.
                self.rls(p.name, roots[p.name])
        self.plan_views()
        for v in self.source.views:
            self.view(v)
        self.comments()
        self.grants()
        self._report_uncarried()
        return SharedSchema(
            schema=self.o.schema,
            upgrade=tuple(self.up),
            downgrade=tuple(self.downgrade()),
            notes=tuple(self.notes),
            tenant_tables=tuple(sorted(self.tenant)),
            global_tables=tuple(sorted(set(self.source.tables) - self.tenant)),
            types=tuple(t.name for t in self.source.types),
            views=tuple(v.name for v in self.source.views if v.name in self.views_sql),
            partitions=tuple(p.name for p in self.source.partitions),
            carried=tuple(self.carried_objects),
            left_behind=tuple(sorted(s for s in self._blocked_subjects() if s in self.o.leave_behind)),
        )

    def _blocked_objects(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(subject, why, what depends on it) of everything not re-created."""
        out = [(s, why, self._dependents(s)) for s, why in self.blocked.items()]
        for u in (*self.source.uncarried, *self.source.omitted):
            out.append((f"{u.kind} {u.name}", " ".join(u.detail.split()), ()))
        return sorted(out)

    def _blocked_subjects(self) -> set[str]:
        return {s for s, _w, _d in self._blocked_objects()}

    def _report_uncarried(self) -> None:
        """Nothing of the source is dropped silently: each object not re-created stops the build
        (an error) unless a person acknowledged leaving it behind (then it is reported)."""
        fixes = {
            "rule": "replace it with a view or a trigger",
            "policy": "the tenant policy replaces the source's own row-level security",
            "materialized view": "it ignores row-level security and would hold every tenant's rows; "
            "make it a view",
            "foreign table": "re-create the foreign server and table",
            "sequence": "nothing uses it",
            "exclusion constraint": "re-create it with the tenant column (needs btree_gist)",
            "table": "add it to the playbook's tables",
        }
        for subject, why, dependents in self._blocked_objects():
            kind = subject.rsplit(" ", 1)[0]
            detail = why or "not re-created in the shared schema"
            if dependents:
                detail += "; used by " + ", ".join(dependents)
            if subject in self.o.leave_behind:
                self.note("info", "left-behind", subject, detail, "acknowledged in schema.leave_behind")
                continue
            fix = LEAVE_BEHIND_FIX.format(subject=subject)
            if kind in fixes:
                fix = f"{fixes[kind]}; or {fix}"
            self.note("error", "not-carried", subject, detail, fix)
        for unknown in sorted(self.o.leave_behind - self._blocked_subjects() - set(self.carried_objects)):
            self.note(
                "warning",
                "leave-behind-unknown",
                unknown,
                "acknowledged in schema.leave_behind, but the source has no such object left behind",
                "check the spelling against the report's names, or remove the entry",
            )


def _sequence(name: sql.Composable, q: SourceSequence) -> sql.Composable:
    """CREATE SEQUENCE with the source's settings; numbers start where the source's did (the
    backfill then moves it past every tenant's values)."""
    return sql.SQL(
        "CREATE SEQUENCE {} AS {} INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {} {}"
    ).format(
        name,
        sql.SQL(q.type if q.type in ("smallint", "integer", "bigint") else "bigint"),
        sql.Literal(q.increment),
        sql.Literal(q.minimum),
        sql.Literal(q.maximum),
        sql.Literal(q.start),
        sql.Literal(q.cache),
        sql.SQL("CYCLE" if q.cycle else "NO CYCLE"),
    )


def _index_columns(index: Index) -> list[str]:
    """The plain column names an index leads with, up to its first expression."""
    toks = [t for t in sqltext.tokens(index.definition) if t.kind != "other" or t.text.strip()]
    using = sqltext.find_keyword(toks, "USING")
    start = next((i for i in range(max(using, 0), len(toks)) if toks[i].text == "("), -1)
    out: list[str] = []
    i = start + 1
    while 0 < i < len(toks):
        tok = toks[i]
        if tok.name is None:
            break
        nxt = toks[i + 1].text if i + 1 < len(toks) else ""
        if nxt not in (",", ")"):
            break
        out.append(tok.name)
        if nxt == ")":
            break
        i += 2
    return out


def build(source: SourceSchema, options: Options) -> SharedSchema:
    """The shared schema's statements (upgrade and downgrade) and notes for one source schema."""
    return _Builder(source, options).build()
