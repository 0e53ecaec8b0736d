-- Indexes that no constraint owns (secondary, partial, expression indexes) on
-- one schema's tables, or (partitions = true) those declared on a partition itself: not
-- the partition's share of its parent's index.
SELECT c.relname,
       i.relname,
       pg_get_indexdef(x.indexrelid),
       x.indisunique,
       am.amname
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class c ON c.oid = x.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_am am ON am.oid = i.relam
WHERE n.nspname = %(schema)s
  AND c.relkind IN ('r', 'p')
  AND c.relispartition = %(partitions)s
  AND NOT EXISTS (SELECT 1 FROM pg_inherits ih WHERE ih.inhrelid = x.indexrelid)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = x.indexrelid AND con.conrelid = c.oid)
ORDER BY c.relname, i.relname
