"""Realistic sample data for the BIG SKIES schema, as one SQL script.

The schema itself (``configs/sql/`` and the bootstrap script that applies it) is
:mod:`bigskies_ops.dev.schema`. Callers (the demo, the test suite, benchmarks) feed
the text to ``psql`` after the bootstrap::

    psql -v ON_ERROR_STOP=1 -d bigskies <<< "$(sample_data_sql(scale=1))"

Everything here is a pure function of ``scale``; it never connects to a database.
Literals are quoted with :class:`psycopg.sql.Literal` (no connection needed).
"""
from __future__ import annotations

import json
import re
from typing import Any

from bigskies_ops.dev.schema import sql_literal

__all__ = [
    "SAMPLE_ANCHOR",
    "sample_data_sql",
]

#: Every timestamp in the sample data is relative to this instant (UTC), not to
#: now(), so two loads of the same scale hold the same rows.
SAMPLE_ANCHOR = "2026-01-16 22:45:00+00"


def _jsonb(value: Any) -> str:
    """A jsonb literal for a Python value (dicts, lists, str, numbers, bool, None -> JSON null)."""
    return sql_literal(json.dumps(value, ensure_ascii=False)) + "::jsonb"


def _text_array(values: list[str | None]) -> str:
    return "ARRAY[" + ", ".join(sql_literal(v) for v in values) + "]::text[]"


def _fill(template: str, **values: Any) -> str:
    """Replace ``@NAME@`` tokens in ``template``; a token left over is a bug (ValueError)."""
    out = template
    for key, value in values.items():
        out = out.replace(f"@{key}@", str(value))
    leftover = re.search(r"@[A-Z][A-Z0-9_]*@", out)
    if leftover:
        raise ValueError(f"unfilled token {leftover.group(0)} in sample SQL template")
    return out


# --------------------------------------------------------------------------- sample data

#: Coordinators of the sample installation (compose service names).
COORDINATORS = ("bootstrap", "datastore", "telescope", "camera", "mount", "focuser",
                "filter-wheel", "guider", "plate-solver", "scheduler", "weather", "message")

ROLES = [  # name, description, permissions, is_system
    ("admin", "Full system administrator", ["*"], True),
    ("operator", "Telescope operator: slews, images, parks",
     ["telescope:read", "telescope:control", "camera:control", "plugin:read"], True),
    ("observer", "Read-only observer", ["telescope:read", "observations:read"], True),
    ("developer", "Plugin developer", ["plugin:read", "plugin:write", "plugin:install"], False),
    ("scheduler", "Plans nights and queues targets",
     ["schedule:read", "schedule:write", "observations:read"], False),
    ("data-manager", "Curates FITS frames and backups",
     ["observations:read", "observations:write", "backup:run"], False),
    ("guest", "Public outreach account, sees the live view only", ["liveview:read"], False),
    ("auditor", "Reads configuration history and logs", ["config:read", "audit:read"], False),
    ("service", "Coordinator service account", ["mqtt:publish", "mqtt:subscribe", "config:read"], True),
    ("plugin-maintainer", "Publishes plugins to the site registry",
     ["plugin:read", "plugin:write", "plugin:publish"], False),
]

#: Users with awkward values so that dumps exercise quoting and escaping:
#: (username, email, display_name, preferences)
SPECIAL_USERS = [
    ("siobhan.obrien", "siobhan.obrien@bigskies.local", "Siobhán O'Brien",
     {"theme": "dark", "signature": "Sláinte! -- S. O'Brien"}),
    ("edwin.hubble", "Edwin.Hubble@Observatory.example", 'Dr. "Edwin" Hubble',
     {"theme": "light", "quote": 'He said "redshift" twice'}),
    ("windows.user", "windows.user@bigskies.local", "C:\\Users\\astro\\",
     {"fits_dir": "C:\\Data\\FITS\\", "regex": "^M\\d+$"}),
    ("multi.line", "multi.line@bigskies.local", "first line\nsecond line\r\n\tindented",
     {"motd": "clear skies\nno clouds"}),
    ("li.bai", "li.bai@bigskies.local", "李白 🔭 Ωmega–Centauri",
     {"theme": "dark", "language": "zh-Hans", "greeting": "晴朗的夜空 ✨"}),
    ("copy.terminator", "copy.terminator@bigskies.local", "\\.",
     {"note": "a display name of backslash-dot ends a COPY block if unescaped"}),
    ("empty.name", "empty.name@bigskies.local", "",
     {"note": "empty string, not NULL"}),
    ("null.name", "null.name@bigskies.local", None, {}),
]

