-- row and statement triggers (BEFORE/AFTER, WHEN, transition tables), a constraint trigger
CREATE TABLE items (id int PRIMARY KEY, name text, touched int DEFAULT 0);
CREATE TABLE audit (at_stmt text, n int);
CREATE FUNCTION items_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.touched := NEW.touched + 1; RETURN NEW; END $$;
CREATE FUNCTION items_audit() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN INSERT INTO audit SELECT TG_OP, count(*) FROM new_rows; RETURN NULL; END $$;
CREATE FUNCTION items_check() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER items_touch BEFORE UPDATE ON items FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name) EXECUTE FUNCTION items_touch();
CREATE TRIGGER items_audit AFTER INSERT ON items REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION items_audit();
CREATE CONSTRAINT TRIGGER items_check AFTER INSERT ON items DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION items_check();
INSERT INTO items (id, name) SELECT i, 'i' || i FROM generate_series(1, 500) i;
UPDATE items SET name = name || '!' WHERE id % 3 = 0;
