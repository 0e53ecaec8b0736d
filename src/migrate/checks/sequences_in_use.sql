-- Every column of the given tables of one schema that draws its numbers from a sequence, with
-- that sequence: identity and serial columns (the sequence is owned by the column) and
-- defaults that call nextval() of any sequence (pg_attrdef depends on it). Integer columns
-- say so: only their values can be compared with a sequence's position.
SELECT c.relname, a.attname, sn.nspname, s.relname,
       a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype),
       a.attidentity <> '' OR EXISTS (SELECT 1 FROM pg_depend own
                                      WHERE own.classid = 'pg_class'::regclass AND own.objid = s.oid
                                        AND own.deptype IN ('a', 'i'))
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN LATERAL (
    SELECT dep.objid AS seq FROM pg_depend dep
    WHERE dep.classid = 'pg_class'::regclass AND dep.refclassid = 'pg_class'::regclass
      AND dep.refobjid = c.oid AND dep.refobjsubid = a.attnum AND dep.deptype IN ('a', 'i')
    UNION
    SELECT dep.refobjid FROM pg_attrdef d
    JOIN pg_depend dep ON dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid
                      AND dep.refclassid = 'pg_class'::regclass
    WHERE d.adrelid = c.oid AND d.adnum = a.attnum
) q ON true
JOIN pg_class s ON s.oid = q.seq AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = ANY(%(tables)s) AND c.relkind IN ('r', 'p')
ORDER BY 3, 4, 1, 2
