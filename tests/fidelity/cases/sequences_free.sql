-- free-standing sequences: never used (is_called false), setval(..., false), cycling, descending, cached, in another schema
CREATE SCHEMA counters;
CREATE SEQUENCE counters.fresh;
CREATE SEQUENCE counters.set_not_called START 10;
SELECT setval('counters.set_not_called', 42, false);
CREATE SEQUENCE counters.cycling MINVALUE 1 MAXVALUE 5 CYCLE;
SELECT nextval('counters.cycling') FROM generate_series(1, 7);
CREATE SEQUENCE counters.down INCREMENT -5 MINVALUE -100 MAXVALUE 0 START 0;
SELECT nextval('counters.down') FROM generate_series(1, 3);
CREATE SEQUENCE counters.cached AS smallint CACHE 20;
SELECT nextval('counters.cached');
CREATE UNLOGGED SEQUENCE counters.unlogged_seq;
SELECT nextval('counters.unlogged_seq');
