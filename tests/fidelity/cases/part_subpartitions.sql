-- sub-partitions: range by year, then list by kind, defaults at both levels, an attached index
CREATE TABLE orders (id int, y int NOT NULL, kind text NOT NULL, amount numeric) PARTITION BY RANGE (y);
CREATE TABLE orders_2024 PARTITION OF orders FOR VALUES FROM (2024) TO (2025) PARTITION BY LIST (kind);
CREATE TABLE orders_2024_web PARTITION OF orders_2024 FOR VALUES IN ('web');
CREATE TABLE orders_2024_rest PARTITION OF orders_2024 DEFAULT;
CREATE TABLE orders_def PARTITION OF orders DEFAULT PARTITION BY HASH (id);
CREATE TABLE orders_def_0 PARTITION OF orders_def FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE orders_def_1 PARTITION OF orders_def FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE INDEX orders_amount ON ONLY orders (amount);
CREATE INDEX orders_2024_amount ON ONLY orders_2024 (amount);
ALTER INDEX orders_amount ATTACH PARTITION orders_2024_amount;
CREATE INDEX orders_2024_web_amount ON orders_2024_web (amount);
ALTER INDEX orders_2024_amount ATTACH PARTITION orders_2024_web_amount;
INSERT INTO orders SELECT i, 2023 + i % 3, (ARRAY['web','shop','phone'])[1 + (i / 3) % 3], i * 1.5 FROM generate_series(1, 3000) i;
