-- hash partitioning on an ENUM key: the enum's oids (so the hashes) change on reload, so pg_dump
-- 15.18 loads such tables through the partition root and rows may land in other partitions
-- than in the source. Value k has 10 * 2^k rows, so per-partition counts name the values they hold.
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'ecstatic', 'bored', 'calm', 'angry', 'sleepy');
CREATE TABLE moods (id int, m mood NOT NULL, note text) PARTITION BY HASH (m);
CREATE TABLE moods_0 PARTITION OF moods FOR VALUES WITH (MODULUS 4, REMAINDER 0);
CREATE TABLE moods_1 PARTITION OF moods FOR VALUES WITH (MODULUS 4, REMAINDER 1);
CREATE TABLE moods_2 PARTITION OF moods FOR VALUES WITH (MODULUS 4, REMAINDER 2);
CREATE TABLE moods_3 PARTITION OF moods FOR VALUES WITH (MODULUS 4, REMAINDER 3);
INSERT INTO moods SELECT row_number() OVER (), v, 'n' || i
  FROM unnest(enum_range(NULL::mood)) WITH ORDINALITY AS e(v, k), generate_series(1, 10 * (1 << (k::int - 1))) i;
CREATE INDEX moods_id ON moods (id);
