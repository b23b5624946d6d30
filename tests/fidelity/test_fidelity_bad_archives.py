"""Archives that a default ``db.restore`` cannot simply load: each gives the
documented exit code and a message naming what matters, and harms nothing: the current
database's checksums (tests/pgcheck.py), the backup folder's sha256 list and the
cluster's list of databases are the same before and after a failure.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import uuid
from pathlib import Path

import pytest

from bigskies_ops.dev.sandbox import Cluster, free_port
from tests.conftest import PASSWORD, native_host, wait_unlocked, write_inventory
from tests.fidelity.harness import (CHANGE_SQL, ROLES_SQL, World, backup, cleanup, cli, cli_env, create_db,
                                    drop_db_like, oracle_load, prepare, psql)
from tests.pgcheck import db_fingerprint, dir_hashes, native_sql

# The roles that own objects or hold grants in cases/privileges.sql (written out by hand).
PRIVILEGES_ROLES = ["fid_owner", "fid_reader", "fid_app", "fid_writer", "fid_definer"]


@pytest.fixture(scope="module")
def world(pg, tmp_path_factory):
    w = World(pg, tmp_path_factory.mktemp("fidelity_bad"), cli_env(), keep_pre_restore=1)
    psql(pg, "postgres", ROLES_SQL)
    yield w
    cleanup(w)
    for name in getattr(w, "extra", []):
        drop_db_like(pg, name)


@pytest.fixture(scope="module")
def bare(run_root):
    """A second cluster where none of the fid_ roles exist."""
    c = Cluster(base=run_root / f"fid-bare-{uuid.uuid4().hex[:6]}", port=free_port(), password=PASSWORD)
    c.init().start()
    yield c
    c.stop()


def _databases(pg) -> list[str]:
    return sorted(psql(pg, "postgres", "\\pset tuples_only on\nSELECT datname FROM pg_database").split())


def _state(pg, database: str, folder: Path) -> dict:
    """What "nothing harmed" compares: checksums, backup folder, the cluster's databases."""
    return {"database": db_fingerprint(native_sql(str(pg.socket_dir), pg.port), database),
            "backup folder": dir_hashes(folder), "databases": _databases(pg)}


def _source(world: World, sql: str) -> tuple[str, Path]:
    """A new source database (owned by fid_dbowner) holding ``sql``; returns (name, inventory)."""
    name = f"fb_{uuid.uuid4().hex[:8]}"
    world.__dict__.setdefault("extra", []).append(name)
    create_db(world.pg, name, "fid_dbowner")
    psql(world.pg, name, sql, dbname=name)
    return name, world.host(name)


def _output(r) -> str:
    return r.stdout + r.stderr


@pytest.mark.parametrize("fmt", ["plain", "custom"])
def test_an_archive_naming_roles_missing_on_the_target_is_refused_before_anything_is_created(world, bare, fmt):
    archive = prepare(world, "privileges").archives[fmt]
    target = f"fid_target_{fmt}"
    create_db(bare, target, "bigskies")
    psql(bare, target, "CREATE TABLE kept AS SELECT generate_series(1, 100) AS x")
    inv = write_inventory(bare.base / f"inv-{fmt}.yaml", {"dev": native_host(bare, target, bare.base / f"b-{fmt}")})
    roles_before = psql(bare, "postgres", "SELECT rolname FROM pg_roles ORDER BY 1")
    before = _state(bare, target, archive.parent)
    r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=world.env)
    assert r.returncode == 3, f"exit {r.returncode}, want 3 (refused): {_output(r)}"
    missing = [role for role in PRIVILEGES_ROLES if role not in _output(r)]
    assert not missing, f"the message does not name the missing roles {missing}: {_output(r)}"
    assert _state(bare, target, archive.parent) == before
    assert psql(bare, "postgres", "SELECT rolname FROM pg_roles ORDER BY 1") == roles_before


def test_an_archive_of_a_database_whose_settings_block_writes_restores_with_the_settings_applied_after_the_data(world):
    name, inv = _source(world, "CREATE TABLE frozen (id int PRIMARY KEY, v text);\n"
                              "INSERT INTO frozen SELECT i, 'v' || i FROM generate_series(1, 1000) i;\n"
                              "CREATE SEQUENCE frozen_seq; SELECT setval('frozen_seq', 77);\n"
                              'ALTER DATABASE :"dbname" SET default_transaction_read_only = on;\n')
    archive = backup(world, inv, "plain")
    psql(world.pg, name, CHANGE_SQL)
    r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=world.env)
    assert r.returncode == 0, _output(r)
    oracle_load(world.pg, archive, f"{name}_oracle", "fid_dbowner")
    run = native_sql(str(world.pg.socket_dir), world.pg.port)
    assert db_fingerprint(run, name) == db_fingerprint(run, f"{name}_oracle")
    settings = psql(world.pg, "postgres", "\\pset tuples_only on\nSELECT s.setconfig FROM pg_db_role_setting s "
                    f"JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = '{name}' AND s.setrole = 0")
    assert settings.strip() == "{default_transaction_read_only=on}"
    assert psql(world.pg, name, "\\pset tuples_only on\nSHOW default_transaction_read_only").strip() == "on"


