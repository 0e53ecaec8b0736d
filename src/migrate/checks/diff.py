"""Which keys differ between source and target: bisection by primary-key ranges.

Like data-diff, counts and checksums (checksum.py) of key ranges are compared
on both sides, and only ranges that differ are looked into further:

1. **Level 0**, one pass per side: rows are grouped into ranges of about
   ``bucket_rows`` rows on the leading key column (``width_bucket`` over
   thresholds taken as quantiles of the source's keys, from a TABLESAMPLE of a
   big table), with a count and a checksum per range.
2. A range that differs and holds more than ``leaf_rows`` rows on a side is
   split into ``fanout`` ranges at keys of the side with more rows there, and
   those are compared again (index range scans).
3. A small range gives up its keys and row hashes, compared here; a range
   empty on one side is all missing (or all extra): counted, and its keys
   fetched only as far as the sample needs.
4. For a sample of changed keys, each column's hash and shortened text show
   which columns changed.

No row data leaves the database except keys and row hashes of differing
ranges, and the sampled changed rows' column values. Each side works in one
snapshot with pinned settings; key bounds travel as text (canonical under
those settings) and are cast back to the key's type; keys are ordered
``COLLATE "C"`` on both sides, so a range holds the same keys whatever each
database's default collation. The target side is always filtered by tenant.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from migrate.checks.checksum import (
    ColumnShape,
    Mode,
    Side,
    TableShape,
    hash_of,
    on_both,
    query_failed,
    row_hash,
    snapshot,
    value,
)
from migrate.errors import CheckFailed

Key = tuple[str, ...]  # a key's canonical text, one item per key column

LEAF_ROWS = 1000
FANOUT = 16
BUCKET_ROWS = 1000
MAX_BUCKETS = 4096
SAMPLE_ABOVE = 100_000  # estimated rows above which level-0 thresholds come from a TABLESAMPLE
SAMPLE_ROWS = 50_000
MAX_LEVELS = 40  # beyond this, a differing range is compared row by row whatever its size
SHOWN_CHARS = 120
_UNION_CHUNK = 200  # ranges per UNION ALL statement
WORK_MEM = "64MB"


@dataclass(frozen=True)
class KeyRange:
    """Keys from ``lo`` (inclusive) to ``hi`` (exclusive); a bound may be a prefix of the key."""

    lo: Key | None = None
    hi: Key | None = None


def ranges_between(outer: KeyRange, points: Sequence[Key]) -> list[KeyRange]:
    """``outer`` cut at ``points`` (sorted, inside it): [lo, p1), [p1, p2), …, [pn, hi)."""
    bounds: list[Key | None] = [outer.lo, *points, outer.hi]
    return [KeyRange(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


@dataclass(frozen=True)
class ColumnChange:
    column: str
    source: str | None  # the value's text, shortened; None is NULL
    target: str | None


@dataclass(frozen=True)
class ChangedRow:
    key: Key
    columns: tuple[ColumnChange, ...]


@dataclass(frozen=True)
class DiffResult:
    """Missing, extra and changed keys (totals, and a sample of each) of one table."""

    table: str
    key_columns: tuple[str, ...]
    mode: Mode
    source_rows: int
    target_rows: int
    missing: int  # in the source, not in the target
    extra: int  # in the target, not in the source
    changed: int  # in both, with different values
    missing_keys: tuple[Key, ...]
    extra_keys: tuple[Key, ...]
    changed_rows: tuple[ChangedRow, ...]
    ranges_compared: int
    keys_fetched: int  # key tuples that left the databases (bounds, row hashes, samples)
    levels: int
    seconds: float

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.changed)


@dataclass
class _Range:
    bounds: KeyRange
    source_rows: int
    target_rows: int


Query = tuple[sql.Composable, list[Any]]


class _Queries:
    """The SQL of one table's diff: key order, key text, range predicates, hashes."""

    def __init__(self, shape: TableShape, mode: Mode) -> None:
        self.shape = shape
        self.mode = mode
        self.keys = shape.key_columns
        self.hash = row_hash(shape, mode)

    @staticmethod
    def order(col: ColumnShape, ref: sql.Composable | None = None) -> sql.Composable:
        expr = ref if ref is not None else sql.Identifier(col.name)
        return sql.SQL('{} COLLATE "C"').format(expr) if col.collatable else expr

    @staticmethod
    def key_text(col: ColumnShape, ref: sql.Composable | None = None) -> sql.Composable:
        expr = ref if ref is not None else sql.Identifier(col.name)
        if col.kind == "numeric":  # 1.50 and 1.5 are one key
            return sql.SQL("trim_scale({})::text").format(expr)
        return sql.SQL("{}::text").format(expr)

    def order_by(self) -> sql.Composable:
        return sql.SQL(", ").join(self.order(c) for c in self.keys)

    def key_texts(self) -> sql.Composable:
        """The key's text, one output column per key column (aliased: an ORDER BY on a column name
        must find the table's column, not this text under the same name)."""
        return sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(self.key_text(c), sql.Identifier(f"k{i}"))
            for i, c in enumerate(self.keys)
        )

    def _bound(self, bound: Key, op: str) -> Query:
        cols = self.keys[: len(bound)]
        lhs = sql.SQL(", ").join(self.order(c) for c in cols)
        rhs = sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(c.type)) for c in cols)
        return sql.SQL("({}) {} ({})").format(lhs, sql.SQL(op), rhs), list(bound)

    def where(self, side: Side, key_range: KeyRange) -> Query:
        """The tenant's filter (target) and the range's bounds."""
        parts, params = [], []
        tenant, tenant_params = side.tenant_filter()
        parts.append(tenant)
        params.extend(tenant_params)
        for bound, op in ((key_range.lo, ">="), (key_range.hi, "<")):
            if bound is not None:
                pred, pred_params = self._bound(bound, op)
                parts.append(pred)
                params.extend(pred_params)
        return sql.SQL(" AND ").join(parts), params

    def key_in(self, side: Side, keys: Sequence[Key]) -> Query:
        """The tenant's filter and ``(k1, k2) IN ((…), …)`` for these keys."""
        tenant, params = side.tenant_filter()
        one = sql.SQL("({})").format(
            sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(c.type)) for c in self.keys)
        )
        cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in self.keys)
        pred = sql.SQL("({}) IN ({})").format(cols, sql.SQL(", ").join([one] * len(keys)))
        return sql.SQL("{} AND {}").format(tenant, pred), [*params, *(v for k in keys for v in k)]


