-- Columns of every ordinary or partitioned table of one schema, in column order.
-- Run with search_path = pg_catalog: built-in types and functions read bare,
-- everything else schema-qualified (see sqltext.py).
-- serial: the default is nextval() of a sequence the column owns (it becomes an
-- identity column in the shared table); collation: only when not the type's own; the
-- column's and the table's comments; the sequence of this schema a default calls nextval() of
-- when the column does not own it (such a sequence is carried and the default kept).
SELECT c.relname,
       a.attname,
       format_type(a.atttypid, a.atttypmod),
       a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid),
       a.attidentity::text,
       a.attgenerated::text,
       a.attidentity = ''
           AND pg_get_serial_sequence(quote_ident(n.nspname) || '.' || quote_ident(c.relname), a.attname)
               IS NOT NULL
           AND pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%%',
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN
           CASE WHEN cn.nspname = 'pg_catalog' THEN quote_ident(co.collname)
                ELSE quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END
       END,
       col_description(c.oid, a.attnum),
       obj_description(c.oid, 'pg_class'),
       (SELECT s.relname FROM pg_depend dep JOIN pg_class s ON s.oid = dep.refobjid
        WHERE dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid
          AND dep.refclassid = 'pg_class'::regclass AND s.relkind = 'S' AND s.relnamespace = n.oid
        ORDER BY s.relname LIMIT 1)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation
LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
WHERE n.nspname = %(schema)s
  AND c.relkind IN ('r', 'p')
  AND NOT c.relispartition
ORDER BY c.relname, a.attnum
