-- 005_observations: observation log written by the telescope/camera coordinators, with a per-night summary view

CREATE TABLE observations (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    observer_id    bigint           NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    target_name    text             NOT NULL,
    ra_deg         double precision NOT NULL,
    dec_deg        double precision NOT NULL,
    filter         text,
    exposure_s     numeric(8,3)     NOT NULL,
    frame_count    integer          NOT NULL DEFAULT 1,
    airmass        real,
    seeing_arcsec  real,
    magnitude      real,
    status         text             NOT NULL DEFAULT 'planned',
    observed_at    timestamptz      NOT NULL,
    tags           text[]           NOT NULL DEFAULT '{}',
    frame_sha256   bytea,
    metadata       jsonb            NOT NULL DEFAULT '{}'::jsonb,
    notes          text,
    created_at     timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT observations_ra_range CHECK (ra_deg >= 0 AND ra_deg < 360),
    CONSTRAINT observations_dec_range CHECK (dec_deg BETWEEN -90 AND 90),
    CONSTRAINT observations_filter_known
        CHECK (filter IN ('L', 'R', 'G', 'B', 'Ha', 'OIII', 'SII', 'clear')),
    CONSTRAINT observations_exposure_positive CHECK (exposure_s > 0),
    CONSTRAINT observations_frame_count_positive CHECK (frame_count > 0),
    CONSTRAINT observations_status_known
        CHECK (status IN ('planned', 'running', 'completed', 'failed', 'aborted')),
    CONSTRAINT observations_frame_sha256_length
        CHECK (frame_sha256 IS NULL OR octet_length(frame_sha256) = 32)
);

CREATE INDEX observations_observer_id_idx ON observations (observer_id);
CREATE INDEX observations_observed_at_idx ON observations (observed_at);
CREATE INDEX observations_target_name_idx ON observations (lower(target_name));
CREATE INDEX observations_metadata_idx ON observations USING gin (metadata jsonb_path_ops);

-- One row per observer and night (UTC date), completed observations only.
CREATE VIEW observation_nights AS
SELECT o.observer_id,
       u.username,
       (o.observed_at AT TIME ZONE 'UTC')::date AS night,
       count(*)                                 AS observations,
       sum(o.exposure_s * o.frame_count)        AS total_exposure_s,
       array_agg(DISTINCT o.target_name ORDER BY o.target_name) AS targets
FROM observations o
JOIN users u ON u.id = o.observer_id
WHERE o.status = 'completed'
GROUP BY o.observer_id, u.username, (o.observed_at AT TIME ZONE 'UTC')::date;

COMMENT ON TABLE observations IS 'One row per exposure sequence taken (or planned) through the telescope coordinator';
COMMENT ON COLUMN observations.frame_sha256 IS 'SHA-256 of the stacked FITS frame (32 bytes); NULL until the frame is stored';
COMMENT ON VIEW observation_nights IS 'Completed observations per observer and UTC night';
