-- identifiers that need quoting: mixed case, spaces, quotes, non-ASCII, reserved words, 63 bytes
CREATE SCHEMA "Mixed Case ""Schema""";
CREATE TABLE "Mixed Case ""Schema""".">Table with spaces<" ("Column" int, "select" text, "naïve ünïcødé" text, "a""b" int);
CREATE TABLE "ÜberTabelle_日本語" (id int PRIMARY KEY, "ç" text);
CREATE TABLE "t_63_bytes_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" ("c_63_bytes_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb" int);
CREATE INDEX "idx ""quoted""" ON "Mixed Case ""Schema""".">Table with spaces<" ("Column");
CREATE SEQUENCE "Mixed Case ""Schema"""."Seq.With.Dots";
SELECT setval('"Mixed Case ""Schema"""."Seq.With.Dots"', 12);
CREATE FUNCTION "Mixed Case ""Schema"""."Fn ""x"""(int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT $1 + 1 $$;
CREATE VIEW "View; DROP TABLE x;--" AS SELECT * FROM "ÜberTabelle_日本語";
INSERT INTO "Mixed Case ""Schema""".">Table with spaces<" SELECT i, 'select', 'ü' || i, i FROM generate_series(1, 100) i;
INSERT INTO "ÜberTabelle_日本語" SELECT i, '日本' || i FROM generate_series(1, 100) i;
INSERT INTO "t_63_bytes_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" SELECT generate_series(1, 50);
COMMENT ON TABLE "ÜberTabelle_日本語" IS 'kommentar: ''quoted'' "double" ünïcødé';
