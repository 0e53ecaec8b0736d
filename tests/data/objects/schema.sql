-- A single-tenant schema with one of each kind of object the shared schema must carry, or
-- refuse to drop without a person's word (tests/test_objects.py). Rows: data.sql.

CREATE TYPE plan AS ENUM ('free', 'pro');
CREATE DOMAIN percent AS numeric(5, 2) CHECK (VALUE BETWEEN 0 AND 100);

CREATE TABLE customers (
    id          integer PRIMARY KEY,
    name        text NOT NULL,
    plan        plan NOT NULL DEFAULT 'free',
    discount    percent,
    search      tsvector,
    updated_at  timestamptz NOT NULL DEFAULT '2020-01-01 00:00+00'
);
CREATE TABLE orders (
    id          integer PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers (id),
    note        text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT '2020-01-01 00:00+00'
);

-- Partitioned; a foreign key, a check and an index declared on one partition only.
CREATE TABLE visits (
    id          integer NOT NULL,
    customer_id integer NOT NULL,
    order_id    integer,
    at          date NOT NULL,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE visits_2024 PARTITION OF visits FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE visits_2025 PARTITION OF visits FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
ALTER TABLE visits_2025 ADD CONSTRAINT visits_2025_order_fkey FOREIGN KEY (order_id) REFERENCES orders (id);
ALTER TABLE visits_2025 ADD CONSTRAINT visits_2025_recent CHECK (at >= '2025-01-01');
CREATE INDEX visits_2025_customer ON visits_2025 (customer_id);

-- Left out of the playbook's tables: its rows must not stay behind silently.
CREATE TABLE audit_log (at timestamptz NOT NULL, what text NOT NULL);

-- Carried: pure functions, an aggregate over one, per-row trigger functions.
CREATE FUNCTION joined(text, text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN $1 IS NULL THEN $2 ELSE $1 || ', ' || $2 END
$$;
CREATE AGGREGATE joined_all(text) (SFUNC = joined, STYPE = text);
CREATE FUNCTION shout(t text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN upper(t) || '!';
END $$;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER customers_touch BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION touch();
-- On INSERT too: the source holds the time of its own insert, which a copy must keep.
CREATE TRIGGER orders_touch BEFORE INSERT OR UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
CREATE TRIGGER customers_search BEFORE INSERT OR UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION tsvector_update_trigger(search, 'pg_catalog.english', name);

-- Not carried without a person's word: a function that reads a table, a statement trigger, a rule.
CREATE FUNCTION order_count(c integer) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT count(*) FROM orders WHERE customer_id = c
$$;
CREATE FUNCTION note_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_log VALUES (now(), TG_OP);
    RETURN NULL;
END $$;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH STATEMENT EXECUTE FUNCTION note_audit();
CREATE RULE customers_no_delete AS ON DELETE TO customers DO INSTEAD NOTHING;

-- Views: joins between tenant tables (ON, a comma join, a sub-query) get the tenant equality;
-- a view over the aggregate needs the aggregate first; a USING join cannot be made safe, nor a
-- view calling a function that is not carried.
CREATE VIEW customer_orders AS
    SELECT c.id AS customer_id, c.name, o.id AS order_id, o.note
    FROM customers c JOIN orders o ON o.customer_id = c.id;
CREATE VIEW order_pairs AS
    SELECT o.id, c.name FROM orders o, customers c WHERE o.customer_id = c.id;
CREATE VIEW busy_customers AS
    SELECT c.id, c.name FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id);
CREATE VIEW customer_notes AS
    SELECT c.id, shout(c.name) AS loud, joined_all(o.note ORDER BY o.id) AS notes
    FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id, c.name;
CREATE VIEW order_counts AS SELECT c.id, order_count(c.id) AS orders FROM customers c;
CREATE VIEW orders_using AS
    SELECT o.id, c.name FROM orders o JOIN (SELECT id AS customer_id, name FROM customers) c USING (customer_id);

-- Comments on what is carried go with it (a left-behind function's stays behind with it).
COMMENT ON VIEW customer_orders IS 'Each customer with its orders';
COMMENT ON FUNCTION shout(text) IS 'Loud';
COMMENT ON AGGREGATE joined_all(text) IS 'Joined';
COMMENT ON TRIGGER customers_touch ON customers IS 'Stamps updated_at';
COMMENT ON INDEX visits_2025_customer IS 'Declared on a partition';
COMMENT ON CONSTRAINT visits_2025_recent ON visits_2025 IS 'Only 2025';
COMMENT ON TYPE plan IS 'Plans';
COMMENT ON DOMAIN percent IS 'Percent';
COMMENT ON FUNCTION order_count(integer) IS 'Reads orders';
