-- The shared-side freeze of one tenant: every shared table gets a BEFORE row trigger that
-- raises 25006 (read_only_sql_transaction) for a tenant listed in the control schema's
-- shared_freezes. Other tenants pass after one index lookup. The tool's own apply runs with
-- session_replication_role = replica, where the trigger does not fire.
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
  IF (TG_OP <> 'DELETE' AND EXISTS (SELECT 1 FROM {freezes} f WHERE f.tenant = NEW.{column}::text))
     OR (TG_OP <> 'INSERT' AND EXISTS (SELECT 1 FROM {freezes} f WHERE f.tenant = OLD.{column}::text)) THEN
    RAISE EXCEPTION 'tenant % is frozen on the shared tables while it is rolled back to its own database',
      CASE WHEN TG_OP = 'DELETE' THEN OLD.{column} ELSE NEW.{column} END::text
      USING ERRCODE = '25006';
  END IF;
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;
  END IF;
  RETURN NEW;
END
$fn$
