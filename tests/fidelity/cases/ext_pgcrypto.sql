-- pgcrypto: digests stored and used in a CHECK constraint
CREATE EXTENSION pgcrypto;
CREATE TABLE secrets (id int PRIMARY KEY, plain text, digest bytea NOT NULL,
                      CHECK (digest = public.digest(plain, 'sha256')));
INSERT INTO secrets SELECT i, 'secret ' || i, digest('secret ' || i, 'sha256') FROM generate_series(1, 200) i;