#: Keys every coordinator has: (key, type, SQL expression for the value, description, is_secret).
#: The expressions may use ``c.name`` (the coordinator) and random().
COMMON_KEYS = [
    ("broker_url", "string", _jsonb("mqtt-broker"), "MQTT broker hostname or IP address", False),
    ("broker_port", "integer", "to_jsonb(1883)", "MQTT broker port", False),
    ("log_level", "string",
     "to_jsonb(CASE WHEN c.name IN ('camera', 'guider', 'plate-solver') THEN 'debug' ELSE 'info' END)",
     "Log verbosity", False),
    ("health_check_interval", "integer", "to_jsonb(10 + floor(random() * 50)::int)",
     "Health check interval in seconds", False),
    ("metrics_enabled", "boolean", "to_jsonb(random() < 0.7)", "Expose Prometheus metrics", False),
    ("max_reconnect_attempts", "integer", "to_jsonb(3 + floor(random() * 5)::int)",
     "MQTT reconnection attempts before the coordinator reports unhealthy", False),
    ("request_timeout", "duration", _jsonb("30s"), "Timeout for MQTT request/response", False),
    ("heartbeat_interval", "integer", "to_jsonb(15)", "Heartbeat period in seconds", False),
    ("retry_backoff_factor", "float", "to_jsonb(round((1.2 + random())::numeric, 2))",
     "Exponential backoff factor between retries", False),
    ("shutdown_grace_period", "duration", _jsonb("10s"), "Time allowed for a clean shutdown", False),
    ("database_url", "string", _jsonb("postgresql://bigskies@postgres:5432/bigskies?sslmode=disable"),
     "PostgreSQL connection string", True),
    ("feature_flags", "object", _jsonb({"experimental_ui": False, "mqtt_v5": True}),
     None, False),
]

_LARGE_CATALOG = """jsonb_build_object(
        'name', 'BIG SKIES bright-star catalogue', 'epoch', 'J2000', 'source', 'synthetic',
        'stars', (SELECT jsonb_agg(jsonb_build_object(
                      'hip', i,
                      'ra_deg', round((random() * 360)::numeric, 5),
                      'dec_deg', round((random() * 180 - 90)::numeric, 5),
                      'vmag', round((random() * 9 - 1.5)::numeric, 2),
                      'name', CASE WHEN i % 250 = 0 THEN 'Star «' || i || '» "named"' END)
                      ORDER BY i)
                  FROM generate_series(1, 5000) AS i))"""

_TARGET_LIST = """(SELECT jsonb_agg(jsonb_build_object(
                  'target', 'NGC ' || (1 + floor(random() * 7840))::int,
                  'priority', 1 + floor(random() * 5)::int,
                  'filters', '["L","R","G","B"]'::jsonb) ORDER BY i)
              FROM generate_series(1, 200) AS i)"""