def _union(parts: Sequence[Query]) -> Query:
    return (
        sql.SQL(" UNION ALL ").join(sql.SQL("({})").format(q) for q, _ in parts),
        [p for _, params in parts for p in params],
    )


def _chunks(items: Sequence[Any], size: int = _UNION_CHUNK) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass
class _Differ:
    source: Side
    target: Side
    shape: TableShape
    mode: Mode
    sample: int
    leaf_rows: int
    fanout: int
    bucket_rows: int
    q: _Queries = field(init=False)
    missing: int = 0
    extra: int = 0
    changed: int = 0
    missing_keys: list[Key] = field(default_factory=list)
    extra_keys: list[Key] = field(default_factory=list)
    changed_keys: list[Key] = field(default_factory=list)
    ranges_compared: int = 0
    keys_fetched: int = 0

    def __post_init__(self) -> None:
        self.q = _Queries(self.shape, self.mode)

    def _rel(self, side: Side) -> sql.Identifier:
        return side.relation(self.shape.name)

    def _fetch(self, side: Side, query: Query) -> list[tuple[Any, ...]]:
        try:
            return side.conn.execute(sql.SQL("{}").format(query[0]), query[1]).fetchall()
        except psycopg.Error as exc:
            raise query_failed(side, self.shape.name, exc) from exc

    # ------------------------------------------------------------------ level 0
    def _estimated_rows(self) -> int:
        rows = self._fetch(
            self.source,
            (
                sql.SQL(
                    "SELECT c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = %s AND c.relname = %s"
                ),
                [self.source.schema, self.shape.name],
            ),
        )
        estimate = int(rows[0][0]) if rows else -1
        if estimate >= 0:
            return estimate
        counted = self._fetch(
            self.source, (sql.SQL("SELECT count(*) FROM {}").format(self._rel(self.source)), [])
        )
        return int(counted[0][0])

    def _level0_thresholds(self) -> list[Key]:
        """Leading-key values that cut the source into ranges of about ``bucket_rows`` rows."""
        estimate = self._estimated_rows()
        buckets = min(MAX_BUCKETS, estimate // self.bucket_rows)
        if buckets < 2:
            return []
        lead = self.q.keys[0]
        sample: sql.Composable = sql.SQL("")
        if estimate > SAMPLE_ABOVE:
            percent = min(100.0, 100.0 * max(SAMPLE_ROWS, 20 * buckets) / estimate)
            sample = sql.SQL(" TABLESAMPLE SYSTEM ({}) REPEATABLE (0)").format(sql.Literal(percent))
        query = sql.SQL(
            "SELECT {} FROM (SELECT DISTINCT unnest(percentile_disc(%s::float8[])"
            " WITHIN GROUP (ORDER BY {})) AS q FROM {}{}) s ORDER BY {}"
        ).format(
            self.q.key_text(lead, sql.Identifier("q")),
            self.q.order(lead),
            self._rel(self.source),
            sample,
            self.q.order(lead, sql.Identifier("s", "q")),  # s.q: the value, not its text (also "q")
        )
        rows = self._fetch(self.source, (query, [[i / buckets for i in range(1, buckets)]]))
        self.keys_fetched += len(rows)
        return [(str(r[0]),) for r in rows]

    def _level0(self, side: Side, thresholds: Sequence[Key]) -> dict[int, tuple[int, str]]:
        lead = self.q.keys[0]
        where, params = self.q.where(side, KeyRange())
        if thresholds:
            bucket: sql.Composable = sql.SQL("width_bucket({}, %s::text[]::{}[])").format(
                self.q.order(lead), sql.SQL(lead.type)
            )
            params = [[t[0] for t in thresholds], *params]
        else:
            bucket = sql.SQL("0")
        query = sql.SQL(
            "SELECT {} AS b, count(*), coalesce(sum({}), 0)::text FROM {} WHERE {} GROUP BY 1"
        ).format(bucket, self.q.hash, self._rel(side), where)
        return {int(b): (int(n), str(s)) for b, n, s in self._fetch(side, (query, params))}

    # ------------------------------------------------------------------ deeper levels
    def _sums(self, side: Side, ranges: Sequence[KeyRange]) -> list[tuple[int, str]]:
        out: dict[int, tuple[int, str]] = {}
        for offset, chunk in enumerate(_chunks(ranges)):
            parts = []
            for i, key_range in enumerate(chunk):
                where, params = self.q.where(side, key_range)
                parts.append(
                    (
                        sql.SQL(
                            "SELECT {}::int, count(*), coalesce(sum({}), 0)::text FROM {} WHERE {}"
                        ).format(sql.Literal(offset * _UNION_CHUNK + i), self.q.hash, self._rel(side), where),
                        params,
                    )
                )
            for i, n, s in self._fetch(side, _union(parts)):
                out[int(i)] = (int(n), str(s))
        return [out[i] for i in range(len(ranges))]

    def _split_points(self, side: Side, items: Sequence[tuple[KeyRange, int]]) -> list[list[Key]]:
        """For each (range, step): every step-th key of the range on this side, in key order."""
        found: list[list[Key]] = [[] for _ in items]
        names = [sql.Identifier(f"k{i}") for i in range(len(self.q.keys))]
        for offset, chunk in enumerate(_chunks(items)):
            parts = []
            for i, (key_range, step) in enumerate(chunk):
                where, params = self.q.where(side, key_range)
                parts.append(
                    (
                        sql.SQL(
                            "SELECT {}::int, {} FROM (SELECT {}, row_number() OVER (ORDER BY {}) AS rn"
                            " FROM {} WHERE {}) s WHERE mod(rn, {}) = 0 ORDER BY rn"
                        ).format(
                            sql.Literal(offset * _UNION_CHUNK + i),
                            sql.SQL(", ").join(names),
                            self.q.key_texts(),
                            self.q.order_by(),
                            self._rel(side),
                            where,
                            sql.Literal(step),
                        ),
                        params,
                    )
                )
            for row in self._fetch(side, _union(parts)):
                found[int(row[0])].append(tuple(str(v) for v in row[1:]))
        self.keys_fetched += sum(len(f) for f in found)
        return found

    def _split(self, ranges: Sequence[_Range]) -> list[_Range]:
        """Cut each range at keys of its bigger side; return the parts that differ."""
        by_side: dict[str, list[tuple[int, tuple[KeyRange, int]]]] = {"source": [], "target": []}
        for i, r in enumerate(ranges):
            bigger = "source" if r.source_rows >= r.target_rows else "target"
            step = math.ceil(max(r.source_rows, r.target_rows) / self.fanout)
            by_side[bigger].append((i, (r.bounds, step)))
        src_points, dst_points = on_both(
            lambda: self._split_points(self.source, [item for _, item in by_side["source"]]),
            lambda: self._split_points(self.target, [item for _, item in by_side["target"]]),
        )
        points: dict[int, list[Key]] = {}
        for (i, _), found in zip(by_side["source"], src_points, strict=True):
            points[i] = found
        for (i, _), found in zip(by_side["target"], dst_points, strict=True):
            points[i] = found
        parts = [part for i, r in enumerate(ranges) for part in ranges_between(r.bounds, points[i])]
        src, dst = on_both(lambda: self._sums(self.source, parts), lambda: self._sums(self.target, parts))
        self.ranges_compared += len(parts)
        return [_Range(p, s[0], t[0]) for p, s, t in zip(parts, src, dst, strict=True) if s != t]

    # ------------------------------------------------------------------ leaves
    def _row_hashes(self, side: Side, ranges: Sequence[KeyRange]) -> list[dict[Key, int]]:
        found: list[dict[Key, int]] = [{} for _ in ranges]
        for offset, chunk in enumerate(_chunks(ranges)):
            parts = []
            for i, key_range in enumerate(chunk):
                where, params = self.q.where(side, key_range)
                parts.append(
                    (
                        sql.SQL("SELECT {}::int, {}, {} FROM {} WHERE {} ORDER BY {}").format(
                            sql.Literal(offset * _UNION_CHUNK + i),
                            self.q.hash,
                            self.q.key_texts(),
                            self._rel(side),
                            where,
                            self.q.order_by(),
                        ),
                        params,
                    )
                )
            for row in self._fetch(side, _union(parts)):
                found[int(row[0])][tuple(str(v) for v in row[2:])] = int(row[1])
        self.keys_fetched += sum(len(f) for f in found)
        return found

    def _first_keys(self, side: Side, key_range: KeyRange, limit: int) -> list[Key]:
        where, params = self.q.where(side, key_range)
        query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {}").format(
            self.q.key_texts(), self._rel(side), where, self.q.order_by(), sql.Literal(limit)
        )
        keys = [tuple(str(v) for v in row) for row in self._fetch(side, (query, params))]
        self.keys_fetched += len(keys)
        return keys

    def _settle(self, leaves: Sequence[_Range]) -> None:
        """Count (and sample) the missing, extra and changed keys of small or one-sided ranges."""
        both = []
        for r in leaves:
            if r.target_rows == 0:
                self.missing += r.source_rows
                if len(self.missing_keys) < self.sample:
                    need = self.sample - len(self.missing_keys)
                    self.missing_keys += self._first_keys(self.source, r.bounds, need)
            elif r.source_rows == 0:
                self.extra += r.target_rows
                if len(self.extra_keys) < self.sample:
                    need = self.sample - len(self.extra_keys)
                    self.extra_keys += self._first_keys(self.target, r.bounds, need)
            else:
                both.append(r.bounds)
        src, dst = on_both(
            lambda: self._row_hashes(self.source, both), lambda: self._row_hashes(self.target, both)
        )
        for s, t in zip(src, dst, strict=True):
            for key, h in s.items():
                if key not in t:
                    self.missing += 1
                    if len(self.missing_keys) < self.sample:
                        self.missing_keys.append(key)
                elif t[key] != h:
                    self.changed += 1
                    if len(self.changed_keys) < self.sample:
                        self.changed_keys.append(key)
            for key in t:
                if key not in s:
                    self.extra += 1
                    if len(self.extra_keys) < self.sample:
                        self.extra_keys.append(key)

    # ------------------------------------------------------------------ changed columns
    def _column_values(self, side: Side) -> dict[Key, list[tuple[int, str | None]]]:
        if not self.changed_keys:
            return {}
        where, params = self.q.key_in(side, self.changed_keys)
        cols = [
            sql.SQL("{}, left({}::text, {})").format(
                hash_of([value(c, self.mode)], self.mode),
                sql.Identifier(c.name),
                sql.Literal(SHOWN_CHARS + 1),
            )
            for c in self.shape.columns
        ]
        query = sql.SQL("SELECT {}, {} FROM {} WHERE {}").format(
            self.q.key_texts(), sql.SQL(", ").join(cols), self._rel(side), where
        )
        width = len(self.q.keys)
        out: dict[Key, list[tuple[int, str | None]]] = {}
        for row in self._fetch(side, (query, params)):
            values = row[width:]
            out[tuple(str(v) for v in row[:width])] = [
                (int(values[i]), _shorten(values[i + 1])) for i in range(0, len(values), 2)
            ]
        return out

    def _describe(self) -> tuple[ChangedRow, ...]:
        src, dst = on_both(lambda: self._column_values(self.source), lambda: self._column_values(self.target))
        rows = []
        for key in self.changed_keys:
            s, t = src.get(key), dst.get(key)
            if s is None or t is None:  # cannot happen within one snapshot; say nothing wrong
                continue
            rows.append(
                ChangedRow(
                    key,
                    tuple(
                        ColumnChange(col.name, sv[1], tv[1])
                        for col, sv, tv in zip(self.shape.columns, s, t, strict=True)
                        if sv[0] != tv[0]
                    ),
                )
            )
        return tuple(rows)

    # ------------------------------------------------------------------ the whole diff
    def run(self) -> DiffResult:
        started = time.monotonic()
        thresholds = self._level0_thresholds()
        ranges = ranges_between(KeyRange(), thresholds)
        src, dst = on_both(
            lambda: self._level0(self.source, thresholds), lambda: self._level0(self.target, thresholds)
        )
        self.ranges_compared = len(ranges)
        total = sum(n for n, _ in src.values()) + sum(n for n, _ in dst.values())
        empty = (0, "0")
        pending = [
            _Range(r, src.get(b, empty)[0], dst.get(b, empty)[0])
            for b, r in enumerate(ranges)
            if src.get(b, empty) != dst.get(b, empty)
        ]
        levels = 1
        while pending:
            small: list[_Range] = []
            big: list[_Range] = []
            for r in pending:
                settled = (
                    min(r.source_rows, r.target_rows) == 0
                    or max(r.source_rows, r.target_rows) <= self.leaf_rows
                    or levels >= MAX_LEVELS
                )
                (small if settled else big).append(r)
            self._settle(small)
            if not big:
                break
            pending = self._split(big)
            levels += 1
            if sum(r.source_rows + r.target_rows for r in pending) > total:
                # Ranges partition the keys on both sides, so this cannot grow: if it does, the two
                # sides do not order keys alike, and splitting further would never end.
                raise CheckFailed(
                    f"table {self.shape.name}: key ranges hold different rows on each side",
                    hint="the primary key's columns must have the same types on both sides",
                )
        changed_rows = self._describe()
        return DiffResult(
            table=self.shape.name,
            key_columns=self.shape.key,
            mode=self.mode,
            source_rows=sum(n for n, _ in src.values()),
            target_rows=sum(n for n, _ in dst.values()),
            missing=self.missing,
            extra=self.extra,
            changed=self.changed,
            missing_keys=tuple(self.missing_keys),
            extra_keys=tuple(self.extra_keys),
            changed_rows=changed_rows,
            ranges_compared=self.ranges_compared,
            keys_fetched=self.keys_fetched,
            levels=levels,
            seconds=time.monotonic() - started,
        )


