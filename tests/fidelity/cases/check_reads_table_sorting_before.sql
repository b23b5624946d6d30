-- a CHECK constraint whose function reads ANOTHER table (b_allowed, sorting before c_payments):
-- PostgreSQL's serial load has the allowed codes when the payments arrive
CREATE TABLE b_allowed (code text PRIMARY KEY);
CREATE FUNCTION allowed(x text) RETURNS boolean LANGUAGE sql STABLE AS $$ SELECT EXISTS (SELECT 1 FROM public.b_allowed WHERE code = x) $$;
CREATE TABLE c_payments (id int PRIMARY KEY, code text CHECK (allowed(code)), amount numeric);
CREATE TABLE c_payments_more (id int PRIMARY KEY, code text CHECK (allowed(code)), amount numeric);
INSERT INTO b_allowed SELECT 'k' || i FROM generate_series(0, 29999) i;
INSERT INTO c_payments SELECT i, 'k' || (i % 5000), i FROM generate_series(1, 8000) i;
INSERT INTO c_payments_more SELECT i, 'k' || (i % 5000), i FROM generate_series(1, 8000) i;
