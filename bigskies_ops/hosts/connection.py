"""The SSH connection of a ``connection: ssh`` host, before any command runs on it.

Fabric's :class:`fabric.Connection` reads ``ssh_config`` (``config_alias``,
``config_file``, ``ProxyJump``), the jump host (``gateway``), the connect timeout and
authentication. Host keys are **checked by default** (Fabric auto-accepts; we do not):
the inventory's ``ssh.known_hosts_file``, else ssh_config's ``UserKnownHostsFile``,
else ``~/.ssh/known_hosts``; ``[host]:port`` entries are honoured (paramiko looks them
up for non-22 ports). An unknown or changed key is refused (exit 3). The same policy
applies to the jump host. ``host_key_checking: false`` accepts any key.

:func:`openssh_options` gives an OpenSSH client the same target, user, key,
known_hosts, host-key policy, timeout and jump host, for bulk copies.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import socket

from bigskies_ops.errors import BigskiesError, CommandError, EXIT_REFUSED

# Bulk copies through OpenSSH prefer AES-GCM: with the AES instructions every x86-64 and
# ARMv8 server CPU has, it costs both ends about half the CPU of OpenSSH's first choice,
# chacha20-poly1305 (measured on loopback: ssh cat of 779 MB 5.1-5.9 s vs 8.4-8.9 s on a
# loaded 2-core machine). Same ciphers as OpenSSH's default set, only the order differs.
OPENSSH_CIPHERS = ("aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
                   "aes128-ctr,aes192-ctr,aes256-ctr")


class SSHError(CommandError):
    """The SSH connection could not be made or was lost (exit 1)."""


class HostKeyError(SSHError):
    """The server's host key is unknown or changed: refused for safety (exit 3)."""

    exit_code = EXIT_REFUSED


