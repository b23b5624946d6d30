-- one 40 MB value (text; longer than the parallel loader's 32 MiB segments) in one row, next to small rows
-- (repetitive, so gzip and TOAST are quick: the size is what matters here)
CREATE TABLE blobs (id int PRIMARY KEY, body text);
INSERT INTO blobs SELECT 1, repeat(md5('fidelity'), 1310720);
INSERT INTO blobs SELECT i, 'small ' || i FROM generate_series(2, 50) i;
