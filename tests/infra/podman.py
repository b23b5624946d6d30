"""Real PostgreSQL 15 servers inside podman containers, for the test suite.

There is no image registry here, so the image is built locally from a skeleton
root filesystem and the host's ``/usr`` and ``/etc`` are bind-mounted read-only
for the binaries (see ../shared/ENVIRONMENT.md, "Containers"). Podman reads its
settings from a ``containers.conf`` written into the test run's folder and
pointed at by ``CONTAINERS_CONF``; nothing under /etc is touched.

Containers run with ``--network none`` (no published port, no traffic at all:
the product reaches the server with ``podman exec`` on its unix socket) and are
labelled ``bigskies-test=1`` so leftovers are easy to spot. ``stop()`` removes
the container by name and then checks that its processes are gone.
"""
from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
import time
from pathlib import Path

PG_BINDIR = "/usr/lib/postgresql/15/bin"
BASE_IMAGE = "localhost/bigskies-pgbase:15"
SOCKET_DIR = "/var/run/postgresql"
DATA_DIR = "/var/lib/postgresql/data"
TEST_LABEL = "bigskies-test=1"

# The default OCI runtime (crun) and the default ulimits fail inside this sandbox.
CONTAINERS_CONF_TEXT = '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n'

# Seconds spent by ensure_base_image() per image name built in this process
# (absent when the image already existed); for timing reports.
BUILD_SECONDS: dict[str, float] = {}


class PodmanError(RuntimeError):
    """A podman command failed; the message carries its stderr."""


