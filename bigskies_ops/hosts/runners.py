"""One runner seam for "run this argv on that host" and "touch that file there".

:class:`Runner` declares, once, every operation a job uses on a host; both
implementations provide all of it: ``LocalRunner`` (:mod:`bigskies_ops.hosts.local`)
uses subprocess and the local file system, ``SSHRunner`` (:mod:`bigskies_ops.hosts.ssh`)
does the same over one SSH connection. Jobs never care which one they hold, and
never ask a runner what it can do. ``runner_for(host)`` (:mod:`bigskies_ops.hosts`)
picks one for an inventory host.

Every command is an argv list; crossing a remote shell it is joined with
``shlex.quote`` (DESIGN.md practice 4). Short commands return a :class:`Result`;
bulk bytes (dumps) go through :meth:`Runner.popen`, which streams and never buffers
a whole dump in memory.

This module also holds what both implementations share: :class:`Result`,
:class:`Process`, :class:`Fetch`, :class:`StderrCollector` and the pure helpers
(:func:`redact_argv`, :func:`tail`), plus :func:`pid_alive` and :func:`fsync_dir`
for this machine.
"""
from __future__ import annotations

import os
import re
import shlex
import threading
from dataclasses import dataclass
from typing import IO, Callable, Iterable

from bigskies_ops.errors import CommandError

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
    """The last ``n`` characters of ``text`` (bytes are decoded as UTF-8, errors
    replaced), stripped: what errors and manifests keep of a command's stderr."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.strip()
    return text[-n:]


@dataclass
class Result:
    """A finished command: its argv, exit status, stdout (bytes) and stderr (text)."""

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
        """Wait up to ``timeout`` seconds (None: for ever) for the end; return the exit status."""
        raise NotImplementedError

    def poll(self) -> int | None:  # pragma: no cover - interface
        """The exit status if the command has ended, else None (never blocks)."""
        raise NotImplementedError

    def stderr_text(self) -> str:  # pragma: no cover - interface
        """The stderr collected so far (the last 64 KiB), decoded."""
        raise NotImplementedError

    def kill(self) -> None:  # pragma: no cover - interface
        """Stop the command (a pipeline: all of its stages); never raises."""
        raise NotImplementedError


class StderrCollector(threading.Thread):
    """Drain a stderr pipe so the child never blocks on it; keep the last 64 KiB in
    ``buf`` and copy every chunk to ``sink`` (a binary file) when one is given."""

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


class Fetch:
    """A copy of a file on the runner's host into a local file, started by
    :meth:`Runner.start_fetch`."""

    def run(self, offset: int = 0, progress: Callable[[int, None], None] | None = None) -> int:
        """Send the host's file from byte ``offset`` (int) and append it to the local file;
        return the bytes added. ``offset`` must be the one given to
        :meth:`Runner.start_fetch`, if one was. ``progress(done_bytes, None)`` is called
        about once a second (or per chunk). Over SSH, a local file that stops growing for
        ``backup.stall_timeout`` seconds aborts the copy.

        Raises:
            StallError, SSHError (connection failed or lost), StorageError (read or
            local write failed), ValueError (``offset`` differs from the one started with).
        """
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop without copying (or stop a copy in progress); nothing more is written."""


