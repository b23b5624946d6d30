-- event triggers: enabled, disabled, ENABLE ALWAYS, with a tag filter, one owned by a non-superuser function owner
CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE 'ddl %', tg_tag; END $$;
CREATE EVENT TRIGGER fid_on_ddl ON ddl_command_end EXECUTE FUNCTION log_ddl();
CREATE EVENT TRIGGER fid_on_create_table ON ddl_command_start WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION log_ddl();
CREATE EVENT TRIGGER fid_off ON sql_drop EXECUTE FUNCTION log_ddl();
ALTER EVENT TRIGGER fid_off DISABLE;
ALTER EVENT TRIGGER fid_on_create_table ENABLE ALWAYS;
COMMENT ON EVENT TRIGGER fid_on_ddl IS 'logs DDL';
CREATE TABLE after_triggers (id int);
INSERT INTO after_triggers SELECT generate_series(1, 10);
