"""One runner seam for "run this argv on that host" and "touch that file there".

``LocalRunner`` uses subprocess directly (binary-safe byte streams, no shell);
``SSHRunner`` (bigskies_ops.hosts.ssh) does the same over one SSH connection. Jobs
never care which one they hold. Every command is an argv list; crossing a remote
shell it is joined with ``shlex.quote`` (DESIGN.md practice 4). Short commands
return a :class:`Result`; bulk bytes (dumps) go through :meth:`Runner.popen`,
which streams and never buffers a whole dump in memory.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable

from bigskies_ops.errors import CommandError, StorageError

STDERR_TAIL = 2000  # characters of stderr kept in errors and manifests


def redact_argv(argv: Iterable[str]) -> list[str]:
    """Return argv with anything that looks like a credential masked.

    Connection strings (``postgresql://user:pw@host``, ``password=...``) are the
    one place a password could sneak into an argv; we never build them, but a
    user-supplied ``--sql`` or path could carry one. (barman ``redact_passwords``.)
    """
    out = []
    for a in argv:
        a = re.sub(r"(postgres(?:ql)?://[^:/@\s]+:)[^@\s]+@", r"\1****@", str(a))
        a = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1****", a, flags=re.I)
        out.append(a)
    return out


def tail(text: str | bytes, n: int = STDERR_TAIL) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.strip()
    return text[-n:]


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Process:
    """A running command: ``stdin`` (binary, optional), ``stdout`` (binary, read in
    chunks), stderr collected in the background (bounded), :meth:`wait`."""

    argv: list[str]
    stdin: IO[bytes] | None
    stdout: IO[bytes]

    def wait(self, timeout: float | None = None) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def stderr_text(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def kill(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class _StderrCollector(threading.Thread):
    """Drain a stderr pipe so the child never blocks on it; keep the last 64 KiB."""

    def __init__(self, stream, sink: IO[bytes] | None = None):
        super().__init__(daemon=True)
        self.stream, self.sink, self.buf = stream, sink, bytearray()

    def run(self):
        for chunk in iter(lambda: self.stream.read1(65536) if hasattr(self.stream, "read1")
                          else self.stream.read(65536), b""):
            self.buf += chunk
            if len(self.buf) > 65536:
                del self.buf[:-65536]
            if self.sink is not None:
                try:
                    self.sink.write(chunk)
                    self.sink.flush()
                except (OSError, ValueError):
                    pass


class LocalProcess(Process):
    def __init__(self, argv, env, stdin: bool, stdout_file=None):
        self.argv = list(argv)
        try:
            self._p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                       stdout=stdout_file if stdout_file is not None else subprocess.PIPE,
                                       stderr=subprocess.PIPE, start_new_session=False)
        except FileNotFoundError as e:
            raise CommandError(f"command not found: {argv[0]}", argv=redact_argv(argv)) from e
        self.stdin = self._p.stdin
        self.stdout = self._p.stdout
        self._err = _StderrCollector(self._p.stderr)
        self._err.start()

    @property
    def pid(self) -> int:
        return self._p.pid

    def wait(self, timeout=None) -> int:
        rc = self._p.wait(timeout)
        self._err.join(5)
        return rc

    def poll(self):
        return self._p.poll()

    def stderr_text(self) -> str:
        return self._err.buf.decode("utf-8", "replace")

    def kill(self):
        try:
            self._p.kill()
        except ProcessLookupError:
            pass


class Runner:
    """Interface shared by :class:`LocalRunner` and ``ssh.SSHRunner``."""

    name: str = "local"
    is_remote = False

    def run(self, argv: list[str], *, input: bytes | None = None, env: dict | None = None,
            check: bool = True, timeout: float | None = None) -> Result:
        raise NotImplementedError

    def popen(self, argv: list[str], *, env: dict | None = None, stdin: bool = False) -> Process:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def check_result(self, r: Result, what: str | None = None) -> Result:
        if r.returncode != 0:
            raise CommandError(
                f"{what or shlex.join(redact_argv(r.argv))} failed (exit {r.returncode}): {tail(r.stderr, 600)}",
                argv=redact_argv(r.argv), returncode=r.returncode, stderr=tail(r.stderr))
        return r


class LocalRunner(Runner):
    """Runs commands on this machine with subprocess and touches local files."""

    name = "local"

    def __init__(self, label: str = "local"):
        self.label = label

    @property
    def hostname(self) -> str:
        return socket.gethostname()

    def _env(self, env: dict | None) -> dict:
        e = dict(os.environ)
        if env:
            e.update({k: str(v) for k, v in env.items()})
        return e

    def run(self, argv, *, input=None, env=None, check=True, timeout=None) -> Result:
        try:
            p = subprocess.run(list(argv), input=input, env=self._env(env), capture_output=True,
                               timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
        except FileNotFoundError as e:
            raise CommandError(f"command not found: {argv[0]}", argv=redact_argv(argv)) from e
        except subprocess.TimeoutExpired as e:
            raise CommandError(f"{shlex.join(redact_argv(argv))} timed out after {timeout} s",
                               argv=redact_argv(argv)) from e
        r = Result(list(argv), p.returncode, p.stdout, p.stderr.decode("utf-8", "replace"))
        return self.check_result(r) if check else r

    def popen(self, argv, *, env=None, stdin=False) -> LocalProcess:
        return LocalProcess(argv, self._env(env), stdin)

    # ---- files on this host -------------------------------------------------
    def makedirs(self, path: str, mode: int = 0o750) -> None:
        try:
            Path(path).mkdir(parents=True, exist_ok=True, mode=mode)
        except OSError as e:
            raise StorageError(f"cannot create {path}: {e.strerror}") from e

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            raise  # callers tell "a file where a folder should be" apart (catalog.list_backups)
        except OSError as e:
            raise StorageError(f"cannot list {path}: {e.strerror}") from e

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def open_read(self, path: str, offset: int = 0) -> IO[bytes]:
        f = open(path, "rb")
        if offset:
            f.seek(offset)
        return f

    def open_write(self, path: str, append: bool = False) -> IO[bytes]:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o640)
        return os.fdopen(fd, "ab" if append else "wb")

    def write_atomic(self, path: str, data: bytes, mode: int = 0o640) -> None:
        """Write ``data`` to ``path`` via a temp file in the same folder + fsync + rename."""
        d = os.path.dirname(path) or "."
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, path)
            fsync_dir(d)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise StorageError(f"cannot write {path}: {e.strerror}") from e

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)
        fsync_dir(os.path.dirname(dst) or ".")

    def link_noreplace(self, src: str, dst: str) -> bool:
        """Atomically publish ``src`` as ``dst`` unless ``dst`` exists; False if it does."""
        try:
            os.link(src, dst)
        except FileExistsError:
            return False
        os.unlink(src)
        fsync_dir(os.path.dirname(dst) or ".")
        return True

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` with ``data`` only if it does not exist (O_EXCL). False if it does."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError:
            return False
        except OSError as e:
            raise StorageError(f"cannot create {path}: {e.strerror}") from e
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError as e:  # e.g. a full disk: never leave an empty lock file behind
            try:
                os.unlink(path)
            except OSError:
                pass
            raise StorageError(f"cannot write {path}: {e.strerror or e}"
                               f"{' (file system full)' if e.errno == 28 else ''}") from e
        return True

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def free_bytes(self, path: str) -> int | None:
        try:
            st = os.statvfs(path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def make_private_dir(self) -> str:
        """A new 0700 folder ``$TMPDIR/bigskies-ops-<pid>-XXXX`` (removed by its user).

        Folders of earlier runs whose process is gone (SIGKILL leaves no time to clean up,
        and one may hold a private pgpass file) are removed first.
        """
        _sweep_private_dirs()
        return tempfile.mkdtemp(prefix=f"bigskies-ops-{os.getpid()}-")

    def remove_tree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def pid_alive(self, pid: int) -> bool:
        return pid_alive(pid)


def _sweep_private_dirs() -> None:
    """Remove ``bigskies-ops-<pid>-*`` folders in the temp dir that belong to this user and
    to a process that no longer exists (best effort, never raises)."""
    tmp = tempfile.gettempdir()
    try:
        names = os.listdir(tmp)
    except OSError:
        return
    for n in names:
        m = re.fullmatch(r"bigskies-ops-(\d+)-\w+", n)
        if not m or pid_alive(int(m.group(1))):
            continue
        path = os.path.join(tmp, n)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
            shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (signal 0; EPERM means it does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def runner_for(host) -> Runner:
    """Return the runner for an inventory host (local, or SSH via Fabric)."""
    if host.is_remote:
        from bigskies_ops.hosts.ssh import SSHRunner
        return SSHRunner(host)
    return LocalRunner(host.name)