#: Coordinator-specific keys: (coordinator, key, type, SQL value expression, description, is_secret)
SPECIFIC_KEYS = [
    ("bootstrap", "migrations_dir", "string", _jsonb("/app/configs/sql"), "Folder of numbered migrations", False),
    ("bootstrap", "admin_email", "string", _jsonb("admin@bigskies.local"), "First administrator's email", False),
    ("bootstrap", "jwt_secret", "string", _jsonb("change-me-in-production"), "JWT signing secret", True),
    ("bootstrap", "token_duration", "integer", "to_jsonb(3600)", "JWT validity in seconds", False),
    ("bootstrap", "migration_lock_timeout", "duration", _jsonb("60s"), "Wait for the migration lock", False),
    ("datastore", "max_connections", "integer", "to_jsonb(20)", "Maximum pooled connections", False),
    ("datastore", "min_connections", "integer", "to_jsonb(5)", "Minimum pooled connections", False),
    ("datastore", "statement_timeout_ms", "integer", "to_jsonb(30000)", "Per-statement timeout", False),
    ("datastore", "backup_schedule", "string", _jsonb("0 2 * * *"), "Cron line of the daily backup", False),
    ("datastore", "backup_retention", "object", _jsonb({"daily": 7, "weekly": 4, "monthly": 12}),
     "Backups kept per tier (GFS)", False),
    ("telescope", "discovery_port", "integer", "to_jsonb(32227)", "ASCOM Alpaca discovery port", False),
    ("telescope", "slew_rate_deg_s", "float", "to_jsonb(4.0)", "Slew rate in degrees per second", False),
    ("telescope", "tracking_rate", "string", _jsonb("sidereal"), "Default tracking rate", False),
    ("telescope", "park_position", "object", _jsonb({"alt_deg": 0.0, "az_deg": 180.0}), "Park position", False),
    ("telescope", "horizon_limits", "array", _jsonb([[0, 15], [90, 12.5], [180, 20], [270, 10]]),
     "Minimum altitude per azimuth (degrees)", False),
    ("telescope", "site", "object",
     _jsonb({"name": "Observatorio del Roque de los Muchachos – La Palma", "latitude": 28.7606,
             "longitude": -17.8816, "elevation_m": 2396, "timezone": "Atlantic/Canary"}),
     "Observatory site", False),
    ("telescope", "meridian_flip_enabled", "boolean", "to_jsonb(true)", "Flip at the meridian", False),
    ("camera", "default_gain", "integer", "to_jsonb(100)", "Sensor gain", False),
    ("camera", "default_offset", "integer", "to_jsonb(50)", "Sensor offset (ADU)", False),
    ("camera", "cooler_setpoint_c", "float", "to_jsonb(-10.0)", "Cooler target temperature (°C)", False),
    ("camera", "binning", "integer", "to_jsonb(1)", "Default binning", False),
    ("camera", "readout_mode", "integer", "to_jsonb(0)", "Sensor readout mode", False),
    ("camera", "fits_output_dir", "string", _jsonb("D:\\BigSkies\\FITS\\raw\\"),
     "Where frames are written (Windows capture PC)", False),
    ("camera", "fits_header_template", "string",
     _jsonb("OBSERVER= '{observer}'\nTELESCOP= 'BIG SKIES 0.4m'\nCOMMENT  \"quoted\" and \\ backslash\tTAB"),
     "Extra FITS header cards, one per line", False),
    ("camera", "legacy_driver", "string", _jsonb("asi_legacy"), "Deprecated: pre-2025 driver", False),
    ("mount", "guide_rate", "float", "to_jsonb(0.5)", "Guide rate (x sidereal)", False),
    ("mount", "max_slew_alt_deg", "float", "to_jsonb(85.0)", "Highest altitude for slews", False),
    ("mount", "pier_side_tolerance_deg", "float", "to_jsonb(2.5)", "Pier-side hysteresis", False),
    ("mount", "tracking_timeout", "integer", "to_jsonb(600)", "Stop tracking after idle seconds", False),
    ("focuser", "backlash_steps", "integer", "to_jsonb(40)", "Backlash compensation", False),
    ("focuser", "temperature_coefficient", "float", "to_jsonb(-2.3)", "Steps per °C", False),
    ("focuser", "max_position", "integer", "to_jsonb(60000)", "Travel limit in steps", False),
    ("focuser", "autofocus_step", "integer", "to_jsonb(200)", "Autofocus step size", False),
    ("filter-wheel", "filters", "array", _jsonb(["L", "R", "G", "B", "Ha", "OIII", "SII"]), "Slots", False),
    ("filter-wheel", "filter_offsets", "object",
     _jsonb({"L": 0, "R": 12, "G": 9, "B": 15, "Ha": -40, "OIII": -35, "SII": -42}),
     "Focus offsets per filter", False),
    ("filter-wheel", "settle_time_ms", "integer", "to_jsonb(500)", "Wait after a filter change", False),
    ("guider", "exposure_s", "float", "to_jsonb(2.0)", "Guide exposure", False),
    ("guider", "aggressiveness", "integer", "to_jsonb(70)", "RA aggressiveness (%)", False),
    ("guider", "dither_pixels", "float", "to_jsonb(3.0)", "Dither amplitude", False),
    ("guider", "dither_pattern", "string", "'null'::jsonb", "Unset: JSON null, not SQL NULL", False),
    ("guider", "settle_tolerance_px", "float", "to_jsonb(1.5)", "Settle tolerance", False),
    ("plate-solver", "index_dir", "string", _jsonb("/var/lib/bigskies/astrometry"), "Index files", False),
    ("plate-solver", "search_radius_deg", "float", "to_jsonb(5.0)", "Search radius", False),
    ("plate-solver", "timeout_s", "integer", "to_jsonb(120)", "Give up after", False),
    ("plate-solver", "downsample", "integer", "to_jsonb(2)", "Downsample factor", False),
    ("plate-solver", "star_catalog", "object", _LARGE_CATALOG, "Bright-star catalogue (large)", False),
    ("scheduler", "night_definition", "string", _jsonb("astronomical"), "Which twilight ends the day", False),
    ("scheduler", "min_altitude_deg", "float", "to_jsonb(30.0)", "Lowest target altitude", False),
    ("scheduler", "max_moon_illumination", "float", "to_jsonb(0.6)", "Moon limit", False),
    ("scheduler", "slot_minutes", "integer", "to_jsonb(15)", "Scheduling granularity", False),
    ("scheduler", "target_list", "array", _TARGET_LIST, "Queued targets", False),
    ("weather", "station_url", "string", _jsonb("http://weather.local/api/v1"), "Weather station API", False),
    ("weather", "max_wind_kmh", "float", "to_jsonb(40.0)", "Close above this wind", False),
    ("weather", "max_humidity_pct", "integer", "to_jsonb(85)", "Close above this humidity", False),
    ("weather", "rain_sensor_enabled", "boolean", "to_jsonb(true)", "Use the rain sensor", False),
    ("weather", "poll_interval", "integer", "to_jsonb(60)", "Seconds between polls", False),
    ("weather", "safe_message", "string", _jsonb("Ça va : le ciel est dégagé ☀️ – \"all clear\""),
     "Shown when safe", False),
    ("message", "max_queue_size", "integer", "to_jsonb(1000)", "RBAC validation queue size", False),
    ("message", "validation_timeout", "integer", "to_jsonb(30)", "RBAC validation timeout", False),
    ("message", "legacy_amqp_url", "string", _jsonb("amqp://guest@rabbitmq:5672/"), "Deprecated", False),
    ("message", "topic_prefix", "string", _jsonb("bigskies/"), "Prefix of every MQTT topic", False),
    ("message", "retain_messages", "boolean", "to_jsonb(false)", "MQTT retain flag", False),
]