def podman_env(run_dir: Path) -> dict:
    """Write ``containers.conf`` into ``run_dir``; return ``os.environ`` plus ``CONTAINERS_CONF``.

    Podman keeps its default storage (/var/lib/containers) so the base image is
    cached across runs; only the configuration lives in the run folder.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    conf = run_dir / "containers.conf"
    conf.write_text(CONTAINERS_CONF_TEXT)
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(conf)
    return env


def podman(env: dict, *args: str, input: bytes | None = None, check: bool = True,
           timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``podman ARGS`` with ``env``; return the completed process (bytes output).

    Raises:
        PodmanError: the command exited non-zero and ``check`` is true.
    """
    r = subprocess.run(["podman", *args], env=env, input=input, capture_output=True,
                       timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise PodmanError(f"podman {' '.join(args[:3])} ... failed ({r.returncode}): "
                          f"{r.stderr.decode(errors='replace').strip()[-1500:]}")
    return r


def image_exists(env: dict, name: str = BASE_IMAGE) -> bool:
    return podman(env, "image", "exists", name, check=False).returncode == 0


def container_names(env: dict) -> list[str]:
    """Names of all containers (running or not) known to podman."""
    out = podman(env, "ps", "-a", "--format", "{{.Names}}").stdout.decode()
    return [n for n in out.split() if n]


def _make_skeleton(root: Path) -> None:
    for d in ("usr", "etc", "proc", "sys", "dev", "tmp", "run",
              "var/run/postgresql", "var/lib/postgresql"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"),
                         ("sbin", "usr/sbin")):
        (root / link).symlink_to(target)
    os.chmod(root / "tmp", 0o1777)
    # The server runs as the host's postgres uid (/etc is the host's): let it write.
    pw = pwd.getpwnam("postgres")
    for d in ("var/run/postgresql", "var/lib/postgresql"):
        os.chown(root / d, pw.pw_uid, pw.pw_gid)
        os.chmod(root / d, 0o775)


def ensure_base_image(env: dict, name: str = BASE_IMAGE) -> str:
    """Build ``name`` from a skeleton root filesystem unless it already exists; return ``name``.

    The image holds only empty directories and symlinks (``tar | podman import``);
    containers bind-mount the host's /usr and /etc. Building takes well under a second.

    Raises:
        PodmanError: tar or ``podman import`` failed.
    """
    if image_exists(env, name):
        return name
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bigskies-pgbase-") as tmp:
        root = Path(tmp) / "rootfs"
        root.mkdir()
        _make_skeleton(root)
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            imp = subprocess.run(["podman", "import", "--change", "USER=postgres",
                                  "--change", "WORKDIR=/var/lib/postgresql", "-", name],
                                 stdin=tar.stdout, env=env, capture_output=True, timeout=120)
        finally:
            tar.stdout.close()
            tar_rc = tar.wait()
    if tar_rc != 0 or imp.returncode != 0:
        raise PodmanError(f"building {name} failed (tar {tar_rc}, import {imp.returncode}): "
                          f"{imp.stderr.decode(errors='replace').strip()[-1500:]}")
    BUILD_SECONDS[name] = time.monotonic() - t0
    return name


def remove_image(env: dict, name: str = BASE_IMAGE) -> None:
    """Remove ``name`` (no error when it does not exist)."""
    podman(env, "rmi", "--ignore", name, check=False)


def _pid_alive(pid: int | None) -> bool:
    """True when ``pid`` exists and is not a zombie (zombies are reaped by init later)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _server_script(superuser: str, with_password: bool) -> str:
    """Shell run as PID 1 of the container: initdb once, then exec postgres."""
    pwopt = "--pwfile=/run/bigskies-pw " if with_password else ""
    return (
        "set -e\n"
        f"B={PG_BINDIR}\n"
        f"if [ ! -s {DATA_DIR}/PG_VERSION ]; then\n"
        f"  $B/initdb -D {DATA_DIR} -U {superuser} -E UTF8 --locale=C.UTF-8 --no-sync "
        f"--auth-local=trust --auth-host={'scram-sha-256' if with_password else 'trust'} "
        f"{pwopt}>/tmp/initdb.log 2>&1 || {{ cat /tmp/initdb.log >&2; exit 1; }}\n"
        "fi\n"
        f"exec $B/postgres -D {DATA_DIR} -c listen_addresses= "
        f"-c unix_socket_directories={SOCKET_DIR} -c fsync=off "
        "-c max_connections=60 -c shared_buffers=32MB\n"
    )


class PostgresContainer:
    """A PostgreSQL 15 server running in a detached podman container.

    Usage: ``pc = PostgresContainer().start("bs-prod", run_dir, env)`` ... ``pc.stop()``.
    The superuser connects over the unix socket ``/var/run/postgresql`` inside the
    container with trust auth; when ``password`` is given it is set as the
    superuser's password and TCP connections (none by default) need scram-sha-256.
    """

    def __init__(self, image: str = BASE_IMAGE):
        self.image = image
        self.name: str | None = None
        self.env: dict | None = None
        self.run_dir: Path | None = None
        self.superuser = "bigskies"
        self.password: str | None = None
        self.pid: int | None = None          # the postgres postmaster (host pid namespace)
        self.conmon_pid: int | None = None   # podman's monitor process for the container
        self.container_id: str | None = None
        self.start_seconds: float | None = None

    # -- lifecycle ---------------------------------------------------------------
    def start(self, name: str, run_dir: Path, env: dict, superuser: str = "bigskies",
              password: str | None = None, timeout: float = 60.0) -> "PostgresContainer":
        """Run the container and wait until ``pg_isready`` succeeds inside it.

        Raises:
            PodmanError: the container did not start or PostgreSQL was not ready in
                ``timeout`` seconds (its log is included; the container is removed).
        """
        t0 = time.monotonic()
        self.name, self.env, self.run_dir = name, env, Path(run_dir)
        self.superuser, self.password = superuser, password
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.image == BASE_IMAGE:
            ensure_base_image(env)  # cheap when present; guards against a concurrent rmi
        if podman(env, "container", "exists", name, check=False).returncode == 0:
            raise PodmanError(f"a container named {name!r} already exists")
        args = ["run", "-d", "--name", name, "--label", TEST_LABEL,
                "--label", f"bigskies-run={self.run_dir}", "--network", "none",
                "--stop-signal", "SIGINT",  # postgres "fast" shutdown
                "-v", "/usr:/usr:ro", "-v", "/etc:/etc:ro", "--user", "postgres"]
        pwfile = None
        if password is not None:
            pw = pwd.getpwnam("postgres")
            pwfile = self.run_dir / f"{name}.pwfile"
            pwfile.write_text(password + "\n")
            os.chmod(pwfile, 0o600)
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
            args += ["-v", f"{pwfile}:/run/bigskies-pw:ro"]
        args += [self.image, "/bin/sh", "-c", _server_script(superuser, password is not None)]
        try:
            self.container_id = podman(env, *args).stdout.decode().strip()
            self._wait_ready(timeout)
        except BaseException:
            self._dump_logs()
            podman(env, "rm", "-f", "-t", "0", name, check=False)
            raise
        finally:
            if pwfile is not None:
                pwfile.unlink(missing_ok=True)
        state = podman(env, "inspect", name, "--format",
                       "{{.State.Pid}} {{.State.ConmonPid}}").stdout.decode().split()
        self.pid, self.conmon_pid = int(state[0]), int(state[1])
        self.start_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = b""
        while True:
            running = podman(self.env, "inspect", self.name, "--format", "{{.State.Running}}",
                             check=False).stdout.decode().strip()
            if running == "false":
                raise PodmanError(f"container {self.name} exited before PostgreSQL was ready:\n"
                                  f"{self.logs()[-1500:]}")
            r = podman(self.env, "exec", self.name, f"{PG_BINDIR}/pg_isready", "-q",
                       "-h", SOCKET_DIR, "-U", self.superuser, check=False)
            if r.returncode == 0:
                return
            last = r.stderr
            if time.monotonic() > deadline:
                raise PodmanError(f"PostgreSQL in {self.name} not ready after {timeout}s "
                                  f"({last.decode(errors='replace').strip()}):\n"
                                  f"{self.logs()[-1500:]}")
            time.sleep(0.2)

    def logs(self) -> str:
        """The container's output (postgres logs to stderr)."""
        r = podman(self.env, "logs", self.name, check=False)
        return (r.stdout + r.stderr).decode(errors="replace")

    def _dump_logs(self) -> None:
        if self.run_dir is not None and self.name:
            try:
                (self.run_dir / f"{self.name}.log").write_text(self.logs())
            except OSError:
                pass

    def stop(self, timeout: float = 15.0) -> None:
        """Remove the container (``podman rm -f -t 2``), saving its log to run_dir/NAME.log.

        Raises:
            PodmanError: the container or its processes still exist afterwards.
        """
        if not self.name:
            return
        self._dump_logs()
        podman(self.env, "rm", "-f", "-t", "2", self.name, check=False)
        deadline = time.monotonic() + timeout
        while True:
            exists = podman(self.env, "container", "exists", self.name,
                            check=False).returncode == 0
            alive = [p for p in (self.pid, self.conmon_pid) if _pid_alive(p)]
            if not exists and not alive:
                break
            if time.monotonic() > deadline:
                raise PodmanError(f"container {self.name} not gone after stop "
                                  f"(exists={exists}, live pids={alive})")
            time.sleep(0.2)
        self.name = None

    @property
    def running(self) -> bool:
        if not self.name:
            return False
        out = podman(self.env, "inspect", self.name, "--format", "{{.State.Running}}",
                     check=False).stdout.decode().strip()
        return out == "true"

    # -- helpers for test assertions ---------------------------------------------
    def exec(self, *argv: str, input: bytes | None = None, check: bool = True,
             timeout: float = 300.0) -> subprocess.CompletedProcess:
        """``podman exec -i NAME ARGV`` with stdin a pipe (no TTY); bytes in and out."""
        return podman(self.env, "exec", "-i", self.name, *argv, input=input if input is not None
                      else b"", check=check, timeout=timeout)

    def exec_psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql inside the container (unaligned, tuples only); return stdout.

        Raises:
            PodmanError: psql failed (ON_ERROR_STOP is set).
        """
        r = self.exec(f"{PG_BINDIR}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                      "-h", SOCKET_DIR, "-U", self.superuser, "-d", database,
                      input=sql.encode(), check=True)
        return r.stdout.decode()

    def psql_argv(self, database: str = "postgres") -> list[str]:
        """argv (after ``podman exec -i NAME``) for a psql session as the superuser."""
        return [f"{PG_BINDIR}/psql", "-X", "-h", SOCKET_DIR, "-U", self.superuser, "-d", database]
