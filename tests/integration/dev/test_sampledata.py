"""The BIG SKIES migrations (configs/sql) and the sample data, checked on a real PostgreSQL 15.

Expected values are literals worked out from the generator's rules (see the
docstring of ``sample_data_sql``), never read back from the product.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from bigskies_ops.dev import sampledata, schema
from bigskies_ops.errors import CommandError
from bigskies_ops.dev.sandbox import Cluster, free_port

REPO = Path(__file__).resolve().parents[3]
SQL_DIR = REPO / "configs" / "sql"
DB = "bigskies"


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def cluster():
    # Not tmp_path: pytest's base temp dir is 0700 root, and the server runs as the
    # "postgres" OS user when we are root, so it could not reach its data dir.
    base = Path(tempfile.mkdtemp(prefix="bigskies-sampledata-"))
    os.chmod(base, 0o755)
    c = Cluster(base=base / "pg", port=free_port())
    try:
        c.init().start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def loaded(cluster):
    """Database ``bigskies``: every migration, then the sample data at scale 1."""
    cluster.psql("-c", f"CREATE DATABASE {DB}")
    cluster.psql(database=DB, input=schema.bootstrap_sql(SQL_DIR))
    started = time.monotonic()
    cluster.psql(database=DB, input=sampledata.sample_data_sql(1))
    return {"load_seconds": time.monotonic() - started}


def rows(cluster, query, database=DB):
    """Run ``query`` and return its rows as a list of dicts (via json_agg, so any text survives)."""
    out = cluster.psql("-At", "-c", f"SELECT coalesce(json_agg(q), '[]') FROM ({query}) AS q",
                       database=database)
    return json.loads(out)


def value(cluster, query, database=DB):
    """The single value of a one-row, one-column query."""
    (row,) = rows(cluster, query, database)
    (v,) = row.values()
    return v


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- pure: migration_files

def test_migration_files_are_sorted_by_version_and_other_files_are_ignored(tmp_path):
    for name in ["010_later.sql", "002_users.sql", "001_roles.sql", "README.md",
                 "ascom_schema.sql", "002_users.sql.orig"]:
        (tmp_path / name).write_text("-- x\n")
    (tmp_path / "003_a_directory.sql").mkdir()

    assert schema.migration_files(tmp_path) == [
        (1, "roles", tmp_path / "001_roles.sql"),
        (2, "users", tmp_path / "002_users.sql"),
        (10, "later", tmp_path / "010_later.sql"),
    ]


def test_migration_files_accepts_a_str_path(tmp_path):
    (tmp_path / "007_x.sql").write_text("")
    assert schema.migration_files(str(tmp_path)) == [(7, "x", tmp_path / "007_x.sql")]


def test_two_files_with_the_same_version_are_refused(tmp_path):
    (tmp_path / "001_roles.sql").write_text("")
    (tmp_path / "0001_more_roles.sql").write_text("")
    with pytest.raises(ValueError, match=r"duplicate migration version 1: 0001_more_roles.sql and 001_roles.sql"):
        schema.migration_files(tmp_path)


def test_a_numbered_sql_file_with_an_unusable_name_is_refused_not_skipped(tmp_path):
    (tmp_path / "004_bad name.sql").write_text("")
    with pytest.raises(ValueError, match="NNN_description.sql"):
        schema.migration_files(tmp_path)


def test_a_missing_migration_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        schema.migration_files(tmp_path / "nope")


def test_the_repository_has_migrations_1_to_5_in_house_style():
    found = schema.migration_files(SQL_DIR)
    assert [(v, n) for v, n, _ in found] == [
        (1, "roles"), (2, "users"), (3, "coordinator_config"),
        (4, "coordinator_config_history"), (5, "observations"),
    ]
    for version, name, path in found:
        text = path.read_text(encoding="utf-8")
        assert text.startswith(f"-- {version:03d}_{name}: "), path.name
        # plain SQL for one transaction: no transaction control, no bookkeeping table
        assert not re.search(r"^\s*(BEGIN|COMMIT|ROLLBACK)\s*;", text, re.I | re.M), path.name
        assert "schema_migrations" not in text, path.name


# --------------------------------------------------------------------------- pure: bootstrap_sql

def test_bootstrap_sql_creates_the_table_then_each_file_and_its_checksum(tmp_path):
    (tmp_path / "002_second.sql").write_text("CREATE TABLE b (id int);\n-- trailing comment, no newline")
    (tmp_path / "001_first.sql").write_text("CREATE TABLE a (id int);\n")
    script = schema.bootstrap_sql(tmp_path)

    assert script.startswith("BEGIN;\n")
    assert script.rstrip().endswith("COMMIT;")
    create = script.index("CREATE TABLE IF NOT EXISTS schema_migrations")
    first = script.index("CREATE TABLE a (id int);")
    first_insert = script.index(
        "INSERT INTO schema_migrations(version, name, checksum) VALUES "
        f"(1, 'first', '{hashlib.sha256(b'CREATE TABLE a (id int);' + bytes([10])).hexdigest()}');")
    second = script.index("CREATE TABLE b (id int);")
    second_insert = script.index(
        "-- trailing comment, no newline\nINSERT INTO schema_migrations(version, name, checksum) VALUES "
        f"(2, 'second', '{sha256_of(tmp_path / '002_second.sql')}');")
    assert create < first < first_insert < second < second_insert


def test_bootstrap_sql_can_leave_the_transaction_to_the_caller(tmp_path):
    (tmp_path / "001_first.sql").write_text("SELECT 1;\n")
    script = schema.bootstrap_sql(tmp_path, single_transaction=False)
    assert "BEGIN" not in script and "COMMIT" not in script


# --------------------------------------------------------------------------- pure: sample_data_sql

@pytest.mark.parametrize("scale, error", [(0, ValueError), (-3, ValueError), ("1", TypeError),
                                          (1.0, TypeError), (True, TypeError)])
def test_sample_data_sql_refuses_a_bad_scale(scale, error):
    with pytest.raises(error):
        sampledata.sample_data_sql(scale)


def test_sample_data_grows_linearly_with_scale():
    script = sampledata.sample_data_sql(3)
    assert "generate_series(22, 60000)" in script          # people after the 21 fixed users
    assert "generate_series(1, 90000)" in script            # observations
    assert "rounds constant integer := 150;" in script      # 150 x 100 config changes
    assert script.startswith("BEGIN;\n") and script.endswith("COMMIT;\n")


# --------------------------------------------------------------------------- real PostgreSQL

def test_schema_migrations_lists_versions_1_to_5_with_the_files_checksums(cluster, loaded):
    got = rows(cluster, "SELECT version, name, checksum, duration_ms, applied_at IS NOT NULL AS applied "
                        "FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in got] == [1, 2, 3, 4, 5]
    assert [r["name"] for r in got] == ["roles", "users", "coordinator_config",
                                        "coordinator_config_history", "observations"]
    assert [r["checksum"] for r in got] == [
        sha256_of(SQL_DIR / "001_roles.sql"),
        sha256_of(SQL_DIR / "002_users.sql"),
        sha256_of(SQL_DIR / "003_coordinator_config.sql"),
        sha256_of(SQL_DIR / "004_coordinator_config_history.sql"),
        sha256_of(SQL_DIR / "005_observations.sql"),
    ]
    assert all(r["applied"] and r["duration_ms"] is None for r in got)


def test_the_guides_tables_exist(cluster, loaded):
    tables = rows(cluster, "SELECT table_name FROM information_schema.tables "
                           "WHERE table_schema = 'public' ORDER BY table_name")
    assert [t["table_name"] for t in tables] == [
        "coordinator_config", "coordinator_config_history", "observation_nights", "observations",
        "roles", "schema_migrations", "user_roles", "users"]


def test_row_counts_at_scale_1(cluster, loaded):
    counts = value(cluster, """
        SELECT json_build_object(
            'roles', (SELECT count(*) FROM roles),
            'users', (SELECT count(*) FROM users),
            'user_roles', (SELECT count(*) FROM user_roles),
            'coordinator_config', (SELECT count(*) FROM coordinator_config),
            'coordinator_config_history', (SELECT count(*) FROM coordinator_config_history),
            'observations', (SELECT count(*) FROM observations))""")
    assert counts == {"roles": 10, "users": 20000, "user_roles": 22824, "coordinator_config": 204,
                      "coordinator_config_history": 5002, "observations": 30000}

    # members per role: admin 1, service 12; people (ids 14..20000) all observe,
    # ids 22..20000 divisible by 10/40/97/250/500 get operator/scheduler/developer/...
    members = rows(cluster, "SELECT r.name, count(ur.user_id) AS n FROM roles r "
                            "LEFT JOIN user_roles ur ON ur.role_id = r.id GROUP BY r.name ORDER BY r.name")
    assert {m["name"]: m["n"] for m in members} == {
        "admin": 1, "auditor": 40, "data-manager": 80, "developer": 206, "guest": 0,
        "observer": 19987, "operator": 1998, "plugin-maintainer": 0, "scheduler": 500, "service": 12}

    # random parts: within wide bands around the generator's probabilities
    shares = value(cluster, """
        SELECT json_build_object(
            'active', (SELECT count(*) FILTER (WHERE is_active) FROM users),
            'never_logged_in', (SELECT count(*) FILTER (WHERE last_login_at IS NULL) FROM users),
            'completed', (SELECT count(*) FILTER (WHERE status = 'completed') FROM observations),
            'with_notes', (SELECT count(*) FILTER (WHERE notes IS NOT NULL) FROM observations),
            'with_magnitude', (SELECT count(*) FILTER (WHERE magnitude IS NOT NULL) FROM observations),
            'observers', (SELECT count(DISTINCT observer_id) FROM observations))""")
    assert 18_200 <= shares["active"] <= 19_000            # 93 % of 19,979 people + 21 fixed users
    assert 2_600 <= shares["never_logged_in"] <= 3_400     # 15 % of the people, 1 fixed user
    assert 23_400 <= shares["completed"] <= 24_600         # 80 %
    assert 7_000 <= shares["with_notes"] <= 8_000          # 25 %
    assert 17_400 <= shares["with_magnitude"] <= 18_600    # 60 %
    assert 10_000 <= shares["observers"] <= 17_000         # skewed towards early users


def test_sequences_end_past_the_sample_rows(cluster, loaded):
    seqs = value(cluster, """
        SELECT json_build_object(
            'roles', (SELECT last_value FROM roles_id_seq),
            'users', (SELECT last_value FROM users_id_seq),
            'coordinator_config', (SELECT last_value FROM coordinator_config_id_seq),
            'observations', (SELECT last_value FROM observations_id_seq))""")
    # users were inserted with explicit ids, so this one is a setval()
    assert seqs == {"roles": 10, "users": 20000, "coordinator_config": 206, "observations": 30000}


def test_the_history_trigger_recorded_every_update_and_both_deletes(cluster, loaded):
    by_op = rows(cluster, "SELECT operation, count(*) AS n, count(config_id) AS with_config_id "
                          "FROM coordinator_config_history GROUP BY operation ORDER BY operation")
    assert by_op == [{"operation": "DELETE", "n": 2, "with_config_id": 0},
                     {"operation": "UPDATE", "n": 5000, "with_config_id": 5000}]

    deletes = rows(cluster, "SELECT coordinator_name, config_key, old_value, new_value, changed_by, "
                            "old_row->>'config_key' AS old_row_key FROM coordinator_config_history "
                            "WHERE operation = 'DELETE' ORDER BY id")
    assert deletes == [
        {"coordinator_name": "camera", "config_key": "legacy_driver", "old_value": "asi_legacy",
         "new_value": None, "changed_by": 1, "old_row_key": "legacy_driver"},
        {"coordinator_name": "message", "config_key": "legacy_amqp_url",
         "old_value": "amqp://guest@rabbitmq:5672/", "new_value": None, "changed_by": 1,
         "old_row_key": "legacy_amqp_url"},
    ]

    # Each value change bumped version once and wrote one UPDATE record, and each
    # record chains: its old_value is the previous record's new_value, the last
    # new_value is the current value.
    consistency = value(cluster, """
        WITH h AS (
            SELECT config_id, old_value, new_value, old_version,
                   lag(new_value) OVER w AS prev_new,
                   row_number() OVER w AS nth,
                   count(*) OVER (PARTITION BY config_id) AS total
            FROM coordinator_config_history WHERE operation = 'UPDATE'
            WINDOW w AS (PARTITION BY config_id ORDER BY changed_at, id))
        SELECT json_build_object(
            'changes', (SELECT sum(version - 1) FROM coordinator_config),
            'version_mismatch', (SELECT count(*) FROM coordinator_config c
                                 WHERE c.version - 1 <> (SELECT count(*) FROM h WHERE h.config_id = c.id)),
            'broken_chain', (SELECT count(*) FROM h WHERE nth > 1 AND old_value <> prev_new),
            'wrong_old_version', (SELECT count(*) FROM h WHERE old_version <> nth),
            'last_not_current', (SELECT count(*) FROM h JOIN coordinator_config c ON c.id = h.config_id
                                 WHERE h.nth = h.total AND h.new_value <> c.config_value),
            'changed_by_unknown', (SELECT count(*) FROM coordinator_config_history
                                   WHERE changed_by IS NULL))""")
    assert consistency == {"changes": 5000, "version_mismatch": 0, "broken_chain": 0,
                           "wrong_old_version": 0, "last_not_current": 0, "changed_by_unknown": 0}


def test_the_trigger_skips_touches_records_changes_and_keeps_deletes_past_the_cascade(cluster, loaded):
    before = value(cluster, "SELECT count(*) FROM coordinator_config_history "
                            "WHERE coordinator_name = 'focuser' AND config_key = 'max_position'")
    assert before > 0   # focuser/max_position was tuned by the sample data

    out = cluster.psql("-At", database=DB, input="""
        BEGIN;
        SELECT max(id) AS last FROM coordinator_config_history \\gset
        -- a touch (only updated_by): not a configuration change
        UPDATE coordinator_config SET updated_by = 2
         WHERE coordinator_name = 'telescope' AND config_key = 'tracking_rate';
        UPDATE coordinator_config SET config_value = '"lunar"', updated_by = 5
         WHERE coordinator_name = 'telescope' AND config_key = 'tracking_rate';
        SET LOCAL bigskies.user_id = '14';
        DELETE FROM coordinator_config WHERE coordinator_name = 'focuser' AND config_key = 'max_position';
        SELECT json_build_object(
            'records', (SELECT json_agg(json_build_object(
                            'op', operation, 'key', coordinator_name || '/' || config_key,
                            'old', CASE WHEN operation = 'UPDATE' THEN old_value END, 'new', new_value,
                            'by', changed_by, 'old_version', CASE WHEN operation = 'UPDATE' THEN old_version END,
                            'config_id_is_null', config_id IS NULL) ORDER BY id)
                        FROM coordinator_config_history WHERE id > :last),
            'tracking_rate_version', (SELECT version FROM coordinator_config
                                      WHERE coordinator_name = 'telescope' AND config_key = 'tracking_rate'),
            'focuser_updates_left', (SELECT count(*) FROM coordinator_config_history
                                     WHERE operation = 'UPDATE' AND coordinator_name = 'focuser'
                                       AND config_key = 'max_position'));
        ROLLBACK;
        """)
    assert json.loads(out) == {
        "records": [
            {"op": "UPDATE", "key": "telescope/tracking_rate", "old": "sidereal", "new": "lunar",
             "by": 5, "old_version": 1, "config_id_is_null": False},
            {"op": "DELETE", "key": "focuser/max_position", "old": None, "new": None,
             "by": 14, "old_version": None, "config_id_is_null": True},
        ],
        "tracking_rate_version": 2,
        "focuser_updates_left": 0,   # ON DELETE CASCADE took the row's UPDATE records
    }


@pytest.mark.parametrize("statement, constraint", [
    ("INSERT INTO user_roles (user_id, role_id) VALUES (999999, 1)", "user_roles_user_id_fkey"),
    ("INSERT INTO user_roles (user_id, role_id) VALUES (1, 999)", "user_roles_role_id_fkey"),
    ("INSERT INTO user_roles (user_id, role_id, granted_by) VALUES (2, 1, 999999)",
     "user_roles_granted_by_fkey"),
    ("UPDATE coordinator_config SET updated_by = 999999 WHERE id = 1", "coordinator_config_updated_by_fkey"),
    ("INSERT INTO coordinator_config_history (config_id, coordinator_name, config_key, operation, "
     "old_value, new_value, old_version, old_row) VALUES (999999, 'x', 'y', 'UPDATE', '1', '2', 1, '{}')",
     "coordinator_config_history_config_id_fkey"),
    ("INSERT INTO observations (observer_id, target_name, ra_deg, dec_deg, exposure_s, observed_at) "
     "VALUES (999999, 'M 31', 10.68, 41.27, 30, now())", "observations_observer_id_fkey"),
    # ON DELETE RESTRICT: a role still granted, a user who still has observations
    ("DELETE FROM roles WHERE name = 'observer'", "user_roles_role_id_fkey"),
    ("DELETE FROM users WHERE id = (SELECT min(observer_id) FROM observations)",
     "observations_observer_id_fkey"),
])
def test_foreign_keys_reject_orphans(cluster, loaded, statement, constraint):
    with pytest.raises(CommandError, match=f'violates foreign key constraint "{constraint}"'):
        cluster.psql("-c", statement, database=DB)


def test_awkward_values_are_stored_exactly(cluster, loaded):
    names = rows(cluster, "SELECT username, display_name FROM users WHERE id BETWEEN 14 AND 21 ORDER BY id")
    assert names == [
        {"username": "siobhan.obrien", "display_name": "Siobhán O'Brien"},
        {"username": "edwin.hubble", "display_name": 'Dr. "Edwin" Hubble'},
        {"username": "windows.user", "display_name": "C:\\Users\\astro\\"},
        {"username": "multi.line", "display_name": "first line\nsecond line\r\n\tindented"},
        {"username": "li.bai", "display_name": "李白 🔭 Ωmega–Centauri"},
        {"username": "copy.terminator", "display_name": "\\."},
        {"username": "empty.name", "display_name": ""},
        {"username": "null.name", "display_name": None},
    ]
    config = value(cluster, """
        SELECT json_object_agg(coordinator_name || '/' || config_key, config_value)
        FROM coordinator_config
        WHERE (coordinator_name, config_key) IN (('camera', 'fits_output_dir'),
              ('camera', 'fits_header_template'), ('weather', 'safe_message'), ('guider', 'dither_pattern'))""")
    assert config == {
        "camera/fits_output_dir": "D:\\BigSkies\\FITS\\raw\\",
        "camera/fits_header_template":
            "OBSERVER= '{observer}'\nTELESCOP= 'BIG SKIES 0.4m'\nCOMMENT  \"quoted\" and \\ backslash\tTAB",
        "weather/safe_message": "Ça va : le ciel est dégagé ☀️ – \"all clear\"",
        "guider/dither_pattern": None,   # JSON null ...
    }
    assert value(cluster, "SELECT config_value IS NOT NULL AND jsonb_typeof(config_value) = 'null' "
                          "FROM coordinator_config WHERE config_key = 'dither_pattern'") is True  # ... not SQL NULL
    catalog = value(cluster, "SELECT json_build_object('stars', jsonb_array_length(config_value->'stars'), "
                             "'chars', length(config_value::text)) FROM coordinator_config "
                             "WHERE config_key = 'star_catalog'")
    assert catalog["stars"] == 5000 and catalog["chars"] > 300_000
    notes = value(cluster, "SELECT json_agg(DISTINCT notes) FROM observations WHERE notes IN "
                           "(E'\\\\.', '', E'Windows line ending\\r\\nsecond line')")
    assert sorted(notes) == ["", "Windows line ending\r\nsecond line", "\\."]
    assert value(cluster, "SELECT count(*) FROM observations WHERE frame_sha256 IS NOT NULL "
                          "AND octet_length(frame_sha256) <> 32") == 0


def test_sample_data_is_deterministic(cluster, loaded):
    """A second load of the same scale holds the same rows (DELETE records' changed_at aside)."""
    cluster.psql("-c", "CREATE DATABASE bigskies_again")
    cluster.psql(database="bigskies_again", input=schema.bootstrap_sql(SQL_DIR))
    cluster.psql(database="bigskies_again", input=sampledata.sample_data_sql(1))
    fingerprint = """
        SELECT json_build_object(
            'roles', (SELECT md5(string_agg(t::text, E'\\n' ORDER BY id)) FROM roles t),
            'users', (SELECT md5(string_agg(t::text, E'\\n' ORDER BY id)) FROM users t),
            'user_roles', (SELECT md5(string_agg(t::text, E'\\n' ORDER BY user_id, role_id)) FROM user_roles t),
            'coordinator_config', (SELECT md5(string_agg(t::text, E'\\n' ORDER BY id)) FROM coordinator_config t),
            'history', (SELECT md5(string_agg(
                            (id, config_id, operation, old_value, new_value, old_row, changed_by,
                             CASE WHEN operation = 'UPDATE' THEN changed_at END)::text, E'\\n' ORDER BY id))
                        FROM coordinator_config_history),
            'observations', (SELECT md5(string_agg(t::text, E'\\n' ORDER BY id)) FROM observations t))"""
    first = value(cluster, fingerprint, DB)
    second = value(cluster, fingerprint, "bigskies_again")
    assert first == second
    assert len(set(first.values())) == 6     # six different tables, six different digests


def test_sample_data_refuses_a_database_that_already_has_data(cluster, loaded):
    with pytest.raises(CommandError, match="needs an empty, freshly migrated database"):
        cluster.psql(database=DB, input=sampledata.sample_data_sql(1))
    assert value(cluster, "SELECT count(*) FROM users") == 20000


def test_bootstrap_on_a_migrated_database_fails_and_changes_nothing(cluster, loaded):
    with pytest.raises(CommandError, match='function "set_updated_at" already exists'):
        cluster.psql(database=DB, input=schema.bootstrap_sql(SQL_DIR))
    assert value(cluster, "SELECT count(*) FROM schema_migrations") == 5