#: Config rows the sample data deletes (so the history holds DELETE records).
DELETED_KEYS = [("camera", "legacy_driver"), ("message", "legacy_amqp_url")]

_FIRST_NAMES = ["Ada", "Søren", "José", "Zoë", "Anaïs", "Łukasz", "Chloé", "Mei", "Hiro", "Priya",
                "Ngozi", "Émile", "Dmitri", "Fatima", "Henrietta", "Vera", "Carl", "Annie",
                "Jocelyn", "Subrahmanyan", "Caroline", "Edmond", "Maria", "Nicolaus"]
_LAST_NAMES = ["Hubble", "Leavitt", "Cannon", "O'Brien", "Müller", "Nørgaard", "García", "Kowalski",
               "Tanaka", "Sagan", "Rubin", "Chandrasekhar", "Herschel", "Payne-Gaposchkin",
               "van de Hulst", "Núñez", "Bell Burnell", "Halley", "Mitchell", "Copernicus",
               "Şahin", "Đorđević"]
_ACCENTED = "øæåéèêëáàâäíìîïóòôöúùûüñçłśźżćńşđ"
_PLAIN = "oaaeeeeaaaaiiiioooouuuuncleszzcnsd"

_NAMED_TARGETS = [  # name, ra_deg, dec_deg
    ("Andromeda Galaxy", 10.6847, 41.2690), ("Orion Nebula", 83.8221, -5.3911),
    ("Pleiades", 56.7500, 24.1167), ("Ring Nebula", 283.3963, 33.0292),
    ("Whirlpool Galaxy", 202.4696, 47.1952), ("Eagle Nebula", 274.7000, -13.8067),
    ("Crab Nebula", 83.6331, 22.0145), ("Omega Centauri", 201.6970, -47.4795),
    ("Lagoon Nebula", 270.9042, -24.3867), ("Triangulum Galaxy", 23.4621, 30.6599),
    ("Dumbbell Nebula", 299.9016, 22.7210), ("Sombrero Galaxy", 189.9976, -11.6231),
    ("Barnard's Star", 269.4521, 4.6934), ("Mélotte 111", 186.0000, 26.0000),
    ("47 Tucanae", 6.0236, -72.0813), ("Horsehead Nebula", 85.2458, -2.4583),
    ("Betelgeuse", 88.7929, 7.4071), ("Vega", 279.2347, 38.7837),
    ("Polaris", 37.9546, 89.2641), ("Sirius", 101.2872, -16.7161),
    ("T CrB \"Blaze Star\"", 239.8757, 25.9202), ("Ω Centauri (NGC 5139)", 201.6970, -47.4795),
]

_NOTES = [
    "Clouds rolled in at 02:10.\nAborted after 3 frames.",
    "Seeing ≈ 1.2″, transparency ★★★☆☆",
    "Frames saved to D:\\astro\\raw\\ (copy pending)",
    "Observer said: \"best night this year\"; it's true",
    "Focus drift\tcorrected\tat 01:00",
    "Windows line ending\r\nsecond line",
    "\\.",
    "",
    "Dew on the corrector – heater set to 80 %",
    "Guiding RMS 0.6\" – 😀",
]

_TAGS = ["narrowband", "survey", "calibration", "variable-star", "exoplanet-transit", "outreach",
         "ToO", "comet", "mosaic"]

