-- privileges with every role present: a read-only role, column privileges, schema USAGE,
-- a SECURITY DEFINER function with EXECUTE revoked from PUBLIC, objects owned by non-superusers
CREATE SCHEMA app AUTHORIZATION fid_owner;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA app TO fid_reader, fid_app;
GRANT CREATE ON SCHEMA app TO fid_writer;
CREATE TABLE app.accounts (id int PRIMARY KEY, name text, balance numeric, secret text);
ALTER TABLE app.accounts OWNER TO fid_owner;
INSERT INTO app.accounts SELECT i, 'n' || i, i * 10, 's' || i FROM generate_series(1, 200) i;
GRANT SELECT ON app.accounts TO fid_reader;
GRANT SELECT (id, name), UPDATE (name) ON app.accounts TO fid_app;
GRANT INSERT, UPDATE ON app.accounts TO fid_writer WITH GRANT OPTION;
REVOKE TRUNCATE ON app.accounts FROM fid_owner;
CREATE FUNCTION app.balance_of(int) RETURNS numeric LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = app AS $$ SELECT balance FROM app.accounts WHERE id = $1 $$;
ALTER FUNCTION app.balance_of(int) OWNER TO fid_definer;
GRANT SELECT ON app.accounts TO fid_definer;
REVOKE EXECUTE ON FUNCTION app.balance_of(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.balance_of(int) TO fid_app;
CREATE TYPE app.status AS ENUM ('open', 'closed');
ALTER TYPE app.status OWNER TO fid_owner;
REVOKE USAGE ON TYPE app.status FROM PUBLIC;
GRANT USAGE ON TYPE app.status TO fid_app;
CREATE SEQUENCE app.ids;
ALTER SEQUENCE app.ids OWNER TO fid_owner;
ALTER SEQUENCE app.ids OWNED BY app.accounts.id;
GRANT USAGE ON SEQUENCE app.ids TO fid_writer;
CREATE VIEW app.names AS SELECT id, name FROM app.accounts;
ALTER VIEW app.names OWNER TO fid_owner;
GRANT SELECT ON app.names TO PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE :"dbname" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"dbname" TO fid_reader, fid_app;
GRANT CREATE ON DATABASE :"dbname" TO fid_owner;
