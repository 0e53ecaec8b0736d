-- What the control schema says happened that the ledger must hold an entry for: each
-- run's start and end, and the last state transition of every step of every tenant,
-- written in one transaction with its entry (engine/sinks.py, engine/run.py,
-- engine/rollback.py). One row per fact without its entry, oldest first:
-- (fact, run_id, tenant, step, at). {schema} is the control schema, quoted by the caller.
SELECT 'run started' AS fact, r.run_id::text, NULL::text AS tenant, r.command AS step, r.started_at AS at
FROM {schema}.runs r
WHERE NOT r.dry_run
  AND NOT EXISTS (SELECT FROM {schema}.ledger l
                  WHERE l.run_id = r.run_id AND l.action IN ('run_started', 'rollback_started'))
UNION ALL
SELECT 'run finished', r.run_id::text, NULL, r.command, r.finished_at
FROM {schema}.runs r
WHERE NOT r.dry_run AND r.finished_at IS NOT NULL
  AND NOT EXISTS (SELECT FROM {schema}.ledger l
                  WHERE l.run_id = r.run_id AND l.action IN ('run_finished', 'rollback_finished'))
UNION ALL
SELECT 'step ' || s.status, s.run_id::text, s.tenant, s.step_key, coalesce(s.finished_at, s.started_at)
FROM {schema}.step_state s
WHERE s.run_id IS NOT NULL
  AND s.status <> 'running'  -- a step under way (or left by a killed runner) has no entry yet
  AND NOT EXISTS (
      SELECT FROM {schema}.ledger l
      WHERE l.run_id = s.run_id AND l.tenant = s.tenant
        AND (
            -- a rollback point a rollback passed back over: the rollback's own entries for the tenant
            (s.kind = 'rollback_point' AND s.status = 'reverted')
            OR (l.step = s.step_key AND l.action = CASE s.status
                    WHEN 'done' THEN CASE WHEN s.kind = 'rollback_point' THEN 'point_passed' ELSE 'applied' END
                    WHEN 'failed' THEN 'failed'
                    WHEN 'reverted' THEN 'reverted'
                    WHEN 'pending' THEN 'stopped'
                END)
        ))
ORDER BY at NULLS LAST
