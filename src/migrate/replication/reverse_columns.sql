-- The columns of the named tables of one schema, in attribute order, as pgoutput sends them
-- (no dropped or generated columns), with their type, type modifier and whether the primary key
-- holds them: what a reverse stream's maps are built from, on both sides.
SELECT c.relname, a.attname, a.atttypid::int, a.atttypmod,
       coalesce(a.attnum = ANY(i.indkey), false) AS in_key
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
WHERE n.nspname = %s AND c.relname = ANY(%s)
ORDER BY c.relname, a.attnum
