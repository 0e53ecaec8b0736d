"""A source with table ``things`` and a target with the shared ``app.things``: the same values,
spelled differently on each side and read under different session settings, for the checksum
and diff tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from migrate.checks.checksum import Mode, Side, TableFigures, compare, table_shapes

THINGS_COLUMNS = """
    id       bigint NOT NULL,
    label    text,
    note     text,
    doc      jsonb,
    raw      json,
    amount   numeric,
    ratio    float8,
    at       timestamptz,
    day      date,
    span     interval,
    tags     text[],
    blob     bytea,
    feeling  mood,
    spot     point,
    zero     float4
"""
# The same values, spelled differently on each side: jsonb key order, numeric scale, time zone offsets
# (json keeps its text: its text is its content).
SOURCE_ROWS = """
INSERT INTO {table} ({tenant}id, label, note, doc, raw, amount, ratio, at, day, span, tags, blob, feeling,
    spot, zero)
VALUES ({value}1, 'Zoë', NULL, '{{"b": 1, "a": [1, 2.50]}}', '{{"b":1,"a":2}}', 1.5,
        0.1::float8 + 0.2::float8,
        '2024-05-01 12:00:00+02', '2024-05-01', '1 day 02:03:04.5', '{{x,"y z",NULL}}', '\\xdeadbeef',
        'ok', '(1.5,2)', 0),
       ({value}2, '', '', '{{}}', '[]', 100, 1e-7, '2024-12-31 23:59:59.999999-08', '1999-01-08',
        '-3 months', '{{}}', '\\x', 'happy', '(0,0)', 'NaN'),
       ({value}3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"""
TARGET_ROWS = """
INSERT INTO {table} ({tenant}id, label, note, doc, raw, amount, ratio, at, day, span, tags, blob, feeling,
    spot, zero)
VALUES ({value}1, 'Zoë', NULL, '{{"a": [1, 2.50], "b": 1}}', '{{"b":1,"a":2}}', 1.50, 0.30000000000000004,
        '2024-05-01 10:00:00+00', '2024-05-01', '1 day 02:03:04.5', '{{x,"y z",NULL}}', '\\xdeadbeef',
        'ok', '(1.5,2)', 0),
       ({value}2, '', '', '{{}}', '[]', 100.000, 0.0000001, '2025-01-01 07:59:59.999999+00', '1999-01-08',
        '-3 mons', '{{}}', '\\x', 'happy', '(0,0)', 'NaN'),
       ({value}3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"""


@dataclass
class Pair:
    """A source database with table ``things`` and a target with the shared ``app.things``."""

    source: psycopg.Connection[Any]
    target: psycopg.Connection[Any]

    def sides(self) -> tuple[Side, Side]:
        return Side(self.source, "public"), Side(self.target, "app", "tenant_id", "acme", label="target")

    def figures(self, mode: Mode) -> TableFigures:
        source, target = self.sides()
        shapes = table_shapes(self.source, "public", {"things": ("id",)})
        (figures,) = compare(source, target, shapes, mode)
        return figures


def build_pair(source_dsn: str, target_dsn: str) -> Pair:
    source = psycopg.connect(source_dsn, autocommit=True)
    target = psycopg.connect(target_dsn, autocommit=True)
    source.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
    source.execute(f"CREATE TABLE things ({THINGS_COLUMNS}, PRIMARY KEY (id))")
    source.execute(SOURCE_ROWS.format(table="things", tenant="", value=""))
    # Another enum created first: the target's enum OIDs differ from the source's.
    target.execute("CREATE TYPE unrelated AS ENUM ('x'); CREATE SCHEMA app")
    target.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
    target.execute(
        f"CREATE TABLE app.things (tenant_id text NOT NULL, {THINGS_COLUMNS}, PRIMARY KEY (tenant_id, id))"
    )
    target.execute(TARGET_ROWS.format(table="app.things", tenant="tenant_id, ", value="'acme', "))
    # Another tenant's rows in the same shared table never count.
    target.execute(TARGET_ROWS.format(table="app.things", tenant="tenant_id, ", value="'globex', "))
    target.execute("UPDATE app.things SET label = 'other' WHERE tenant_id = 'globex'")
    # Each side reads under its own, different session settings.
    source.execute(
        "SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'sql_standard';"
        " SET extra_float_digits = 0; SET bytea_output = 'escape'"
    )
    target.execute(
        "SET TimeZone = 'America/Los_Angeles'; SET DateStyle = 'German'; SET IntervalStyle = 'iso_8601';"
        " SET extra_float_digits = 1"
    )
    return Pair(source, target)
