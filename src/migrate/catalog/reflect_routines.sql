-- Functions, procedures and aggregates of one schema (not an extension's), with what
-- carrying them needs and what depends on them. Run with search_path = pg_catalog, so
-- every type and function outside pg_catalog comes schema-qualified.
-- args: the input argument types (the signature a person names it by); definition: the
-- catalog's own CREATE statement (functions and procedures); body: the source text the
-- tool reads to see which relations it touches; aggregate: its transition parts.
-- dependents: what of the schema uses it (views, triggers, defaults, checks, aggregates).
SELECT p.proname,
       oidvectortypes(p.proargtypes),
       p.prokind::text,
       l.lanname,
       CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) END,
       p.prosrc,
       p.prorettype = 'pg_catalog.trigger'::regtype,
       p.prosecdef,
       format_type(p.prorettype, NULL),
       pg_get_function_arguments(p.oid),
       a.aggkind::text,
       a.aggtransfn::text,
       format_type(a.aggtranstype, NULL),
       CASE WHEN a.aggfinalfn <> 0 THEN a.aggfinalfn::text END,
       CASE WHEN a.aggcombinefn <> 0 THEN a.aggcombinefn::text END,
       a.agginitval,
       coalesce(a.aggmtransfn <> 0 OR a.aggsortop <> 0 OR a.aggserialfn <> 0 OR a.aggfinalextra
                OR a.aggfinalmodify <> 'r', false),
       ARRAY(SELECT DISTINCT
                 CASE
                     WHEN d.classid = 'pg_rewrite'::regclass THEN
                         (SELECT CASE c.relkind WHEN 'm' THEN 'materialized view ' ELSE 'view ' END
                                 || cn.nspname || '.' || c.relname
                          FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
                          JOIN pg_namespace cn ON cn.oid = c.relnamespace WHERE r.oid = d.objid)
                     WHEN d.classid = 'pg_trigger'::regclass THEN
                         (SELECT 'trigger ' || cn.nspname || '.' || c.relname
                                 || '.' || t.tgname
                          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                          JOIN pg_namespace cn ON cn.oid = c.relnamespace WHERE t.oid = d.objid)
                     WHEN d.classid = 'pg_proc'::regclass THEN
                         (SELECT CASE q.prokind WHEN 'a' THEN 'aggregate ' WHEN 'p' THEN 'procedure '
                                     ELSE 'function ' END
                                 || qn.nspname || '.' || q.proname
                                 || '(' || oidvectortypes(q.proargtypes) || ')'
                          FROM pg_proc q JOIN pg_namespace qn ON qn.oid = q.pronamespace WHERE q.oid = d.objid)
                     ELSE pg_describe_object(d.classid, d.objid, d.objsubid)
                 END
             FROM pg_depend d
             WHERE d.refclassid = 'pg_proc'::regclass AND d.refobjid = p.oid AND d.deptype = 'n')::text[]
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
LEFT JOIN pg_aggregate a ON a.aggfnoid = p.oid
WHERE n.nspname = %(schema)s
  AND NOT EXISTS (SELECT 1 FROM pg_depend dep
                  WHERE dep.classid = 'pg_proc'::regclass AND dep.objid = p.oid AND dep.deptype = 'e')
ORDER BY p.proname, 2
