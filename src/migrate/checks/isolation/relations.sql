-- Every table, partition, view and materialized view of the shared schema, with what
-- the isolation rules need: RLS flags, the tenant column, ownership (a member of the
-- owner role counts as the owner for RLS), the tenant column's type and the application
-- role's privileges.
SELECT c.relname,
       c.relkind::text,
       (SELECT p.relname FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
        WHERE i.inhrelid = c.oid AND c.relispartition),
       c.relrowsecurity,
       c.relforcerowsecurity,
       pg_get_userbyid(c.relowner),
       pg_has_role(%(role)s, c.relowner, 'USAGE') OR pg_has_role(%(role)s, c.relowner, 'MEMBER'),
       ta.attname IS NOT NULL,
       coalesce(ta.attnotnull, false),
       format_type(ta.atttypid, ta.atttypmod),
       has_table_privilege(%(role)s, c.oid, 'SELECT'),
       has_table_privilege(%(role)s, c.oid, 'INSERT'),
       has_table_privilege(%(role)s, c.oid, 'UPDATE'),
       has_table_privilege(%(role)s, c.oid, 'DELETE'),
       c.relkind IN ('r', 'p') AND has_table_privilege(%(role)s, c.oid, 'TRUNCATE'),
       coalesce(c.reloptions, '{}')::text[],
       ARRAY(SELECT DISTINCT d.relname::text
             FROM pg_rewrite r
             JOIN pg_depend dep ON dep.classid = 'pg_rewrite'::regclass AND dep.objid = r.oid
                               AND dep.refclassid = 'pg_class'::regclass
             JOIN pg_class d ON d.oid = dep.refobjid AND d.oid <> c.oid
             WHERE r.ev_class = c.oid AND d.relnamespace = c.relnamespace AND d.relkind IN ('r', 'p'))
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute ta ON ta.attrelid = c.oid AND ta.attname = %(column)s AND NOT ta.attisdropped
WHERE n.nspname = %(schema)s
  AND c.relkind IN ('r', 'p', 'v', 'm')
ORDER BY c.relname
