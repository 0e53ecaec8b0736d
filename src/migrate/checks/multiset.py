"""Which rows differ in a table without a key: its rows compared as multisets, named by content.

Without a key there is no "row 7 changed": a row is its content, and a table is a multiset
of them (the same row may be there twice). Each row's hash (checksum.py, the same as the
validation's) is counted on both sides:

1. per bucket of the hash (its low 10 bits: 1,024 buckets), the rows and the sum of their
   hashes, one pass per side;
2. for the buckets that differ only, each hash with its number of copies, on both sides;
3. a hash with more copies in the source is that many rows missing in the target, and the
   other way round extra; a sample of them is fetched as row text (under the pinned
   settings) to name them.

A changed row shows as one missing and one extra row. Memory is bounded by the differing
buckets, not by the table.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import psycopg
from psycopg import sql

from migrate.checks.checksum import Mode, Side, TableShape, on_both, query_failed, row_hash, snapshot
from migrate.checks.diff import SHOWN_CHARS, DiffResult, Key

BUCKETS = 1024
ROW_COLUMN = "row"
"""What a keyless table's diff names its rows by: their content."""


def _row_text(shape: TableShape) -> sql.Composable:
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(sql.Identifier(c.name) for c in shape.columns))


def _buckets(side: Side, shape: TableShape, mode: Mode) -> dict[int, tuple[int, int]]:
    where, params = side.tenant_filter()
    query = sql.SQL(
        "SELECT h & {mask}, count(*), sum(h)"
        " FROM (SELECT {hash} AS h FROM {rel} WHERE {where}) AS r GROUP BY 1"
    ).format(
        mask=sql.Literal(BUCKETS - 1), hash=row_hash(shape, mode), rel=side.relation(shape.name), where=where
    )
    return {int(b): (int(n), int(s)) for b, n, s in side.conn.execute(query, params)}


def _copies(side: Side, shape: TableShape, mode: Mode, buckets: Sequence[int]) -> dict[int, int]:
    where, params = side.tenant_filter()
    query = sql.SQL(
        "SELECT h, count(*) FROM (SELECT {hash} AS h FROM {rel} WHERE {where}) AS r"
        " WHERE (h & {mask}) = ANY(%s) GROUP BY 1"
    ).format(
        mask=sql.Literal(BUCKETS - 1), hash=row_hash(shape, mode), rel=side.relation(shape.name), where=where
    )
    return {int(h): int(n) for h, n in side.conn.execute(query, [*params, list(buckets)])}


def _texts(side: Side, shape: TableShape, mode: Mode, hashes: Sequence[int]) -> dict[int, str]:
    if not hashes:
        return {}
    where, params = side.tenant_filter()
    query = sql.SQL(
        "SELECT DISTINCT ON (h) h, t FROM (SELECT {hash} AS h, {text} AS t FROM {rel} WHERE {where}) AS r"
        " WHERE h = ANY(%s)"
    ).format(hash=row_hash(shape, mode), text=_row_text(shape), rel=side.relation(shape.name), where=where)
    return {int(h): str(t) for h, t in side.conn.execute(query, [*params, list(hashes)])}


def _side(side: Side, shape: TableShape, mode: Mode) -> dict[int, tuple[int, int]]:
    """The first pass of one side: rows and hash sums per bucket, in a snapshot."""
    try:
        with snapshot(side.conn):
            return _buckets(side, shape, mode)
    except psycopg.Error as exc:
        raise query_failed(side, shape.name, exc) from exc


def diff_rows(source: Side, target: Side, shape: TableShape, mode: Mode, *, sample: int = 10) -> DiffResult:
    """Missing and extra rows of a table without a key, named by their content (a sample of each)."""
    started = time.monotonic()
    src_b, dst_b = on_both(lambda: _side(source, shape, mode), lambda: _side(target, shape, mode))
    differ = sorted(b for b in set(src_b) | set(dst_b) if src_b.get(b) != dst_b.get(b))
    missing: dict[int, int] = {}
    extra: dict[int, int] = {}
    missing_rows: list[Key] = []
    extra_rows: list[Key] = []
    if differ:

        def copies(side: Side) -> dict[int, int]:
            try:
                with snapshot(side.conn):
                    return _copies(side, shape, mode, differ)
            except psycopg.Error as exc:
                raise query_failed(side, shape.name, exc) from exc

        src_c, dst_c = on_both(lambda: copies(source), lambda: copies(target))
        for h in set(src_c) | set(dst_c):
            gap = src_c.get(h, 0) - dst_c.get(h, 0)
            if gap > 0:
                missing[h] = gap
            elif gap < 0:
                extra[h] = -gap

        def named(side: Side, found: dict[int, int]) -> list[Key]:
            shown = sorted(found)[:sample]
            with snapshot(side.conn):
                texts = _texts(side, shape, mode, shown)
            rows: list[Key] = []
            for h in shown:
                text = texts.get(h, "?")
                text = text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"
                rows += [(text,)] * min(found[h], sample - len(rows))
                if len(rows) >= sample:
                    break
            return rows

        missing_rows, extra_rows = on_both(lambda: named(source, missing), lambda: named(target, extra))
    return DiffResult(
        table=shape.name,
        key_columns=(ROW_COLUMN,),
        mode=mode,
        source_rows=sum(n for n, _s in src_b.values()),
        target_rows=sum(n for n, _s in dst_b.values()),
        missing=sum(missing.values()),
        extra=sum(extra.values()),
        changed=0,
        missing_keys=tuple(missing_rows),
        extra_keys=tuple(extra_rows),
        changed_rows=(),
        ranges_compared=len(src_b) + len(dst_b),
        keys_fetched=len(missing_rows) + len(extra_rows),
        levels=2 if differ else 1,
        seconds=time.monotonic() - started,
    )
