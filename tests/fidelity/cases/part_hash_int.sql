-- hash partitioning on an integer key (modulus 4)
CREATE TABLE readings (sensor int NOT NULL, v double precision) PARTITION BY HASH (sensor);
CREATE TABLE readings_0 PARTITION OF readings FOR VALUES WITH (MODULUS 4, REMAINDER 0);
CREATE TABLE readings_1 PARTITION OF readings FOR VALUES WITH (MODULUS 4, REMAINDER 1);
CREATE TABLE readings_2 PARTITION OF readings FOR VALUES WITH (MODULUS 4, REMAINDER 2);
CREATE TABLE readings_3 PARTITION OF readings FOR VALUES WITH (MODULUS 4, REMAINDER 3);
INSERT INTO readings SELECT i, i / 3.0 FROM generate_series(1, 4000) i;