_SAMPLE_TEMPLATE = r"""-- BIG SKIES sample data, scale @SCALE@ (bigskies_ops.dev.sampledata.sample_data_sql).
-- Deterministic: random() is seeded and times are relative to @ANCHOR@ (UTC),
-- except changed_at of the DELETE history records (now(), set by the trigger).
SET TIME ZONE 'UTC';
SET client_min_messages = warning;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM roles) OR EXISTS (SELECT 1 FROM users)
       OR EXISTS (SELECT 1 FROM coordinator_config) OR EXISTS (SELECT 1 FROM observations) THEN
        RAISE EXCEPTION 'sample data needs an empty, freshly migrated database';
    END IF;
    PERFORM setseed(0.42);
END
$$;

-- roles ----------------------------------------------------------------------
INSERT INTO roles (name, description, permissions, is_system, created_at, updated_at)
VALUES
@ROLE_ROWS@;

-- users: 1 admin, one service account per coordinator, awkward names, then people
INSERT INTO users (id, username, email, display_name, password_hash, is_active,
                   is_service_account, last_login_at, preferences, created_at, updated_at)
VALUES
    (1, 'admin', 'admin@bigskies.local', 'BIG SKIES Administrator',
     '$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy', true, false,
     @ANCHOR@::timestamptz - interval '2 hours', '{"theme": "dark"}',
     @ANCHOR@::timestamptz - interval '1400 days', @ANCHOR@::timestamptz - interval '30 days');

INSERT INTO users (id, username, email, display_name, password_hash, is_active,
                   is_service_account, last_login_at, preferences, created_at, updated_at)
SELECT 1 + c.n, 'svc-' || c.name, 'svc-' || c.name || '@bigskies.local', NULL, NULL, true, true,
       @ANCHOR@::timestamptz - interval '5 minutes' * c.n, jsonb_build_object('coordinator', c.name),
       @ANCHOR@::timestamptz - interval '1400 days', @ANCHOR@::timestamptz - interval '1400 days'
FROM unnest(@COORDINATORS@) WITH ORDINALITY AS c(name, n);

INSERT INTO users (id, username, email, display_name, password_hash, is_active,
                   is_service_account, last_login_at, preferences, created_at, updated_at)
SELECT @FIRST_SPECIAL@ - 1 + s.n, s.username, s.email, s.display_name,
       '$2a$10$' || left(md5('special' || s.n) || md5('salt' || s.n), 53), true, false,
       CASE WHEN s.display_name IS NULL THEN NULL
            ELSE @ANCHOR@::timestamptz - interval '1 day' * s.n END,
       s.preferences, @ANCHOR@::timestamptz - interval '900 days',
       @ANCHOR@::timestamptz - interval '10 days'
FROM (VALUES
@SPECIAL_ROWS@
) AS s(n, username, email, display_name, preferences);

INSERT INTO users (id, username, email, display_name, password_hash, is_active,
                   is_service_account, last_login_at, preferences, created_at, updated_at)
SELECT g, uname, uname || '@' || domain,
       CASE WHEN r_null < 0.03 THEN NULL ELSE first_name || ' ' || last_name END,
       '$2a$10$' || left(md5(random()::text) || md5(random()::text), 53),
       r_active < 0.93, false,
       CASE WHEN r_login < 0.15 THEN NULL
            ELSE created + (@ANCHOR@::timestamptz - created) * random() END,
       jsonb_build_object(
           'theme', CASE WHEN r_theme < 0.6 THEN 'dark' WHEN r_theme < 0.9 THEN 'light' ELSE 'red-night' END,
           'units', CASE WHEN r_theme < 0.8 THEN 'metric' ELSE 'imperial' END,
           'timezone', (ARRAY['UTC', 'Atlantic/Canary', 'America/Santiago', 'Australia/Sydney',
                              'Pacific/Honolulu', 'Europe/Madrid'])[1 + floor(random() * 6)::int],
           'notifications', jsonb_build_object('email', random() < 0.7, 'mqtt', random() < 0.2),
           'favourite_targets', CASE WHEN r_null < 0.2 THEN NULL
                                     ELSE jsonb_build_array('M' || (1 + floor(random() * 110))::int,
                                                            'NGC ' || (1 + floor(random() * 7840))::int) END),
       created,
       created + (@ANCHOR@::timestamptz - created) * random()
FROM (
    SELECT g, first_name, last_name, domain, created, r_null, r_active, r_login, r_theme,
           coalesce(nullif(regexp_replace(lower(translate(lower(first_name), @ACCENTED@, @PLAIN@)),
                                          '[^a-z]', '', 'g'), ''), 'user')
           || '.' ||
           coalesce(nullif(regexp_replace(lower(translate(lower(last_name), @ACCENTED@, @PLAIN@)),
                                          '[^a-z]', '', 'g'), ''), 'astro')
           || g AS uname
    FROM (
        SELECT g,
               (@FIRST_NAMES@)[1 + floor(random() * @N_FIRST@)::int] AS first_name,
               (@LAST_NAMES@)[1 + floor(random() * @N_LAST@)::int] AS last_name,
               (ARRAY['bigskies.local', 'observatory.example', 'astro.example.org'])[1 + floor(random() * 3)::int] AS domain,
               @ANCHOR@::timestamptz - interval '1460 days' * random() AS created,
               random() AS r_null, random() AS r_active, random() AS r_login, random() AS r_theme
        FROM generate_series(@FIRST_PERSON@, @N_USERS@) AS g
        OFFSET 0
    ) AS raw
    OFFSET 0
) AS named;

-- ids were given explicitly: move the identity sequence past them
DO $$
BEGIN
    PERFORM setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users));
END
$$;

-- user_roles -----------------------------------------------------------------
INSERT INTO user_roles (user_id, role_id, granted_at, granted_by)
SELECT 1, r.id, @ANCHOR@::timestamptz - interval '1400 days', NULL FROM roles r WHERE r.name = 'admin';

INSERT INTO user_roles (user_id, role_id, granted_at, granted_by)
SELECT u.id, r.id, u.created_at, NULL
FROM users u CROSS JOIN roles r
WHERE u.is_service_account AND r.name = 'service';

-- everyone else observes (self sign-up, granted_by NULL); some get more, granted by admin
INSERT INTO user_roles (user_id, role_id, granted_at, granted_by)
SELECT u.id, r.id, u.created_at, NULL
FROM users u CROSS JOIN roles r
WHERE u.id >= @FIRST_SPECIAL@ AND r.name = 'observer';

INSERT INTO user_roles (user_id, role_id, granted_at, granted_by)
SELECT u.id, r.id, u.created_at + (@ANCHOR@::timestamptz - u.created_at) * random() * 0.5, 1
FROM users u
JOIN roles r ON (r.name = 'operator'     AND u.id % 10 = 0)
             OR (r.name = 'scheduler'    AND u.id % 40 = 0)
             OR (r.name = 'developer'    AND u.id % 97 = 0)
             OR (r.name = 'data-manager' AND u.id % 250 = 0)
             OR (r.name = 'auditor'      AND u.id % 500 = 0)
WHERE u.id >= @FIRST_PERSON@
ORDER BY u.id, r.id;

-- coordinator_config ---------------------------------------------------------
INSERT INTO coordinator_config (coordinator_name, config_key, config_value, config_type,
                                description, is_secret, created_at, updated_at)
SELECT c.name, k.key, k.value, k.type, k.description, k.is_secret, t.created, t.created
FROM unnest(@COORDINATORS@) WITH ORDINALITY AS c(name, n)
CROSS JOIN LATERAL (VALUES
@COMMON_ROWS@
) AS k(n, key, type, value, description, is_secret)
CROSS JOIN LATERAL (SELECT @ANCHOR@::timestamptz - interval '400 days'
                           - interval '30 days' * random() + interval '0 days' * c.n AS created) AS t
ORDER BY c.n, k.n;

INSERT INTO coordinator_config (coordinator_name, config_key, config_value, config_type,
                                description, is_secret, created_at, updated_at)
SELECT k.coordinator, k.key, k.value, k.type, k.description, k.is_secret, k.created, k.created
FROM (VALUES
@SPECIFIC_ROWS@
) AS k(n, coordinator, key, type, value, description, is_secret, created)
ORDER BY k.n;

-- Tuning over the year: @ROUNDS@ rounds, each changing the value of exactly 100
-- numeric/boolean keys (chosen by md5, not random(), so the count is exact), by an
-- operator or the admin. The audit trigger writes one history row per change.
DO $$
DECLARE
    r integer;
    rounds constant integer := @ROUNDS@;
    step constant double precision := 350.0 * 86400 / @ROUNDS@;  -- seconds between rounds
BEGIN
    FOR r IN 1..rounds LOOP
        UPDATE coordinator_config AS cc
        SET config_value = CASE cc.config_type
                -- integers move by 1..3 and stay >= 1; floats by 0.10..1.00: never a no-op
                WHEN 'integer' THEN to_jsonb(CASE WHEN (cc.config_value #>> '{}')::bigint <= 3 OR random() < 0.5
                                                  THEN (cc.config_value #>> '{}')::bigint + 1 + floor(random() * 3)::int
                                                  ELSE (cc.config_value #>> '{}')::bigint - 1 - floor(random() * 3)::int END)
                WHEN 'float' THEN to_jsonb(CASE WHEN random() < 0.5
                                                THEN (cc.config_value #>> '{}')::numeric + round((0.1 + random() * 0.9)::numeric, 2)
                                                ELSE (cc.config_value #>> '{}')::numeric - round((0.1 + random() * 0.9)::numeric, 2) END)
                WHEN 'boolean' THEN to_jsonb(NOT (cc.config_value #>> '{}')::boolean)
            END,
            updated_by = CASE WHEN random() < 0.3 THEN 1
                              ELSE 10 * (3 + floor(random() * (@N_USERS@ / 10 - 3)))::bigint END,
            updated_at = @ANCHOR@::timestamptz
                         - make_interval(secs => (rounds - r + 1) * step)
                         + make_interval(secs => random() * step * 0.9)
        WHERE cc.id IN (SELECT id FROM coordinator_config
                        WHERE config_type IN ('integer', 'float', 'boolean')
                        ORDER BY md5(id::text || ':' || r)
                        LIMIT 100);
    END LOOP;

    -- Retire two deprecated keys, as the admin (the trigger reads bigskies.user_id).
    PERFORM set_config('bigskies.user_id', '1', true);
    DELETE FROM coordinator_config
    WHERE (coordinator_name, config_key) IN (@DELETED_KEYS@);
    PERFORM set_config('bigskies.user_id', '', true);
END
$$;

-- observations ---------------------------------------------------------------
INSERT INTO observations (observer_id, target_name, ra_deg, dec_deg, filter, exposure_s,
                          frame_count, airmass, seeing_arcsec, magnitude, status, observed_at,
                          tags, frame_sha256, metadata, notes, created_at)
SELECT observer_id,
       target_name, ra_deg, dec_deg, filter, exposure_s, frame_count, airmass, seeing_arcsec,
       magnitude, status, observed_at, tags,
       CASE WHEN status = 'completed' THEN sha256(convert_to('frame:' || g || ':' || r_hash, 'UTF8')) END,
       metadata, notes,
       least(observed_at, @ANCHOR@::timestamptz) - interval '3 days' * r_created
FROM (
    SELECT g, observer_id, target_name, ra_deg, dec_deg, filter, exposure_s, frame_count,
           airmass, seeing_arcsec, magnitude, status, tags, metadata, notes, r_hash, r_created,
           CASE WHEN status = 'planned' THEN @ANCHOR@::timestamptz + interval '30 days' * r_when
                ELSE @ANCHOR@::timestamptz - interval '1095 days' * r_when END AS observed_at
    FROM (
        SELECT g,
               @FIRST_PERSON@ + floor(power(random(), 2) * (@N_USERS@ - @FIRST_PERSON@ + 1))::bigint AS observer_id,
               CASE WHEN r_named < 0.7 THEN t.name ELSE 'NGC ' || (1 + floor(random() * 7840))::int END AS target_name,
               CASE WHEN r_named < 0.7 THEN t.ra ELSE random() * 359.999 END AS ra_deg,
               CASE WHEN r_named < 0.7 THEN t.dec ELSE random() * 180 - 90 END AS dec_deg,
               CASE WHEN random() < 0.05 THEN NULL
                    ELSE (ARRAY['L','R','G','B','Ha','OIII','SII','clear'])[1 + floor(random() * 8)::int] END AS filter,
               round((0.001 + random() * 600)::numeric, 3) AS exposure_s,
               1 + floor(random() * 60)::int AS frame_count,
               CASE WHEN random() < 0.1 THEN NULL ELSE (1 + random() * 1.5)::real END AS airmass,
               CASE WHEN random() < 0.1 THEN NULL ELSE (0.6 + random() * 3)::real END AS seeing_arcsec,
               CASE WHEN random() < 0.4 THEN NULL ELSE (random() * 20 - 1.5)::real END AS magnitude,
               CASE WHEN r_status < 0.80 THEN 'completed' WHEN r_status < 0.85 THEN 'failed'
                    WHEN r_status < 0.90 THEN 'aborted' WHEN r_status < 0.97 THEN 'planned'
                    ELSE 'running' END AS status,
               coalesce((SELECT array_agg(tag ORDER BY ord) FROM unnest(@TAGS@) WITH ORDINALITY AS x(tag, ord)
                         WHERE random() < 0.12 + 0 * g), '{}') AS tags,
               jsonb_build_object(
                   'camera', (ARRAY['ZWO ASI2600MM Pro', 'QHY268M', 'SBIG STF-8300M', 'Atik 460EX'])[1 + floor(random() * 4)::int],
                   'gain', 100 + 10 * floor(random() * 5)::int,
                   'temperature_c', round((-15 + random() * 10)::numeric, 1),
                   'binning', CASE WHEN random() < 0.8 THEN '1x1' ELSE '2x2' END,
                   'guiding_rms_arcsec', round((0.3 + random() * 1.5)::numeric, 2),
                   'software', 'BIG SKIES 0.' || (5 + floor(random() * 5))::int,
                   'weather', jsonb_build_object('humidity_pct', floor(20 + random() * 70)::int,
                                                 'wind_kmh', round((random() * 45)::numeric, 1))) AS metadata,
               CASE WHEN r_notes < 0.75 THEN NULL
                    ELSE (@NOTES@)[1 + floor(random() * @N_NOTES@)::int] END AS notes,
               random() AS r_hash, random() AS r_created, random() AS r_when
        FROM (
            SELECT g, random() AS r_named, random() AS r_target, random() AS r_status, random() AS r_notes
            FROM generate_series(1, @N_OBSERVATIONS@) AS g
            OFFSET 0
        ) AS base
        JOIN (VALUES
@TARGET_ROWS@
        ) AS t(n, name, ra, dec) ON t.n = 1 + floor(base.r_target * @N_TARGETS@)::int
        OFFSET 0
    ) AS o
    OFFSET 0
) AS obs
ORDER BY g;
"""


