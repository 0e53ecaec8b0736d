-- A fingerprint of everything reflect_schema reads of one schema, in one cheap query: two
-- sources with the same fingerprint give the same SourceSchema, so a run reads the whole
-- catalog once per distinct schema (catalog/built.py). Run with search_path = pg_catalog,
-- like the reads it stands for: names render exactly as they do there.
-- Conservative by design: every rendered definition (types, defaults, constraints, indexes,
-- triggers, views, functions, rules, partition bounds) and every flag those reads look at,
-- of every object of the schema whatever its kind, with its comment; OIDs never enter (two
-- databases made by the same migrations have different OIDs), names and renderings do.
-- A difference here only costs a full read; a difference the reads see but this misses
-- would hand a tenant another's schema, so tests/test_fingerprint.py changes the schema in
-- each of these ways and expects another fingerprint.
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s),
rel AS (SELECT c.* FROM pg_class c WHERE c.relnamespace IN (SELECT oid FROM ns)),
ext AS (SELECT dep.classid, dep.objid FROM pg_depend dep
        WHERE dep.deptype = 'e' AND dep.refclassid = 'pg_extension'::regclass),
line AS (
    SELECT ROW('rel', c.relname, c.relkind, c.relpersistence, c.relispartition, c.relrowsecurity,
               c.relforcerowsecurity, c.reloptions, am.amname,
               CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
               pg_get_expr(c.relpartbound, c.oid),
               CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid, true) END,
               obj_description(c.oid, 'pg_class'),
               ARRAY(SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE i.inhrelid = c.oid
                     ORDER BY i.inhseqno),
               ARRAY(SELECT ROW(d.classid::regclass, d.deptype, d.refclassid::regclass,
                                CASE WHEN d.refclassid = 'pg_class'::regclass THEN d.refobjid::regclass::text
                                     ELSE pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid) END)::text
                     FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                       AND d.deptype IN ('a', 'i', 'e') ORDER BY 1),
               ARRAY(SELECT d.classid::regclass::text FROM pg_depend d
                     WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = c.oid
                       AND d.classid IN ('pg_attrdef'::regclass, 'pg_rewrite'::regclass) ORDER BY 1),
               (SELECT ROW(format_type(q.seqtypid, NULL), q.seqstart, q.seqincrement, q.seqmin, q.seqmax,
                           q.seqcache, q.seqcycle)::text FROM pg_sequence q WHERE q.seqrelid = c.oid)
              )::text
    FROM rel c LEFT JOIN pg_am am ON am.oid = c.relam
    UNION ALL
    SELECT ROW('col', c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated,
               a.attcollation::regcollation::text, t.typcollation::regcollation::text,
               col_description(c.oid, a.attnum),
               CASE WHEN c.relkind IN ('r', 'p') THEN pg_get_serial_sequence(
                   quote_ident(%(schema)s) || '.' || quote_ident(c.relname), a.attname) END,
               ARRAY(SELECT dep.refobjid::regclass::text FROM pg_depend dep
                     WHERE dep.classid = 'pg_attrdef'::regclass AND dep.objid = ad.oid
                       AND dep.refclassid = 'pg_class'::regclass ORDER BY 1)
              )::text
    FROM rel c
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    JOIN pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
    UNION ALL
    SELECT ROW('con', con.conname, con.contype, cr.relname, con.contypid::regtype::text,
               pg_get_constraintdef(con.oid), con.condeferrable, con.condeferred, con.convalidated,
               con.conislocal, con.coninhcount, con.connoinherit, con.conparentid <> 0,
               con.confupdtype, con.confdeltype, con.confmatchtype,
               (SELECT x.indnullsnotdistinct FROM pg_index x WHERE x.indexrelid = con.conindid),
               con.conindid::regclass::text,
               obj_description(con.oid, 'pg_constraint'))::text
    FROM pg_constraint con
    LEFT JOIN pg_class cr ON cr.oid = con.conrelid
    LEFT JOIN pg_type ct ON ct.oid = con.contypid
    WHERE con.connamespace IN (SELECT oid FROM ns) OR cr.relnamespace IN (SELECT oid FROM ns)
       OR ct.typnamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT ROW('idx', i.relname, c.relname, pg_get_indexdef(x.indexrelid), x.indisunique, x.indisprimary,
               x.indisvalid, am.amname, EXISTS (SELECT 1 FROM pg_inherits ih WHERE ih.inhrelid = x.indexrelid),
               obj_description(i.oid, 'pg_class'))::text
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    JOIN rel c ON c.oid = x.indrelid
    JOIN pg_am am ON am.oid = i.relam
    UNION ALL
    SELECT ROW('type', t.typname, t.typtype, t.typcategory, format_type(t.typbasetype, t.typtypmod),
               t.typnotnull, t.typdefault, r.relkind, t.typcollation::regcollation::text,
               ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder),
               obj_description(t.oid, 'pg_type'),
               EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_type'::regclass AND ext.objid = t.oid))::text
    FROM pg_type t LEFT JOIN pg_class r ON r.oid = t.typrelid
    WHERE t.typnamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT ROW('proc', p.proname, oidvectortypes(p.proargtypes), p.prokind, l.lanname,
               CASE WHEN p.prokind IN ('f', 'p') THEN md5(pg_get_functiondef(p.oid)) END, md5(p.prosrc),
               p.prosecdef, format_type(p.prorettype, NULL), pg_get_function_arguments(p.oid),
               a.aggkind, a.aggtransfn::text, format_type(a.aggtranstype, NULL), a.aggfinalfn::text,
               a.aggcombinefn::text, a.agginitval, a.aggmtransfn::text, a.aggsortop::text, a.aggserialfn::text,
               a.aggfinalextra, a.aggfinalmodify, obj_description(p.oid, 'pg_proc'),
               EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_proc'::regclass AND ext.objid = p.oid),
               ARRAY(SELECT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d
                     WHERE d.refclassid = 'pg_proc'::regclass AND d.refobjid = p.oid AND d.deptype = 'n'
                     ORDER BY 1))::text
    FROM pg_proc p
    JOIN pg_language l ON l.oid = p.prolang
    LEFT JOIN pg_aggregate a ON a.aggfnoid = p.oid
    WHERE p.pronamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT ROW('trigger', c.relname, tg.tgname, pg_get_triggerdef(tg.oid), tg.tgtype, tg.tgenabled,
               tg.tgisinternal, tg.tgparentid <> 0, tg.tgfoid::regprocedure::text,
               obj_description(tg.oid, 'pg_trigger'))::text
    FROM pg_trigger tg JOIN rel c ON c.oid = tg.tgrelid
    WHERE NOT tg.tgisinternal  -- a foreign key's own triggers: named by OID, and the key says it all
    UNION ALL
    SELECT ROW('rule', c.relname, r.rulename, pg_get_ruledef(r.oid))::text
    FROM pg_rewrite r JOIN rel c ON c.oid = r.ev_class
    UNION ALL
    SELECT ROW('policy', c.relname, pol.polname, pol.polcmd, pol.polpermissive,
               pg_get_expr(pol.polqual, pol.polrelid), pg_get_expr(pol.polwithcheck, pol.polrelid))::text
    FROM pg_policy pol JOIN rel c ON c.oid = pol.polrelid
    UNION ALL
    SELECT ROW('extension', x.extname, x.extversion, xn.nspname)::text
    FROM pg_extension x JOIN pg_namespace xn ON xn.oid = x.extnamespace
)
SELECT current_setting('server_version_num') || ':' || EXISTS (SELECT 1 FROM ns) || ':'
       || md5(coalesce(string_agg(row, E'\n' ORDER BY row), ''))
FROM line AS l(row)
