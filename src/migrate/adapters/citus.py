"""A database of its own on a Citus cluster: on the coordinator and on every worker.

Citus does not propagate ``CREATE DATABASE`` (shared/notes/citus.md): a new database
needs creating on every node, ``CREATE EXTENSION citus`` in each, and the coordinator
told about itself and its workers. The nodes are the ones the coordinator's own
``postgres``-side metadata lists (``pg_dist_node`` of the admin DSN's database), reached
with the admin DSN's credentials. For the demo and the tests; a user's shared database
is made once, by whoever runs the cluster.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

# Workers the coordinator knows, by the admin DSN's database.
_WORKERS = (
    "SELECT nodename, nodeport FROM pg_dist_node WHERE groupid <> 0 AND noderole = 'primary' ORDER BY nodeid"
)


def workers(admin_dsn: str) -> list[tuple[str, int]]:
    """(host, port) of every primary worker the coordinator lists."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return [(str(h), int(p)) for h, p in conn.execute(_WORKERS)]


def _everywhere(admin_dsn: str) -> list[str]:
    return [admin_dsn] + [
        psycopg.conninfo.make_conninfo(admin_dsn, host=h, port=str(p)) for h, p in workers(admin_dsn)
    ]


def create_database(admin_dsn: str, name: str) -> str:
    """A new database with Citus on the coordinator and every worker, the workers added: its DSN."""
    coordinator = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    nodes = workers(admin_dsn)
    for node in _everywhere(admin_dsn):
        with psycopg.connect(node, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with psycopg.connect(psycopg.conninfo.make_conninfo(node, dbname=name), autocommit=True) as conn:
            conn.execute("SET client_min_messages = warning")
            conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
    target = psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(
            "SELECT citus_set_coordinator_host(%s, %s)",
            (str(coordinator.get("host") or "127.0.0.1"), int(coordinator.get("port") or 5432)),
        )
        for host, port in nodes:
            conn.execute("SELECT citus_add_node(%s, %s)", (host, port))
    return target


def drop_database(admin_dsn: str, name: str) -> None:
    """Drop ``name`` on every node (workers first), its sessions ended."""
    for node in reversed(_everywhere(admin_dsn)):
        with psycopg.connect(node, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
