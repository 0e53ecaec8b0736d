-- What the shared schema does not re-create, for the report: (kind, schema.name, why).
-- Functions, aggregates and triggers are read apart (reflect_routines.sql, reflect_triggers.sql):
-- the tool carries those it can.
-- Objects that belong to an extension are left out (the extension brings them).
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s),
ext AS (SELECT dep.classid, dep.objid FROM pg_depend dep WHERE dep.deptype = 'e')
SELECT 'rule', n.nspname || '.' || c.relname || '.' || r.rulename, pg_get_ruledef(r.oid)
FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relnamespace IN (SELECT oid FROM ns) AND r.rulename <> '_RETURN'
UNION ALL
SELECT 'policy', n.nspname || '.' || c.relname || '.' || pol.polname, 'the shared schema has one tenant policy per table instead'
FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relnamespace IN (SELECT oid FROM ns)
UNION ALL
SELECT CASE c.relkind WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table' ELSE 'sequence' END,
       %(schema)s || '.' || c.relname,
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
SELECT 'exclusion constraint', %(schema)s || '.' || c.relname || '.' || con.conname, pg_get_constraintdef(con.oid)
FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
WHERE c.relnamespace IN (SELECT oid FROM ns) AND con.contype = 'x' AND con.conislocal
UNION ALL
SELECT CASE t.typtype WHEN 'r' THEN 'range type' WHEN 'm' THEN 'multirange type' ELSE 'base type' END,
       %(schema)s || '.' || t.typname, ''
FROM pg_type t
WHERE t.typnamespace IN (SELECT oid FROM ns) AND t.typtype IN ('r', 'b')
  AND t.typcategory <> 'A'
  AND t.oid NOT IN (SELECT objid FROM ext WHERE classid = 'pg_type'::regclass)
UNION ALL
SELECT 'extension', x.extname, 'version ' || x.extversion || ' in schema ' || xn.nspname
FROM pg_extension x JOIN pg_namespace xn ON xn.oid = x.extnamespace
WHERE x.extname <> 'plpgsql'
ORDER BY 1, 2
