-- a generated column whose function reads ANOTHER table (rates) that sorts AFTER the table
-- (amounts): what a load gives depends on the order in which the tables' data arrive
CREATE TABLE rates (c text PRIMARY KEY, r numeric NOT NULL);
-- (PL/pgSQL: an SQL function would be inlined when amounts is created, before rates exists,
-- and PostgreSQL's own load of the archive would fail)
CREATE FUNCTION rate(code text) RETURNS numeric LANGUAGE plpgsql IMMUTABLE
  AS $$ BEGIN RETURN (SELECT r FROM public.rates WHERE c = code); END $$;
CREATE TABLE amounts (id int PRIMARY KEY, cur text, amount numeric,
                      in_eur numeric GENERATED ALWAYS AS (amount * rate(cur)) STORED);
CREATE TABLE amounts_more (id int PRIMARY KEY, cur text, amount numeric,
                           in_eur numeric GENERATED ALWAYS AS (amount * rate(cur)) STORED);
INSERT INTO rates SELECT 'c' || i, 1 + i / 100.0 FROM generate_series(0, 29999) i;
INSERT INTO amounts (id, cur, amount) SELECT i, 'c' || (i % 3000), i FROM generate_series(1, 6000) i;
INSERT INTO amounts_more (id, cur, amount) SELECT i, 'c' || (i % 3000), i * 2 FROM generate_series(1, 6000) i;
