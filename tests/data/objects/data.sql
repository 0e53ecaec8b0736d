-- One tenant's rows (%(tenant)s): the same ids in every tenant, names that say whose they are.
INSERT INTO customers (id, name, plan, discount)
SELECT i, %(tenant)s || ' customer ' || i, CASE WHEN i %% 3 = 0 THEN 'pro' ELSE 'free' END::plan, i %% 50
FROM generate_series(1, 40) AS i;
INSERT INTO orders (id, customer_id, note)
SELECT i, 1 + i %% 40, %(tenant)s || ' order ' || i FROM generate_series(1, 120) AS i;
INSERT INTO visits (id, customer_id, order_id, at)
SELECT i, 1 + i %% 40, CASE WHEN i %% 2 = 0 THEN 1 + i %% 120 END, date '2024-06-01' + i * 2
FROM generate_series(1, 200) AS i;
INSERT INTO audit_log VALUES ('2024-01-01', %(tenant)s || ' was here');