def _shorten(text: str | None) -> str | None:
    if text is None or len(text) <= SHOWN_CHARS:
        return text
    return text[: SHOWN_CHARS - 1] + "…"


def diff_table(
    source: Side,
    target: Side,
    shape: TableShape,
    mode: Mode,
    *,
    sample: int = 10,
    leaf_rows: int = LEAF_ROWS,
    fanout: int = FANOUT,
    bucket_rows: int = BUCKET_ROWS,
) -> DiffResult:
    """Missing, extra and changed keys of one table, by bisection of its primary-key ranges."""
    if not shape.key:
        raise CheckFailed(
            f"table {shape.name} has no primary key: diff narrows differences down by key ranges",
            hint="compare it with 'migrate verify' (counts and checksums need no key)",
        )
    if fanout < 2 or leaf_rows < fanout or bucket_rows < 1 or sample < 0:
        raise ValueError("diff needs fanout >= 2, leaf_rows >= fanout, bucket_rows >= 1, sample >= 0")
    differ = _Differ(source, target, shape, mode, sample, leaf_rows, fanout, bucket_rows)
    with snapshot(source.conn), snapshot(target.conn):
        for conn in (source.conn, target.conn):
            # The planner cannot tell that level 0 makes ~1,000 groups, not one per row: with the
            # default work_mem it sorts the whole table to disk instead of hashing into a few kB.
            conn.execute("SELECT set_config('work_mem', %s, true)", (WORK_MEM,))
        return differ.run()
