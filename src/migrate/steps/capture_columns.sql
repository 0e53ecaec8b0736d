-- The tenant's source tables' columns as the change stream carries them (generated ones are not
-- published), with type, type modifier and membership of the replica identity index.
SELECT c.relname, a.attname, a.atttypid::int, a.atttypmod,
coalesce(a.attnum = ANY((SELECT i.indkey FROM pg_index i
WHERE i.indrelid = c.oid AND i.indisreplident LIMIT 1)::int2[]), false)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
WHERE n.nspname = %s AND c.relname = ANY(%s) ORDER BY c.relname, a.attnum
