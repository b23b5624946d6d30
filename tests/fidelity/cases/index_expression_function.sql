-- indexes on expressions calling user functions, a partial index with a function in its predicate
CREATE FUNCTION norm(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT lower(btrim(t)) $$;
CREATE FUNCTION is_vip(n int) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT n > 900 $$;
CREATE TABLE customers (id int PRIMARY KEY, name text);
INSERT INTO customers SELECT i, '  Name ' || i || ' ' FROM generate_series(1, 1000) i;
CREATE UNIQUE INDEX customers_norm ON customers (norm(name));
CREATE INDEX customers_vip ON customers (id) WHERE is_vip(id);
