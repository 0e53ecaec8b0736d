-- Columns of the shared schema's tables that draw their values from a sequence (identity,
-- serial, or a nextval() default): one counter every tenant's inserts advance.
SELECT c.relname,
       a.attname,
       CASE WHEN a.attidentity <> '' THEN 'identity' ELSE 'sequence default' END
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE n.nspname = %(schema)s
  AND c.relkind IN ('r', 'p')
  AND NOT c.relispartition
  AND (a.attidentity <> '' OR pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%%')
ORDER BY c.relname, a.attnum
