"""A restore on servers set up the way real ones are (issue 16), each refused before
anything is created, with a message that says what to do: a role that may not swap the
database in, a server without room for the side database, and restores that follow
each other within one second. Checks use the test's own psql (tests/pgcheck.py)."""
from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from bigskies_ops.sandbox import Cluster, free_port
from tests.conftest import cli, native_host, write_inventory
from tests.pgcheck import db_fingerprint, dir_hashes

PSQL = "/usr/lib/postgresql/15/bin/psql"


def _dbs(pg_sql) -> set[str]:
    return {l for l in pg_sql("SELECT datname FROM pg_database", "postgres").splitlines() if l}


def _backup(inv, env) -> str:
    r = cli("db.backup", "-i", str(inv), "--json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["path"]


@pytest.mark.parametrize("createdb", [True, False])
def test_a_role_that_cannot_swap_the_database_in_is_refused_before_loading(tmp_path, pg, pg_sql, dbname, cli_env,
                                                                          createdb):
    role = f"fid_r_{uuid.uuid4().hex[:6]}"
    pg_sql(f"CREATE ROLE {role} LOGIN {'CREATEDB' if createdb else ''}; "
           f"GRANT CONNECT ON DATABASE {dbname} TO {role}", "postgres")
    bdir = tmp_path / "b"
    owner_inv = write_inventory(tmp_path / "o.yaml", {"dev": native_host(pg, dbname, bdir)})
    archive = _backup(owner_inv, cli_env)
    inv = write_inventory(tmp_path / "r.yaml", {"dev": native_host(
        pg, dbname, bdir, postgres={"host": str(pg.socket_dir), "user": role, "password_env": None})})
    before, files, dbs = db_fingerprint(pg_sql, dbname), dir_hashes(bdir), _dbs(pg_sql)
    r = cli("db.restore", archive, "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    if createdb:
        assert "does not own database" in r.stderr and "'bigskies'" in r.stderr
    else:
        assert "CREATEDB" in r.stderr
    assert "Nothing was changed" in r.stderr
    assert db_fingerprint(pg_sql, dbname) == before and dir_hashes(bdir) == files and _dbs(pg_sql) == dbs


def test_restores_within_one_second_take_distinct_names(tmp_path, pg, pg_sql, dbname, cli_env, monkeypatch):
    from datetime import datetime, timezone

    from bigskies_ops.access import PostgresAccess
    from bigskies_ops.inventory import load
    from bigskies_ops.restore import pre_restore_name, side_db_name, unused_name
    when = datetime(2026, 12, 3, 9, 0, 0, tzinfo=timezone.utc)
    taken = [f"{dbname}_pre_20261203090000", f"{dbname}_pre_20261203090000_2", f"{dbname}_restoring_20261203090000"]
    for name in taken:  # what two restores earlier in this second left
        pg_sql(f'CREATE DATABASE "{name}"', "postgres")
    monkeypatch.setenv("BIGSKIES_TEST_PGPASSWORD", cli_env["BIGSKIES_TEST_PGPASSWORD"])
    inv = write_inventory(tmp_path / "i.yaml", {"dev": native_host(pg, dbname, tmp_path / "b")})
    with PostgresAccess(load(str(inv)).host("dev")) as access:
        maint = access.sql("postgres")
        assert unused_name(maint, pre_restore_name, dbname, when) == f"{dbname}_pre_20261203090000_3"
        assert unused_name(maint, side_db_name, dbname, when) == f"{dbname}_restoring_20261203090000_2"
        assert unused_name(maint, pre_restore_name, dbname, when.replace(second=1)) == f"{dbname}_pre_20261203090001"


def test_three_restores_in_a_row_leave_three_distinct_pre_restore_copies(tmp_path, pg, pg_sql, dbname, cli_env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "i.yaml", {"dev": native_host(pg, dbname, bdir, backup={"keep_pre_restore": 5})})
    archive = _backup(inv, cli_env)
    for _ in range(3):
        r = cli("db.restore", archive, "-i", str(inv), "--yes", "--jobs", "1", env=cli_env)
        assert r.returncode == 0, r.stderr
    copies = [d for d in _dbs(pg_sql) if d.startswith(dbname + "_pre_")]
    assert len(copies) == 3


@pytest.fixture
def small_disk_cluster(run_root):
    """A cluster whose data directory is on a 96 MB tmpfs (root mounts it; unmounted after)."""
    mnt = run_root / f"small-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mnt)], check=True)
    c = Cluster(base=mnt / "pg", port=free_port())
    try:
        c.init().start(settings={"max_wal_size": "32MB", "min_wal_size": "32MB"})
        yield c
    finally:
        try:
            c.stop()
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_restore_onto_a_server_without_room_for_the_side_database_is_refused(tmp_path, small_disk_cluster,
                                                                              cli_env):
    c = small_disk_cluster
    c.psql("-c", "CREATE DATABASE big")
    c.psql("-c", "CREATE TABLE t AS SELECT g AS id, repeat(md5(g::text), 8) AS v FROM generate_series(1, 80000) g",
           database="big")
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "i.yaml", {"dev": {
        "connection": "local", "backup": {"dir": str(bdir)},
        "postgres": {"host": str(c.socket_dir), "port": c.port, "database": "big", "user": "bigskies",
                     "bindir": "/usr/lib/postgresql/15/bin"}}})
    archive = _backup(inv, cli_env)

    def run(sql):
        return subprocess.run([PSQL, "-X", "-A", "-t", "-h", str(c.socket_dir), "-p", str(c.port), "-U", "bigskies",
                               "-d", "postgres", "-c", sql], capture_output=True, text=True, check=True).stdout.strip()
    before = run("SELECT md5(string_agg(datname, ',' ORDER BY datname)) FROM pg_database")
    files = dir_hashes(bdir)
    r = cli("db.restore", archive, "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert "free" in r.stderr and "--skip-space-check" in r.stderr and "MiB" in r.stderr
    assert run("SELECT md5(string_agg(datname, ',' ORDER BY datname)) FROM pg_database") == before
    assert run("SELECT 1") == "1"  # the server is up
    assert dir_hashes(bdir) == files
