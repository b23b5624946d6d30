-- one 40 MB value (text) in one row, next to small rows
CREATE TABLE blobs (id int PRIMARY KEY, body text);
INSERT INTO blobs SELECT 1, string_agg(md5(i::text), '') FROM generate_series(1, 1310720) i;
INSERT INTO blobs SELECT i, 'small ' || i FROM generate_series(2, 50) i;
