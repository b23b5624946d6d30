-- role-in-database settings (ALTER ROLE ... IN DATABASE ... SET), list-valued included
CREATE SCHEMA reporting;
CREATE TABLE reporting.figures (id int, v numeric);
INSERT INTO reporting.figures SELECT i, i FROM generate_series(1, 100) i;
ALTER ROLE fid_reader IN DATABASE :"dbname" SET search_path = reporting, public;
ALTER ROLE fid_reader IN DATABASE :"dbname" SET statement_timeout = '30s';
ALTER ROLE fid_app IN DATABASE :"dbname" SET work_mem = '16MB';
ALTER ROLE fid_app IN DATABASE :"dbname" SET default_transaction_read_only = on;
-- after backup: one role's settings go, another's change
ALTER ROLE fid_reader IN DATABASE :"dbname" RESET ALL;
ALTER ROLE fid_app IN DATABASE :"dbname" SET work_mem = '1MB';
