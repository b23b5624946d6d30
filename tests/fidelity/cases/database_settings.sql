-- database settings, list-valued ones included (pg_dump without --create does not dump them; the
-- expected value is the source's at backup time); the source's settings change after the backup
CREATE SCHEMA app;
CREATE TABLE app.things (id int PRIMARY KEY, v text);
INSERT INTO app.things SELECT i, 'v' || i FROM generate_series(1, 200) i;
ALTER DATABASE :"dbname" SET search_path = app, public;
ALTER DATABASE :"dbname" SET work_mem = '7MB';
ALTER DATABASE :"dbname" SET statement_timeout = '1min';
ALTER DATABASE :"dbname" SET "DateStyle" = 'SQL, DMY';
ALTER DATABASE :"dbname" SET fid.custom_setting = 'a, b';
-- after backup: the live database's settings change; the restore must bring back the backup's
ALTER DATABASE :"dbname" SET work_mem = '9MB';
ALTER DATABASE :"dbname" RESET statement_timeout;
ALTER DATABASE :"dbname" SET lock_timeout = '3s';
