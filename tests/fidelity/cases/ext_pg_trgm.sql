-- pg_trgm: a trigram GIN index and a GiST index with an operator-class parameter
CREATE EXTENSION pg_trgm;
CREATE TABLE words (id int PRIMARY KEY, w text NOT NULL);
INSERT INTO words SELECT i, md5(i::text) FROM generate_series(1, 500) i;
CREATE INDEX words_trgm ON words USING gin (w gin_trgm_ops);
CREATE INDEX words_trgm_gist ON words USING gist (w gist_trgm_ops (siglen = 32));