# ----------------------------------------------------------------------------- connection
def _sha256_fingerprint(key) -> str:
    """``SHA256:<base64>``, the form ``ssh-keygen -l`` and OpenSSH's messages show."""
    import base64
    import hashlib
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _host_key_policy(label: str):
    import paramiko

    class _Reject(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            raise HostKeyError(
                f"{label}: host key of {hostname} is unknown ({key.get_name()} {_sha256_fingerprint(key)}); refusing to "
                f"connect. Verify the fingerprint out of band, then add it to the known_hosts file "
                f"(e.g. ssh-keyscan) or set ssh.known_hosts_file", exit_code=EXIT_REFUSED)
    return _Reject()


def known_hosts_files(settings, conn) -> list[str]:
    """The known_hosts files to check ``conn`` against (``settings``: the host's
    :class:`~bigskies_ops.inventory.SSHSettings`): the inventory's, else ssh_config's, else
    ``~/.ssh/known_hosts``."""
    if settings.known_hosts_file:
        return [settings.known_hosts_file]
    from_cfg = conn.ssh_config.get("userknownhostsfile")
    if from_cfg:
        return [os.path.expanduser(p) for p in str(from_cfg).split()]
    return [os.path.expanduser("~/.ssh/known_hosts")]


def _harden(conn, settings, label: str) -> None:
    """Replace Fabric's auto-accept with our host-key policy (recursively for jump hosts)."""
    import paramiko
    client = conn.client
    client._system_host_keys = paramiko.HostKeys()
    client._host_keys = paramiko.HostKeys()
    client._host_keys_filename = None  # never write to anyone's known_hosts
    if settings.host_key_checking:
        for f in known_hosts_files(settings, conn):
            if not os.path.exists(f):
                if settings.known_hosts_file:
                    raise SSHError(f"{label}: ssh.known_hosts_file {f} does not exist", exit_code=2)
                continue
            try:
                client.load_system_host_keys(f)
            except (OSError, paramiko.SSHException) as e:
                raise SSHError(f"{label}: cannot read known_hosts file {f}: {e}")
        client.set_missing_host_key_policy(_host_key_policy(label))
    else:
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    gw = getattr(conn, "gateway", None)
    if gw is not None and not isinstance(gw, str):
        _harden(gw, settings, f"{label} (jump host {gw.host})")


def quiet_paramiko_logging() -> None:
    """Keep paramiko's own log records (``paramiko.transport``) off stderr.

    paramiko logs a failed handshake itself, e.g. a server that accepts the TCP connection
    and closes it: ``Exception (client): Error reading SSH protocol banner`` and a full
    traceback, at level ERROR; with no logging configured, Python's last-resort handler
    prints that to stderr. The same failure reaches us as the exception that
    :func:`connect_error` turns into the one error line, so the log records only repeat it.
    A :class:`logging.NullHandler` on the ``paramiko`` logger, without propagation, drops
    them. ``BIGSKIES_DEBUG=1`` leaves paramiko's logging alone (for a bug report).
    Idempotent; returns None.
    """
    if os.environ.get("BIGSKIES_DEBUG"):
        return
    log = logging.getLogger("paramiko")
    if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
        log.addHandler(logging.NullHandler())
    log.propagate = False


def build_connection(host):
    """A hardened, not yet opened :class:`fabric.Connection` for an inventory host."""
    from fabric import Config, Connection
    quiet_paramiko_logging()
    s = host.ssh
    cfg = Config(runtime_ssh_path=s.config_file) if s.config_file else Config()
    ck: dict = {}
    if s.key_filename:
        if not os.path.isfile(os.path.expanduser(s.key_filename)):  # a setting to fix: exit 2, like known_hosts_file
            raise SSHError(f"hosts.{host.name}: ssh.key_filename {s.key_filename} does not exist", exit_code=2)
        ck = {"key_filename": [s.key_filename], "look_for_keys": False}
    target = s.config_alias or s.host
    kw: dict = {"config": cfg, "connect_timeout": s.connect_timeout, "connect_kwargs": dict(ck)}
    if s.user:
        kw["user"] = s.user
    if s.port != 22 or (s.host and not s.config_alias):
        kw["port"] = s.port
    if s.gateway:
        kw["gateway"] = Connection(s.gateway, config=cfg, connect_timeout=s.connect_timeout,
                                   connect_kwargs=dict(ck))
    conn = Connection(target, **kw)
    _harden(conn, s, f"hosts.{host.name}")
    return conn


def connect_error(host, conn, e: BaseException) -> BigskiesError:
    """The one clear error for a failed ``conn.open()`` of an inventory host: a
    :class:`HostKeyError` (exit 3) for a changed key, else an :class:`SSHError` naming the
    cause (refused, timeout, authentication, name resolution)."""
    import paramiko
    where = f"{conn.user}@{conn.host}:{conn.port}"
    label = f"{host.name} ({where})"
    if isinstance(e, BigskiesError):
        return e
    if isinstance(e, paramiko.BadHostKeyException):
        entry = f"[{conn.host}]:{conn.port}" if conn.port != 22 else conn.host
        files = known_hosts_files(host.ssh, conn)
        return HostKeyError(
            f"{label}: host key CHANGED (got {e.key.get_name()} {_sha256_fingerprint(e.key)}, known_hosts "
            f"has another key). Possible man-in-the-middle; refusing to connect. If the change is expected, "
            f"remove the old entry ({shlex.join(['ssh-keygen', '-f', files[0], '-R', entry])}) and add the new one",
            exit_code=EXIT_REFUSED)
    if isinstance(e, paramiko.AuthenticationException):
        return SSHError(f"{label}: authentication refused ({e}); check ssh.user and ssh.key_filename")
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError) or isinstance(e, ConnectionRefusedError):
        return SSHError(f"{label}: connection refused (is sshd listening on port {conn.port}?)")
    if isinstance(e, (socket.timeout, TimeoutError)):
        return SSHError(f"{label}: no answer within {host.ssh.connect_timeout:g} s (ssh.connect_timeout)")
    if isinstance(e, socket.gaierror):
        return SSHError(f"{label}: cannot resolve host name ({e})")
    if isinstance(e, (paramiko.SSHException, OSError, EOFError)):
        return SSHError(f"{label}: SSH connection failed: {e or type(e).__name__}")
    return SSHError(f"{label}: SSH connection failed: {type(e).__name__}: {e}")


