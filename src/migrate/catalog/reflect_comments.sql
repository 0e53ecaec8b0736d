-- Comments on one schema's objects other than tables and columns (those come with the table):
-- views, functions, aggregates, triggers, constraints, indexes and types, as
-- pg_identify_object names them (its identity is SQL, schema-qualified, quoted where needed),
-- with the object's own name and the table it belongs to (constraints, indexes, triggers).
-- The comments are looked up from the schema's own objects (``mine``), so pg_identify_object
-- runs for them only, not for the thousands of comments on the built-in catalog (that took
-- ~30 ms per tenant).
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s),
mine AS MATERIALIZED (
    SELECT 'pg_class'::regclass AS classoid, c.oid AS objoid, c.relname AS name, ic.relname AS on_table,
           NULL::oid AS table_ns
    FROM pg_class c
    LEFT JOIN pg_index x ON x.indexrelid = c.oid
    LEFT JOIN pg_class ic ON ic.oid = x.indrelid
    WHERE c.relnamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT 'pg_proc'::regclass, p.oid, p.proname, NULL, NULL FROM pg_proc p
    WHERE p.pronamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT 'pg_type'::regclass, t.oid, t.typname, NULL, NULL FROM pg_type t
    WHERE t.typnamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT 'pg_trigger'::regclass, tg.oid, tg.tgname, tc.relname, tc.relnamespace
    FROM pg_trigger tg JOIN pg_class tc ON tc.oid = tg.tgrelid
    WHERE tc.relnamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT 'pg_constraint'::regclass, con.oid, con.conname, cc.relname, NULL
    FROM pg_constraint con LEFT JOIN pg_class cc ON cc.oid = con.conrelid
    WHERE con.connamespace IN (SELECT oid FROM ns) OR cc.relnamespace IN (SELECT oid FROM ns)
),
said AS MATERIALIZED (
    SELECT d.classoid, d.objoid, d.objsubid, d.description, m.name, m.on_table, m.table_ns
    FROM mine m JOIN pg_description d ON d.objoid = m.objoid AND d.classoid = m.classoid
)
SELECT o.type, o.identity, s.description, s.name, s.on_table
FROM said s
CROSS JOIN LATERAL pg_identify_object(s.classoid, s.objoid, s.objsubid) AS o
WHERE coalesce(o.schema, (SELECT n.nspname FROM pg_namespace n WHERE n.oid = s.table_ns)) = %(schema)s
  AND o.type IN ('view', 'function', 'aggregate', 'procedure', 'trigger', 'table constraint', 'index',
                 'type', 'domain')
ORDER BY 1, 2
