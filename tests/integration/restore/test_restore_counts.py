"""How db.restore checks row counts without scanning every table again, on a real PostgreSQL 15.

A plain restore takes the rows from psql's ``COPY n`` tags; a parallel custom restore
from the server's statistics (``n_tup_ins``). Both are trusted only where they equal
the manifest's count; anything else is counted with ``count(*)``. These tests make the
manifest disagree with the archive and check that the restore fails, names the table,
and leaves the old database exactly as it was; and they compare the statistics path
with the test's own ``count(*)``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bigskies_ops.pg.access import PostgresAccess
from bigskies_ops import inventory
from bigskies_ops.jobs.sideload import inserted_rows
from tests.conftest import cli
from tests.pgcheck import db_fingerprint


def _backup(inv, env, fmt) -> Path:
    r = cli("db.backup", "-i", str(inv), "--format", fmt, "--json", env=env)
    assert r.returncode == 0, r.stderr
    return Path(json.loads(r.stdout)["path"])


@pytest.mark.parametrize("fmt", ["plain", "custom"])
def test_a_manifest_count_the_load_does_not_reproduce_fails_the_restore(fmt, local_inv, cli_env, pg_sql, dbname):
    inv, bdir = local_inv
    archive = _backup(inv, cli_env, fmt)
    mpath = Path(str(archive) + ".manifest.json")
    m = json.loads(mpath.read_text())
    for t in m["tables"]:
        if t["name"] == "observations":
            t["rows"] += 1  # the archive holds one row fewer than the manifest claims
    mpath.write_text(json.dumps(m))
    pg_sql("INSERT INTO users (username, email, password_hash) VALUES ('after', 'after@example.org', 'x')", dbname)
    before = db_fingerprint(pg_sql, dbname)
    r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "restored copy does not match the manifest" in r.stderr and "public.observations has" in r.stderr
    assert db_fingerprint(pg_sql, dbname) == before  # the old database is untouched
    leftovers = [d for d in pg_sql("SELECT datname FROM pg_database", "postgres").split() if "_restoring_" in d]
    assert leftovers == []
    assert json.loads(mpath.read_text())["status"] == "DONE"


@pytest.mark.parametrize("fmt", ["plain", "custom"])
def test_restore_with_server_reported_counts_matches_the_source(fmt, local_inv, cli_env, pg_sql, dbname):
    inv, bdir = local_inv
    want = {t: pg_sql(f"SELECT count(*) FROM {t}", dbname).strip()
            for t in ("users", "observations", "coordinator_config_history", "schema_migrations")}
    archive = _backup(inv, cli_env, fmt)
    pg_sql("DELETE FROM observations WHERE id % 3 = 0", dbname)
    r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {t: pg_sql(f"SELECT count(*) FROM {t}", dbname).strip() for t in want} == want


def test_inserted_rows_equal_count_star_and_leave_out_changed_tables(pg, pg_sql, dbname, tmp_path):
    target = dbname + "_ins"
    pg_sql(f'CREATE DATABASE "{target}" TEMPLATE template0', "postgres")
    try:
        pg_sql("CREATE TABLE a (id int); CREATE TABLE b (id int); CREATE TABLE c (id int);"
               "INSERT INTO a SELECT generate_series(1, 1234); INSERT INTO b SELECT generate_series(1, 10);"
               "DELETE FROM b WHERE id < 3", target)
        inv = inventory.parse({"hosts": {"dev": {"postgres": {
            "socket_dir": str(pg.socket_dir), "port": pg.port, "database": target, "user": "bigskies",
            "bindir": "/usr/lib/postgresql/15/bin"}, "backup": {"dir": str(tmp_path)}}}}, tmp_path / "inventory.yaml")
        with PostgresAccess(inv.host("dev")) as access:
            got = inserted_rows(access.sql(target))
        assert got is not None
        assert got[("public", "a")] == int(pg_sql("SELECT count(*) FROM a", target)) == 1234
        assert got[("public", "c")] == 0
        assert ("public", "b") not in got  # a delete makes n_tup_ins no count of live rows
    finally:
        pg_sql(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)', "postgres")
