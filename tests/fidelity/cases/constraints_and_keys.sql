-- foreign keys (self-referencing, deferrable, ON DELETE actions, to a partitioned table), unique NULLS NOT DISTINCT, exclusion
CREATE TABLE nodes (id int PRIMARY KEY, parent int REFERENCES nodes DEFERRABLE INITIALLY DEFERRED, code text,
                    UNIQUE NULLS NOT DISTINCT (code));
CREATE TABLE regions (id int, k int, PRIMARY KEY (id, k)) PARTITION BY LIST (k);
CREATE TABLE regions_1 PARTITION OF regions FOR VALUES IN (1);
CREATE TABLE regions_2 PARTITION OF regions FOR VALUES IN (2);
CREATE TABLE places (id int PRIMARY KEY, node int REFERENCES nodes ON DELETE CASCADE, rid int, rk int,
                     FOREIGN KEY (rid, rk) REFERENCES regions ON UPDATE CASCADE ON DELETE SET NULL (rid));
CREATE TABLE slots (a int, EXCLUDE USING btree (a WITH =));
INSERT INTO nodes SELECT i, CASE WHEN i > 1 THEN i / 2 END, CASE WHEN i > 1 THEN 'c' || i END FROM generate_series(1, 1000) i;
INSERT INTO regions SELECT i, 1 + i % 2 FROM generate_series(1, 100) i;
INSERT INTO places SELECT i, 1 + i % 1000, 1 + i % 100, 1 + (1 + i % 100) % 2 FROM generate_series(1, 2000) i;
INSERT INTO slots SELECT generate_series(1, 100);
