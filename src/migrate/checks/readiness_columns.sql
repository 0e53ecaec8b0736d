-- The columns of the given tables of one schema: whether an insert may leave each out
-- (identity or a default), and which table privileges a role holds.
SELECT c.relname, a.attname, a.attidentity <> '' OR a.attgenerated <> '' OR d.oid IS NOT NULL
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE n.nspname = %(schema)s AND c.relname = ANY(%(tables)s) AND c.relkind IN ('r', 'p')