def _row_values(anchor: str) -> dict[str, str]:
    """The template's VALUES lists (``ROLE_ROWS``, ``SPECIAL_ROWS``, ``COMMON_ROWS``,
    ``SPECIFIC_ROWS``, ``TARGET_ROWS``) and ``DELETED_KEYS``, from this module's tables;
    ``anchor`` is :data:`SAMPLE_ANCHOR` as an SQL literal. None of them depends on the scale."""
    role_rows = ",\n".join(
        f"    ({sql_literal(name)}, {sql_literal(desc)}, {_jsonb(perms)}, {sql_literal(system)}, "
        f"{anchor}::timestamptz - interval '1400 days', {anchor}::timestamptz - interval '1400 days')"
        for name, desc, perms, system in ROLES)
    special_rows = ",\n".join(
        f"    ({i}, {sql_literal(u)}, {sql_literal(e)}, {sql_literal(d)}::text, {_jsonb(p)})"
        for i, (u, e, d, p) in enumerate(SPECIAL_USERS, start=1))
    common_rows = ",\n".join(
        f"    ({i}, {sql_literal(key)}, {sql_literal(typ)}, {value}, {sql_literal(desc)}::text, "
        f"{sql_literal(secret)})"
        for i, (key, typ, value, desc, secret) in enumerate(COMMON_KEYS, start=1))
    specific_rows = ",\n".join(
        f"    ({i}, {sql_literal(coord)}, {sql_literal(key)}, {sql_literal(typ)}, {value}, "
        f"{sql_literal(desc)}::text, {sql_literal(secret)}, "
        f"{anchor}::timestamptz - interval '380 days' + interval '1 hour' * {i})"
        for i, (coord, key, typ, value, desc, secret) in enumerate(SPECIFIC_KEYS, start=1))
    target_rows = ",\n".join(
        f"            ({i}, {sql_literal(name)}, {ra}::double precision, {dec}::double precision)"
        for i, (name, ra, dec) in enumerate(_NAMED_TARGETS, start=1))
    deleted = ", ".join(f"({sql_literal(c)}, {sql_literal(k)})" for c, k in DELETED_KEYS)
    return {"ROLE_ROWS": role_rows, "SPECIAL_ROWS": special_rows, "COMMON_ROWS": common_rows,
            "SPECIFIC_ROWS": specific_rows, "TARGET_ROWS": target_rows, "DELETED_KEYS": deleted}


