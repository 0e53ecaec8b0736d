-- What the shared schema does not re-create, for the report: (kind, name, why).
-- Objects that belong to an extension are left out (the extension brings them).
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s),
ext AS (SELECT dep.classid, dep.objid FROM pg_depend dep WHERE dep.deptype = 'e')
SELECT 'trigger', c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace IN (SELECT oid FROM ns) AND NOT t.tgisinternal
  AND (NOT c.relispartition OR t.tgparentid = 0)
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'function' END,
       p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       'language ' || l.lanname || CASE WHEN p.prosecdef THEN ', SECURITY DEFINER' ELSE '' END
FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
WHERE p.pronamespace IN (SELECT oid FROM ns)
  AND (p.oid NOT IN (SELECT objid FROM ext WHERE classid = 'pg_proc'::regclass))
UNION ALL
SELECT 'rule', c.relname || '.' || r.rulename, pg_get_ruledef(r.oid)
FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
WHERE c.relnamespace IN (SELECT oid FROM ns) AND r.rulename <> '_RETURN'
UNION ALL
SELECT 'policy', c.relname || '.' || pol.polname, 'the shared schema has one tenant policy per table instead'
FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid
WHERE c.relnamespace IN (SELECT oid FROM ns)
UNION ALL
SELECT CASE c.relkind WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table' ELSE 'sequence' END,
       c.relname,
       CASE c.relkind WHEN 'S' THEN 'not owned by a column' ELSE '' END
FROM pg_class c
WHERE c.relnamespace IN (SELECT oid FROM ns)
  AND (c.relkind IN ('m', 'f')
       OR (c.relkind = 'S' AND NOT EXISTS (SELECT 1 FROM pg_depend dep
                                          WHERE dep.classid = 'pg_class'::regclass AND dep.objid = c.oid
                                            AND dep.deptype IN ('a', 'i'))
            -- a default draws from it: carried (reflect_sequences.sql)
            AND NOT EXISTS (SELECT 1 FROM pg_depend use
                            WHERE use.classid = 'pg_attrdef'::regclass
                              AND use.refclassid = 'pg_class'::regclass AND use.refobjid = c.oid)))
  AND c.oid NOT IN (SELECT objid FROM ext WHERE classid = 'pg_class'::regclass)
UNION ALL
SELECT 'exclusion constraint', c.relname || '.' || con.conname, pg_get_constraintdef(con.oid)
FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
WHERE c.relnamespace IN (SELECT oid FROM ns) AND con.contype = 'x' AND con.conislocal
UNION ALL
SELECT CASE t.typtype WHEN 'r' THEN 'range type' WHEN 'm' THEN 'multirange type' ELSE 'base type' END,
       t.typname, ''
FROM pg_type t
WHERE t.typnamespace IN (SELECT oid FROM ns) AND t.typtype IN ('r', 'b')
  AND t.typcategory <> 'A'
  AND t.oid NOT IN (SELECT objid FROM ext WHERE classid = 'pg_type'::regclass)
UNION ALL
SELECT 'extension', x.extname, 'version ' || x.extversion || ' in schema ' || xn.nspname
FROM pg_extension x JOIN pg_namespace xn ON xn.oid = x.extnamespace
WHERE x.extname <> 'plpgsql'
ORDER BY 1, 2
