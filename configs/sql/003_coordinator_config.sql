-- 003_coordinator_config: runtime configuration of every coordinator, one typed JSON value per key

CREATE TABLE coordinator_config (
    id                bigserial   PRIMARY KEY,
    coordinator_name  text        NOT NULL,
    config_key        text        NOT NULL,
    config_value      jsonb       NOT NULL,
    config_type       text        NOT NULL,
    description       text,
    is_secret         boolean     NOT NULL DEFAULT false,
    version           integer     NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    updated_by        bigint      REFERENCES users (id) ON DELETE SET NULL,
    CONSTRAINT coordinator_config_coordinator_key_key UNIQUE (coordinator_name, config_key),
    CONSTRAINT coordinator_config_name_format CHECK (coordinator_name ~ '^[a-z][a-z0-9-]*$'),
    CONSTRAINT coordinator_config_key_format CHECK (config_key ~ '^[a-z][a-z0-9_.]*$'),
    CONSTRAINT coordinator_config_type_known
        CHECK (config_type IN ('string', 'integer', 'float', 'boolean', 'duration', 'object', 'array')),
    CONSTRAINT coordinator_config_version_positive CHECK (version > 0)
);

CREATE INDEX coordinator_config_updated_at_idx ON coordinator_config (updated_at);
CREATE INDEX coordinator_config_updated_by_idx ON coordinator_config (updated_by);

-- Every real change bumps version; the row's updated_at is stamped by set_updated_at().
CREATE FUNCTION coordinator_config_bump_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END;
$$;

CREATE TRIGGER coordinator_config_set_updated_at
    BEFORE UPDATE ON coordinator_config
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TRIGGER coordinator_config_bump_version
    BEFORE UPDATE ON coordinator_config
    FOR EACH ROW
    WHEN (OLD.config_value IS DISTINCT FROM NEW.config_value
          OR OLD.config_type IS DISTINCT FROM NEW.config_type)
    EXECUTE FUNCTION coordinator_config_bump_version();

COMMENT ON TABLE coordinator_config IS 'Runtime configuration for all BIG SKIES coordinators (bootstrap, datastore, telescope, ...)';
COMMENT ON COLUMN coordinator_config.config_value IS 'The value as JSON; JSON null means "unset, use the built-in default"';
COMMENT ON COLUMN coordinator_config.config_type IS 'Type hint for parsing config_value';
COMMENT ON COLUMN coordinator_config.is_secret IS 'Sensitive value (passwords, keys): never logged or displayed';
