-- a stored generated column calling an immutable user function (in another schema)
CREATE SCHEMA calc;
CREATE FUNCTION calc.gross(net numeric, pct int) RETURNS numeric LANGUAGE sql IMMUTABLE
  AS $$ SELECT round(net * (100 + pct) / 100.0, 2) $$;
CREATE TABLE invoices (id int PRIMARY KEY, net numeric, pct int,
                       gross numeric GENERATED ALWAYS AS (calc.gross(net, pct)) STORED);
INSERT INTO invoices (id, net, pct) SELECT i, i * 3.7, i % 25 FROM generate_series(1, 2000) i;
