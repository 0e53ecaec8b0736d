-- (role, table) where a role can still write after the REVOKE, by any path: a direct, inherited,
-- PUBLIC or column grant. A freeze with any row here would not hold.
SELECT r.rolname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN pg_roles r
WHERE n.nspname = %s AND c.relname = ANY(%s) AND r.rolname = ANY(%s)
AND (has_table_privilege(r.oid, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
OR has_any_column_privilege(r.oid, c.oid, 'INSERT, UPDATE'))
ORDER BY 1, 2
