"""The isolate step (Citus only): the tenant onto shards of its own.

A large tenant shares its hash shard with every other tenant whose ``tenant_id`` hashes
into the same range. ``isolate_tenant_to_new_shard(table, tenant, 'CASCADE')`` (open
source since Citus 11) splits that range so the tenant's hash value alone has a shard,
in every co-located table at once; a later ``citus_move_shard_placement`` can then give
it a node of its own. The step runs it through the coordinator, idempotently: a tenant
whose shard already holds its hash value alone (``shardminvalue = shardmaxvalue``) is
left as it is, and ``verify`` proves that state from ``pg_dist_shard``.

``transfer`` is Citus' ``shard_transfer_mode``: ``auto`` moves the rows by logical
replication while the shard's other tenants keep writing (every co-located table needs a
replica identity — the shared tables have their composite primary keys — and the
cluster ``wal_level = logical``); ``block_writes`` copies them with writes to the old
shard held back meanwhile (measured on 2,000 rows: 1.4 s against 0.22 s,
shared/notes/citus.md).

Isolation is placement, not data: a revert changes nothing (the tenant keeps its shards,
and the backfill's revert deletes its rows from them as from any shard). A rehearsal
reports the shard it would split and splits nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

from psycopg import sql

from migrate.catalog import TENANT_COLUMN
from migrate.errors import CheckFailed, StepFailed
from migrate.playbook.model import IsolateStep as IsolateSpec
from migrate.playbook.model import Step
from migrate.steps.context import Details, StepContext

# A hash-distributed, non-partitioned tenant table of the schema: CASCADE takes its co-located ones.
_ANCHOR = (
    "SELECT c.relname, format_type(a.atttypid, a.atttypmod) FROM pg_dist_partition p"
    " JOIN pg_class c ON c.oid = p.logicalrelid"
    " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = %s"
    " WHERE c.relnamespace = to_regnamespace(%s) AND p.partmethod = 'h' AND c.relkind = 'r'"
    " AND NOT c.relispartition AND c.relname = ANY(%s) ORDER BY c.relname LIMIT 1"
)


class IsolateStep:
    kind: ClassVar[str] = "isolate"

    def __init__(self, spec: Step) -> None:
        self.spec = spec
        self.transfer = spec.transfer if isinstance(spec, IsolateSpec) else "auto"

    def _anchor(self, ctx: StepContext) -> tuple[sql.Composable, str]:
        if ctx.distributed != "citus":
            raise StepFailed(
                "the isolate step works on a Citus target only",
                hint="write 'distributed: citus' in the target if it is a Citus coordinator, "
                "or remove the step",
            )
        row = ctx.target.execute(
            _ANCHOR, (TENANT_COLUMN, ctx.target_schema, [t.name for t in ctx.tables])
        ).fetchone()
        if row is None:
            raise StepFailed(
                f"no table of schema {ctx.target_schema} is distributed on {TENANT_COLUMN}, so there is "
                "no shard to isolate the tenant on",
                hint="run the schema step (or the generated revision) of a 'distributed: citus' target first",
            )
        return sql.Literal(sql.Identifier(ctx.target_schema, row[0]).as_string(None)), str(row[1])

    def _shard(self, ctx: StepContext, table: sql.Composable, tenant_type: str) -> dict[str, Any]:
        """The tenant's shard in ``table``: its id, whether it holds the tenant's hash alone, its node."""
        row = ctx.target.execute(
            sql.SQL(
                "SELECT s.shardid, s.shardminvalue = s.shardmaxvalue, n.nodename || ':' || n.nodeport"
                " FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid)"
                " JOIN pg_dist_node n ON n.groupid = p.groupid"
                " WHERE s.shardid = get_shard_id_for_distribution_column({}::regclass, %s::{})"
            ).format(table, sql.SQL(tenant_type)),
            (ctx.tenant.id,),
        ).fetchone()
        assert row is not None, "every hash value has a shard"
        return {"shard": int(row[0]), "isolated": bool(row[1]), "node": str(row[2])}

    def apply(self, ctx: StepContext) -> Details:
        table, tenant_type = self._anchor(ctx)
        before = self._shard(ctx, table, tenant_type)
        if before["isolated"] or ctx.rehearsal:
            note = {"rehearsal": "nothing is split in a rehearsal"} if ctx.rehearsal else {}
            return {**before, "table": table.as_string(None).strip("'"), "split_now": False, **note}
        started = time.monotonic()
        ctx.target.execute(
            sql.SQL(
                "SELECT isolate_tenant_to_new_shard({}::regclass, %s::{}, 'CASCADE',"
                " {}::citus.shard_transfer_mode)"
            ).format(table, sql.SQL(tenant_type), sql.Literal(self.transfer)),
            (ctx.tenant.id,),
        )
        after = self._shard(ctx, table, tenant_type)
        seconds = round(time.monotonic() - started, 3)
        ctx.log.info("tenant_isolated", shard=after["shard"], node=after["node"], seconds=seconds)
        return {
            **after,
            "table": table.as_string(None).strip("'"),
            "split_now": True,
            "from_shard": before["shard"],
            "transfer": self.transfer,
            "seconds": seconds,
        }

    def verify(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        if details.get("rehearsal"):
            return
        table, tenant_type = self._anchor(ctx)
        shard = self._shard(ctx, table, tenant_type)
        if not shard["isolated"]:
            raise CheckFailed(
                f"tenant '{ctx.tenant.id}' still shares shard {shard['shard']} with other tenants",
                hint="run again; Citus' own error, if any, is in the log",
            )

    def revert(self, ctx: StepContext, details: Mapping[str, Any]) -> Details:
        return {}  # placement, not data: the tenant keeps its own shards

    def verify_reverted(self, ctx: StepContext, details: Mapping[str, Any]) -> None:
        """Nothing to check: the revert changes nothing."""

    def summary(self, details: Mapping[str, Any], *, reverted: bool) -> str | None:
        if reverted or "shard" not in details or details.get("rehearsal"):
            return None
        if not details.get("split_now"):
            return f"already on shard {details['shard']} of its own ({details['node']})"
        return f"on shard {details['shard']} of its own ({details['node']}, {details['transfer']})"
