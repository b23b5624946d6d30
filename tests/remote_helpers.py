"""Helpers for the SSH tests (tests/integration/hosts and tests/integration/pull): inventory entries for a
"prod" reached over the test sshd, and the test's own access to prod's data (podman exec psql)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from tests.infra.podman import PG_BINDIR
from tests.infra.sshd import _children

PROD_PW_ENV = "BIGSKIES_TEST_PROD_PW"
PROD_PW = "prod-secret"
PROD_TPL = "prod_tpl"


def ssh_block(srv, **extra) -> dict:
    b = {"host": "127.0.0.1", "port": srv.port, "user": "root", "key_filename": str(srv.client_key),
         "known_hosts_file": str(srv.known_hosts), "connect_timeout": 5}
    b.update(extra)
    return b


def prod_host(srv, pc, project_dir: Path, database: str, *, protected: bool = True, ssh: dict | None = None,
              **extra) -> dict:
    """SSH host whose PostgreSQL runs in the podman container ``pc`` (no published port)."""
    h = {"connection": "ssh", "project_dir": str(project_dir), "ssh": ssh_block(srv, **(ssh or {})),
         "container": {"name": pc.name, "engine_command": "podman"},
         "postgres": {"database": database, "user": "bigskies", "password_env": PROD_PW_ENV, "bindir": PG_BINDIR},
         "backup": {"dir": "backups"}, "protected": protected}
    for k, v in extra.items():
        h[k] = {**h[k], **v} if isinstance(v, dict) and isinstance(h.get(k), dict) else v
    return h


def wrapped_pg_dump_bindir(folder: Path, body: str) -> Path:
    """A bindir with the real psql and pg_restore and a ``pg_dump`` shell script whose
    ``--version`` is the real one and whose other runs do ``body`` (sh; ``$REAL`` is the
    real pg_dump). Returns the folder (for ``postgres.bindir``)."""
    folder.mkdir()
    for t in ("psql", "pg_restore"):
        (folder / t).symlink_to(f"{PG_BINDIR}/{t}")
    (folder / "pg_dump").write_text(
        "#!/bin/sh\n"
        f"REAL={PG_BINDIR}/pg_dump\n"
        'case "$1" in --version) exec "$REAL" --version;; esac\n' + body)
    (folder / "pg_dump").chmod(0o755)
    return folder


def prod_sql(pc):
    """``run_sql(sql, database)`` for tests/pgcheck.py: psql inside the container (podman exec -i)."""
    def run(sql: str, database: str) -> str:
        return pc.exec_psql(sql, database)
    return run


def new_prod_db(pc) -> str:
    name = f"p_{uuid.uuid4().hex[:10]}"
    pc.exec_psql(f'CREATE DATABASE "{name}" TEMPLATE "{PROD_TPL}" STRATEGY FILE_COPY')
    return name


def drop_prod_db(pc, name: str) -> None:
    rows = pc.exec_psql(f"SELECT datname FROM pg_database WHERE left(datname, 12) = left('{name}', 12)")
    for r in rows.split():
        pc.exec_psql(f'DROP DATABASE IF EXISTS "{r}" WITH (FORCE)')


class TableLock:
    """Hold ACCESS EXCLUSIVE on a table in prod's database (pg_dump then waits silently)."""

    def __init__(self, pc, database: str, table: str = "users"):
        self.pc, self.database, self.table = pc, database, table
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        argv = ["podman", "exec", "-i", "-e", "PGAPPNAME=bigskies-test-locker", self.pc.name,
                f"{PG_BINDIR}/psql", "-X", "-q", "-h", "/var/run/postgresql", "-U", "bigskies", "-d", self.database]
        self.proc = subprocess.Popen(argv, env=self.pc.env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.proc.stdin.write(f"BEGIN; LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120);\n".encode())
        self.proc.stdin.flush()
        wait_for(lambda: self.pc.exec_psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE "
            "a.application_name = 'bigskies-test-locker' AND l.mode = 'AccessExclusiveLock' AND l.granted",
            self.database).strip() not in ("", "0"), 30, "lock holder")
        return self

    def __exit__(self, *exc):
        self.pc.exec_psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'bigskies-test-locker'")
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def pg_dump_waiting(pc, database: str) -> bool:
    return pc.exec_psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' "
                        "AND wait_event_type = 'Lock'", database).strip() not in ("", "0")


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (gone, or a zombie nobody reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def kill_ssh_sessions(srv) -> list[int]:
    """Kill (SIGKILL) sshd's per-connection processes: every connection through it drops."""
    kids = _children(srv.pid)
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return kids
