"""A carried view's joins between tenant tables gain the tenant equality.

In the source, one database held one tenant, so ``customer JOIN address ON
customer.address_id = address.address_id`` could only pair rows of that tenant. In the
shared schema two tenants' ``address_id = 7`` both match: the policies hide that from the
application role, but a reader exempt from row-level security (the migrator, a reporting
role with BYPASSRLS, a superuser) gets one tenant's customer joined to another's address.
So every join between tenant tables in a carried view is rewritten to also say
``customer.tenant_id = address.tenant_id``:

- ``JOIN … ON``: the equality is added to the ON clause (``AND``), between a tenant
  relation of each side — the one the ON clause already names, else the first;
- ``FROM a, b`` and ``CROSS JOIN``: to the WHERE clause (or as the ON clause);
- a sub-query (``EXISTS``, ``IN``, a scalar sub-select) that reads tenant tables inside a
  query that reads tenant tables: its WHERE gains the equality with the outer query's
  first preserved tenant relation (correlated or not: in the source it could only see
  the same tenant).

What cannot be made safe this way is refused with the reason, and the view must then be
acknowledged (``schema: leave_behind``): a ``JOIN … USING`` or ``NATURAL`` join of tenant
tables, and a tenant table joined with something that has no tenant column (a derived
table, a CTE, another view, a LATERAL sub-query that reads tenant tables).

The view's text is PostgreSQL's own (``pg_get_viewdef``), parsed by libpg_query (pglast)
and printed back by pglast; nothing is pattern-matched in SQL text.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, parse_sql
from pglast.enums.nodes import JoinType
from pglast.enums.parsenodes import A_Expr_Kind, SetOperation
from pglast.enums.primnodes import BoolExprType
from pglast.parser import ParseError
from pglast.stream import RawStream


@dataclass(frozen=True)
class TenantJoins:
    """A view made tenant-safe (``sql``), or why it cannot be (``reason``)."""

    sql: str | None
    added: int = 0  # tenant equalities added
    reason: str = ""


class _Unsafe(Exception):
    pass


@dataclass
class _Side:
    members: list[str] = field(default_factory=list)  # tenant relations' aliases, preserved side first
    opaque: list[str] = field(default_factory=list)  # derived data without a tenant column


class _Rewriter:
    def __init__(self, schema: str, tenant_tables: Collection[str], views: Collection[str], column: str):
        self.schema = schema
        self.tenant = set(tenant_tables)
        self.views = set(views)
        self.column = column
        self.added = 0

    # ------------------------------------------------------------------ expressions
    def ref(self, alias: str) -> ast.ColumnRef:
        return ast.ColumnRef(fields=(ast.String(sval=alias), ast.String(sval=self.column)))

    def equal(self, left: str, right: str) -> ast.A_Expr:
        self.added += 1
        return ast.A_Expr(
            kind=A_Expr_Kind.AEXPR_OP,
            name=(ast.String(sval="="),),
            lexpr=self.ref(left),
            rexpr=self.ref(right),
        )

    @staticmethod
    def both(existing: Any, extra: ast.Node) -> ast.Node:
        if existing is None:
            return extra
        return ast.BoolExpr(boolop=BoolExprType.AND_EXPR, args=(existing, extra))

    # ------------------------------------------------------------------ FROM items
    def item(self, node: Any) -> _Side:
        if isinstance(node, ast.RangeVar):
            alias = str(node.alias.aliasname if node.alias is not None else node.relname)
            if node.schemaname == self.schema and node.relname in self.tenant:
                return _Side(members=[alias])
            if node.schemaname is None or (node.schemaname == self.schema and node.relname in self.views):
                # A CTE, or a view: rows of every tenant, with no tenant column to join on.
                return _Side(opaque=[str(node.relname)])
            return _Side()
        if isinstance(node, ast.RangeSubselect):
            reads = self.select(node.subquery, [])
            alias = str(node.alias.aliasname) if node.alias is not None else "sub-query"
            return _Side(opaque=[alias] if reads or node.lateral else [])
        if isinstance(node, ast.JoinExpr):
            return self.join(node)
        return _Side()  # a function in FROM and the like: no tenant table of its own

    def join(self, node: ast.JoinExpr) -> _Side:
        left, right = self.item(node.larg), self.item(node.rarg)
        self.refuse_opaque(left, right)
        if left.members and right.members:
            if node.usingClause or node.isNatural:
                raise _Unsafe(
                    f"a JOIN … USING / NATURAL join of {left.members[0]} and {right.members[0]} "
                    "(write it as JOIN … ON to carry it)"
                )
            named = _aliases(node.quals)
            lrep = next((m for m in left.members if m in named), left.members[0])
            rrep = next((m for m in right.members if m in named), right.members[0])
            node.quals = self.both(node.quals, self.equal(lrep, rrep))
        if node.jointype == JoinType.JOIN_RIGHT:
            members = right.members + left.members
        else:
            members = left.members + right.members
        return _Side(members=members, opaque=left.opaque + right.opaque)

    @staticmethod
    def refuse_opaque(left: _Side, right: _Side) -> None:
        for a, b in ((left, right), (right, left)):
            if a.opaque and (b.members or b.opaque):
                other = (b.members or b.opaque)[0]
                raise _Unsafe(
                    f"joins {a.opaque[0]}, which has no tenant column, with {other}: the tenant "
                    "equality cannot be added"
                )

    # ------------------------------------------------------------------ queries
    def select(self, node: Any, outer: list[str]) -> bool:
        """Rewrite one SELECT (and what it contains); whether it reads tenant tables."""
        if not isinstance(node, ast.SelectStmt):
            return False
        if node.op is not None and node.op != SetOperation.SETOP_NONE:
            reads_left = self.select(node.larg, outer)
            return self.select(node.rarg, outer) or reads_left
        reads = False
        if node.withClause is not None:
            for cte in node.withClause.ctes or ():
                reads = self.select(cte.ctequery, outer) or reads
        sides = [self.item(i) for i in node.fromClause or ()]
        for i, a in enumerate(sides):
            for b in sides[i + 1 :]:
                self.refuse_opaque(a, b)
        tenant_sides = [s for s in sides if s.members]
        first = tenant_sides[0].members[0] if tenant_sides else None
        for other in tenant_sides[1:]:  # FROM a, b: the equality goes to WHERE
            node.whereClause = self.both(node.whereClause, self.equal(str(first), other.members[0]))
        if first is not None and outer:
            # A sub-query of a query over tenant tables: in the source it saw the same tenant only.
            node.whereClause = self.both(node.whereClause, self.equal(first, outer[0]))
        inner = [first] if first is not None else outer
        for sublink in _sublinks(node):
            reads = self.select(sublink.subselect, inner) or reads
        return reads or first is not None or any(s.opaque for s in sides)


def _children(node: Any) -> Iterator[Any]:
    if isinstance(node, (list, tuple)):
        yield from node
    elif isinstance(node, ast.Node):
        for name in node:
            yield getattr(node, name)


def _sublinks(select: ast.SelectStmt) -> Iterator[ast.SubLink]:
    """The sub-links of one SELECT's own expressions (not of the queries nested in it)."""
    todo: list[Any] = [getattr(select, name) for name in select if name not in ("larg", "rarg", "withClause")]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.SubLink):
            yield node
            if node.testexpr is not None:
                todo.append(node.testexpr)
            continue
        if isinstance(node, (ast.SelectStmt, ast.RangeSubselect)):
            continue  # its own scope: handled where the FROM clause is
        todo.extend(_children(node))


