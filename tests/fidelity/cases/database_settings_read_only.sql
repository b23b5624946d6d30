-- a database whose settings block writes (default_transaction_read_only = on): the data must
-- still load and the setting must be back on the restored database
CREATE TABLE frozen (id int PRIMARY KEY, v text);
INSERT INTO frozen SELECT i, 'v' || i FROM generate_series(1, 500) i;
CREATE SEQUENCE frozen_seq;
SELECT setval('frozen_seq', 77);
ALTER DATABASE :"dbname" SET default_transaction_read_only = on;
ALTER DATABASE :"dbname" SET search_path = "$user", public;
