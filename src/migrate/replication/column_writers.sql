-- Column-level INSERT/UPDATE grants on the tenant's tables: a table-level REVOKE leaves them.
SELECT DISTINCT c.relname, att.attname, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE r.rolname END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute att ON att.attrelid = c.oid AND att.attacl IS NOT NULL
CROSS JOIN LATERAL aclexplode(att.attacl) AS a LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE n.nspname = %s AND c.relname = ANY(%s) AND a.privilege_type IN ('INSERT', 'UPDATE')
ORDER BY 1, 2, 3
