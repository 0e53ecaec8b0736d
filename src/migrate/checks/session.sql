-- Settings pinned for the transaction of every checksum and diff, on both sides, so the
-- text of a value never depends on who connects: timestamptz in UTC, dates and
-- intervals in one style, floats in their shortest exact form, bytea in hex, money
-- without a locale. set_config(..., true) ends with the transaction.
SELECT set_config('TimeZone', 'UTC', true),
       set_config('DateStyle', 'ISO, YMD', true),
       set_config('IntervalStyle', 'postgres', true),
       set_config('extra_float_digits', '3', true),
       set_config('bytea_output', 'hex', true),
       set_config('lc_monetary', 'C', true)
