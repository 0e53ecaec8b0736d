-- How each column of the tables of one schema enters the canonical row, in column order:
-- its name, its type as the catalog spells it (for casts of key values), whether it
-- takes a collation (keys are ordered COLLATE "C" on both sides), and its kind:
--   float       real, double precision: their hash makes -0 equal to 0, so their bytes are
--               hashed (float8send); the row text writes -0 already
--   numeric     numeric: hashes ignore the scale; the text form needs trim_scale()
--   text        hashed as its text, for one of these reasons:
--               - json: the text IS the content (key order, whitespace, duplicate keys);
--               - arrays: their hash ignores dimensions and lower bounds ({{1,2}} = {1,2})
--                 and their elements' (-0 in a float[]);
--               - interval: its hash makes '1 day' equal to '24 hours';
--               - no usable 64-bit hash function, or one that hashes an OID that differs
--                 between databases (enums) or a row type that may hold such a field
--   plain       everything else
-- Domains are resolved to their base type first.
WITH RECURSIVE base(oid, root) AS (
    SELECT t.oid, t.oid FROM pg_type t WHERE t.typtype <> 'd'
    UNION ALL
    SELECT d.oid, b.root FROM pg_type d JOIN base b ON d.typbasetype = b.oid WHERE d.typtype = 'd'
),
col AS (
    SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type_text,
           a.attcollation <> 0 AS collatable, b.root AS typ
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    JOIN base b ON b.oid = a.atttypid
    WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p')
),
elem AS (  -- the type that is hashed: an array's element, else the type itself
    SELECT col.*, t.typcategory = 'A' AND t.typelem <> 0 AS is_array,
           CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN t.typelem ELSE col.typ END AS h
    FROM col JOIN pg_type t ON t.oid = col.typ
)
SELECT e.relname,
       e.attname,
       e.type_text,
       e.collatable,
       CASE
           WHEN e.is_array THEN 'text'
           WHEN e.typ IN ('json'::regtype, 'interval'::regtype) THEN 'text'
           WHEN e.typ IN ('float4'::regtype, 'float8'::regtype) THEN 'float'
           WHEN e.typ = 'numeric'::regtype THEN 'numeric'
           WHEN ht.typtype IN ('e', 'c') THEN 'text'
           WHEN NOT EXISTS (
               SELECT 1
               FROM pg_opclass oc
               JOIN pg_am am ON am.oid = oc.opcmethod AND am.amname = 'hash'
               JOIN pg_amproc ap ON ap.amprocfamily = oc.opcfamily AND ap.amprocnum = 2
               WHERE oc.opcdefault
                 AND oc.opcintype IN (e.h, CASE ht.typtype WHEN 'r' THEN 'anyrange'::regtype
                                                            WHEN 'm' THEN to_regtype('anymultirange') END)
           ) THEN 'text'
           ELSE 'plain'
       END
FROM elem e
JOIN pg_type ht ON ht.oid = e.h
ORDER BY e.relname, e.attnum
