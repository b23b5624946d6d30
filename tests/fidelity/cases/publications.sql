-- publications: for tables (with a row filter and a column list), for a schema, for all tables, owned by a non-superuser
CREATE SCHEMA pubs;
CREATE TABLE pubs.orders (id int PRIMARY KEY, total numeric, secret text);
CREATE TABLE customers (id int PRIMARY KEY, name text);
INSERT INTO pubs.orders SELECT i, i, 's' || i FROM generate_series(1, 100) i;
INSERT INTO customers SELECT i, 'n' || i FROM generate_series(1, 100) i;
CREATE PUBLICATION fid_pub_filtered FOR TABLE pubs.orders (id, total) WHERE (total > 10), customers WITH (publish = 'insert, update');
CREATE PUBLICATION fid_pub_schema FOR TABLES IN SCHEMA pubs;
CREATE PUBLICATION fid_pub_all FOR ALL TABLES WITH (publish_via_partition_root = true);
ALTER PUBLICATION fid_pub_schema OWNER TO fid_owner;
COMMENT ON PUBLICATION fid_pub_all IS 'everything';
