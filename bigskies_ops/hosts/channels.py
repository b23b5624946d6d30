"""A command running on an SSH host over one paramiko exec channel (:class:`SSHProcess`),
with a chunked binary reader of its stdout and a writer into its stdin.

Bytes are never carried by Fabric's ``run``/``get`` (quadratic capture, utf-8
decoding; see ../shared/research/perf-baseline.md): stdout is read from the channel
in 256 KiB chunks and handed to the caller as it arrives. A channel that delivers
nothing for ``backup.stall_timeout`` seconds raises :class:`StallError` instead of
hanging.
"""
from __future__ import annotations

import re
import socket
import threading

from bigskies_ops.errors import BigskiesError, CommandError
from bigskies_ops.hosts.connection import SSHError
from bigskies_ops.hosts.runners import Process, Runner, redact_argv, tail
from bigskies_ops.hosts.shell import PGID_MARK, describe, without_marks

READ_CHUNK = 256 * 1024          # bytes per channel recv (perf-baseline: 173 MB/s on loopback)


class StallError(CommandError):
    """A transfer made no progress for ``backup.stall_timeout`` seconds (exit 1)."""


# ----------------------------------------------------------------------------- processes
class ChannelReader:
    """Binary, chunked reader over a channel's stdout (``read``, ``read1``, ``readline``).

    ``read(n)`` returns what has arrived (at most ``n`` bytes, at least one) or ``b""``
    at the end; a channel that stays silent for the stall timeout raises :class:`StallError`.
    """

    def __init__(self, proc: "SSHProcess"):
        self.proc = proc
        self.buf = bytearray()
        self.bytes = 0

    def _recv(self, n: int) -> bytes:
        try:
            data = self.proc.channel.recv(n)
        except socket.timeout:
            raise self.proc.stall_error() from None
        self.bytes += len(data)
        return data

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            out = bytearray(self.buf)
            self.buf.clear()
            while True:
                d = self._recv(READ_CHUNK)
                if not d:
                    return bytes(out)
                out += d
        if self.buf:
            out = bytes(self.buf[:n])
            del self.buf[:n]
            return out
        return self._recv(min(n, READ_CHUNK * 4) if n else READ_CHUNK)

    read1 = read

    def readline(self) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                out = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return out
            d = self._recv(READ_CHUNK)
            if not d:
                out = bytes(self.buf)
                self.buf.clear()
                return out
            self.buf += d

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.kill()


class ChannelWriter:
    """Binary writer into a channel's stdin; ``close()`` sends EOF."""

    def __init__(self, proc: "SSHProcess"):
        self.proc = proc
        self.closed = False

    def write(self, data: bytes) -> int:
        try:
            self.proc.channel.sendall(data)
        except socket.timeout:
            raise self.proc.stall_error("accepted no input") from None
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.proc.channel.shutdown_write()
            except (OSError, EOFError):
                pass


#: bytes of a remote command's stderr kept: the first ERR_HEAD (the pipeline's PGID_MARK line,
#: which :func:`stop_remote_group` needs) and the last ERR_KEEP - ERR_HEAD (pg_dump --verbose
#: fills the rest)
ERR_HEAD, ERR_KEEP = 4096, 65536


def keep_head_and_tail(buf: bytearray) -> None:
    """Trim ``buf`` (a remote command's stderr so far) in place to :data:`ERR_HEAD` bytes
    of head and the newest ``ERR_KEEP - ERR_HEAD`` bytes."""
    if len(buf) > ERR_KEEP:
        del buf[ERR_HEAD:ERR_HEAD - ERR_KEEP]


class RemoteCommand(Process):
    """What :class:`SSHProcess` and :class:`~bigskies_ops.hosts.transfer.OpenSSHProcess`
    share: ``runner``, ``argv`` (the remote command as the caller gave it) and
    ``stall_timeout`` (seconds; None: never)."""

    runner: Runner
    argv: list[str]
    stall_timeout: float | None

    def stall_error(self, what: str = "sent no data") -> StallError:
        """The :class:`StallError` for a command silent for ``stall_timeout`` seconds."""
        return StallError(f"{self.runner.host.name}: {describe(self.argv)} {what} for "
                          f"{self.stall_timeout:g} s (backup.stall_timeout); transfer aborted",
                          argv=redact_argv(self.argv))


def stop_remote_group(runner: Runner, stderr_head: bytes, *, running: bool) -> None:
    """SIGTERM to the remote process group a pipeline announced on its stderr (``PGID_MARK
    PGID`` in ``stderr_head``, the first 4 KiB), over ``runner``'s connection, while the
    command is ``running``; never raises (the command may be gone already)."""
    m = re.search(re.escape(PGID_MARK) + r" (\d+)", stderr_head.decode("ascii", "replace"))
    if m and running and runner.alive():
        try:
            runner.run(["kill", "-TERM", "--", f"-{m.group(1)}"], check=False, timeout=10)
        except BigskiesError:
            pass


class SSHProcess(RemoteCommand):
    """A command running on the remote host over one exec channel ``channel`` (paramiko),
    started by ``runner`` (an :class:`~bigskies_ops.hosts.ssh.SSHRunner`); a silent channel
    raises :class:`StallError` after ``stall_timeout`` seconds (None: never)."""

    def __init__(self, runner: Runner, argv: list[str], channel, stall_timeout: float | None):
        self.runner = runner
        self.argv = list(argv)
        self.channel = channel
        self.stall_timeout = stall_timeout
        self.stdout = ChannelReader(self)
        self.stdin = ChannelWriter(self)
        self._err = bytearray()
        self._err_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._err_thread.start()

    def _drain_stderr(self) -> None:
        while True:
            try:
                d = self.channel.recv_stderr(65536)
            except socket.timeout:
                if self.channel.closed or not self.runner.alive():
                    return
                continue
            except Exception:
                return
            if not d:
                return
            self._err += d
            keep_head_and_tail(self._err)

    def wait(self, timeout: float | None = None) -> int:
        if not self.channel.status_event.wait(timeout):
            raise CommandError(f"{self.runner.host.name}: {describe(self.argv)} did not "
                               f"finish in {timeout} s", argv=redact_argv(self.argv))
        rc = self.channel.recv_exit_status()
        self._err_thread.join(5)
        if rc == -1:
            raise SSHError(f"{self.runner.host.name}: the SSH connection was lost while running "
                           f"{describe(self.argv)} (no exit status)",
                           argv=redact_argv(self.argv), stderr=tail(without_marks(self.stderr_text())))
        return rc

    def poll(self):
        return self.channel.recv_exit_status() if self.channel.exit_status_ready() else None

    def stderr_text(self) -> str:
        return bytes(self._err).decode("utf-8", "replace")

    def kill(self) -> None:
        """Stop the command: a pipeline's whole remote process group gets SIGTERM (closing
        the channel alone would leave a ``pg_dump > file`` running on the host); then the
        channel is closed."""
        stop_remote_group(self.runner, bytes(self._err[:ERR_HEAD]), running=not self.channel.exit_status_ready())
        try:
            self.channel.close()
        except Exception:
            pass
