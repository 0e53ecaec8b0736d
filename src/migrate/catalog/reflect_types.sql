-- The schema's own types that the shared schema re-creates: enums (labels in
-- order), domains (base type, default, NOT NULL, checks) and composite types
-- (attributes). Other kinds (range, base) are reported by reflect_uncarried.sql.
-- Array types and a table's row type are left out: PostgreSQL makes those itself.
SELECT t.typname,
       t.typtype::text,
       CASE WHEN t.typtype = 'e' THEN
           ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder)
       END,
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
       t.typnotnull,
       t.typdefault,
       ARRAY(SELECT con.conname::text FROM pg_constraint con WHERE con.contypid = t.oid ORDER BY con.conname),
       ARRAY(SELECT pg_get_constraintdef(con.oid) FROM pg_constraint con
             WHERE con.contypid = t.oid ORDER BY con.conname),
       ARRAY(SELECT a.attname::text FROM pg_attribute a
             WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum),
       ARRAY(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
             WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum)
FROM pg_type t
JOIN pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_class r ON r.oid = t.typrelid
WHERE n.nspname = %(schema)s
  AND t.typtype IN ('e', 'd', 'c')
  AND (t.typtype <> 'c' OR r.relkind = 'c')
  AND NOT EXISTS (SELECT 1 FROM pg_depend dep
                  WHERE dep.classid = 'pg_type'::regclass AND dep.objid = t.oid AND dep.deptype = 'e')
ORDER BY t.typname
