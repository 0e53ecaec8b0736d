-- The write privileges the application roles hold directly on the tenant's tables (the owner's
-- implicit ones too): what a freeze records before its REVOKE, and gives back exactly.
SELECT c.relname, r.rolname, a.privilege_type, a.is_grantable
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) AS a
JOIN pg_roles r ON r.oid = a.grantee
WHERE n.nspname = %s AND c.relname = ANY(%s) AND r.rolname = ANY(%s)
AND a.privilege_type = ANY(%s)
ORDER BY 1, 2, 3
