"""A decoder of the ``pgoutput`` plugin's messages, protocol version 1 (pure: bytes in, values out).

``pg_logical_slot_peek_binary_changes(slot, …, 'proto_version', '1',
'publication_names', pub)`` returns one message per row, in commit order, each
transaction whole: ``B`` (begin), ``R`` (a relation's columns, sent before its
first change in every decoding call and again after any invalidation — so a
repeated ``R`` is not by itself a schema change), ``Y`` (a type), ``O``
(origin), ``I``/``U``/``D`` (a row inserted, updated, deleted), ``T``
(truncate), ``M`` (a logical message, only with ``messages``) and ``C``
(commit). Layouts: PostgreSQL's "Logical Replication Message Formats".

Column values come as the type's text output, as the decoding session's
settings render it (the reader pins DateStyle and friends), ``None`` for NULL,
or :data:`UNCHANGED` for a TOASTed value an UPDATE did not touch — the new
tuple then lacks it, and only the old row on the target has it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from migrate.errors import StepFailed

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # PostgreSQL timestamps count microseconds from here


class _Unchanged:
    """The value of a TOASTed column that an UPDATE did not change (pgoutput sends no value)."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()
Value = str | None | _Unchanged
Row = tuple[Value, ...]


# ----------------------------------------------------------------------------- LSNs
def lsn_int(text: str) -> int:
    """``'0/1F9C790'`` → an integer, for comparing and storing positions in the WAL."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def lsn_text(value: int) -> str:
    """An integer position as PostgreSQL writes a ``pg_lsn``."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


# ----------------------------------------------------------------------------- messages
@dataclass(frozen=True)
class Begin:
    final_lsn: int  # the commit record's position
    commit_time: datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int  # where the transaction ends: a slot advanced here skips it for good
    commit_time: datetime


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    key: bool  # part of the replica identity


@dataclass(frozen=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str  # d default (primary key), n nothing, f full, i index
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True)
class Insert:
    relation: int
    new: Row


@dataclass(frozen=True)
class Update:
    relation: int
    old: Row | None  # the old key ('K', when the key changed) or old row ('O', replica identity full)
    new: Row
    old_is_key: bool = False  # True: ``old`` holds only the key columns, the rest are None


@dataclass(frozen=True)
class Delete:
    relation: int
    old: Row
    old_is_key: bool = True


@dataclass(frozen=True)
class Truncate:
    relations: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True)
class TypeInfo:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True)
class Message:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Decoded = Begin | Commit | Relation | Insert | Update | Delete | Truncate | Origin | TypeInfo | Message


_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_T, _N, _U = ord("t"), ord("n"), ord("u")


class _Reader:
    """A cursor over one message's bytes (network byte order)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise ValueError(f"message ends after {len(self.data)} bytes, wanted {self.at + n}")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def byte(self) -> str:
        return chr(self.take(1)[0])

    def int8(self) -> int:
        return int(self.take(1)[0])

    def int16(self) -> int:
        value = _I16.unpack_from(self.data, self.at)[0]
        self.at += 2
        return int(value)

    def int32(self) -> int:
        value = _I32.unpack_from(self.data, self.at)[0]
        self.at += 4
        return int(value)

    def uint32(self) -> int:
        value = _U32.unpack_from(self.data, self.at)[0]
        self.at += 4
        return int(value)

    def int64(self) -> int:
        value = _I64.unpack_from(self.data, self.at)[0]
        self.at += 8
        return int(value)

    def string(self) -> str:
        end = self.data.index(b"\x00", self.at)
        text = self.data[self.at : end].decode()
        self.at = end + 1
        return text

    def time(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.int64())

    def tuple_data(self) -> Row:
        # The hot loop of decoding (every column of every change): offsets and unpack_from, no slices
        # but the values themselves.
        data, at = self.data, self.at
        count = _I16.unpack_from(data, at)[0]
        at += 2
        values: list[Value] = []
        append = values.append
        for _ in range(count):
            kind = data[at]
            at += 1
            if kind == _T:
                length = _I32.unpack_from(data, at)[0]
                at += 4
                if at + length > len(data):
                    raise ValueError(f"a value runs past the message's {len(data)} bytes")
                append(data[at : at + length].decode())
                at += length
            elif kind == _N:
                append(None)
            elif kind == _U:
                append(UNCHANGED)
            else:  # 'b' (binary) only with the 'binary' option, which the reader never asks for
                raise ValueError(f"unexpected tuple value kind {chr(kind)!r}")
        self.at = at
        return tuple(values)


def decode(data: bytes) -> Decoded:
    """One pgoutput message (protocol version 1) as a value; StepFailed for anything else."""
    r = _Reader(data if isinstance(data, bytes) else bytes(data))
    try:
        kind = r.byte()
        if kind == "B":
            return Begin(final_lsn=r.int64(), commit_time=r.time(), xid=r.uint32())
        if kind == "C":
            r.int8()  # flags, unused
            return Commit(commit_lsn=r.int64(), end_lsn=r.int64(), commit_time=r.time())
        if kind == "R":
            oid, namespace, name = r.uint32(), r.string(), r.string()
            identity = r.byte()
            columns = []
            for _ in range(r.int16()):
                flags = r.int8()
                columns.append(Column(r.string(), r.uint32(), r.int32(), key=bool(flags & 1)))
            return Relation(oid, namespace or "pg_catalog", name, identity, tuple(columns))
        if kind == "I":
            oid = r.uint32()
            r.byte()  # 'N'
            return Insert(oid, r.tuple_data())
        if kind == "U":
            oid = r.uint32()
            marker = r.byte()
            old: Row | None = None
            old_is_key = False
            if marker in ("K", "O"):
                old, old_is_key = r.tuple_data(), marker == "K"
                marker = r.byte()
            if marker != "N":
                raise ValueError(f"update without a new tuple (marker {marker!r})")
            return Update(oid, old, r.tuple_data(), old_is_key)
        if kind == "D":
            oid = r.uint32()
            marker = r.byte()
            return Delete(oid, r.tuple_data(), old_is_key=marker == "K")
        if kind == "T":
            count, options = r.int32(), r.int8()
            return Truncate(tuple(r.uint32() for _ in range(count)), bool(options & 1), bool(options & 2))
        if kind == "O":
            return Origin(r.int64(), r.string())
        if kind == "Y":
            return TypeInfo(r.uint32(), r.string(), r.string())
        if kind == "M":
            flags = r.int8()
            lsn, prefix = r.int64(), r.string()
            return Message(bool(flags & 1), lsn, prefix, r.take(r.int32()))
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise StepFailed(
            f"a pgoutput message could not be decoded: {exc}",
            hint="this is a bug in tenant-migrate or an unsupported protocol version: report it with the log",
        ) from exc
    raise StepFailed(
        f"unknown pgoutput message kind {kind!r}",
        hint="tenant-migrate reads protocol version 1 without streaming of large transactions",
    )
