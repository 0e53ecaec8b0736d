-- Deterministic rows of one tenant of realistic_schema.sql; %(tenant)s seeds the values.
INSERT INTO countries (code, name) VALUES ('DE', 'Germany'), ('FR', 'France'), ('US', 'United States');

INSERT INTO accounts (name, slug, country, billing, credit, settings, created_at)
SELECT initcap(%(tenant)s) || ' ' || a, %(tenant)s || '-' || a, (ARRAY['DE', 'FR', 'US', NULL])[1 + a %% 4],
       CASE WHEN a %% 2 = 0 THEN 'billing' || a || '@' || %(tenant)s || '.example' END,
       a * 12.5, jsonb_build_object('seats', a * 3, 'sso', a %% 2 = 0),
       timestamptz '2024-03-01 08:00:00+00' + a * interval '5 days'
FROM generate_series(1, 3) AS a;

INSERT INTO members (account_id, user_no, email, roles, manager_no)
SELECT 1 + m %% 3, m, 'member' || m || '@' || %(tenant)s || '.example',
       CASE WHEN m %% 3 = 0 THEN ARRAY['admin', 'member'] ELSE ARRAY['member'] END,
       NULL
FROM generate_series(1, 12) AS m;
UPDATE members SET manager_no = user_no - 3 WHERE user_no > 3;

INSERT INTO tasks (account_id, parent_id, title, status, tags, estimate_hours, spent_hours, meta, due_on)
SELECT 1 + t %% 3, NULL, 'Task ' || t || ' of ' || %(tenant)s,
       (ARRAY['todo', 'doing', 'blocked', 'done'])[1 + t %% 4]::task_status,
       CASE WHEN t %% 5 = 0 THEN NULL ELSE ARRAY['tag' || t %% 3, 'ünïcode'] END,
       CASE WHEN t %% 6 = 0 THEN NULL ELSE t * 1.5 END, t %% 7,
       CASE WHEN t %% 4 = 0 THEN NULL ELSE jsonb_build_object('prio', t %% 3) END,
       date '2025-01-01' + t
FROM generate_series(1, 40) AS t;
UPDATE tasks SET parent_id = id - 10 WHERE id > 30;

INSERT INTO events (occurred_at, task_id, kind, payload)
SELECT timestamptz '2024-06-01 00:00:00+00' + e * interval '9 days', 1 + e %% 40,
       (ARRAY['created', 'moved', 'closed'])[1 + e %% 3],
       CASE WHEN e %% 2 = 0 THEN jsonb_build_object('by', %(tenant)s) END
FROM generate_series(1, 90) AS e;
