-- The application role: whether it exists, its attributes, and the privileged roles it
-- can become with SET ROLE (a member of a superuser or BYPASSRLS role is one SET ROLE
-- away from ignoring row-level security), and whether it may use the shared schema at all.
SELECT r.rolsuper,
       r.rolbypassrls,
       ARRAY(SELECT p.rolname::text FROM pg_roles p
             WHERE (p.rolsuper OR p.rolbypassrls) AND p.oid <> r.oid AND pg_has_role(r.oid, p.oid, 'MEMBER')
             ORDER BY p.rolname),
       current_user = r.rolname OR pg_has_role(current_user, r.oid, 'MEMBER')
           OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
       has_schema_privilege(r.oid, %(schema)s, 'USAGE')
FROM pg_roles r
WHERE r.rolname = %(role)s
