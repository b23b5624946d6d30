"""A private OpenSSH server on 127.0.0.1 for the test suite.

Everything lives in one folder of the test run: host key, client key,
``authorized_keys``, ``sshd_config``, pid file, log, and the client side
(``known_hosts`` with the server's real host key and an ``ssh_config`` with a
``Host testprod`` alias), so tests exercise strict host-key checking rather than
auto-accept. The server is our own child process (``sshd -D -e``), stopped by
its process id; the system sshd is never touched. See
../shared/ENVIRONMENT.md, "SSH".
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
# What remote commands see as PATH (sshd does not pass on ours).
REMOTE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SSHServerError(RuntimeError):
    """sshd could not be set up or did not come up."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path, comment: str) -> None:
    if path.exists():
        return
    r = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", str(path)], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SSHServerError(f"ssh-keygen failed: {r.stderr.strip()}")


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (sshd's per-connection processes)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class SSHServer:
    """sshd on 127.0.0.1:``port`` accepting ``user`` (root) with a generated ed25519 key.

    ``setenv`` entries (and ``CONTAINERS_CONF`` when ``containers_conf`` is given)
    become ``SetEnv`` lines, i.e. the environment of every remote command; PATH is
    always set to :data:`REMOTE_PATH` unless ``setenv`` overrides it.

    Usage: ``srv = SSHServer(run_dir / "ssh", free_port(), containers_conf=...).start()``,
    then ``ssh -F srv.ssh_config testprod CMD``; ``srv.stop()`` at the end.
    """

    def __init__(self, run_dir: Path, port: int, *, containers_conf: str | Path | None = None,
                 setenv: dict[str, str] | None = None, alias: str = "testprod",
                 user: str = "root"):
        self.dir = Path(run_dir)
        self.port = port
        self.alias = alias
        self.user = user
        self.setenv = {"PATH": REMOTE_PATH}
        if containers_conf is not None:
            self.setenv["CONTAINERS_CONF"] = str(containers_conf)
        self.setenv.update(setenv or {})
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    # -- paths -------------------------------------------------------------------
    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        """Private key (no passphrase) the client authenticates with."""
        return self.dir / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.dir / "authorized_keys"

    @property
    def sshd_config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.dir / "ssh_config"

    @property
    def pidfile(self) -> Path:
        return self.dir / "sshd.pid"

    @property
    def logfile(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def host_key_line(self) -> str:
        """The known_hosts line for this server: ``[127.0.0.1]:PORT ssh-ed25519 AAAA...``."""
        keytype, b64 = Path(str(self.host_key) + ".pub").read_text().split()[:2]
        return f"[{self.host}]:{self.port} {keytype} {b64}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # -- setup -------------------------------------------------------------------
    def _write_files(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        _keygen(self.host_key, "bigskies-test-host")
        _keygen(self.client_key, "bigskies-test-client")
        self.authorized_keys.write_text(Path(str(self.client_key) + ".pub").read_text())
        os.chmod(self.authorized_keys, 0o600)
        lines = [
            f"ListenAddress {self.host}",
            f"Port {self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.pidfile}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "MaxStartups 50:30:100",
            "MaxSessions 50",
            f"Subsystem sftp {SFTP_SERVER}",
        ]
        if self.setenv:
            lines.append("SetEnv " + " ".join(f"{k}={v}" for k, v in self.setenv.items()))
        self.sshd_config.write_text("\n".join(lines) + "\n")
        self.known_hosts.write_text(self.host_key_line + "\n")
        self.ssh_config.write_text("\n".join([
            f"Host {self.alias}",
            f"    HostName {self.host}",
            f"    Port {self.port}",
            f"    User {self.user}",
            f"    IdentityFile {self.client_key}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {self.known_hosts}",
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking yes",
            "    BatchMode yes",
            "    ConnectTimeout 10",
            "    LogLevel ERROR",
        ]) + "\n")

    def start(self, timeout: float = 15.0) -> "SSHServer":
        """Write keys and configs, start sshd, wait until the port accepts connections.

        Raises:
            SSHServerError: the config is invalid or sshd did not come up in ``timeout`` s.
        """
        t0 = time.monotonic()
        self._write_files()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privsep chroot dir
        check = subprocess.run([SSHD, "-t", "-f", str(self.sshd_config)], capture_output=True,
                               text=True, stdin=subprocess.DEVNULL)
        if check.returncode != 0:
            raise SSHServerError(f"sshd -t rejected {self.sshd_config}: {check.stderr.strip()}")
        log = open(self.logfile, "ab")
        try:
            self.proc = subprocess.Popen([SSHD, "-f", str(self.sshd_config), "-D", "-e"],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SSHServerError(f"sshd exited ({self.proc.returncode}):\n"
                                     f"{self.logfile.read_text(errors='replace')[-1500:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    s.settimeout(2)
                    if s.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SSHServerError(f"sshd not accepting on {self.host}:{self.port} after "
                                     f"{timeout}s:\n{self.logfile.read_text(errors='replace')[-1500:]}")
            time.sleep(0.05)
        self.start_seconds = time.monotonic() - t0
        return self

    def ssh_argv(self, *remote: str) -> list[str]:
        """argv for ``ssh -F ssh_config ALIAS REMOTE...``."""
        return ["ssh", "-F", str(self.ssh_config), self.alias, *remote]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sshd by its process id, and any per-connection sshd processes it forked."""
        if self.proc is None:
            return
        pid = self.proc.pid
        kids = _children(pid) if self.proc.poll() is None else []
        for p in [pid, *kids]:
            try:
                os.kill(p, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        deadline = time.monotonic() + timeout
        while any(_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for k in kids:
            if _alive(k):
                try:
                    os.kill(k, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc = None

    def __enter__(self) -> "SSHServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
