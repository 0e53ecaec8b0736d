-- The foreign keys of the shared tables in one schema, as the target enforces them: what the
-- backfill's load with triggers off must prove afterwards (steps/backfill.py _tenant_rows).
-- Partitions' clones (conparentid <> 0) are left out: the partitioned table's key covers them.
SELECT c.relname,
       k.conname,
       ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY AS u(num, i)
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.num ORDER BY u.i),
       pn.nspname,
       p.relname,
       ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY AS u(num, i)
             JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.num ORDER BY u.i),
       k.confmatchtype = 'f'
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_class p ON p.oid = k.confrelid
JOIN pg_namespace pn ON pn.oid = p.relnamespace
WHERE k.contype = 'f' AND k.conparentid = 0 AND c.relnamespace = to_regnamespace(%s)
ORDER BY c.relname, k.conname