def _aliases(node: Any) -> set[str]:
    """The relation names qualified column references in an expression use."""
    found: set[str] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        fields = n.fields or () if isinstance(n, ast.ColumnRef) else ()
        if len(fields) == 2 and isinstance(fields[0], ast.String):
            found.add(str(fields[0].sval))
        elif not isinstance(n, (ast.SelectStmt, ast.ColumnRef)):
            todo.extend(_children(n))
    return found


def tenant_joins(
    definition: str,
    *,
    schema: str,
    tenant_tables: Collection[str],
    views: Collection[str] = (),
    column: str,
) -> TenantJoins:
    """The view's query with the tenant equality on every join between tenant tables.

    ``definition`` is ``pg_get_viewdef()`` read with ``search_path = pg_catalog`` (every
    relation of ``schema`` qualified); the result still names ``schema`` (requalify it after).
    """
    try:
        statements = parse_sql(definition)
    except ParseError as exc:
        return TenantJoins(None, reason=f"its definition could not be parsed: {exc}")
    if len(statements) != 1 or not isinstance(statements[0].stmt, ast.SelectStmt):
        return TenantJoins(None, reason="its definition is not one SELECT")
    rewriter = _Rewriter(schema, tenant_tables, views, column)
    try:
        rewriter.select(statements[0].stmt, [])
    except _Unsafe as exc:
        return TenantJoins(None, reason=str(exc))
    if not rewriter.added:
        return TenantJoins(definition.strip().rstrip(";"), 0)
    return TenantJoins(RawStream()(statements[0].stmt), rewriter.added)
