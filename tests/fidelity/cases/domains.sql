-- domains with CHECK (calling a function), DEFAULT and NOT NULL, a domain over a domain, a domain array
CREATE FUNCTION is_slug(t text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT t ~ '^[a-z0-9-]+$' $$;
CREATE DOMAIN slug AS text NOT NULL CHECK (is_slug(VALUE));
CREATE DOMAIN short_slug AS slug CHECK (length(VALUE) <= 12) DEFAULT 'none';
CREATE DOMAIN percent AS numeric(5,2) CONSTRAINT pct_range CHECK (VALUE BETWEEN 0 AND 100);
CREATE TABLE pages (id int PRIMARY KEY, s slug, ss short_slug, p percent, tags slug[]);
INSERT INTO pages SELECT i, 'page-' || i, 's' || (i % 100), (i % 100) + 0.25, ARRAY['a', 'b-' || i]::slug[] FROM generate_series(1, 500) i;
