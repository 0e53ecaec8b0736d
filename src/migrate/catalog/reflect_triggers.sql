-- User triggers on one schema's tables and partitions (not the clones a partitioned
-- table's trigger makes on its partitions): the catalog's own CREATE TRIGGER, whether it
-- fires per row, and the schema and signature of its function.
SELECT c.relname,
       t.tgname,
       pg_get_triggerdef(t.oid),
       (t.tgtype & 1) = 1,
       fn.nspname,
       f.proname || '(' || oidvectortypes(f.proargtypes) || ')',
       t.tgenabled::text
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_proc f ON f.oid = t.tgfoid
JOIN pg_namespace fn ON fn.oid = f.pronamespace
WHERE n.nspname = %(schema)s
  AND c.relkind IN ('r', 'p')
  AND NOT t.tgisinternal
  AND t.tgparentid = 0
ORDER BY c.relname, t.tgname
