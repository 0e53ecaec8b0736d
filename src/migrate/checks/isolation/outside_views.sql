-- Views and materialized views in other schemas that read tables of the shared schema.
SELECT quote_ident(vn.nspname) || '.' || quote_ident(v.relname),
       v.relkind::text,
       coalesce(v.reloptions, '{}')::text[],
       has_table_privilege(%(role)s, v.oid, 'SELECT'),
       ARRAY(SELECT DISTINCT d.relname::text
             FROM pg_rewrite r
             JOIN pg_depend dep ON dep.classid = 'pg_rewrite'::regclass AND dep.objid = r.oid
                               AND dep.refclassid = 'pg_class'::regclass
             JOIN pg_class d ON d.oid = dep.refobjid
             JOIN pg_namespace dn ON dn.oid = d.relnamespace
             WHERE r.ev_class = v.oid AND dn.nspname = %(schema)s AND d.relkind IN ('r', 'p'))
FROM pg_class v
JOIN pg_namespace vn ON vn.oid = v.relnamespace
WHERE v.relkind IN ('v', 'm')
  AND vn.nspname NOT IN (%(schema)s, 'pg_catalog', 'information_schema')
ORDER BY 1
