-- CHECK constraints calling user functions (SQL and PL/pgSQL), one NOT VALID
CREATE FUNCTION is_even(n int) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT n % 2 = 0 $$;
CREATE FUNCTION short_enough(t text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN length(t) < 20; END $$;
CREATE TABLE pairs (n int, label text CONSTRAINT label_ok CHECK (short_enough(label)));
INSERT INTO pairs SELECT i * 2, 'l' || i FROM generate_series(1, 1000) i;
INSERT INTO pairs VALUES (3, 'odd, from before');
ALTER TABLE pairs ADD CONSTRAINT pairs_n_check CHECK (is_even(n)) NOT VALID;
CREATE TABLE evens (n int CHECK (is_even(n)));
INSERT INTO evens SELECT i * 2 FROM generate_series(1, 500) i;
