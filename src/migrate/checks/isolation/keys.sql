-- Primary keys, unique constraints, unique indexes and foreign keys of the shared
-- schema's tables, with their columns, and for foreign keys the referenced table.
SELECT c.relname,
       con.conname,
       con.contype::text,
       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) AS k(attnum)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum),
       rc.relname,
       rn.nspname = %(schema)s
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class rc ON rc.oid = con.confrelid
LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE n.nspname = %(schema)s AND con.contype IN ('p', 'u', 'f') AND con.conislocal AND NOT c.relispartition
UNION ALL
SELECT c.relname,
       i.relname,
       'i',
       ARRAY(SELECT a.attname::text FROM unnest(x.indkey) AS k(attnum)
             JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum),
       NULL,
       NULL
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class c ON c.oid = x.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND x.indisunique AND NOT c.relispartition
  AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = x.indexrelid AND con.conrelid = c.oid)
ORDER BY 1, 2
