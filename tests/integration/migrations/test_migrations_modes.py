"""Migrations in every access mode: local native, local container (no published port),
SSH native, SSH container. A fresh, empty database gets the whole BIG SKIES schema
from configs/sql (pre-migrate backup first), a broken migration names its file and
line and leaves nothing behind, and a rerun says up to date.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import uuid

import pytest

from tests.conftest import PASSWORD_ENV, REPO, cli, write_inventory
from tests.infra.podman import PG_BINDIR
from tests.pgcheck import db_fingerprint, native_sql
from tests.remote_helpers import PROD_PW, PROD_PW_ENV, ssh_block

MODES = ["local-native", "local-container", "ssh-native", "ssh-container"]


@pytest.fixture(params=MODES)
def target(request, tmp_path, pg, cli_env):
    """(inventory, folder, run_sql, database, env) for one access mode and a new EMPTY database."""
    mode = request.param
    db = f"mig_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "sql"
    shutil.copytree(REPO / "configs" / "sql", folder)
    env = dict(cli_env)
    if mode.endswith("native"):
        pg.psql("-c", f'CREATE DATABASE "{db}"')
        run_sql = native_sql(str(pg.socket_dir), pg.port)
        host = {"postgres": {"host": "127.0.0.1", "port": pg.port, "database": db, "user": "bigskies",
                             "password_env": PASSWORD_ENV, "bindir": PG_BINDIR}}
        drop = lambda: pg.psql("-c", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')  # noqa: E731
    else:
        pc = request.getfixturevalue("pg_container")
        pc.exec_psql(f'CREATE DATABASE "{db}"')
        run_sql = lambda q, d: pc.exec_psql(q, d)  # noqa: E731
        env.update(pc.env)
        env[PASSWORD_ENV] = cli_env[PASSWORD_ENV]
        env[PROD_PW_ENV] = PROD_PW
        host = {"container": {"name": pc.name, "engine_command": "podman"},
                "postgres": {"database": db, "user": "bigskies", "password_env": PROD_PW_ENV, "bindir": PG_BINDIR}}
        drop = lambda: pc.exec_psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')  # noqa: E731
    host["migrations"] = {"dir": str(folder)}
    if mode.startswith("ssh"):
        srv = request.getfixturevalue("ssh_server")
        host.update({"connection": "ssh", "project_dir": str(tmp_path / "proj"), "ssh": ssh_block(srv),
                     "backup": {"dir": "backups"}})
        (tmp_path / "proj").mkdir()
    else:
        host.update({"connection": "local", "backup": {"dir": str(tmp_path / "backups")}})
    inv = write_inventory(tmp_path / "inventory.yaml", {"h": host})
    yield inv, folder, run_sql, db, env, mode
    drop()


def test_fresh_database_gets_the_schema_then_a_broken_file_is_located_and_rolled_back(target, tmp_path):
    inv, folder, run_sql, db, env, mode = target
    r = cli("db.migrate", "-i", str(inv), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "changed: [h] applied 5 migration(s), head 5" in r.stdout
    assert "pre-migrate backup:" in r.stdout
    got = run_sql("SELECT version || '|' || checksum FROM schema_migrations ORDER BY version", db).split()
    assert got == [f"{p.name[:3].lstrip('0')}|{hashlib.sha256(p.read_bytes()).hexdigest()}"
                   for p in sorted(folder.glob("*.sql"))]
    assert run_sql("SELECT count(*) FROM information_schema.tables WHERE table_name = 'observations'", db).strip() == "1"

    (folder / "006_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT nosuchcolumn\n  FROM users;\n")
    before = db_fingerprint(run_sql, db)
    r = cli("db.migrate", "-i", str(inv), "--no-backup", env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{folder / '006_broken.sql'}:2" in r.stderr and 'column "nosuchcolumn" does not exist' in r.stderr
    assert db_fingerprint(run_sql, db) == before
    (folder / "006_broken.sql").unlink()
    r = cli("db.migrate", "-i", str(inv), env=env)
    assert r.returncode == 0 and "ok: [h] up to date (head 5)" in r.stdout, r.stdout + r.stderr
    st = json.loads(cli("db.migrations", "-i", str(inv), "--json", env=env).stdout)
    assert st["counts"] == {"applied": 5, "pending": 0, "changed": 0, "unknown": 0}
