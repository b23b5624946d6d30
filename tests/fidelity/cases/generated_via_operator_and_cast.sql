-- a generated column reaching a function of the dump through an OPERATOR and through a CAST
-- (pg_dump writes them as OPERATOR(public.##) and ::integer, not as function calls): the
-- function counts a_ref, loaded before; a parallel load computed other values (break-it trial)
CREATE TABLE a_ref (id int, pad text);
INSERT INTO a_ref SELECT g, repeat('x', 60) FROM generate_series(1, 200000) g;
CREATE FUNCTION cnt(a int, b int) RETURNS int IMMUTABLE LANGUAGE plpgsql
  AS $$ BEGIN RETURN (SELECT count(*)::int FROM public.a_ref); END $$;
CREATE OPERATOR ## (LEFTARG = int, RIGHTARG = int, FUNCTION = cnt);
CREATE TYPE e AS ENUM ('x', 'y');
CREATE FUNCTION cnt_e(v e) RETURNS int IMMUTABLE LANGUAGE plpgsql
  AS $$ BEGIN RETURN (SELECT count(*)::int FROM public.a_ref); END $$;
CREATE CAST (e AS int) WITH FUNCTION cnt_e(e);
CREATE TABLE b_op (a int, g int GENERATED ALWAYS AS (a ## 0) STORED);
CREATE TABLE b_cast (v e, g int GENERATED ALWAYS AS (v::int) STORED);
INSERT INTO b_op (a) SELECT generate_series(1, 5);
INSERT INTO b_cast (v) SELECT 'x' FROM generate_series(1, 5);
