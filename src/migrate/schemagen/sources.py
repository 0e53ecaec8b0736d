"""The sources of one ``schema generate``, opened a bounded number at a time.

Hundreds of sources may live on one server whose ``max_connections`` is 100: opening them
all at once (as the generator did) fails with ``too many clients already``. Every piece of
work here visits the sources through ``each``: at most ``limit`` connections are open at
once (a thread per connection), each closed when its visit ends. The consolidation report
merges every source's sorted rows: each source's rows are spooled to a temporary file
during its visit, and the files are merged afterwards (memory stays constant, connections
stay bounded, open files are one per source).
"""

from __future__ import annotations

import heapq
import json
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import IO, Any, TypeVar

import psycopg
from psycopg import sql

T = TypeVar("T")
Opener = Callable[[], psycopg.Connection[Any]]
Row = tuple[tuple[str, ...], str, tuple[Any, ...]]

DEFAULT_LIMIT = 8
"""Sources open at once by default: well under any server's max_connections (100 by default)."""


class Sources:
    """Labelled sources (label → a function that connects), visited at most ``limit`` at a time."""

    def __init__(self, openers: Mapping[str, Opener], limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("limit must be 1 or more")
        self.openers = dict(openers)
        self.limit = limit

    @property
    def labels(self) -> list[str]:
        return list(self.openers)

    def __len__(self) -> int:
        return len(self.openers)

    def only(self, labels: Sequence[str]) -> Sources:
        """The same sources, restricted to ``labels`` (in that order)."""
        return Sources({label: self.openers[label] for label in labels}, self.limit)

    def each(self, work: Callable[[str, psycopg.Connection[Any]], T]) -> dict[str, T]:
        """``work(label, connection)`` for every source, ``limit`` at a time; results in label order.

        The first failure is raised (the visits under way finish; no new one starts)."""

        def visit(label: str) -> T:
            with self.openers[label]() as conn:
                return work(label, conn)

        if self.limit == 1 or len(self.openers) <= 1:
            return {label: visit(label) for label in self.openers}
        with ThreadPoolExecutor(max_workers=min(self.limit, len(self.openers))) as pool:
            futures = {label: pool.submit(visit, label) for label in self.openers}
            try:
                return {label: future.result() for label, future in futures.items()}
            except BaseException:
                for future in futures.values():
                    future.cancel()
                raise

    @contextmanager
    def merged(
        self, query: sql.Composed, width: int, prepare: str
    ) -> Iterator[Iterator[tuple[tuple[str, ...], list[tuple[str, tuple[Any, ...]]]]]]:
        """Rows of every source's ``query`` (its first ``width`` columns the key, all text,
        in key order), grouped by key across sources. ``prepare`` pins the session's settings."""
        with ExitStack() as stack:

            def spool(label: str, conn: psycopg.Connection[Any]) -> IO[str]:
                out = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 (closed below)
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    conn.execute(prepare)
                    with conn.cursor(name=f"consolidate_{label}"[:60]) as cur:
                        cur.itersize = 20000
                        cur.execute(query)
                        for row in cur:
                            out.write(json.dumps(list(row), ensure_ascii=False) + "\n")
                out.seek(0)
                return out

            files = self.each(spool)
            for f in files.values():
                stack.callback(f.close)
            yield _grouped([_read(f, label, width) for label, f in files.items()])


def _read(f: IO[str], label: str, width: int) -> Iterator[Row]:
    for line in f:
        row = json.loads(line)
        yield tuple(row[:width]), label, tuple(row[width:])


def _grouped(
    streams: Sequence[Iterator[Row]],
) -> Iterator[tuple[tuple[str, ...], list[tuple[str, tuple[Any, ...]]]]]:
    """Rows of all sources grouped by key (keys compare as Python strings: byte order, as C)."""
    current: tuple[str, ...] | None = None
    group: list[tuple[str, tuple[Any, ...]]] = []
    # Plain tuple order: the key first; within one source keys are unique, so the label decides ties.
    for key, label, rest in heapq.merge(*streams):
        if key != current:
            if current is not None:
                yield current, group
            current, group = key, []
        group.append((label, rest))
    if current is not None:
        yield current, group
