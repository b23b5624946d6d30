-- range partitioning on a date key, a default partition, a partitioned index and primary key
CREATE TABLE events (id bigint, at date NOT NULL, payload text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_other PARTITION OF events DEFAULT;
CREATE INDEX events_payload ON events (payload);
INSERT INTO events SELECT i, date '2023-06-01' + (i % 1000), 'p' || i FROM generate_series(1, 3000) i;
