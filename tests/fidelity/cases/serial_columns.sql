-- serial and bigserial columns (sequences OWNED BY their columns), after some deletes and a setval
CREATE TABLE notes (id serial PRIMARY KEY, big bigserial, body text);
INSERT INTO notes (body) SELECT 'b' || i FROM generate_series(1, 300) i;
DELETE FROM notes WHERE id > 250;
SELECT setval('notes_big_seq', 5000);
