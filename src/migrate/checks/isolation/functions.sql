-- SECURITY DEFINER functions outside the system schemas (extensions' own excluded):
-- they run with their owner's rights, which may ignore row-level security.
SELECT p.oid::regprocedure::text,
       pg_get_userbyid(p.proowner),
       has_function_privilege(%(role)s, p.oid, 'EXECUTE'),
       coalesce(p.prosrc, ''),
       ARRAY(SELECT DISTINCT d.relname::text
             FROM pg_depend dep
             JOIN pg_class d ON d.oid = dep.refobjid
             JOIN pg_namespace dn ON dn.oid = d.relnamespace
             WHERE dep.classid = 'pg_proc'::regclass AND dep.objid = p.oid
               AND dep.refclassid = 'pg_class'::regclass AND dn.nspname = %(schema)s)
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.prosecdef
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND NOT EXISTS (SELECT 1 FROM pg_depend e
                  WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e')
ORDER BY 1
