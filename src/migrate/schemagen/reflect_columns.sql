-- Columns of every ordinary or partitioned table of one schema, in column order.
-- Defaults of identity and serial columns are left out: the shared table gets
-- the source's values, and its own key generation is the application's choice.
SELECT c.relname,
       a.attname,
       format_type(a.atttypid, a.atttypmod),
       a.attnotnull,
       CASE WHEN a.attidentity <> '' OR pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%%'
            THEN NULL ELSE pg_get_expr(d.adbin, d.adrelid) END,
       a.attidentity <> ''
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE n.nspname = %(schema)s
  AND c.relkind IN ('r', 'p')
  AND NOT c.relispartition
ORDER BY c.relname, a.attnum
