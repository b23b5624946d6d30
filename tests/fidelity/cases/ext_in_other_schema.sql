-- extensions installed into a non-public schema (ltree, cube + earthdistance needs cube)
CREATE SCHEMA ext;
CREATE EXTENSION ltree WITH SCHEMA ext;
CREATE EXTENSION cube WITH SCHEMA ext;
CREATE TABLE tree (id int PRIMARY KEY, path ext.ltree NOT NULL, box ext.cube);
INSERT INTO tree SELECT i, ('top.n' || (i % 10) || '.leaf' || i)::ext.ltree, ext.cube(i, i + 1) FROM generate_series(1, 200) i;
CREATE INDEX tree_path ON tree USING gist (path ext.gist_ltree_ops);
