"""The order a tenant's tables load in: parents before children, cycles broken where they must be.

A table loads after every table its foreign keys point to. A self-reference,
or a cycle of tables pointing at each other, has no such order: those tables
are *deferred* — the backfill loads them with the foreign-key triggers off for
its own transaction (``session_replication_role = replica``, which touches no
other session) and checks their foreign keys afterwards with one anti-join per
key (load-then-validate). Deferred constraints cannot do this job: a chunk's
transaction would check them at its own commit, before the rows they point to
have arrived in a later chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from migrate.catalog.reflect import SourceTable, fk_dependencies, layered_order, select_tables


def load_order(tables: Iterable[SourceTable]) -> list[SourceTable]:
    """Parents first (alphabetical among equals); a cycle is broken at its least-blocked table."""
    by_name, deps = fk_dependencies(tables)

    def least_blocked(waiting: list[str], done: set[str]) -> list[str]:
        # A cycle: take the table waiting on the fewest others; its foreign keys are deferred.
        return [min(waiting, key=lambda n: (len(deps[n] - done), n))]

    return [by_name[n] for n in layered_order(deps, least_blocked)]


def deferred_tables(ordered: Sequence[SourceTable]) -> frozenset[str]:
    """Tables with a foreign key to themselves or to a table that loads at the same time or later."""
    position = {t.name: i for i, t in enumerate(ordered)}
    out = set()
    for i, table in enumerate(ordered):
        for fk in table.all_foreign_keys:
            if fk.ref_schema is None and position.get(fk.ref_table, -1) >= i:
                out.add(table.name)
    return frozenset(out)


def select_in_load_order(
    reflected: dict[str, SourceTable],
    wanted: Sequence[str] | None,
    *,
    schema: str,
    exclude: Iterable[str] = (),
) -> list[SourceTable]:
    """The playbook's tables (all when ``auto``, less ``exclude``: global tables) in load order."""
    return select_tables(reflected, wanted, schema=schema, exclude=exclude, order=load_order)
