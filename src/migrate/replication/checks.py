"""What a database must offer before change capture or a freeze starts there: checked up front.

Each check reads only (catalog views and settings) and returns the problems it
found, each naming the setting and the fix; the api turns them into one input
error (exit 2) per tenant before anything is created — no slot, no publication,
no REVOKE, no control schema.

Source, for change capture: ``wal_level``, the role's REPLICATION right, a free
replication slot and WAL sender (only while the slot is still to be made),
``output_plugin_libraries`` (15.19+), a key or replica identity on every table
(a publication on a table without one makes the *application's* UPDATE and
DELETE fail), ``max_slot_wal_keep_size`` (an orphaned slot must not fill the
disk), slots or publications named for this playbook that no run of it made,
and transactions open longer than the slot may wait for.

Source, for a freeze: the application roles exist and are no superusers, no
other role (nor ``PUBLIC``, nor a column grant) can write the tables, and the
migrator may REVOKE and GRANT (owner or superuser) and terminate stragglers.

Target, for applying changes: ``session_replication_role`` may be set, and the target is
no Citus coordinator (the online path is refused there, with the reason).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import psycopg

from migrate.catalog import citus
from migrate.replication.freeze import WRITES


def _sql(name: str) -> str:
    return (files("migrate.replication") / f"{name}.sql").read_text()


@dataclass(frozen=True)
class Problem:
    setting: str  # what to change: a server setting, a role, a table, a slot
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.setting}: {self.message} (fix: {self.fix})"


def _one(conn: psycopg.Connection[Any], query: str, params: Sequence[Any] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def capture_problems(
    conn: psycopg.Connection[Any],
    *,
    schema: str,
    tables: Sequence[str],
    slot: str,
    publication: str,
    known_slots: Collection[str],
    playbook_slots: Collection[str],
    slot_wait: float,
) -> list[Problem]:
    """Whether this source can feed change capture for one tenant.

    ``slot``/``publication``: this tenant's names; ``known_slots``: the slots the
    control schema knows of (this playbook's runs made them); ``playbook_slots``:
    the names this playbook gives its tenants' slots (the ones a leftover would have).
    """
    out: list[Problem] = []
    user = str(_one(conn, "SELECT current_user"))
    level = str(_one(conn, "SHOW wal_level"))
    if level != "logical":
        out.append(
            Problem(
                "wal_level",
                f"is '{level}'; logical decoding needs 'logical'",
                "ALTER SYSTEM SET wal_level = logical, then restart the server (a postmaster setting); "
                "on Amazon RDS set rds.logical_replication = 1 in the parameter group and reboot",
            )
        )
    if not _one(conn, "SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user"):
        out.append(
            Problem(
                f"role {user}",
                "has no REPLICATION right, which replication slots need",
                f"ALTER ROLE {user} REPLICATION (as a superuser)",
            )
        )
    try:
        libraries = _one(conn, "SELECT current_setting('output_plugin_libraries', true)")
    except psycopg.errors.InsufficientPrivilege:
        libraries = None  # readable by superusers and pg_read_all_settings only: slot creation will say
    if libraries is not None and "pgoutput" not in [p.strip().strip('"') for p in str(libraries).split(",")]:
        out.append(
            Problem(
                "output_plugin_libraries",
                f"is '{libraries}', without pgoutput",
                "ALTER SYSTEM SET output_plugin_libraries = pgoutput, … (an unquoted list: a quoted "
                "'a, b' is one element), then SELECT pg_reload_conf()",
            )
        )
    keep = str(_one(conn, "SHOW max_slot_wal_keep_size"))
    if keep in ("-1", "-1MB"):
        out.append(
            Problem(
                "max_slot_wal_keep_size",
                "is -1: a slot left behind would keep WAL until the disk is full",
                "ALTER SYSTEM SET max_slot_wal_keep_size = '10GB' (a size the disk can spare), "
                "then SELECT pg_reload_conf()",
            )
        )
    out += _keys(conn, schema, tables)
    existing = {r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots")}
    for leftover in sorted((existing & set(playbook_slots)) - set(known_slots)):
        out.append(
            Problem(
                f"replication slot {leftover}",
                "is named for this playbook, but no run of it made it (a control schema reset, or another "
                "target?): it holds WAL and would be mistaken for this migration's",
                f"if nothing else reads it, on that server: SELECT pg_drop_replication_slot('{leftover}')",
            )
        )
    if publication not in known_slots and _one(
        conn, "SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)
    ):
        out.append(
            Problem(
                f"publication {publication}",
                "exists in the tenant's source, but no run of this playbook made it",
                f"if nothing else uses it: DROP PUBLICATION {publication}",
            )
        )
    if slot not in existing:  # still to be made: it needs a free slot, a WAL sender, no old transaction
        free = int(
            _one(
                conn,
                "SELECT current_setting('max_replication_slots')::int"
                " - (SELECT count(*) FROM pg_replication_slots)",
            )
        )
        if free < 1:
            out.append(
                Problem(
                    "max_replication_slots",
                    "every replication slot is in use",
                    "drop a slot nobody reads, or raise max_replication_slots (restart)",
                )
            )
        senders = int(
            _one(
                conn,
                "SELECT current_setting('max_wal_senders')::int"
                " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')",
            )
        )
        if senders < 1:
            out.append(
                Problem(
                    "max_wal_senders",
                    "no WAL sender is free for the connection that creates the slot and exports its snapshot",
                    "raise max_wal_senders (restart), or wait for a replication connection to end",
                )
            )
        old = conn.execute(
            "SELECT pid, usename, state, round(extract(epoch FROM clock_timestamp() - xact_start))::int"
            " FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
            " AND xact_start < clock_timestamp() - make_interval(secs => %s) ORDER BY xact_start LIMIT 3",
            (slot_wait,),
        ).fetchall()
        for pid, who, state, age in old:
            out.append(
                Problem(
                    f"transaction of pid {pid}",
                    f"({who}, {state}) has been open for {age} s; creating the slot waits for it "
                    f"(longer than cutover.slot_wait, {slot_wait:g} s)",
                    f"let it end, or end it: SELECT pg_terminate_backend({pid})",
                )
            )
    return out


def _keys(conn: psycopg.Connection[Any], schema: str, tables: Sequence[str]) -> list[Problem]:
    rows = conn.execute(
        "SELECT c.relname, c.relreplident,"
        " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),"
        " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = ANY(%s) ORDER BY 1",
        (schema, list(tables)),
    ).fetchall()
    out = []
    for table, ident, primary, index in rows:
        if (ident == "d" and primary) or (ident == "i" and index):
            continue
        why = {
            "n": "has REPLICA IDENTITY NOTHING",
            "f": "has REPLICA IDENTITY FULL but no primary key to apply its changes by",
        }.get(str(ident), "has no primary key")
        out.append(
            Problem(
                f"table {table}",
                f"{why}: once published, the application's UPDATE and DELETE on it fail, and its changes "
                "cannot be matched to rows",
                f"add a primary key, or ALTER TABLE {table} REPLICA IDENTITY USING INDEX <a unique index "
                "on NOT NULL columns>; or migrate this playbook offline (cutover.mode: offline)",
            )
        )
    return out


def freeze_problems(
    conn: psycopg.Connection[Any], *, schema: str, tables: Sequence[str], roles: Sequence[str]
) -> list[Problem]:
    """Whether a freeze of ``roles`` on ``tables`` would hold, and whether the migrator may make it."""
    out: list[Problem] = []
    user = str(_one(conn, "SELECT current_user"))
    found = {
        r[0]: bool(r[1])
        for r in conn.execute(
            "SELECT rolname, rolsuper FROM pg_roles WHERE rolname = ANY(%s)", (list(roles),)
        )
    }
    for role in roles:
        if role not in found:
            out.append(
                Problem(
                    "source.app_roles",
                    f"role {role} does not exist on the tenant's source",
                    "name the roles the application connects as (or their group roles)",
                )
            )
        elif found[role]:
            out.append(
                Problem(
                    "source.app_roles",
                    f"role {role} is a superuser: no REVOKE can stop it writing during the freeze",
                    "let the application connect as a role that is not a superuser "
                    f"(ALTER ROLE {role} NOSUPERUSER)",
                )
            )
    writers = conn.execute(
        _sql("writers"),
        (schema, list(tables), list(WRITES)),
    ).fetchall()
    for table, grantee in writers:
        if grantee in roles:
            continue
        out.append(
            Problem(
                "source.app_roles",
                ("everyone (PUBLIC)" if grantee == "PUBLIC" else f"role {grantee}")
                + f" can write table {table} "
                "but is not among the application roles the freeze revokes: its writes during the cut-over "
                "would be lost",
                f"add {grantee} to source.app_roles"
                if grantee != "PUBLIC"
                else f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {table} FROM PUBLIC "
                "(grant the application role instead)",
            )
        )
    columns = conn.execute(
        _sql("column_writers"),
        (schema, list(tables)),
    ).fetchall()
    for table, column, grantee in columns:
        out.append(
            Problem(
                f"table {table}",
                f"{grantee} holds a column grant to write {table}.{column}, which a table-level "
                "REVOKE leaves",
                f"REVOKE INSERT ({column}), UPDATE ({column}) ON {table} FROM {grantee}; "
                "grant on the table instead",
            )
        )
    owners = conn.execute(
        "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = ANY(%s)"
        " AND NOT pg_has_role(current_user, c.relowner, 'USAGE')"
        " AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) ORDER BY 1",
        (schema, list(tables)),
    ).fetchall()
    for table, owner in owners:
        out.append(
            Problem(
                f"role {user}",
                f"may not REVOKE or GRANT on table {table} (owned by {owner})",
                f"connect the source as {owner} or a superuser, or GRANT {owner} TO {user}",
            )
        )
    if not _one(
        conn,
        "SELECT rolsuper OR pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')"
        " FROM pg_roles WHERE rolname = current_user",
    ):
        out.append(
            Problem(
                f"role {user}",
                "may not terminate the application's sessions that still write after the freeze's bound",
                f"GRANT pg_signal_backend TO {user}",
            )
        )
    return out


def apply_problems(conn: psycopg.Connection[Any]) -> list[Problem]:
    """Whether the target's writer may apply changes (foreign-key and user triggers off)."""
    user = str(_one(conn, "SELECT current_user"))
    if _one(conn, citus.IS_CITUS):
        # Measured on Citus 13.2.2 (shared/notes/citus.md): a session-level session_replication_role
        # is ignored on the workers. Refused until the catch-up, cut-over and reverse sync are
        # adapted to the workers and proven on a real cluster (README, "Citus").
        return [
            Problem(
                "target (a Citus coordinator)",
                "the online cut-over is not supported on Citus: its catch-up applies the source's changes "
                "with session_replication_role = replica for its session, which the workers ignore (their "
                "shards would check foreign keys and fire triggers the source already ran), and neither "
                "it, the freeze's drain nor a reverse sync has been proven on a Citus cluster",
                "cutover.mode: offline for a Citus target, with a freeze step before the backfill if the "
                "application must not write during the copy",
            )
        ]
    may = _one(
        conn,
        "SELECT rolsuper OR (current_setting('server_version_num')::int >= 150000"
        " AND has_parameter_privilege('session_replication_role', 'SET'))"
        " FROM pg_roles WHERE rolname = current_user",
    )
    if may:
        return []
    return [
        Problem(
            f"role {user} on the target",
            "may not set session_replication_role, which applying changes needs (the source already checked "
            "its foreign keys and ran its cascades)",
            f"GRANT SET ON PARAMETER session_replication_role TO {user} (PostgreSQL 15+)",
        )
    ]