class Runner:
    """Everything a job does on a host: run commands, touch files, hash and copy them.

    Declared here once; :class:`~bigskies_ops.hosts.local.LocalRunner` and
    :class:`~bigskies_ops.hosts.ssh.SSHRunner` implement all of it. Paths are POSIX
    paths on the runner's host. A runner is a context manager (:meth:`close` on exit).

    Attributes:
        name: ``"local"`` or ``"ssh"``.
        is_remote: whether the host is another machine (its files are not ours to open).
        label: the inventory host's name, for messages.
    """

    name: str = "local"
    is_remote: bool = False
    label: str = "local"

    # ---- lifecycle ------------------------------------------------------------------
    def close(self) -> None:
        """Release the connection, if any (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def alive(self) -> bool:  # pragma: no cover - interface
        """Whether the connection to the host is up (always true for this machine)."""
        raise NotImplementedError

    @property
    def hostname(self) -> str:  # pragma: no cover - interface
        """The host's own name (``uname -n``)."""
        raise NotImplementedError

    # ---- commands -------------------------------------------------------------------
    def run(self, argv: list[str], *, input: bytes | None = None, env: dict | None = None,
            check: bool = True, timeout: float | None = None) -> Result:  # pragma: no cover - interface
        """Run ``argv`` to its end with ``input`` (bytes) on stdin and ``env`` added to its
        environment (values never on a command line); return its :class:`Result`.

        Raises:
            CommandError: the command is not found, ran out of ``timeout`` seconds, or
                (with ``check``) exited non-zero: the redacted argv, exit status, stderr tail.
        """
        raise NotImplementedError

    def popen(self, argv: list[str], *, env: dict | None = None,
              stdin: bool = False) -> Process:  # pragma: no cover - interface
        """Start ``argv`` and return its :class:`Process` (stdout streamed, ``stdin`` a pipe
        when asked). Over SSH a command without stdin is stopped on the host when this
        process goes away (:data:`bigskies_ops.hosts.shell.WRAPPER`).

        Raises:
            CommandError: the command could not be started.
        """
        raise NotImplementedError

    def script(self, text: str, *args: str, input: bytes | None = None, check: bool = True) -> Result:
        """Run the POSIX sh script ``text`` with positional ``args``
        (``sh -c TEXT sh ARGS...``) as :meth:`run` does."""
        return self.run(["sh", "-c", text, "sh", *args], input=input, check=check)

    def pipeline(self, stages: list[list[str]], *, stdout_path: str | None = None,
                 stdin_path: str | None = None, env: dict | None = None) -> Process:  # pragma: no cover
        """Start ``stage0 | stage1 | ...`` on the host (stdin from ``stdin_path``, stdout to
        ``stdout_path`` when given, else streamed); each stage reports its own exit status
        on stderr (:func:`bigskies_ops.hosts.shell.pipeline_script`): read them with
        :func:`bigskies_ops.hosts.shell.stage_statuses` once it ended, because
        ``pg_dump | gzip`` alone hides pg_dump's failure (DESIGN.md practice 6).
        :meth:`Process.kill` stops every stage.
        """
        raise NotImplementedError

    def check_result(self, r: Result, what: str | None = None) -> Result:
        """Return ``r`` when it exited 0.

        Raises:
            CommandError: ``what`` (else the redacted argv) failed, with exit status and stderr tail.
        """
        if r.returncode != 0:
            raise CommandError(
                f"{what or shlex.join(redact_argv(r.argv))} failed (exit {r.returncode}): {tail(r.stderr, 600)}",
                argv=redact_argv(r.argv), returncode=r.returncode, stderr=tail(r.stderr))
        return r

    def interactive(self, argv: list[str], env: dict | None = None) -> int:  # pragma: no cover - interface
        """Run ``argv`` wired to this terminal (db.psql); return its exit status."""
        raise NotImplementedError

    # ---- files ----------------------------------------------------------------------
    def sha256(self, path: str) -> tuple[str, int]:  # pragma: no cover - interface
        """``(sha256 hex digest, size in bytes)`` of the file ``path``, computed on its host
        (the bytes never cross the connection).

        Raises:
            StorageError: it cannot be read.
        """
        raise NotImplementedError

    def makedirs(self, path: str, mode: int = 0o750) -> None:  # pragma: no cover - interface
        """Create ``path`` and its parents (``mode`` for new folders); an existing one is fine.

        Raises:
            StorageError: it cannot be created.
        """
        raise NotImplementedError

    def listdir(self, path: str) -> list[str]:  # pragma: no cover - interface
        """Sorted names in the folder ``path``; ``[]`` when it does not exist.

        Raises:
            StorageError: it cannot be listed (locally NotADirectoryError for a file).
        """
        raise NotImplementedError

    def exists(self, path: str) -> bool:  # pragma: no cover - interface
        """Whether ``path`` exists (a dangling symlink counts)."""
        raise NotImplementedError

    def size(self, path: str) -> int:  # pragma: no cover - interface
        """Size of the file ``path`` in bytes.

        Raises:
            FileNotFoundError: it does not exist (OSError locally).
        """
        raise NotImplementedError

    def read_bytes(self, path: str) -> bytes:  # pragma: no cover - interface
        """The whole file ``path`` (small files: manifests, locks).

        Raises:
            FileNotFoundError: it does not exist or cannot be read (OSError locally).
        """
        raise NotImplementedError

    def open_read(self, path: str, offset: int = 0) -> IO[bytes]:  # pragma: no cover - interface
        """A binary reader of ``path`` from byte ``offset``; a context manager, ``close()`` ends it."""
        raise NotImplementedError

    def open_write(self, path: str, append: bool = False) -> IO[bytes]:  # pragma: no cover - interface
        """A binary writer to ``path`` (created 0640, truncated unless ``append``); a context
        manager. Over SSH a failed write raises StorageError at ``close()``."""
        raise NotImplementedError

    def write_atomic(self, path: str, data: bytes, mode: int = 0o640) -> None:  # pragma: no cover
        """Replace ``path`` with ``data`` (permissions ``mode``) all at once: temp file in the
        same folder, fsync, rename; a short write never replaces the old file.

        Raises:
            StorageError: it cannot be written (a full file system says so).
        """
        raise NotImplementedError

    def rename(self, src: str, dst: str) -> None:  # pragma: no cover - interface
        """Rename ``src`` to ``dst``, replacing it (then fsync the folder).

        Raises:
            OSError locally, StorageError over SSH.
        """
        raise NotImplementedError

    def link_noreplace(self, src: str, dst: str) -> bool:  # pragma: no cover - interface
        """Atomically publish ``src`` as ``dst`` unless ``dst`` exists; True when done (``src``
        is then gone), False when ``dst`` was there (``src`` stays)."""
        raise NotImplementedError

    def create_exclusive(self, path: str, data: bytes) -> bool:  # pragma: no cover - interface
        """Create ``path`` with ``data`` only if it does not exist (O_EXCL); False if it does.

        Raises:
            StorageError: it cannot be written (no empty file is left behind).
        """
        raise NotImplementedError

    def remove(self, path: str) -> None:  # pragma: no cover - interface
        """Remove the file ``path``; a missing one is fine."""
        raise NotImplementedError

    def free_bytes(self, path: str) -> int | None:  # pragma: no cover - interface
        """Bytes available to this user on the file system holding ``path``; None if unknown."""
        raise NotImplementedError

    def make_private_dir(self) -> str:  # pragma: no cover - interface
        """A new 0700 folder under the host's temp dir (for secrets); the caller removes it
        with :meth:`remove_tree`."""
        raise NotImplementedError

    def remove_tree(self, path: str) -> None:  # pragma: no cover - interface
        """Remove the folder ``path`` and everything in it (best effort, never raises)."""
        raise NotImplementedError

    def pid_alive(self, pid: int) -> bool:  # pragma: no cover - interface
        """Whether process ``pid`` exists on the host (another user's process counts)."""
        raise NotImplementedError

    # ---- fewer round trips ----------------------------------------------------------
    def probe(self, paths: list[str], read: int = 0) -> None:  # pragma: no cover - interface
        """Learn in one round trip whether each of ``paths`` exists, its size, and the
        contents of the first ``read`` of them, to serve :meth:`exists`, :meth:`size` and
        :meth:`read_bytes` for a few seconds (nothing to do locally).

        Raises:
            StorageError: the host could not be asked.
        """
        raise NotImplementedError

    def is_cached(self, path: str) -> bool:  # pragma: no cover - interface
        """Whether :meth:`exists` of ``path`` is answered without a round trip to the host
        (always locally; over SSH after a recent :meth:`listdir` or :meth:`probe`)."""
        raise NotImplementedError

    # ---- copies to this machine -----------------------------------------------------
    def start_fetch(self, path: str, local_path: str, offset: int | None = None) -> Fetch:  # pragma: no cover
        """Start copying the host's ``path`` into the local file ``local_path`` (appended to).

        Without ``offset`` the copy waits for :meth:`Fetch.run` to say from which byte to
        send; with ``offset`` (bytes) it may start at once. Call :meth:`Fetch.cancel` if it
        is not run.
        """
        raise NotImplementedError

    def fetch_to_file(self, path: str, local_path: str, offset: int = 0, progress=None) -> int:
        """Append the host's ``path`` from byte ``offset`` (int, bytes) to ``local_path``;
        return the bytes added (``start_fetch(path, local_path).run(offset, progress)``).

        Raises:
            as :meth:`Fetch.run`.
        """
        return self.start_fetch(path, local_path).run(offset, progress=progress)


def write_probe(runner: "Runner", folder: str, tag: str) -> None:
    """Create and remove an empty probe file ``<folder>/.bigskies-<tag>-<random>`` through
    ``runner``: whether the folder takes new files (``inventory.ping``, ``inv apply``).

    Raises:
        StorageError, OSError: the folder refuses new files."""
    import uuid
    probe = f"{folder.rstrip('/')}/.bigskies-{tag}-{uuid.uuid4().hex[:12]}"
    try:
        runner.create_exclusive(probe, b"")
    finally:
        try:
            runner.remove(probe)
        except Exception:  # noqa: BLE001 - nothing was created
            pass


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (signal 0; EPERM means it does). A zombie
    (ended, not yet reaped by its parent: Linux ``/proc/PID/stat`` state Z) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:][:1] != b"Z"  # the name in parentheses may hold spaces
    except (OSError, ValueError):
        return True


def fsync_dir(path: str) -> None:
    """fsync the folder ``path`` so a rename in it survives a crash (best effort)."""
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
