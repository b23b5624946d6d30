-- hash partitioning on an ENUM key: the enum's oids (so the hashes) change on reload, so pg_dump
-- 15.18 loads such tables through the partition root and rows may land in other partitions
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'ecstatic');
CREATE TABLE moods (id int, m mood NOT NULL, note text) PARTITION BY HASH (m);
CREATE TABLE moods_0 PARTITION OF moods FOR VALUES WITH (MODULUS 3, REMAINDER 0);
CREATE TABLE moods_1 PARTITION OF moods FOR VALUES WITH (MODULUS 3, REMAINDER 1);
CREATE TABLE moods_2 PARTITION OF moods FOR VALUES WITH (MODULUS 3, REMAINDER 2);
INSERT INTO moods SELECT i, (enum_range(NULL::mood))[1 + i % 4], 'n' || i FROM generate_series(1, 3000) i;
CREATE INDEX moods_id ON moods (id);
