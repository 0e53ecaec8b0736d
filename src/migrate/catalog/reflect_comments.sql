-- Comments on one schema's objects other than tables and columns (those come with the table):
-- views, functions, aggregates, triggers, constraints, indexes and types, as
-- pg_identify_object names them (its identity is SQL, schema-qualified, quoted where needed),
-- with the object's own name and the table it belongs to (constraints, indexes, triggers).
SELECT o.type, o.identity, d.description,
       coalesce(c.relname, p.proname, t.typname, tg.tgname, con.conname),
       coalesce(ic.relname, tc.relname, cc.relname)
FROM pg_description d
CROSS JOIN LATERAL pg_identify_object(d.classoid, d.objoid, d.objsubid) AS o
LEFT JOIN pg_class c ON d.classoid = 'pg_class'::regclass AND c.oid = d.objoid
LEFT JOIN pg_index x ON x.indexrelid = c.oid
LEFT JOIN pg_class ic ON ic.oid = x.indrelid
LEFT JOIN pg_proc p ON d.classoid = 'pg_proc'::regclass AND p.oid = d.objoid
LEFT JOIN pg_type t ON d.classoid = 'pg_type'::regclass AND t.oid = d.objoid
LEFT JOIN pg_trigger tg ON d.classoid = 'pg_trigger'::regclass AND tg.oid = d.objoid
LEFT JOIN pg_class tc ON tc.oid = tg.tgrelid
LEFT JOIN pg_constraint con ON d.classoid = 'pg_constraint'::regclass AND con.oid = d.objoid
LEFT JOIN pg_class cc ON cc.oid = con.conrelid
WHERE coalesce(o.schema, (SELECT n.nspname FROM pg_namespace n WHERE n.oid = tc.relnamespace)) = %(schema)s
  AND o.type IN ('view', 'function', 'aggregate', 'procedure', 'trigger', 'table constraint', 'index',
                 'type', 'domain')
ORDER BY 1, 2
