-- Deterministic rows for the benchmark's source schema. %(rows)s is the size of
-- the largest table (events); the others follow in fixed proportions, so the
-- whole database holds about 1.8 × %(rows)s rows. No random(): the same size
-- always gives the same bytes.

INSERT INTO organizations
SELECT o, 'Org ' || o, (ARRAY['free', 'team', 'business', 'enterprise'])[1 + o %% 4],
       jsonb_build_object('sso', o %% 2 = 0, 'seats', 10 + o %% 90, 'region', 'eu-' || o %% 3),
       timestamptz '2020-01-01 00:00:00+00' + o * interval '13 hours'
FROM generate_series(1, greatest(1, %(rows)s / 20000)) AS o;

INSERT INTO users
SELECT u, 1 + u %% greatest(1, %(rows)s / 20000),
       CASE WHEN u > 5 THEN 1 + u %% 5 END,
       'user' || u || '@example.com',
       (ARRAY['Zoë Müller', 'Łukasz Wiśniewski', '山田 太郎', 'José Núñez', 'Ann O''Brien'])[1 + u %% 5] || ' ' || u,
       CASE WHEN u %% 4 = 0 THEN NULL
            ELSE jsonb_build_object('theme', (ARRAY['dark', 'light'])[1 + u %% 2], 'locale', 'en',
                                    'notifications', jsonb_build_object('email', true, 'digest', u %% 3)) END,
       timestamptz '2020-02-01 00:00:00+00' + u * interval '7 minutes'
FROM generate_series(1, greatest(5, %(rows)s / 50)) AS u;

INSERT INTO projects
SELECT p, 1 + p %% greatest(1, %(rows)s / 20000),
       CASE WHEN p %% 7 = 0 THEN NULL ELSE 1 + p %% greatest(5, %(rows)s / 50) END,
       'Project ' || p || ' ' || left(md5('p' || p), 10),
       CASE WHEN p %% 5 = 0 THEN NULL ELSE round((p * 1234.5)::numeric %% 1000000, 2) END,
       CASE p %% 4 WHEN 0 THEN ARRAY['web', 'api'] WHEN 1 THEN ARRAY['mobile', '']
                   WHEN 2 THEN '{}'::text[] ELSE ARRAY['ops', NULL] END,
       timestamptz '2020-03-01 00:00:00+00' + p * interval '1 hour'
FROM generate_series(1, greatest(2, %(rows)s / 200)) AS p;

INSERT INTO tasks
SELECT t, 1 + t %% greatest(2, %(rows)s / 200),
       CASE WHEN t %% 6 = 0 THEN NULL ELSE 1 + t %% greatest(5, %(rows)s / 50) END,
       CASE WHEN t %% 9 = 0 THEN '' ELSE 'Task ' || t || ': ' || md5('t' || t) END,
       (ARRAY['todo', 'doing', 'review', 'done'])[1 + t %% 4],
       CASE WHEN t %% 4 = 0 THEN NULL ELSE (t %% 13) * 0.5 END,
       CASE WHEN t %% 3 = 0 THEN NULL ELSE timestamptz '2021-01-01 00:00:00+00' + t * interval '61 minutes' END,
       timestamptz '2020-04-01 00:00:00+00' + t * interval '3 minutes'
FROM generate_series(1, greatest(4, %(rows)s / 4)) AS t;

INSERT INTO comments
SELECT c, 1 + c %% greatest(4, %(rows)s / 4), 1 + (c * 7) %% greatest(5, %(rows)s / 50),
       'Comment ' || c || ' ✓ ' || md5('c' || c) || ' ' || repeat('lorem ipsum ', c %% 8),
       timestamptz '2020-05-01 00:00:00+00' + c * interval '61 seconds'
FROM generate_series(1, greatest(2, %(rows)s / 2)) AS c;

INSERT INTO events
SELECT e, 1 + e %% greatest(1, %(rows)s / 20000),
       CASE WHEN e %% 10 = 0 THEN NULL ELSE 1 + e %% greatest(5, %(rows)s / 50) END,
       (ARRAY['login', 'view', 'update', 'export', 'invite'])[1 + e %% 5],
       jsonb_build_object('ip', '10.' || e %% 256 || '.' || (e / 256) %% 256 || '.1',
                          'agent', 'Mozilla/5.0 (build ' || e %% 97 || ')',
                          'path', '/projects/' || e %% 5000 || '/tasks',
                          'ms', e %% 1000),
       timestamptz '2020-06-01 00:00:00+00' + e * interval '17 seconds'
FROM generate_series(1, %(rows)s) AS e;

INSERT INTO attachments
SELECT a, 1 + (a * 5) %% greatest(4, %(rows)s / 4), 'file-' || a || '.bin', 1024 + (a %% 4) * 512,
       CASE WHEN a %% 10 = 0 THEN NULL
            ELSE (SELECT decode(string_agg(md5(a || ':' || i), ''), 'hex')
                  FROM generate_series(1, (1024 + (a %% 4) * 512) / 16) AS i) END
FROM generate_series(1, greatest(2, %(rows)s / 50)) AS a;
