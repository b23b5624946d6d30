-- a generated column whose function reads ANOTHER table (a_rates) that sorts BEFORE the table
-- (zamounts): PostgreSQL's serial load has the rates when the amounts arrive
CREATE TABLE a_rates (c text PRIMARY KEY, r numeric NOT NULL);
CREATE FUNCTION rate(code text) RETURNS numeric LANGUAGE sql IMMUTABLE AS $$ SELECT r FROM public.a_rates WHERE c = code $$;
CREATE TABLE zamounts (id int PRIMARY KEY, cur text, amount numeric,
                       in_eur numeric GENERATED ALWAYS AS (amount * rate(cur)) STORED);
CREATE TABLE zamounts_more (id int PRIMARY KEY, cur text, amount numeric,
                            in_eur numeric GENERATED ALWAYS AS (amount * rate(cur)) STORED);
INSERT INTO a_rates SELECT 'c' || i, 1 + i / 100.0 FROM generate_series(0, 29999) i;
INSERT INTO zamounts (id, cur, amount) SELECT i, 'c' || (i % 3000), i FROM generate_series(1, 6000) i;
INSERT INTO zamounts_more (id, cur, amount) SELECT i, 'c' || (i % 3000), i * 2 FROM generate_series(1, 6000) i;
