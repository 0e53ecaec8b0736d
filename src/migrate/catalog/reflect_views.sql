-- Views of one schema with their definition, options and the relations of the
-- same schema they read (for creation order and for the isolation rules).
SELECT v.relname,
       pg_get_viewdef(v.oid, true),
       coalesce(v.reloptions, '{}')::text[],
       ARRAY(SELECT DISTINCT d.relname::text
             FROM pg_rewrite r
             JOIN pg_depend dep ON dep.classid = 'pg_rewrite'::regclass AND dep.objid = r.oid
                               AND dep.refclassid = 'pg_class'::regclass
             JOIN pg_class d ON d.oid = dep.refobjid AND d.oid <> v.oid
             WHERE r.ev_class = v.oid AND d.relnamespace = v.relnamespace)
FROM pg_class v
JOIN pg_namespace n ON n.oid = v.relnamespace
WHERE n.nspname = %(schema)s
  AND v.relkind = 'v'
  AND NOT EXISTS (SELECT 1 FROM pg_depend dep
                  WHERE dep.classid = 'pg_class'::regclass AND dep.objid = v.oid AND dep.deptype = 'e')
ORDER BY v.relname
