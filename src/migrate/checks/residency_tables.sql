-- The tables of a schema that carry the tenant column: where any tenant's rows can be.
-- Partitions are left out (their parent's count includes them); so are views.
SELECT c.relname, t.typname IN ('text', 'varchar', 'bpchar') AS textual
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
WHERE n.nspname = %(schema)s
  AND a.attname = %(column)s
  AND c.relkind IN ('r', 'p')
  AND NOT c.relispartition
ORDER BY c.relname
