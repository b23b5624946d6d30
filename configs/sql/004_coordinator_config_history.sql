-- 004_coordinator_config_history: audit trail of coordinator_config, written by a trigger on UPDATE and DELETE

CREATE TABLE coordinator_config_history (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- UPDATE records point at their row and go with it (CASCADE). DELETE records
    -- have config_id NULL (the id is in old_row), so they outlive the deleted row
    -- instead of being removed by the cascade of the very DELETE they describe.
    config_id         bigint      REFERENCES coordinator_config (id) ON DELETE CASCADE,
    coordinator_name  text        NOT NULL,
    config_key        text        NOT NULL,
    operation         text        NOT NULL,
    old_value         jsonb       NOT NULL,
    new_value         jsonb,
    old_version       integer     NOT NULL,
    old_row           jsonb       NOT NULL,
    changed_at        timestamptz NOT NULL DEFAULT now(),
    changed_by        bigint      REFERENCES users (id) ON DELETE SET NULL,
    db_user           text        NOT NULL DEFAULT current_user,
    CONSTRAINT coordinator_config_history_operation_known CHECK (operation IN ('UPDATE', 'DELETE')),
    CONSTRAINT coordinator_config_history_new_value_on_update
        CHECK ((operation = 'UPDATE') = (new_value IS NOT NULL)),
    CONSTRAINT coordinator_config_history_config_id_on_update
        CHECK ((operation = 'UPDATE') = (config_id IS NOT NULL))
);

CREATE INDEX coordinator_config_history_config_id_idx
    ON coordinator_config_history (config_id, changed_at);
CREATE INDEX coordinator_config_history_changed_at_idx
    ON coordinator_config_history (changed_at);

-- Writes the old row of coordinator_config into the history.
-- UPDATE: only when the value, type, description or secrecy changed (a bare
--         "touch" of updated_by/updated_at is not a configuration change);
--         changed_at/changed_by come from the new row.
-- DELETE: always; changed_by comes from the session setting bigskies.user_id
--         (SET LOCAL bigskies.user_id = '42') when the application set it.
CREATE FUNCTION coordinator_config_audit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF (OLD.config_value, OLD.config_type, OLD.description, OLD.is_secret)
           IS NOT DISTINCT FROM
           (NEW.config_value, NEW.config_type, NEW.description, NEW.is_secret) THEN
            RETURN NULL;
        END IF;
        INSERT INTO coordinator_config_history
            (config_id, coordinator_name, config_key, operation, old_value, new_value,
             old_version, old_row, changed_at, changed_by)
        VALUES
            (OLD.id, OLD.coordinator_name, OLD.config_key, 'UPDATE', OLD.config_value,
             NEW.config_value, OLD.version, to_jsonb(OLD), NEW.updated_at, NEW.updated_by);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO coordinator_config_history
            (config_id, coordinator_name, config_key, operation, old_value, new_value,
             old_version, old_row, changed_at, changed_by)
        VALUES
            (NULL, OLD.coordinator_name, OLD.config_key, 'DELETE', OLD.config_value,
             NULL, OLD.version, to_jsonb(OLD), now(),
             nullif(current_setting('bigskies.user_id', true), '')::bigint);
    END IF;
    RETURN NULL;  -- AFTER trigger: the return value is ignored
END;
$$;

CREATE TRIGGER coordinator_config_audit
    AFTER UPDATE OR DELETE ON coordinator_config
    FOR EACH ROW EXECUTE FUNCTION coordinator_config_audit();

COMMENT ON TABLE coordinator_config_history IS 'Every change to coordinator_config (old row, new value, who, when), written by trigger coordinator_config_audit';
COMMENT ON COLUMN coordinator_config_history.config_id IS 'The changed row (UPDATE); NULL for DELETE records, whose row is gone (its id is old_row->>''id'')';
