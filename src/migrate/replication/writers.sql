-- Who may write the tenant's tables, by table-level grant (the owner's implicit ones too):
-- PUBLIC, and roles that log in or have members, except superusers and the migrator itself.
-- A freeze revokes only source.app_roles, so any other writer here is an up-front problem.
SELECT DISTINCT c.relname, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE r.rolname END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) AS a
LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE n.nspname = %s AND c.relname = ANY(%s) AND a.privilege_type = ANY(%s)
AND (a.grantee = 0 OR (NOT r.rolsuper AND r.rolname <> current_user
AND (r.rolcanlogin OR EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.roleid = r.oid))))
ORDER BY 1, 2
