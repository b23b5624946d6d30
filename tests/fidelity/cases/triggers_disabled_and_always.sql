-- trigger enabled states: DISABLE, ENABLE ALWAYS, ENABLE REPLICA, and one disabled internal (FK) trigger
CREATE TABLE t_parent (id int PRIMARY KEY);
CREATE TABLE t_child (id int PRIMARY KEY, parent int REFERENCES t_parent);
CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER off_trg BEFORE INSERT ON t_child FOR EACH ROW EXECUTE FUNCTION noop();
CREATE TRIGGER always_trg BEFORE INSERT ON t_child FOR EACH ROW EXECUTE FUNCTION noop();
CREATE TRIGGER replica_trg BEFORE INSERT ON t_child FOR EACH ROW EXECUTE FUNCTION noop();
CREATE TRIGGER plain_trg BEFORE INSERT ON t_child FOR EACH ROW EXECUTE FUNCTION noop();
INSERT INTO t_parent SELECT generate_series(1, 100);
INSERT INTO t_child SELECT i, 1 + i % 100 FROM generate_series(1, 300) i;
ALTER TABLE t_child DISABLE TRIGGER off_trg;
ALTER TABLE t_child ENABLE ALWAYS TRIGGER always_trg;
ALTER TABLE t_child ENABLE REPLICA TRIGGER replica_trg;
