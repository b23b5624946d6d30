-- enums whose sort order differs from their oid order (ADD VALUE BEFORE/AFTER), renamed values
CREATE TYPE level AS ENUM ('low', 'high');
ALTER TYPE level ADD VALUE 'medium' BEFORE 'high';
ALTER TYPE level ADD VALUE 'critical' AFTER 'high';
ALTER TYPE level ADD VALUE 'trivial' BEFORE 'low';
ALTER TYPE level RENAME VALUE 'critical' TO 'urgent';
CREATE TABLE tasks (id int PRIMARY KEY, lvl level NOT NULL, lvls level[]);
INSERT INTO tasks SELECT i, (enum_range(NULL::level))[1 + i % 5], enum_range(NULL::level, 'medium') FROM generate_series(1, 500) i;
CREATE INDEX tasks_lvl ON tasks (lvl);
