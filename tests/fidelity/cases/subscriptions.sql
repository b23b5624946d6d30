-- a subscription created with connect = false (so disabled, no slot): pg_dump dumps it with connect = false
CREATE TABLE replicated (id int PRIMARY KEY, v text);
INSERT INTO replicated SELECT i, 'v' || i FROM generate_series(1, 100) i;
CREATE SUBSCRIPTION fid_sub CONNECTION 'host=127.0.0.1 port=1 dbname=nowhere user=nobody connect_timeout=1'
  PUBLICATION fid_pub_a, fid_pub_b WITH (connect = false, slot_name = NONE, binary = true, streaming = on);
COMMENT ON SUBSCRIPTION fid_sub IS 'never connects (test)';
