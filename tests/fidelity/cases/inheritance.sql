-- table inheritance: extra child columns, multiple inheritance, a NO INHERIT check, rows in parents and children
CREATE TABLE vehicles (id int, name text, CHECK (id > 0));
CREATE TABLE cars (doors int) INHERITS (vehicles);
CREATE TABLE boats (draft numeric, CHECK (draft < 20) NO INHERIT) INHERITS (vehicles);
CREATE TABLE tagged (tag text);
CREATE TABLE amphibians (wheels int) INHERITS (boats, tagged);
INSERT INTO vehicles SELECT i, 'v' || i FROM generate_series(1, 100) i;
INSERT INTO cars SELECT i, 'c' || i, i % 5 FROM generate_series(101, 300) i;
INSERT INTO boats SELECT i, 'b' || i, i % 10 FROM generate_series(301, 400) i;
INSERT INTO amphibians SELECT i, 'a' || i, 1, 'amph', 4 FROM generate_series(401, 450) i;
