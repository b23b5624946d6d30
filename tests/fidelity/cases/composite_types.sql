-- composite types: nested, used as columns, arrays of them, a table's row type as a column
CREATE TYPE address AS (street text, city text, zip varchar(10));
CREATE TYPE contact AS (name text, home address, phones text[]);
CREATE TABLE people (id int PRIMARY KEY, c contact, past address[]);
CREATE TABLE snapshots (id int, person people);
INSERT INTO people SELECT i, ROW('n' || i, ROW('s ' || i, 'city', lpad(i::text, 5, '0'))::address, ARRAY['+1', NULL])::contact,
  ARRAY[ROW('old', 'x', NULL)::address] FROM generate_series(1, 300) i;
INSERT INTO snapshots SELECT id, p FROM people p WHERE id % 10 = 0;
