-- unlogged tables with indexes, one referencing the other
CREATE UNLOGGED TABLE cache (k text PRIMARY KEY, v jsonb);
CREATE UNLOGGED TABLE cache_hits (k text REFERENCES cache, n int);
INSERT INTO cache SELECT 'k' || i, jsonb_build_object('i', i) FROM generate_series(1, 1000) i;
INSERT INTO cache_hits SELECT 'k' || (1 + i % 1000), i FROM generate_series(1, 2000) i;
