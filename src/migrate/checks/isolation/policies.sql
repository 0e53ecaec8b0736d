-- The row-level security policies on the shared schema's tables, and whether each one
-- applies to the application role (PUBLIC, the role, or a role it is a member of).
SELECT c.relname,
       pol.polname,
       pol.polcmd::text,
       pol.polpermissive,
       EXISTS (SELECT 1 FROM unnest(pol.polroles) AS r(oid)
               WHERE r.oid = 0 OR pg_has_role(%(role)s, r.oid, 'MEMBER')),
       pg_get_expr(pol.polqual, pol.polrelid),
       pg_get_expr(pol.polwithcheck, pol.polrelid)
FROM pg_policy pol
JOIN pg_class c ON c.oid = pol.polrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s
ORDER BY c.relname, pol.polname