def test_three_restores_of_an_archive_holding_a_subscription_drop_the_oldest_copy_and_leave_no_side_databases(world):
    p = prepare(world, "subscriptions")
    for n in range(3):
        psql(world.pg, p.source, CHANGE_SQL)
        r = cli("db.restore", str(p.archives["plain"]), "-i", str(p.inventory), "--yes", env=world.env)
        assert r.returncode == 0, f"restore {n + 1} of 3: {_output(r)}"
        subs = psql(world.pg, p.source, "\\pset tuples_only on\nSELECT subname || ' ' || subenabled FROM pg_subscription "
                    "WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())")
        assert subs.strip() == "fid_sub false", f"restore {n + 1} of 3: subscriptions {subs!r}"
    wait_unlocked(p.inventory)  # the oldest copy is dropped after the restore returns
    ours = [d for d in _databases(world.pg) if d.startswith(p.source)]
    pre = [d for d in ours if d.startswith(p.source + "_pre_")]
    assert len(pre) == 1 and sorted(ours) == sorted([p.source] + pre), ours  # keep_pre_restore: 1


def _add_statement_to_plain_archive(archive: Path, statement: str) -> None:
    """Put ``statement`` before the first CREATE of a plain archive and make its manifest match."""
    text = gzip.decompress(archive.read_bytes()).decode()
    i = text.index("\nCREATE ")
    data = (text[:i] + "\n" + statement + "\n" + text[i:]).encode()
    archive.write_bytes(gzip.compress(data))
    mpath = Path(str(archive) + ".manifest.json")
    m = json.loads(mpath.read_text())
    m.update(sha256=hashlib.sha256(archive.read_bytes()).hexdigest(), bytes=archive.stat().st_size,
             raw_bytes=len(data))
    mpath.write_text(json.dumps(m, indent=2))


def test_an_archive_needing_an_extension_the_server_lacks_fails_naming_it_and_harms_nothing(world):
    name, inv = _source(world, "CREATE TABLE t (id int PRIMARY KEY, v text);\n"
                              "INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 500) i;\n")
    archive = backup(world, inv, "plain")
    _add_statement_to_plain_archive(archive, "CREATE EXTENSION IF NOT EXISTS fid_nonexistent_ext WITH SCHEMA public;")
    psql(world.pg, name, CHANGE_SQL)
    before = _state(world.pg, name, archive.parent)
    r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=world.env)
    assert r.returncode == 1, f"exit {r.returncode}, want 1: {_output(r)}"
    assert "fid_nonexistent_ext" in r.stderr, _output(r)
    assert _state(world.pg, name, archive.parent) == before


@pytest.mark.parametrize("fmt", ["plain", "custom"])
def test_a_function_in_a_constraint_that_fails_during_the_load_fails_naming_the_table_and_the_function(world, fmt):
    # alpha's rows are loaded before zlimits' (pg_dump orders table data by name), so
    # within_limit() finds no limit and the CHECK fails in PostgreSQL's own load too
    name, inv = _source(world, """
        CREATE TABLE zlimits (lim int);
        CREATE FUNCTION within_limit(v int) RETURNS boolean LANGUAGE plpgsql STABLE
          AS $$ BEGIN RETURN v <= coalesce((SELECT max(lim) FROM public.zlimits), -1); END $$;
        CREATE TABLE alpha (id int PRIMARY KEY, v int CHECK (within_limit(v)));
        INSERT INTO zlimits VALUES (1000);
        INSERT INTO alpha SELECT i, i FROM generate_series(1, 500) i;
        """)
    archive = backup(world, inv, fmt)
    with pytest.raises(AssertionError, match="alpha_v_check"):
        oracle_load(world.pg, archive, f"{name}_oracle", "fid_dbowner")
    psql(world.pg, name, CHANGE_SQL)
    before = _state(world.pg, name, archive.parent)
    r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=world.env)
    assert r.returncode == 1, f"exit {r.returncode}, want 1: {_output(r)}"
    assert "alpha" in r.stderr and "within_limit" in r.stderr, f"table and function not both named: {_output(r)}"
    assert _state(world.pg, name, archive.parent) == before
