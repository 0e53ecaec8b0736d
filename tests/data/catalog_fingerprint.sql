-- Everything a shared schema is made of, as text that does not depend on OIDs: what the
-- schema step and the generated revision must both create, identically.
SELECT 'column', c.relname || '.' || a.attname,
       format_type(a.atttypid, a.atttypmod) || ' notnull=' || a.attnotnull || ' identity=' || a.attidentity::text
       || ' generated=' || a.attgenerated::text || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p', 'v') AND c.relname <> 'alembic_version'
UNION ALL
SELECT 'constraint', c.relname || '.' || con.conname, pg_get_constraintdef(con.oid)
FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
WHERE c.relnamespace = %(schema)s::regnamespace AND c.relname <> 'alembic_version'
UNION ALL
SELECT 'index', i.relname, pg_get_indexdef(i.oid)
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
WHERE i.relnamespace = %(schema)s::regnamespace AND i.relname NOT LIKE 'alembic_version%%'
UNION ALL
SELECT 'rls', c.relname, c.relrowsecurity || '/' || c.relforcerowsecurity || ' ' || c.relkind::text
       || ' ' || coalesce(pg_get_expr(c.relpartbound, c.oid), '') || ' ' || coalesce(array_to_string(c.reloptions, ','), '')
FROM pg_class c WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p', 'v')
  AND c.relname <> 'alembic_version'
UNION ALL
SELECT 'policy', c.relname || '.' || p.polname,
       p.polcmd::text || ' ' || coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' / '
       || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '')
FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE c.relnamespace = %(schema)s::regnamespace
UNION ALL
SELECT 'type', t.typname, t.typtype::text || ' ' || coalesce(format_type(t.typbasetype, t.typtypmod), '')
       || ' ' || coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e
                           WHERE e.enumtypid = t.oid), '')
FROM pg_type t WHERE t.typnamespace = %(schema)s::regnamespace AND t.typtype IN ('e', 'd')
UNION ALL
SELECT 'comment', c.relname || '.' || coalesce(a.attname, ''), d.description
FROM pg_description d JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid AND d.objsubid > 0
WHERE c.relnamespace = %(schema)s::regnamespace
UNION ALL
SELECT 'view', c.relname, pg_get_viewdef(c.oid, true)
FROM pg_class c WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind = 'v'
ORDER BY 1, 2
