-- column defaults calling user functions and a sequence
CREATE SEQUENCE code_seq;
CREATE FUNCTION next_code() RETURNS text LANGUAGE sql VOLATILE AS $$ SELECT 'C-' || nextval('code_seq') $$;
CREATE TABLE tickets (id int PRIMARY KEY, code text NOT NULL DEFAULT next_code(), opened date DEFAULT date '2024-01-01');
INSERT INTO tickets (id) SELECT i FROM generate_series(1, 500) i;
