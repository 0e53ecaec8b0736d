"""The net effect of a batch of decoded changes, per table and key (pure: no database).

A batch is whole transactions, in commit order. What it does to a table is
folded into one state per key (the key is the table's key columns as text):

``GONE``                 the row must not exist afterwards;
``Image(values)``        the row must exist with these values;
``Image(values, origin)`` the same, but some values are :data:`UNCHANGED` — a
                         TOASTed column an UPDATE did not touch — and come from
                         the row that sat at ``origin`` on the target *before*
                         the batch (``origin == key`` for a plain update, the old
                         key when the update moved the row to a new key).

So an insert then updates become one image; an update that moves a row to a new
key leaves ``GONE`` at the old key and the image (carrying its origin) at the
new; a delete and re-insert become the last image; ``TRUNCATE`` forgets what the
table's earlier changes did and marks it truncated. Applying the folded batch
in one target transaction gives the same end state as replaying every change,
with a few statements per table instead of one per change
(shared/notes/online-cutover.md, Q2 and Q3).

**Schema changes.** A ``Relation`` message whose columns (names, types, type
modifiers) differ from what the map expects stops the fold before anything is
applied: DDL on a source mid-migration is never half-applied nor silently
dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import Final

from migrate.errors import StepFailed
from migrate.replication.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Decoded,
    Delete,
    Insert,
    Relation,
    Row,
    Truncate,
    Update,
    decode,
)

Key = tuple[str, ...]


@dataclass(frozen=True)
class TableMap:
    """How the rows of one source table become rows of one target table.

    ``columns`` are the source columns in the stream's order (attribute order);
    ``types`` their (type oid, type modifier) on the source, to notice a changed
    type; ``fixed`` the target columns that hold one value for every row (the
    tenant: ``(("tenant_id", "acme"),)``), which lead the target's keys;
    ``order`` the load order (parents first) in which upserts go; ``since_lsn`` where
    the table's copy was taken: a transaction that committed before it is in the copy
    already, so its changes of this table are skipped (PostgreSQL's table
    synchronisation does the same), which lets tables copied at different exact
    snapshots meet one stream with no gap and no overlap.
    """

    source_schema: str
    source_table: str
    target_schema: str
    target_table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    fixed: tuple[tuple[str, str], ...] = ()
    types: tuple[tuple[int, int], ...] | None = None
    order: int = 0
    since_lsn: int = 0  # only transactions that commit at or after this count (the table's copy has the rest)
    # A reverse stream carries columns the target lacks (tenant_id): the stream's columns, in its order,
    # and the dropped ones with the one value each must hold. None: the stream carries ``columns``.
    stream_columns: tuple[str, ...] | None = None
    dropped: tuple[tuple[str, str], ...] = ()

    @property
    def source_name(self) -> tuple[str, str]:
        return (self.source_schema, self.source_table)

    @property
    def streamed(self) -> tuple[str, ...]:
        return self.stream_columns if self.stream_columns is not None else self.columns

    @cached_property
    def _kept(self) -> tuple[int, ...] | None:
        if self.stream_columns is None:
            return None
        return tuple(self.stream_columns.index(c) for c in self.columns)

    @cached_property
    def _checked(self) -> tuple[tuple[int, str, str], ...]:
        return tuple((self.streamed.index(c), c, v) for c, v in self.dropped)

    def project(self, row: Row, *, key_only: bool = False) -> Row:
        """A stream row as the target's row: the dropped columns checked (one value each) and gone."""
        kept = self._kept
        if kept is None:
            return row
        for i, column, value in self._checked:
            if row[i] != value and not (key_only and row[i] is None and column not in self.key):
                raise StepFailed(
                    f"the change stream of {self.source_table} carries a row whose {column} is "
                    f"{row[i]!r}, not {value!r}: another tenant's row",
                    hint="the reverse publication's row filter was changed by hand: this is not applied",
                )
        return tuple(row[i] for i in kept)

    @cached_property
    def key_positions(self) -> tuple[int, ...]:
        return tuple(self.columns.index(k) for k in self.key)

    def key_of(self, row: Row) -> Key:
        values = tuple(row[i] for i in self.key_positions)
        if not all(type(v) is str for v in values):
            raise StepFailed(
                f"a change of {self.source_table} carries no value for its key ({', '.join(self.key)})",
                hint="the source table needs a primary key or a replica identity index of NOT NULL columns",
            )
        return values  # type: ignore[return-value]  # all str: checked above


