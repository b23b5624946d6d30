-- large objects: owned by a non-superuser, granted to a reader, commented, empty and multi-page
SELECT lo_from_bytea(424242, convert_to(repeat('large object content ', 2000), 'UTF8'));
SELECT lo_from_bytea(424243, ''::bytea);
SELECT lo_from_bytea(424244, decode(repeat('00ff', 10000), 'hex'));
ALTER LARGE OBJECT 424242 OWNER TO fid_owner;
ALTER LARGE OBJECT 424244 OWNER TO fid_owner;
GRANT SELECT ON LARGE OBJECT 424242 TO fid_reader;
GRANT SELECT, UPDATE ON LARGE OBJECT 424244 TO fid_writer;
COMMENT ON LARGE OBJECT 424243 IS 'empty on purpose';
CREATE TABLE files (name text, blob oid);
INSERT INTO files VALUES ('a', 424242), ('b', 424243), ('c', 424244);
