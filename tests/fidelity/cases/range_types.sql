-- built-in and user-defined range types, multiranges, an exclusion constraint (btree_gist)
CREATE EXTENSION btree_gist;
CREATE TYPE floatrange AS RANGE (subtype = float8, subtype_diff = float8mi);
CREATE TABLE bookings (room int, during tstzrange, EXCLUDE USING gist (room WITH =, during WITH &&));
CREATE TABLE measures (id int, band floatrange, spans int4multirange, days daterange);
INSERT INTO bookings SELECT i % 10, tstzrange(timestamptz '2024-01-01 00:00+00' + (i || ' hours')::interval,
  timestamptz '2024-01-01 00:00+00' + ((i + 10) || ' hours')::interval) FROM generate_series(0, 999, 10) i;
INSERT INTO measures SELECT i, floatrange(i, i + 0.5, '[)'), int4multirange(int4range(i, i + 2), int4range(i + 5, NULL)),
  daterange(date '2024-01-01', NULL) FROM generate_series(1, 300) i;
