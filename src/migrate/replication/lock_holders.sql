-- Sessions holding a lock on the tenant's tables that conflicts with SHARE (a writer, DDL, VACUUM):
-- what the barrier waits for, and terminates past its bound. One line each, to name them.
SELECT DISTINCT l.pid, format('pid %%s (%%s, %%s, %%s s in its transaction: %%s)', l.pid,
coalesce(a.usename, a.backend_type), a.state,
round(extract(epoch FROM clock_timestamp() - a.xact_start))::int, left(a.query, 60))
FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.granted AND l.pid <> pg_backend_pid() AND l.mode = ANY(%s)
AND n.nspname = %s AND c.relname = ANY(%s)
