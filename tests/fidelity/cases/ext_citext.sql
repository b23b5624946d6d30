-- citext: a case-insensitive unique key
CREATE EXTENSION citext;
CREATE TABLE logins (email citext PRIMARY KEY, n int);
INSERT INTO logins SELECT 'User' || i || '@Example.ORG', i FROM generate_series(1, 200) i;
