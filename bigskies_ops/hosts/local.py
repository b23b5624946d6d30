"""The local runner: :class:`~bigskies_ops.hosts.runners.Runner` on this machine.

Commands run with subprocess (binary-safe byte streams, no shell unless a script or a
pipeline asks for ``sh``); files are touched with :mod:`os`. A pipeline and a script
run the same shell text as on an SSH host (:mod:`bigskies_ops.hosts.shell`).
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import IO

from bigskies_ops.errors import CommandError, StorageError
from bigskies_ops.hosts.runners import (Fetch, Process, Result, Runner, StderrCollector, fsync_dir, pid_alive,
                                        redact_argv)
from bigskies_ops.hosts.shell import pipeline_script

CHUNK = 1 << 20  # bytes per read when hashing or copying a file


class LocalProcess(Process):
    """A command running here (:class:`subprocess.Popen`). With ``group`` it leads a session
    (and process group) of its own, and :meth:`kill` stops the whole group (every stage of a
    pipeline); otherwise it stays in ours, so a Ctrl-C at the terminal reaches it too.

    With ``stdin`` the command reads one end of a Unix stream socket pair, not a pipe
    (``self.stdin`` writes the other end; closing it is the command's end of input). A
    writer ahead of its reader sleeps until the reader has taken a quarter of the socket's
    buffer (Linux ``unix_writable``), where a full pipe wakes it for every 4 KiB page the
    reader takes, and psql reads its input 4 KiB at a time: on the benchmark's scenario 4,
    60,000 wake-ups per loading session with a pipe, 2,000 with the socket (issue 21)."""

    def __init__(self, argv, env, stdin: bool, stdout_file=None, group: bool = False):
        self.argv = list(argv)
        self.group = group
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) if stdin else (None, None)
        try:
            self._p = subprocess.Popen(argv, env=env, stdin=theirs.fileno() if stdin else subprocess.DEVNULL,
                                       stdout=stdout_file if stdout_file is not None else subprocess.PIPE,
                                       stderr=subprocess.PIPE, start_new_session=group)
        except FileNotFoundError as e:
            if ours is not None:
                ours.close()
            raise CommandError(f"command not found: {argv[0]}", argv=redact_argv(argv)) from e
        finally:
            if theirs is not None:
                theirs.close()  # the command's end: ours is the only one left here
        self.stdin = None
        if ours is not None:
            self.stdin = ours.makefile("wb")
            ours.close()  # the descriptor is closed when self.stdin is
        self.stdout = self._p.stdout
        self._err = StderrCollector(self._p.stderr)
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
            if self.group and self._p.poll() is None:
                os.killpg(self._p.pid, signal.SIGTERM)
            else:
                self._p.kill()
        except ProcessLookupError:
            pass


class LocalRunner(Runner):
    """Runs commands on this machine with subprocess and touches local files.

    ``label`` names it in messages (the inventory host's name). Local file operations
    raise OSError where :class:`~bigskies_ops.hosts.runners.Runner` says so.
    """

    name = "local"

    def __init__(self, label: str = "local"):
        self.label = label

    def alive(self) -> bool:
        return True

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

    def pipeline(self, stages: list[list[str]], *, stdout_path: str | None = None,
                 stdin_path: str | None = None, env: dict | None = None) -> LocalProcess:
        """``sh -c`` the same pipeline text as an SSH host runs, in a process group of its
        own so that :meth:`LocalProcess.kill` stops every stage."""
        script = pipeline_script(stages, stdout_path=stdout_path, stdin_path=stdin_path)
        return LocalProcess(["sh", "-c", script], self._env(env), False, group=True)

    def interactive(self, argv: list[str], env: dict | None = None) -> int:
        """Run ``argv`` on this terminal (it inherits stdin, stdout and stderr)."""
        try:
            return subprocess.call(list(argv), env=self._env(env))
        except FileNotFoundError as e:
            raise CommandError(f"command not found: {argv[0]}", argv=redact_argv(argv)) from e

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

    def sha256(self, path: str) -> tuple[str, int]:
        """(sha256 hex, size in bytes) of the file ``path``, read here in 1 MiB chunks."""
        h = hashlib.sha256()
        n = 0
        try:
            with open(path, "rb") as f:
                for b in iter(lambda: f.read(CHUNK), b""):
                    h.update(b)
                    n += len(b)
        except OSError as e:
            raise StorageError(f"cannot read {path}: {e.strerror or e}") from e
        return h.hexdigest(), n

    # ---- nothing to save locally, and copies are plain file copies --------------------
    def probe(self, paths: list[str], read: int = 0) -> None:
        """Nothing to do: every question about a local file costs a system call."""

    def is_cached(self, path: str) -> bool:
        return True

    def start_fetch(self, path: str, local_path: str, offset: int | None = None) -> LocalFetch:
        return LocalFetch(path, local_path, offset)


class LocalFetch(Fetch):
    """A copy of a local file ``path`` (from byte ``offset``) appended to ``local_path``."""

    def __init__(self, path: str, local_path: str, offset: int | None = None):
        self.path, self.local_path = path, local_path
        self.offset = None if offset is None else int(offset)
        self.cancelled = False
        open(local_path, "ab").close()

    def run(self, offset: int = 0, progress=None) -> int:
        if self.offset is not None and int(offset) != self.offset:
            raise ValueError(f"Fetch.run(offset={offset}) after start_fetch(offset={self.offset})")
        done = 0
        try:
            with open(self.path, "rb") as src, open(self.local_path, "ab") as out:
                src.seek(offset)
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    if self.cancelled:
                        break
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(offset + done, None)
        except OSError as e:
            raise StorageError(f"copying {self.path} to {self.local_path} failed: {e.strerror or e}") from e
        return done

    def cancel(self) -> None:
        self.cancelled = True


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
