-- views (security_barrier, check option, recursive), a rule, a view depending on a function
CREATE TABLE base (id int PRIMARY KEY, v int, hidden boolean DEFAULT false);
INSERT INTO base SELECT i, i * 2, i % 10 = 0 FROM generate_series(1, 300) i;
CREATE FUNCTION visible(b base) RETURNS boolean LANGUAGE sql STABLE AS $$ SELECT NOT b.hidden $$;
CREATE VIEW visible_base WITH (security_barrier) AS SELECT * FROM base b WHERE visible(b) WITH CASCADED CHECK OPTION;
CREATE RECURSIVE VIEW countdown (n) AS SELECT 5 UNION ALL SELECT n - 1 FROM countdown WHERE n > 0;
CREATE TABLE base_log (id int, at text);
CREATE RULE log_delete AS ON DELETE TO base DO ALSO INSERT INTO base_log VALUES (OLD.id, 'deleted');
CREATE VIEW v_on_v AS SELECT count(*) AS n FROM visible_base;
