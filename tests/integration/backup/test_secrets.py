"""CONTRACTS.md section 3: the password never appears in any process's argv, in output,
logs or manifests, in every access mode.

The password (tests/conftest.PASSWORD) holds ``:``, ``\\``, ``@``, ``#`` and a space, and
the server really needs it (TCP + scram natively; in the container a scram-only
``local`` rule for a dedicated role). While pg_dump is held blocked by a test
transaction holding ``LOCK TABLE users IN ACCESS EXCLUSIVE MODE``, every
``/proc/*/cmdline`` on this machine is read (for SSH modes both ends are this
machine). /proc/*/environ is allowed to hold it (that is how it is handed over).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from psycopg import sql as pgsql

from bigskies_ops.pg.pgpass import escape
from tests.conftest import PASSWORD, PASSWORD_ENV, REPO, write_inventory
from tests.infra.podman import PG_BINDIR
from tests.remote_helpers import ssh_block

MODES = ["local-native", "local-container", "ssh-native", "ssh-container"]
SECRET_ROLE = "bs_secret_role"
LOCKER = "bigskies-test-locker"


def all_cmdlines() -> dict[int, bytes]:
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out[int(d.name)] = (d / "cmdline").read_bytes()
            except OSError:
                pass
    return out


@pytest.fixture(scope="module")
def container_secret_role(pg_container):
    """A superuser role in the container that must log in with PASSWORD (scram), even on the socket."""
    pc = pg_container
    lit = pgsql.Literal(PASSWORD).as_string()
    pc.exec_psql(f"DROP ROLE IF EXISTS {SECRET_ROLE}; CREATE ROLE {SECRET_ROLE} LOGIN SUPERUSER PASSWORD {lit};")
    pc.exec("/bin/sh", "-c", f"grep -q '^local all {SECRET_ROLE} ' /var/lib/postgresql/data/pg_hba.conf || "
                             f"sed -i '1i local all {SECRET_ROLE} scram-sha-256' /var/lib/postgresql/data/pg_hba.conf")
    pc.exec_psql("SELECT pg_reload_conf();")
    time.sleep(0.5)
    r = pc.exec(f"{PG_BINDIR}/psql", "-X", "-w", "-h", "/var/run/postgresql", "-U", SECRET_ROLE, "-d", "postgres",
                "-c", "SELECT 1", check=False)
    assert r.returncode != 0 and b"no password supplied" in r.stderr   # the password really matters
    yield SECRET_ROLE
    # leave the shared session container as we found it (tests/integration/dev/test_infra.py checks its pg_hba rules)
    pc.exec("/bin/sh", "-c", f"sed -i '/^local all {SECRET_ROLE} /d' /var/lib/postgresql/data/pg_hba.conf")
    pc.exec_psql(f"SELECT pg_reload_conf(); DROP ROLE IF EXISTS {SECRET_ROLE};")


@pytest.fixture(params=MODES)
def secret_target(request, tmp_path, pg, cli_env):
    mode = request.param
    db = f"sec_{uuid.uuid4().hex[:8]}"
    env = dict(cli_env)
    if mode.endswith("native"):
        pg.psql("-c", f'CREATE DATABASE "{db}" TEMPLATE bigskies_tpl STRATEGY FILE_COPY')
        host = {"postgres": {"host": "127.0.0.1", "port": pg.port, "database": db, "user": "bigskies",
                             "password_env": PASSWORD_ENV, "bindir": PG_BINDIR}}
        locker_argv = [f"{PG_BINDIR}/psql", "-X", "-q", "-h", str(pg.socket_dir), "-p", str(pg.port),
                       "-U", "bigskies", "-d", db]
        locker_env = dict(os.environ, PGAPPNAME=LOCKER)
        q = lambda s: pg.psql("-A", "-t", "-c", s, database=db)  # noqa: E731
        drop = lambda: pg.psql("-c", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')  # noqa: E731
    else:
        pc = request.getfixturevalue("pg_container")
        role = request.getfixturevalue("container_secret_role")
        pc.exec_psql(f'CREATE DATABASE "{db}"')
        pc.exec_psql("CREATE TABLE users (id int PRIMARY KEY, name text); "
                     "INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 50) g;", db)
        env.update(pc.env)
        host = {"container": {"name": pc.name, "engine_command": "podman"},
                "postgres": {"database": db, "user": role, "password_env": PASSWORD_ENV, "bindir": PG_BINDIR}}
        locker_argv = ["podman", "exec", "-i", "-e", f"PGAPPNAME={LOCKER}", pc.name, f"{PG_BINDIR}/psql", "-X",
                       "-q", "-h", "/var/run/postgresql", "-U", "bigskies", "-d", db]
        locker_env = pc.env
        q = lambda s: pc.exec_psql(s, db)  # noqa: E731
        drop = lambda: pc.exec_psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')  # noqa: E731
    if mode.startswith("ssh"):
        srv = request.getfixturevalue("ssh_server")
        (tmp_path / "proj").mkdir()
        host.update({"connection": "ssh", "project_dir": str(tmp_path / "proj"), "ssh": ssh_block(srv),
                     "backup": {"dir": "backups"}})
        bdir = tmp_path / "proj" / "backups"
    else:
        bdir = tmp_path / "backups"
        host.update({"connection": "local", "backup": {"dir": str(bdir)}})
    inv = write_inventory(tmp_path / "inventory.yaml", {"h": host})
    yield mode, inv, env, bdir, locker_argv, locker_env, q, db
    drop()


def test_password_is_in_no_argv_output_or_manifest_while_pg_dump_runs(secret_target, tmp_path):
    mode, inv, env, bdir, locker_argv, locker_env, q, db = secret_target
    needles = {PASSWORD.encode(), escape(PASSWORD).encode()}
    locker = subprocess.Popen(locker_argv, env=locker_env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    backup = None
    try:
        locker.stdin.write(b"BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120);\n")
        locker.stdin.flush()
        _wait(lambda: q(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{LOCKER}' "
                        f"AND wait_event = 'PgSleep'").strip() == "1", "the lock holder")
        backup = subprocess.Popen([sys.executable, "-m", "bigskies_ops", "db.backup", "-i", str(inv)], env=env,
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _wait(lambda: q("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' "
                        "AND wait_event_type = 'Lock'").strip() == "1", "pg_dump to block on the lock")
        cmdlines = all_cmdlines()
        # this test's pg_dump (its database name is unique): other xdist workers may be dumping too
        dumps = [c for c in cmdlines.values() if b"pg_dump" in c and b"--snapshot" in c and db.encode() in c]
        assert dumps, "the sample did not catch pg_dump itself"
        leaks = {pid: c.replace(b"\0", b" ")[:300] for pid, c in cmdlines.items() if any(n in c for n in needles)}
        assert not leaks, f"password in argv of {leaks}"
        if mode == "local-native":   # handed over as a private 0600 passfile named by PGPASSFILE
            pid = next(p for p, c in cmdlines.items()
                       if c.startswith(f"{PG_BINDIR}/pg_dump".encode()) and db.encode() in c)
            environ = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
            passfile = environ[b"PGPASSFILE"].decode()
            assert oct(os.stat(passfile).st_mode & 0o777) == "0o600" and b"PGPASSWORD" not in environ
    finally:
        q(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{LOCKER}'")
        locker.stdin.close()
        locker.wait(30)
        if backup is not None:
            out, err = backup.communicate(timeout=180)
    assert backup.returncode == 0, err.decode()
    for n in needles:
        assert n not in out and n not in err
    files = [p for p in bdir.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".manifest.json") for p in files)
    for p in files:
        if p.name.endswith(".json") or p.name.endswith(".log"):
            assert not any(n in p.read_bytes() for n in needles), p
    if mode == "local-native":
        assert not os.path.exists(passfile)     # removed in finally


def _wait(cond, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