class _Gone:
    def __repr__(self) -> str:
        return "GONE"


GONE: Final = _Gone()


@dataclass(frozen=True)
class Image:
    values: Row
    origin: Key | None = None  # where the UNCHANGED values are, before the batch; None: none is

    @property
    def partial(self) -> bool:
        return any(v is UNCHANGED for v in self.values)


State = _Gone | Image


@dataclass
class TableEffect:
    """What one batch does to one table."""

    table: TableMap
    truncated: bool = False
    rows: dict[Key, State] = field(default_factory=dict)

    @property
    def gone(self) -> list[Key]:
        return [k for k, s in self.rows.items() if s is GONE]

    @property
    def images(self) -> dict[Key, Image]:
        return {k: s for k, s in self.rows.items() if isinstance(s, Image)}


def _projected(table: TableMap, msg: Insert | Update | Delete) -> Insert | Update | Delete:
    """The change with the stream's extra columns checked and dropped (a reverse stream)."""
    if isinstance(msg, Insert):
        return replace(msg, new=table.project(msg.new))
    if isinstance(msg, Delete):
        return replace(msg, old=table.project(msg.old, key_only=msg.old_is_key))
    old = None if msg.old is None else table.project(msg.old, key_only=msg.old_is_key)
    return replace(msg, old=old, new=table.project(msg.new))


def _merge(new: Row, old: Row) -> Row:
    """``new`` with its UNCHANGED values taken from ``old`` (which may lack them too)."""
    return tuple(o if n is UNCHANGED else n for n, o in zip(new, old, strict=True))


class SchemaChanged(StepFailed):
    """A table's columns in the stream differ from what the migration expects (DDL on the source)."""


def schema_changed(schema: str, table: str, what: str) -> SchemaChanged:
    """The error for DDL on a source mid-migration: nothing of the batch that showed it is applied."""
    return SchemaChanged(
        f"the schema of {schema}.{table} changed on the tenant's source during the migration ({what}): "
        "catch-up stopped before applying any change of that batch",
        hint="migrate the schema change deliberately: roll the tenant back to before its copy "
        "('migrate rollback … --to pre-copy'), change the shared table to match, and run again",
    )


def describe_columns(expected: Sequence[str], seen: Sequence[str]) -> str:
    """What differs between two column lists, in words."""
    added = [c for c in seen if c not in expected]
    dropped = [c for c in expected if c not in seen]
    parts = []
    if added:
        parts.append("column(s) added: " + ", ".join(added))
    if dropped:
        parts.append("column(s) dropped: " + ", ".join(dropped))
    if not parts and list(seen) != list(expected):
        parts.append("columns reordered or renamed: now " + ", ".join(seen))
    return "; ".join(parts)


def _describe_change(expected: TableMap, seen: Relation) -> str:
    text = describe_columns(expected.streamed, seen.column_names)
    parts = [text] if text else []
    if not parts and expected.types is not None:
        for col, was in zip(seen.columns, expected.types, strict=True):
            if (col.type_oid, col.type_modifier) != was:
                parts.append(f"the type of column {col.name} changed")
    return "; ".join(parts)


