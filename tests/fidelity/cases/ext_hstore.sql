-- hstore (contrib): a column, a GIN index, data
CREATE EXTENSION hstore;
CREATE TABLE props (id int PRIMARY KEY, h hstore NOT NULL);
INSERT INTO props SELECT i, hstore(ARRAY['k' || i, 'v', 'n' || (i % 7), NULL]) FROM generate_series(1, 300) i;
CREATE INDEX props_h ON props USING gin (h);
