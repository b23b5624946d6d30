-- comments on many kinds of objects (and on the database itself, which pg_dump without --create skips)
CREATE SCHEMA doc;
CREATE TABLE doc.t (id int PRIMARY KEY, v text CONSTRAINT v_len CHECK (length(v) < 100));
CREATE INDEX t_v ON doc.t (v);
CREATE VIEW doc.vw AS SELECT * FROM doc.t;
CREATE FUNCTION doc.f(int) RETURNS int LANGUAGE sql AS $$ SELECT $1 $$;
CREATE TYPE doc.e AS ENUM ('x');
CREATE DOMAIN doc.d AS int;
CREATE SEQUENCE doc.s;
CREATE TRIGGER tr BEFORE UPDATE ON doc.t FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger();
INSERT INTO doc.t SELECT i, 'v' || i FROM generate_series(1, 50) i;
COMMENT ON SCHEMA doc IS 'schema comment';
COMMENT ON SCHEMA public IS 'public, commented';
COMMENT ON TABLE doc.t IS 'table comment';
COMMENT ON COLUMN doc.t.v IS 'column comment';
COMMENT ON CONSTRAINT v_len ON doc.t IS 'constraint comment';
COMMENT ON INDEX doc.t_v IS 'index comment';
COMMENT ON VIEW doc.vw IS 'view comment';
COMMENT ON FUNCTION doc.f(int) IS 'function comment';
COMMENT ON TYPE doc.e IS 'type comment';
COMMENT ON DOMAIN doc.d IS 'domain comment';
COMMENT ON SEQUENCE doc.s IS 'sequence comment';
COMMENT ON TRIGGER tr ON doc.t IS 'trigger comment';
COMMENT ON DATABASE :"dbname" IS 'the database''s own comment';
-- after backup: the live database's comment changes
COMMENT ON DATABASE :"dbname" IS 'changed after the backup';