@dataclass
class Fold:
    """Folds peeked rows into per-table effects, transaction by transaction.

    Transactions whose commit starts before ``skip_before`` were applied by an
    earlier batch whose slot advance did not happen (a crash in between): they
    are skipped, not applied twice.
    """

    maps: Mapping[tuple[str, str], TableMap]
    skip_before: int = 0
    effects: dict[tuple[str, str], TableEffect] = field(default_factory=dict)
    transactions: int = 0
    skipped: int = 0
    changes: int = 0
    copied_before: int = 0  # changes of tables copied after they committed: in the copy already
    end_lsn: int | None = None  # the last whole transaction's end: where the slot may advance to
    first_commit: datetime | None = None  # the oldest transaction folded: the lag in seconds
    last_commit: datetime | None = None
    _relations: dict[int, TableMap] = field(default_factory=dict)
    _open: Begin | None = None
    _skipping: bool = False

    @property
    def in_transaction(self) -> bool:
        return self._open is not None

    def add_all(self, messages: Iterable[bytes]) -> None:
        for data in messages:
            self.add(data)

    def add(self, data: bytes) -> None:
        self.add_decoded(decode(data))

    def add_decoded(self, msg: Decoded) -> None:
        if isinstance(msg, Begin):
            self._open = msg
            self._skipping = msg.final_lsn < self.skip_before
            return
        if isinstance(msg, Commit):
            if self._skipping:
                self.skipped += 1
            else:
                self.transactions += 1
                self.first_commit = self.first_commit or msg.commit_time
                self.last_commit = msg.commit_time
            self.end_lsn = msg.end_lsn
            self._open = None
            self._skipping = False
            return
        if isinstance(msg, Relation):
            self._relation(msg)  # checked even in skipped transactions: DDL stops the tenant either way
            return
        if self._skipping or not isinstance(msg, Insert | Update | Delete | Truncate):
            return  # origins, types, messages: nothing to apply
        assert self._open is not None
        commit = self._open.final_lsn
        if isinstance(msg, Truncate):
            for oid in msg.relations:
                table = self._table(oid)
                if commit < table.since_lsn:
                    continue  # in the table's copy already
                effect = self._effect(table)
                effect.truncated = True
                effect.rows.clear()
            self.changes += 1
            return
        table = self._table(msg.relation)
        if commit < table.since_lsn:
            self.copied_before += 1
            return
        self.changes += 1
        effect = self._effect(table)
        if table.stream_columns is not None:
            msg = _projected(table, msg)
        if isinstance(msg, Insert):
            key = table.key_of(msg.new)
            effect.rows.pop(key, None)
            effect.rows[key] = Image(msg.new)
        elif isinstance(msg, Delete):
            key = table.key_of(msg.old)
            effect.rows.pop(key, None)
            effect.rows[key] = GONE
        else:
            self._update(table, effect, msg)

    def _update(self, table: TableMap, effect: TableEffect, msg: Update) -> None:
        new_key = table.key_of(msg.new)
        old_key = table.key_of(msg.old) if msg.old is not None else new_key
        before = effect.rows.pop(old_key, None)
        if before is GONE:
            raise StepFailed(
                f"the change stream updates a row of {table.source_table} ({', '.join(old_key)}) "
                "that an earlier change in it deleted",
                hint="this is a bug in tenant-migrate or a broken stream: report it with the log",
            )
        if isinstance(before, Image):
            values, origin = _merge(msg.new, before.values), before.origin
        elif msg.old is not None and not msg.old_is_key:
            values, origin = _merge(msg.new, msg.old), old_key  # replica identity full: the old row is whole
        else:
            values, origin = msg.new, old_key
        if old_key != new_key:
            effect.rows.pop(new_key, None)
            effect.rows[old_key] = GONE
        image = Image(values, origin)
        effect.rows[new_key] = image if image.partial else Image(values)

    def _table(self, oid: int) -> TableMap:
        table = self._relations.get(oid)
        if table is None:
            raise StepFailed(
                f"the change stream names relation {oid} before describing it",
                hint="this is a bug in tenant-migrate or a broken stream: report it with the log",
            )
        return table

    def _effect(self, table: TableMap) -> TableEffect:
        effect = self.effects.get(table.source_name)
        if effect is None:
            effect = self.effects[table.source_name] = TableEffect(table)
        return effect

    def _relation(self, msg: Relation) -> None:
        table = self.maps.get((msg.namespace, msg.name))
        if table is None:
            raise SchemaChanged(
                f"the change stream carries table {msg.namespace}.{msg.name}, which this migration "
                "does not move",
                hint="the publication was changed by hand: roll the tenant back to before its copy "
                "and run again",
            )
        seen_types = tuple((c.type_oid, c.type_modifier) for c in msg.columns)
        if msg.column_names != table.streamed or (table.types is not None and seen_types != table.types):
            raise schema_changed(msg.namespace, msg.name, _describe_change(table, msg))
        self._relations[msg.oid] = table

    def ordered(self) -> list[TableEffect]:
        """The effects in load order (parents first)."""
        return sorted(self.effects.values(), key=lambda e: e.table.order)