def sample_data_sql(scale: int = 1, *, single_transaction: bool = True) -> str:
    """SQL that fills a freshly migrated BIG SKIES database with realistic data.

    Run it after :func:`bigskies_ops.dev.schema.bootstrap_sql` on an empty database (it raises an SQL error
    otherwise). Rows at ``scale`` = s (``N`` = 20,000 * s users):

    ============================  ======================================================
    roles                         10
    users                         N: ``admin`` (id 1), 12 coordinator service accounts
                                  ``svc-<coordinator>``, 8 users with awkward names
                                  (quotes, backslashes, newlines, ``\\.``, ``''``, NULL,
                                  CJK/emoji), then generated people
    user_roles                    1 + 12 + (N - 13) observers + every 10th/40th/97th/
                                  250th/500th person an operator/scheduler/developer/
                                  data-manager/auditor (22,824 at scale 1)
    coordinator_config            206 inserted (12 coordinators x 12 common keys + 62
                                  specific ones, one a ~300 kB jsonb catalogue), 2
                                  deleted: 204 left
    coordinator_config_history    5,000 * s UPDATE records (50 * s rounds of exactly
                                  100 value changes) + 2 DELETE records
    observations                  30,000 * s
    ============================  ======================================================

    The data are deterministic (``setseed(0.42)``; times relative to
    :data:`SAMPLE_ANCHOR`, not ``now()``), except ``changed_at`` of the two DELETE
    history records, which the trigger stamps with ``now()``. Identity and serial
    sequences end past the rows' ids. At scale 1 the load takes a few seconds.

    Args:
        scale: size multiplier, an int >= 1 (users, observations and history grow
            linearly; roles and configuration keys do not).
        single_transaction: wrap the script in ``BEGIN;`` ... ``COMMIT;``.

    Returns:
        The SQL script (text), for ``psql -v ON_ERROR_STOP=1``.

    Raises:
        TypeError: ``scale`` is not an int (bool is refused too).
        ValueError: ``scale`` < 1.
    """
    if isinstance(scale, bool) or not isinstance(scale, int):
        raise TypeError(f"scale must be an int, not {type(scale).__name__}")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")

    anchor = sql_literal(SAMPLE_ANCHOR)
    n_users = 20_000 * scale
    first_special = 2 + len(COORDINATORS)            # after admin and service accounts
    first_person = first_special + len(SPECIAL_USERS)

    body = _fill(
        _SAMPLE_TEMPLATE,
        SCALE=scale,
        ANCHOR=anchor,
        **_row_values(anchor),
        COORDINATORS=_text_array(list(COORDINATORS)),
        FIRST_SPECIAL=first_special,
        FIRST_PERSON=first_person,
        N_USERS=n_users,
        FIRST_NAMES=_text_array(_FIRST_NAMES),
        N_FIRST=len(_FIRST_NAMES),
        LAST_NAMES=_text_array(_LAST_NAMES),
        N_LAST=len(_LAST_NAMES),
        ACCENTED=sql_literal(_ACCENTED),
        PLAIN=sql_literal(_PLAIN),
        ROUNDS=50 * scale,
        N_OBSERVATIONS=30_000 * scale,
        N_TARGETS=len(_NAMED_TARGETS),
        TAGS=_text_array(_TAGS),
        NOTES=_text_array(_NOTES),
        N_NOTES=len(_NOTES),
    )
    if single_transaction:
        return "BEGIN;\n" + body + "COMMIT;\n"
    return body
