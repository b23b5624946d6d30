"""Container access mode (``podman exec -i``, no published port) on a real PostgreSQL 15
container: backup plain and custom, change the source, restore, compare with the
test's own psql run through ``podman exec -i``; a backup under a pty stays byte-valid;
pg_dump's own messages (``--verbose``) never end up inside a dump.
"""
from __future__ import annotations

import gzip
import json
import os
import pty
import select
import sys
import time
import uuid
from pathlib import Path

import pytest

from bigskies_ops.inventory import load as load_inventory
from tests.conftest import REPO, cli, load_bigskies, write_inventory
from tests.pgcheck import db_fingerprint


@pytest.fixture(scope="module")
def ctr(pg_container):
    """(container, database, run_sql through ``podman exec -i``) with BIG SKIES data loaded."""
    db = f"bs_ctr_{uuid.uuid4().hex[:6]}"
    pg_container.exec_psql(f'CREATE DATABASE "{db}"')

    def run_sql(sql: str, database: str) -> str:
        return pg_container.exec_psql(sql, database)

    load_bigskies(run_sql, db)
    yield pg_container, db, run_sql
    for name in pg_container.exec_psql(
            f"SELECT datname FROM pg_database WHERE starts_with(datname, '{db}')").split():
        pg_container.exec_psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def ctr_inv(ctr, tmp_path):
    pc, db, _ = ctr
    bdir = tmp_path / "backups"
    inv = write_inventory(tmp_path / "inventory.yaml", {"box": {
        "connection": "local",
        "container": {"name": pc.name, "engine_command": "podman"},
        "postgres": {"database": db, "user": "bigskies", "bindir": "/usr/lib/postgresql/15/bin"},
        "backup": {"dir": str(bdir), "keep_pre_restore": 1}}})
    return inv, bdir


@pytest.fixture
def ctr_env(cli_env, podman_env):
    return dict(cli_env, CONTAINERS_CONF=podman_env["CONTAINERS_CONF"])


def _backup(inv, env, fmt) -> Path:
    r = cli("db.backup", "-i", str(inv), "--format", fmt, "--json", env=env)
    assert r.returncode == 0, r.stderr
    return Path(json.loads(r.stdout)["path"])


def test_container_backup_restore_round_trip_plain_and_custom(ctr, ctr_inv, ctr_env):
    pc, db, run_sql = ctr
    inv, bdir = ctr_inv
    before = db_fingerprint(run_sql, db)
    assert before["tables"]["public.users"].split()[0] != "0"
    archives = {fmt: _backup(inv, ctr_env, fmt) for fmt in ("plain", "custom")}
    for fmt, path in archives.items():
        m = json.loads(Path(str(path) + ".manifest.json").read_text())
        assert m["status"] == "DONE" and m["access_mode"] == "local-container" and m["container"] == pc.name
        assert m["argv"][:3] == ["podman", "exec", "-i"] and "-t" not in m["argv"] and "-it" not in m["argv"]
        # change the source after the backup, then restore: the copy equals the backed-up state
        run_sql("DELETE FROM coordinator_config_history WHERE id % 3 = 0; "
                f"UPDATE users SET display_name = '{fmt} changed ' || id; "
                "SELECT lo_unlink(min(oid)) FROM pg_largeobject_metadata;", db)
        assert db_fingerprint(run_sql, db) != before
        r = cli("db.restore", str(path), "-i", str(inv), "--yes", env=ctr_env)
        assert r.returncode == 0, r.stderr + r.stdout
        assert db_fingerprint(run_sql, db) == before, fmt


def _run_in_pty(args, env, timeout=180):
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.chdir(REPO)
            os.execve(sys.executable, [sys.executable, "-m", "bigskies_ops", *args], env)
        finally:
            os._exit(127)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                out += data
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_backup_under_a_pty_is_byte_valid_and_restores(ctr, ctr_inv, ctr_env):
    pc, db, run_sql = ctr
    inv, bdir = ctr_inv
    before = db_fingerprint(run_sql, db)
    rc, text = _run_in_pty(["db.backup", "-i", str(inv), "--format", "plain"], ctr_env)
    assert rc == 0, text
    (path,) = list(bdir.glob("*.sql.gz"))
    sql = gzip.decompress(path.read_bytes())  # raises on any corruption (CRC, length)
    assert sql.startswith(b"--\n-- PostgreSQL database dump\n")
    assert b"-- PostgreSQL database dump complete" in sql[-300:]
    assert b"\r\n" not in sql[:4096]  # no terminal line discipline in the stream
    run_sql("TRUNCATE coordinator_config_history", db)
    r = cli("db.restore", str(path), "-i", str(inv), "--yes", env=ctr_env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert db_fingerprint(run_sql, db) == before


@pytest.mark.parametrize("fmt", ["plain", "custom"])
def test_pg_dump_verbose_messages_never_inside_the_dump(ctr, ctr_inv, podman_env, monkeypatch, fmt):
    from bigskies_ops.jobs.backup import backup
    pc, db, run_sql = ctr
    inv, bdir = ctr_inv
    monkeypatch.setenv("CONTAINERS_CONF", podman_env["CONTAINERS_CONF"])
    host = load_inventory(inv).host("box")
    res = backup(host, fmt=fmt, verbose=True)
    m = res.manifest
    assert "--verbose" in m["argv"]
    assert "pg_dump: " in (m["stderr_tail"] or "")  # the messages went to stderr ...
    data = Path(res.backup.path).read_bytes()
    if fmt == "plain":
        text = gzip.decompress(data)
    else:  # ... and not into the archive: decode every data block with pg_restore in the container
        r = pc.exec("/usr/lib/postgresql/15/bin/pg_restore", "--file", "-", input=data)
        assert r.returncode == 0, r.stderr
        text = r.stdout
    assert b"pg_dump: " not in text
    assert [l for l in text.splitlines() if l.startswith(b"pg_dump:")] == []


def test_container_started_at_is_utc_iso_8601_in_status_and_ping(ctr_inv, ctr_env):
    """podman prints {{.State.StartedAt}} as Go's String() ("2026-12-03 15:32:12.258084757
    +0000 UTC"); the JSON contract (docs/cli.md "JSON output") wants UTC ISO-8601."""
    import re
    inv, _ = ctr_inv
    r = cli("db.status", "-i", str(inv), "--json", env=ctr_env)
    assert r.returncode == 0, r.stderr
    started = json.loads(r.stdout)["container"]["started_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", started), started
    r = cli("inventory.ping", "-i", str(inv), "--json", env=ctr_env)
    assert r.returncode == 0, r.stderr + r.stdout
    check = {c["check"]: c for c in json.loads(r.stdout)["hosts"][0]["checks"]}["container"]
    assert check["started_at"] == started, check
    r = cli("db.status", "-i", str(inv), env=ctr_env)
    assert f"since {started}" in r.stdout, r.stdout
