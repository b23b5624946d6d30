-- 001_roles: access roles (admin, operator, observer, ...) and the shared updated_at trigger function

-- Shared by every table that has an updated_at column: stamps the row on UPDATE
-- unless the statement set updated_at itself (imports and replays keep their times).
CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION set_updated_at() IS
    'BEFORE UPDATE trigger: sets updated_at to now() unless the UPDATE set it explicitly';

CREATE TABLE roles (
    id           integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text        NOT NULL,
    description  text,
    permissions  jsonb       NOT NULL DEFAULT '[]'::jsonb,
    is_system    boolean     NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT roles_name_key UNIQUE (name),
    CONSTRAINT roles_name_format CHECK (name ~ '^[a-z][a-z0-9-]*$'),
    CONSTRAINT roles_permissions_is_array CHECK (jsonb_typeof(permissions) = 'array')
);

CREATE TRIGGER roles_set_updated_at
    BEFORE UPDATE ON roles
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

COMMENT ON TABLE roles IS 'Named sets of permissions granted to users through user_roles';
COMMENT ON COLUMN roles.permissions IS 'JSON array of "resource:action" strings, e.g. ["telescope:control"]';
COMMENT ON COLUMN roles.is_system IS 'Built-in role that the bootstrap coordinator recreates; not deletable from the UI';