def openssh_options(conn, s, extra: list[str] | tuple = ()) -> list[str]:
    """OpenSSH client options (ending with the target host) that reach the resolved Fabric
    connection ``conn`` as paramiko does (``s``: the host's SSH settings): no ssh_config,
    batch mode, the same port, user, keys, known_hosts and host-key policy, the jump host as
    a ProxyCommand; :data:`OPENSSH_CIPHERS` first. ``extra``: more options, before the host
    (not given to the jump host's client)."""
    opts = ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(s.connect_timeout))}",
            "-o", "ServerAliveInterval=15", "-o", "LogLevel=ERROR", "-o", "Ciphers=" + OPENSSH_CIPHERS,
            "-p", str(conn.port), "-l", conn.user]
    keys = conn.connect_kwargs.get("key_filename") or []
    for k in ([keys] if isinstance(keys, str) else keys):
        opts += ["-i", k, "-o", "IdentitiesOnly=yes"]
    if s.host_key_checking:
        files = known_hosts_files(s, conn)
        opts += ["-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + " ".join(files),
                 "-o", "GlobalKnownHostsFile=/dev/null"]
    else:
        opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    gw = getattr(conn, "gateway", None)
    if gw is not None and not isinstance(gw, str):
        inner = [shutil.which("ssh") or "ssh", *openssh_options(gw, s), "-W", "%h:%p", gw.host]
        opts += ["-o", "ProxyCommand=" + shlex.join(inner)]
    elif isinstance(gw, str) and gw:
        opts += ["-o", "ProxyCommand=" + gw]
    return opts + list(extra) + [conn.host]


class ControlMaster:
    """An OpenSSH ControlMaster (ssh_config(5): ControlMaster, ControlPath) to a host,
    started beside the paramiko connection so that an OpenSSH client started later (a bulk
    stream) runs its session over it instead of making its own handshake (key exchange
    and authentication: 0.2 s on the benchmark's loopback). Best effort: until its socket
    exists, or if it failed, :meth:`client_options` is empty and a client connects by
    itself. The socket is in a folder of our own (mode 0700); :meth:`stop` ends the master
    and removes it. A process killed with SIGKILL takes its master with it (``setpriv
    --pdeathsig``) but leaves the folder: the next master removes it
    (:func:`sweep_dead_masters`). ``conn``, ``s``: as :func:`openssh_options`."""

    PREFIX = "bigskies-ssh-"

    def __init__(self, exe: str, conn, s):
        import subprocess
        import tempfile
        sweep_dead_masters(tempfile.gettempdir(), self.PREFIX)
        self.dir = tempfile.mkdtemp(prefix=self.PREFIX)
        self.path = os.path.join(self.dir, "master")
        argv = [exe, "-N", *openssh_options(conn, s, ["-o", "ControlMaster=yes", "-o", "ControlPath=" + self.path,
                                                      "-o", "ControlPersist=no"])]
        setpriv = shutil.which("setpriv")
        if setpriv:  # it must not outlive us
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def client_options(self) -> list[str]:
        """Options that make an OpenSSH client use this master: [] while it is not (yet) up."""
        if self.proc.poll() is not None or not os.path.exists(self.path):
            return []
        return ["-o", "ControlMaster=no", "-o", "ControlPath=" + self.path]

    def stop(self) -> None:
        """End the master (its sessions end with it) and remove its folder. Returns None."""
        import subprocess
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def sweep_dead_masters(tmp: str, prefix: str, min_age_s: float = 60.0) -> None:
    """Remove the folders ``tmp/prefix*`` of :class:`ControlMaster` runs that were killed:
    ours (owner, mode 0700, not a symlink), older than ``min_age_s`` (a new one has no
    socket yet), whose socket is gone or refuses a connection (a live master accepts).
    Returns None; never raises."""
    import stat
    import time
    try:
        names = [n for n in os.listdir(tmp) if n.startswith(prefix)]
    except OSError:
        return
    for n in names:
        d = os.path.join(tmp, n)
        try:
            st = os.lstat(d)
            if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077
                    or time.time() - st.st_mtime < min_age_s):
                continue
            sock = os.path.join(d, "master")
            if os.path.exists(sock):
                with socket.socket(socket.AF_UNIX) as probe:
                    try:
                        probe.connect(sock)
                        continue  # a master is alive there
                    except ConnectionRefusedError:
                        pass
            shutil.rmtree(d, ignore_errors=True)
        except OSError:
            continue
