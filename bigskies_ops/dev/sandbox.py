"""Throwaway PostgreSQL clusters for the demo and the test suite.

A sandbox cluster lives entirely inside one folder (data directory, unix socket,
log) and listens on 127.0.0.1 only. It is stopped by the postmaster's process id
(``postmaster.pid``), never by a system service. ``initdb`` refuses to run as
root, so when we are root the server programs run as the ``postgres`` OS user
(see ../shared/ENVIRONMENT.md, "PostgreSQL clusters for tests").
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bigskies_ops.errors import CommandError

SERVER_BINDIRS = ("/usr/lib/postgresql/15/bin",)


def find_server_bindir() -> str:
    """Return the directory holding ``initdb``/``pg_ctl`` for PostgreSQL 15.

    Raises:
        CommandError: when no PostgreSQL server binaries are installed.
    """
    env = os.environ.get("BIGSKIES_PG_BINDIR")
    for cand in ([env] if env else []) + list(SERVER_BINDIRS):
        if cand and Path(cand, "initdb").exists():
            return cand
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and Path(out, "initdb").exists():
            return out
    raise CommandError("PostgreSQL server binaries (initdb) not found; install postgresql-15 "
                       "or set BIGSKIES_PG_BINDIR")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres_user() -> list[str]:
    """Prefix that runs a server program as the ``postgres`` OS user when we are root."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class Cluster:
    """A PostgreSQL cluster in ``base`` listening on 127.0.0.1:``port``.

    ``superuser`` is the bootstrap role made by initdb. Unix-socket connections
    are trusted; TCP connections need a scram-sha-256 password when
    ``password`` is given (so password handling is exercised for real).
    """

    base: Path
    port: int
    superuser: str = "bigskies"
    password: str | None = None

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    @property
    def logfile(self) -> Path:
        return self.base / "postgres.log"

    @property
    def bindir(self) -> str:
        return find_server_bindir()

    def _chown_for_server(self, path: Path) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def init(self) -> "Cluster":
        """Create the data directory with initdb (UTF8, C.UTF-8 locale).

        Raises:
            CommandError: initdb failed (its stderr is included).
        """
        self.base.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        for p in (self.base, self.socket_dir):
            self._chown_for_server(p)
        args = _as_postgres_user() + [
            f"{self.bindir}/initdb", "-D", str(self.datadir), "-U", self.superuser,
            "-E", "UTF8", "--locale=C.UTF-8", "--auth-local=trust",
            "--auth-host=" + ("scram-sha-256" if self.password else "trust"),
        ]
        pwfile = None
        if self.password:
            pwfile = self.base / "pwfile"
            pwfile.write_text(self.password + "\n")
            os.chmod(pwfile, 0o600)
            self._chown_for_server(pwfile)
            args += ["--pwfile", str(pwfile)]
        try:
            r = subprocess.run(args, capture_output=True, text=True)
        finally:
            if pwfile:
                pwfile.unlink(missing_ok=True)
        if r.returncode != 0:
            raise CommandError(f"initdb failed ({r.returncode}): {r.stderr.strip()[-800:]}")
        return self

    def start(self, timeout: float = 30.0, settings: dict | None = None) -> "Cluster":
        """Start the postmaster and wait until it accepts connections.

        Args:
            timeout: seconds to wait for the server.
            settings: extra ``-c name=value`` settings; the defaults suit throwaway test
                clusters (``fsync=off``); the benchmark passes ``{"fsync": "on"}``.

        Raises:
            CommandError: pg_ctl failed or the server did not come up in ``timeout`` seconds.
        """
        self.logfile.touch()
        self._chown_for_server(self.logfile)
        conf = {"fsync": "off", "max_connections": "60", "shared_buffers": "32MB", **(settings or {})}
        opts = (f"-c port={self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self.socket_dir} "
                + " ".join(f"-c {k}={v}" for k, v in conf.items()))
        args = _as_postgres_user() + [
            f"{self.bindir}/pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile),
            "-o", opts, "-w", "-t", str(int(timeout)), "start"]
        r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            raise CommandError(f"pg_ctl start failed: {r.stderr.strip()[-500:]}\n"
                               f"{self.logfile.read_text()[-800:]}")
        return self

    @property
    def pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the postmaster by its process id (fast shutdown, then SIGKILL)."""
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGINT)  # "fast" shutdown
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def psql(self, *args: str, database: str = "postgres", input: str | None = None,
             check: bool = True) -> str:
        """Run psql over the unix socket as the superuser; return stdout (text)."""
        r = subprocess.run(
            [f"{self.bindir}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir),
             "-p", str(self.port), "-U", self.superuser, "-d", database, *args],
            input=input, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise CommandError(f"psql failed ({r.returncode}): {r.stderr.strip()[-800:]}")
        return r.stdout
