"""The archive's sha256 is read beside the restore's other checks (issue 21): it is still
what a damaged archive is refused for, before anything is created or loaded, and the
file loaded must be the file hashed (found by helper-39's break trial of 0898870).
Real cluster, real CLI; every test checks the message, the exit code and that the
database, the database list and the backup folder are unharmed."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import cli, native_host, write_inventory
from tests.integration.restore.test_restore_check import _state
from tests.integration.restore.test_restore_safety import HeldSession, _backup, _last_error
from tests.pgcheck import db_fingerprint


def _wrong_sha(archive: Path) -> None:
    """The archive stays whole and loadable; its manifest records another sha256."""
    mp = Path(str(archive) + ".manifest.json")
    m = json.loads(mp.read_text())
    m["sha256"] = "0" * 64
    mp.write_text(json.dumps(m))


def test_a_damaged_archive_creates_no_roles(pg, pg_sql, tmp_path, dbname, cli_env):
    """``--roles`` creates the backup's missing roles in the cluster: only once the
    archive's sha256 matched (0898870 created them, then refused the archive)."""
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir, backup={"roles": True})})
    role = f"r_{dbname}"
    pg_sql(f'CREATE ROLE "{role}"; GRANT SELECT ON users TO "{role}"', dbname)
    archive = _backup(inv, cli_env, "--format", "custom")
    pg_sql(f'REVOKE SELECT ON users FROM "{role}"; DROP ROLE "{role}"', dbname)
    _wrong_sha(archive)
    fp, state = db_fingerprint(pg_sql, dbname), _state(pg_sql, bdir)
    r = cli("db.restore", str(archive), "-i", str(inv), "--yes", "--roles", env=cli_env)
    assert r.returncode == 1, r.stderr + r.stdout
    assert "sha256 differs from the manifest" in _last_error(r)
    assert "Roles created" not in r.stdout + r.stderr
    assert pg_sql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{role}'", "postgres").strip() == "0"
    assert db_fingerprint(pg_sql, dbname) == fp and _state(pg_sql, bdir) == state


def test_a_damaged_archive_is_named_before_the_other_refusals(pg, pg_sql, tmp_path, dbname, cli_env):
    """A session connected (exit 3 on its own) and a damaged archive: the damage is the
    refusal, exit 1, as when the sha256 was read first."""
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    archive = _backup(inv, cli_env)
    _wrong_sha(archive)
    fp, state = db_fingerprint(pg_sql, dbname), _state(pg_sql, bdir)
    held = HeldSession(pg, dbname)
    try:
        r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=cli_env)
        assert r.returncode == 1, r.stderr + r.stdout
        assert "sha256 differs from the manifest" in _last_error(r)
        assert held.alive()
    finally:
        held.close()
    assert db_fingerprint(pg_sql, dbname) == fp and _state(pg_sql, bdir) == state


def test_a_damaged_header_is_named_as_damage_not_as_a_newer_pg_dump(pg, pg_sql, tmp_path, dbname, cli_env):
    """Byte 6 of a custom archive is its format's minor version: set to 16, the header
    reads as a newer pg_dump's. With the manifest beside it, the restore says the file
    is damaged (its sha256) instead of asking for newer tools; --check agrees."""
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    archive = _backup(inv, cli_env, "--format", "custom")
    with open(archive, "r+b") as f:
        f.seek(6)
        f.write(b"\x10")
    fp, state = db_fingerprint(pg_sql, dbname), _state(pg_sql, bdir)
    r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 1, r.stderr + r.stdout
    line = _last_error(r)
    assert "sha256 differs from the manifest" in line and "newer" not in line
    r = cli("db.restore", str(archive), "-i", str(inv), "--check", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "sha256 differs from the manifest" in r.stdout
    assert db_fingerprint(pg_sql, dbname) == fp and _state(pg_sql, bdir) == state


def test_a_fifo_in_place_of_an_archive_is_refused_not_waited_on(pg, pg_sql, tmp_path, dbname, cli_env):
    """Reading a FIFO blocks until a writer comes: the check refused to wait forever."""
    bdir = tmp_path / "b"
    bdir.mkdir()
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    fifo = bdir / "bigskies_backup_20260101_000000.sql.gz"
    os.mkfifo(fifo)
    fp, dbs = db_fingerprint(pg_sql, dbname), pg_sql("SELECT string_agg(datname, ',' ORDER BY 1) FROM pg_database",
                                                     "postgres")
    for extra in ((), ("--check",)):
        r = cli("db.restore", str(fifo), "-i", str(inv), "--yes", *extra, env=cli_env, timeout=60)
        out = r.stdout + r.stderr
        assert "not a regular file" in out, out
        assert r.returncode == (0 if extra else 1), out
    assert db_fingerprint(pg_sql, dbname) == fp
    assert pg_sql("SELECT string_agg(datname, ',' ORDER BY 1) FROM pg_database", "postgres") == dbs
