-- Deterministic rows for one customer of the sample schema. Parameters:
-- %(tenant)s names the customer (it seeds the values, so tenants differ),
-- %(scale)s multiplies the row counts (1 = 1 org, 20 users, 10 projects,
-- 200 tasks, 400 comments, 40 attachments). The same tenant and scale always
-- give the same rows.

INSERT INTO organizations (id, name, plan, created_at)
SELECT o, initcap(%(tenant)s) || CASE WHEN o > 1 THEN ' ' || o ELSE '' END,
       (ARRAY['standard', 'premium', 'enterprise'])[1 + o %% 3],
       timestamptz '2024-01-01 09:00:00+00' + o * interval '1 day'
FROM generate_series(1, %(scale)s) AS o;

INSERT INTO users (id, org_id, email, full_name, profile, created_at)
SELECT u, 1 + u %% %(scale)s,
       'user' || u || '@' || %(tenant)s || '.example',
       (ARRAY['Zoë Müller', 'Łukasz Wiśniewski', '山田 太郎', 'José Núñez', 'Ann O''Brien'])[1 + u %% 5]
           || ' #' || u,
       CASE WHEN u %% 4 = 0 THEN NULL
            ELSE jsonb_build_object('theme', (ARRAY['dark', 'light'])[1 + u %% 2],
                                    'langs', jsonb_build_array('en', 'de'),
                                    'score', (u * 1.25)::numeric) END,
       timestamptz '2024-02-01 12:00:00+00' + u * interval '37 minutes'
FROM generate_series(1, 20 * %(scale)s) AS u;

INSERT INTO projects (id, org_id, owner_id, name, budget, settings)
SELECT p, 1 + p %% %(scale)s,
       CASE WHEN p %% 7 = 0 THEN NULL ELSE 1 + (p * 3) %% (20 * %(scale)s) END,
       'Project ' || p || ' – ' || %(tenant)s,
       CASE WHEN p %% 5 = 0 THEN NULL ELSE round((p * 1234.5)::numeric, 2) END,
       jsonb_build_object('visibility', CASE WHEN p %% 2 = 0 THEN 'private' ELSE 'team' END)
FROM generate_series(1, 10 * %(scale)s) AS p;

INSERT INTO tasks (id, project_id, assignee_id, title, status, estimate, due_at, labels, created_at)
SELECT t, 1 + t %% (10 * %(scale)s),
       CASE WHEN t %% 6 = 0 THEN NULL ELSE 1 + t %% (20 * %(scale)s) END,
       CASE WHEN t %% 9 = 0 THEN '' ELSE 'Task ' || t || ': ' || left(md5(%(tenant)s || t), 12) END,
       (ARRAY['todo', 'doing', 'done'])[1 + t %% 3],
       CASE WHEN t %% 4 = 0 THEN NULL ELSE (t %% 13) * 0.5 END,
       CASE WHEN t %% 3 = 0 THEN NULL
            ELSE timestamptz '2025-01-01 00:00:00+00' + t * interval '5 hours 7 minutes' END,
       CASE t %% 5 WHEN 0 THEN NULL WHEN 1 THEN '{}'::text[] WHEN 2 THEN ARRAY['urgent', '']
                   WHEN 3 THEN ARRAY['über', NULL, 'naïve "quoted"'] ELSE ARRAY['backend'] END,
       timestamptz '2024-03-01 08:30:00+00' + t * interval '11 minutes'
FROM generate_series(1, 200 * %(scale)s) AS t;

INSERT INTO comments (id, task_id, author_id, body, created_at)
SELECT c, 1 + c %% (200 * %(scale)s), 1 + (c * 7) %% (20 * %(scale)s),
       'Comment ' || c || ' ✓ ' || md5(%(tenant)s || 'c' || c),
       timestamptz '2024-04-01 10:00:00+00' + c * interval '3 minutes 1 second'
FROM generate_series(1, 400 * %(scale)s) AS c;

INSERT INTO attachments (id, task_id, filename, content)
SELECT a, 1 + (a * 5) %% (200 * %(scale)s), 'file-' || a || '.bin',
       CASE WHEN a %% 10 = 0 THEN NULL ELSE decode(md5(%(tenant)s || 'a' || a), 'hex') END
FROM generate_series(1, 40 * %(scale)s) AS a;

-- Identity columns were given explicit values: move their sequences past them,
-- so the application (and tests that write to the source) can insert new rows.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['organizations', 'users', 'projects', 'tasks', 'comments', 'attachments'] LOOP
        EXECUTE format('SELECT setval(pg_get_serial_sequence(%%L, ''id''), coalesce(max(id), 0) + 1, false) FROM %%I', t, t);
    END LOOP;
END
$$;
