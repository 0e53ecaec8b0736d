-- What the connected role could do to the ledger that the database would not refuse
-- (migrate.control.ledger.Ledger.privilege_warnings). %(ledger)s is the qualified table name.
SELECT current_user AS role,
       r.rolsuper AS superuser,
       -- An owner (or a member of the owner) of the table, its schema or the trigger function
       -- can re-grant itself privileges, drop the table, or replace the trigger's body.
       pg_has_role(current_user, c.relowner, 'USAGE')
         OR pg_has_role(current_user, n.nspowner, 'USAGE')
         OR EXISTS (SELECT FROM pg_proc p
                    WHERE p.pronamespace = n.oid AND p.proname = 'ledger_refuse_change'
                      AND pg_has_role(current_user, p.proowner, 'USAGE')) AS owns,
       array_remove(ARRAY[
         CASE WHEN has_table_privilege(c.oid, 'UPDATE') THEN 'UPDATE' END,
         CASE WHEN has_table_privilege(c.oid, 'DELETE') THEN 'DELETE' END,
         CASE WHEN has_table_privilege(c.oid, 'TRUNCATE') THEN 'TRUNCATE' END], NULL) AS privileges,
       -- tgenabled: O fires in origin mode only, A always, D never.
       ARRAY(SELECT t.tgname || ':' || t.tgenabled::text FROM pg_trigger t
             WHERE t.tgrelid = c.oid AND NOT t.tgisinternal ORDER BY t.tgname) AS triggers
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_roles r ON r.rolname = current_user
WHERE c.oid = to_regclass(%(ledger)s)
