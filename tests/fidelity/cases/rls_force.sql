-- row-level security, ENABLED and FORCEd, policies per role, table owned by a non-superuser
CREATE TABLE docs (id int PRIMARY KEY, owner_name name, body text);
ALTER TABLE docs OWNER TO fid_owner;
ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
ALTER TABLE docs FORCE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON docs USING (owner_name = current_user);
CREATE POLICY readers_all ON docs AS PERMISSIVE FOR SELECT TO fid_reader USING (true);
CREATE POLICY no_secret ON docs AS RESTRICTIVE FOR SELECT TO fid_reader USING (body NOT LIKE 'secret%');
GRANT SELECT ON docs TO fid_reader;
INSERT INTO docs SELECT i, (ARRAY['fid_owner','fid_reader'])[1 + i % 2], CASE WHEN i % 5 = 0 THEN 'secret ' ELSE 'doc ' END || i
  FROM generate_series(1, 400) i;
CREATE TABLE only_enabled (id int);
ALTER TABLE only_enabled ENABLE ROW LEVEL SECURITY;
INSERT INTO only_enabled SELECT generate_series(1, 10);
