-- The sequences of one schema that a column default calls nextval() of while no column owns
-- them (OWNED BY NONE, or owned elsewhere): the shared schema carries them with their settings,
-- so the default that draws from them is kept.
SELECT s.relname,
       format_type(q.seqtypid, NULL),
       q.seqstart, q.seqincrement, q.seqmin, q.seqmax, q.seqcache, q.seqcycle
FROM pg_class s
JOIN pg_sequence q ON q.seqrelid = s.oid
WHERE s.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s)
  AND s.relkind = 'S'
  AND NOT EXISTS (SELECT 1 FROM pg_depend own
                  WHERE own.classid = 'pg_class'::regclass AND own.objid = s.oid
                    AND own.deptype IN ('a', 'i'))
  AND EXISTS (SELECT 1 FROM pg_depend use
              WHERE use.classid = 'pg_attrdef'::regclass AND use.refclassid = 'pg_class'::regclass
                AND use.refobjid = s.oid)
ORDER BY s.relname
