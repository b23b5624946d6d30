"""The main job end to end on a real PostgreSQL 15: backup, list, status, restore.

Data is compared by the test's own psql queries (tests/pgcheck.py), never by
product code; the source is changed after the backup and the restored copy must
equal the state at backup time.
"""
from __future__ import annotations

import json
import os

import pytest

from tests.conftest import cli, native_host, new_db_from_template, drop_db_and_copies, write_inventory
from tests.pgcheck import db_fingerprint


def _manifest(path):
    with open(str(path) + ".manifest.json") as f:
        return json.load(f)


@pytest.mark.parametrize("fmt,ext", [("plain", ".sql.gz"), ("custom", ".dump")])
def test_backup_then_restore_brings_back_exactly_the_backed_up_rows(local_inv, dbname, pg_sql, cli_env, fmt, ext):
    inv, bdir = local_inv
    before = db_fingerprint(pg_sql, dbname)
    assert before["tables"]["public.users"].split()[0] != "0"

    r = cli("db.backup", "-i", str(inv), "--format", fmt, "--label", "before risky change", env=cli_env)
    assert r.returncode == 0, r.stderr
    files = sorted(p for p in os.listdir(bdir) if p.endswith(ext))
    assert len(files) == 1 and files[0].startswith(f"{dbname}_backup_")
    m = _manifest(bdir / files[0])
    assert m["status"] == "DONE" and m["format"] == fmt and m["kind"] == "manual"
    assert m["label"] == "before risky change" and m["database"] == dbname and m["origin_host"] == "dev"
    assert m["schema_migrations_head"]["version"] == "5"
    rows = {(t["schema"], t["name"]): t["rows"] for t in m["tables"]}
    assert rows[("public", "users")] == int(before["tables"]["public.users"].split()[0])
    assert "restore" in r.stdout and files[0] in r.stdout

    # change the source after the backup: rows, a sequence, a large object
    pg_sql("DELETE FROM coordinator_config_history; UPDATE users SET email = 'changed' || id || '@example.org'; "
           "SELECT nextval(pg_get_serial_sequence('users', 'id')); SELECT lo_unlink(min(oid)) FROM pg_largeobject_metadata;",
           dbname)
    assert db_fingerprint(pg_sql, dbname) != before

    r = cli("db.restore", files[0], "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert db_fingerprint(pg_sql, dbname) == before
    # the previous (changed) database is kept as a pre-restore copy
    r = cli("db.list", "-i", str(inv), "--pre-restore", "--json", env=cli_env)
    copies = json.loads(r.stdout)["pre_restore_copies"]
    assert len(copies) == 1 and copies[0]["of"] == dbname


def test_list_shows_backups_newest_first_with_status_and_json(local_inv, cli_env):
    inv, bdir = local_inv
    for fmt in ("plain", "custom"):
        r = cli("db.backup", "-i", str(inv), "--format", fmt, env=cli_env)
        assert r.returncode == 0 and "  bigskies-ops db.restore " in r.stdout, r.stdout
    # the third through Invoke's own `inv` (the repo's tasks.py): its hints say `inv`
    import subprocess
    import sys
    from tests.conftest import REPO
    r = subprocess.run([os.path.join(os.path.dirname(sys.executable), "inv"), "db.backup", "-i", str(inv), "--format",
                        "plain"], env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "  inv db.restore " in r.stdout and "bigskies-ops db." not in r.stdout, r.stdout
    r = cli("db.list", "-i", str(inv), "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)["backups"]
    assert [b["format"] for b in data] == ["plain", "custom", "plain"]
    assert [b["started_at"] for b in data] == sorted([b["started_at"] for b in data], reverse=True)
    assert all(b["status"] == "DONE" and b["verified"] is False and b["bytes"] > 1000 for b in data)
    human = cli("db.list", "-i", str(inv), env=cli_env).stdout
    assert human.count("done") == 3 and "custom" in human


def test_status_shows_tables_size_and_migration_head_without_password(local_inv, cli_env):
    inv, _ = local_inv
    r = cli("db.status", "-i", str(inv), "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    names = {t["name"] for t in st["tables"]}
    assert {"coordinator_config", "coordinator_config_history", "users", "roles", "schema_migrations"} <= names
    assert st["schema_migrations_head"]["version"] == "5"
    assert st["database"]["size_bytes"] > 1_000_000
    human = cli("db.status", "-i", str(inv), env=cli_env)
    assert cli_env["BIGSKIES_TEST_PGPASSWORD"] not in human.stdout + r.stdout
    assert "coordinator_config_history" in human.stdout


@pytest.mark.parametrize("name", ["BigSkies", "big-skies", "big skies", "bïg_skïes_ü"])
def test_database_names_that_need_quoting_round_trip(pg, pg_sql, tmp_path, cli_env, name):
    new_db_from_template(pg, name)
    bystander = "bs_bystander_" + str(abs(hash(name)) % 10000)
    new_db_from_template(pg, bystander)
    try:
        bdir = tmp_path / "b"
        inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, name, bdir)})
        before = db_fingerprint(pg_sql, name)
        by_before = db_fingerprint(pg_sql, bystander)
        r = cli("db.backup", "-i", str(inv), env=cli_env)
        assert r.returncode == 0, r.stderr
        lst = json.loads(cli("db.list", "-i", str(inv), "--json", env=cli_env).stdout)["backups"]
        assert [b["database"] for b in lst] == [name]
        pg_sql("TRUNCATE users CASCADE", name)
        pg_sql("TRUNCATE users CASCADE", bystander)
        by_changed = db_fingerprint(pg_sql, bystander)
        r = cli("db.restore", "latest", "-i", str(inv), "--yes", env=cli_env)
        assert r.returncode == 0, r.stderr
        assert db_fingerprint(pg_sql, name) == before
        assert db_fingerprint(pg_sql, bystander) == by_changed != by_before  # untouched by the restore
    finally:
        drop_db_and_copies(pg, name)
        drop_db_and_copies(pg, bystander)
