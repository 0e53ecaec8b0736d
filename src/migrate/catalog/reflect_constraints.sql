-- Primary keys, unique, foreign-key, check and exclusion constraints of one
-- schema's tables, with their columns in key order and what a re-creation needs:
-- deferrability, referential actions, NULLS NOT DISTINCT (PostgreSQL 15), the
-- columns of ON DELETE SET NULL (…), validity and the catalog's own definition.
-- Tables, or (partitions = true) what was declared on partitions themselves.
SELECT c.relname,
       con.conname,
       con.contype::text,
       ARRAY(SELECT a.attname
             FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
             ORDER BY k.ord)::text[],
       rc.relname,
       rn.nspname,
       ARRAY(SELECT a.attname
             FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
             ORDER BY k.ord)::text[],
       con.condeferrable,
       con.condeferred,
       con.confupdtype::text,
       con.confdeltype::text,
       con.confmatchtype::text,
       ARRAY(SELECT a.attname
             FROM unnest(con.confdelsetcols) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
             ORDER BY k.ord)::text[],
       coalesce((SELECT x.indnullsnotdistinct FROM pg_index x WHERE x.indexrelid = con.conindid), false),
       con.convalidated,
       pg_get_constraintdef(con.oid)
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class rc ON rc.oid = con.confrelid
LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE n.nspname = %(schema)s
  AND c.relkind IN ('r', 'p')
  AND c.relispartition = %(partitions)s
  AND con.contype IN ('p', 'u', 'f', 'c', 'x')
  AND con.conislocal
  -- On a partition, only what was declared on it: not the clones of its parent's keys and checks.
  AND (NOT c.relispartition OR (con.conparentid = 0 AND con.coninhcount = 0))
ORDER BY c.relname, con.contype, con.conname
