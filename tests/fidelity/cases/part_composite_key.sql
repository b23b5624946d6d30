-- range partitioning on a composite-type key and on a multi-column key
CREATE TYPE ver AS (major int, minor int);
CREATE TABLE releases (v ver NOT NULL, name text) PARTITION BY RANGE (v);
CREATE TABLE releases_old PARTITION OF releases FOR VALUES FROM ('(0,0)') TO ('(10,0)');
CREATE TABLE releases_new PARTITION OF releases FOR VALUES FROM ('(10,0)') TO ('(100,0)');
INSERT INTO releases SELECT ROW(i % 50, i)::ver, 'r' || i FROM generate_series(1, 1000) i;
CREATE TABLE grid (x int, y int, v text) PARTITION BY RANGE (x, y);
CREATE TABLE grid_a PARTITION OF grid FOR VALUES FROM (MINVALUE, MINVALUE) TO (50, 0);
CREATE TABLE grid_b PARTITION OF grid FOR VALUES FROM (50, 0) TO (MAXVALUE, MAXVALUE);
INSERT INTO grid SELECT i % 100, i, 'g' || i FROM generate_series(1, 1000) i;
