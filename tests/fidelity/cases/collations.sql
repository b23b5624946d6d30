-- collations: ICU (a nondeterministic one), libc "C", used by columns, an index and a domain
CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE COLLATION de_icu (provider = icu, locale = 'de-DE');
CREATE DOMAIN ci_text AS text COLLATE ci;
CREATE TABLE names (id int PRIMARY KEY, n text COLLATE ci, d text COLLATE de_icu, c text COLLATE "C", x ci_text);
INSERT INTO names SELECT i, 'Name' || i, (ARRAY['Äpfel','apfel','Zebra','öl'])[1 + i % 4], 'c' || i, 'X' || i FROM generate_series(1, 400) i;
CREATE INDEX names_d ON names (d COLLATE "C");
CREATE UNIQUE INDEX names_n ON names (n);
