-- list partitioning on a text key, with NULL in a list and a default partition
CREATE TABLE stock (sku int, region text, qty int) PARTITION BY LIST (region);
CREATE TABLE stock_eu PARTITION OF stock FOR VALUES IN ('de', 'fr', 'it');
CREATE TABLE stock_us PARTITION OF stock FOR VALUES IN ('us', NULL);
CREATE TABLE stock_rest PARTITION OF stock DEFAULT;
INSERT INTO stock SELECT i, (ARRAY['de','fr','it','us',NULL,'jp','br'])[1 + i % 7], i FROM generate_series(1, 2000) i;
CREATE UNIQUE INDEX stock_key ON stock (sku, region);
