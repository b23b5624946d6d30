"""A killed client or a dropped connection stops what it started on an SSH host, and no
password is ever on that host's disk (break-it trials: a SIGKILLed ``db.backup --host prod``
left ``pg_dump | gzip > .partial`` running there and a private pgpass file in /tmp; then
per-command pgpass files stayed while a psql waited for a lock).

"prodn" is the native test cluster reached over the test sshd with a password
(TCP + scram). Its pg_dump is a wrapper that records its pid and the PGPASSFILE it was
given, then execs the real pg_dump: the test knows which process to watch, and reads its
environment while it runs.
A lock held by the test makes pg_dump wait silently, the case where nothing else (no
SIGPIPE on a write) would ever stop it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, PASSWORD_ENV, REPO, cli, native_host, write_inventory
from tests.infra.podman import PG_BINDIR
from tests.pgcheck import db_fingerprint
from tests.remote_helpers import kill_ssh_sessions, process_gone, ssh_block, wait_for, wrapped_pg_dump_bindir


class World:
    pass


@pytest.fixture
def w(tmp_path, pg, dbname, ssh_server):
    w = World()
    w.rec = tmp_path / "pg_dump.rec"
    bindir = wrapped_pg_dump_bindir(tmp_path / "bin", f'echo "$$ $PGPASSFILE" >> {w.rec}\nexec "$REAL" "$@"\n')
    w.proj = tmp_path / "proj"
    w.dev_bdir = tmp_path / "dev-backups"
    w.db = dbname
    w.inv = write_inventory(tmp_path / "inv.yaml", {
        "prodn": {"connection": "ssh", "project_dir": str(w.proj), "ssh": ssh_block(ssh_server),
                  "postgres": {"host": "127.0.0.1", "port": pg.port, "database": dbname, "user": "bigskies",
                               "password_env": PASSWORD_ENV, "bindir": str(bindir)},
                  "backup": {"dir": "backups"}},
        "dev": native_host(pg, dbname, w.dev_bdir)})
    return w


class NativeLock:
    """ACCESS EXCLUSIVE on a table of the native test cluster, held by a psql of the test."""

    def __init__(self, pg, pg_sql, database: str, table: str = "users"):
        self.pg, self.pg_sql, self.database, self.table = pg, pg_sql, database, table

    def __enter__(self):
        self.proc = subprocess.Popen(
            [f"{PG_BINDIR}/psql", "-X", "-q", "-h", str(self.pg.socket_dir), "-p", str(self.pg.port),
             "-U", "bigskies", "-d", self.database], env={**os.environ, "PGAPPNAME": "bigskies-test-locker"},
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc.stdin.write(f"BEGIN; LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE; "
                              f"SELECT pg_sleep(120);\n".encode())
        self.proc.stdin.flush()
        wait_for(lambda: self._count("a.application_name = 'bigskies-test-locker' AND l.granted "
                                     "AND l.mode = 'AccessExclusiveLock'") > 0, 30, "the lock holder")
        return self

    def _count(self, where: str) -> int:
        return int(self.pg_sql(f"SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                               f"WHERE {where}", self.database).strip() or 0)

    def pg_dump_waiting(self) -> bool:
        return self._count("a.application_name = 'pg_dump' AND NOT l.granted") > 0

    def __exit__(self, *exc):
        self.pg_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'bigskies-test-locker'", "postgres")
        self.proc.stdin.close()
        self.proc.wait(15)


def _pg_dump_backends(pg_sql) -> int:
    return int(pg_sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump'",
                      "postgres").strip() or 0)


def _recorded(w) -> list[tuple[int, str]]:
    if not w.rec.exists():
        return []
    return [(int(a), b) for a, b in (l.split(" ", 1) for l in w.rec.read_text().splitlines() if l)]


TASKS = {"backup on prod": ["db.backup", "--host", "prodn"],
         "streamed pull": ["db.pull", "--from", "prodn", "--to", "dev"]}


@pytest.mark.parametrize("how", ["client SIGKILLed", "connection dropped"])
@pytest.mark.parametrize("task", list(TASKS))
def test_remote_pg_dump_stops_and_its_password_file_goes_when_the_client_goes(w, pg, pg_sql, ssh_server, cli_env,
                                                                              task, how):
    before = db_fingerprint(pg_sql, w.db)
    with NativeLock(pg, pg_sql, w.db) as lock:
        p = subprocess.Popen([sys.executable, "-m", "bigskies_ops", *TASKS[task], "-i", str(w.inv)], env=cli_env,
                             cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: _recorded(w) and lock.pg_dump_waiting(), 60, "pg_dump blocked on the lock")
            [(pid, pgpass)] = _recorded(w)
            # the password reached pg_dump by its environment, not by a file on the host
            assert pgpass == "" and f"PGPASSWORD={PASSWORD}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
            if how == "client SIGKILLed":
                p.kill()
            else:
                kill_ssh_sessions(ssh_server)
            wait_for(lambda: process_gone(pid), 15, "the remote pg_dump to stop")
            wait_for(lambda: _pg_dump_backends(pg_sql) == 0, 15, "pg_dump's session to end")
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    if how == "connection dropped":  # a loud failure, and the failure is on record
        assert p.returncode == 1, err + out
        assert "connection" in err.lower(), err
    # nothing harmed, nothing published
    assert db_fingerprint(pg_sql, w.db) == before
    for d in (w.proj / "backups" / "database", w.dev_bdir / "prodn"):
        assert not list(d.glob("*.sql.gz")) and not list(d.glob("*.dump")), list(d.iterdir())
        for m in d.glob("*.manifest.json"):
            assert json.loads(m.read_text())["status"] in ("STARTED", "FAILED")


def test_no_password_file_on_the_host_and_none_on_any_command_line(w, pg_sql, cli_env):
    """A backup and a pull of a native SSH host: the password only ever travels on the
    channel's stdin and lives in the environment of the remote processes."""
    r = cli("db.backup", "--host", "prodn", "-i", str(w.inv), env=cli_env)
    assert r.returncode == 0, r.stderr + r.stdout
    r = cli("db.pull", "--from", "prodn", "--to", "dev", "-i", str(w.inv), env=cli_env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert [f for _, f in _recorded(w)] == ["", ""]
    sent = (w.proj / "backups").rglob("*")
    assert not any(PASSWORD.encode() in p.read_bytes() for p in sent if p.is_file())
