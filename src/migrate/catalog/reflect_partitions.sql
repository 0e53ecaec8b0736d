-- Partitioning: the key of every partitioned table, and every partition with
-- its parent and bound (parents are listed before their own partitions by the caller).
SELECT c.relname,
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
       p.relname,
       CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND c.relispartition
LEFT JOIN pg_class p ON p.oid = i.inhparent
WHERE n.nspname = %(schema)s
  AND (c.relkind = 'p' OR c.relispartition)
  AND c.relkind IN ('r', 'p')
ORDER BY c.relname
