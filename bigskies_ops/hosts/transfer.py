"""Files on an SSH host read and written as streams, and copies of them to this machine.

A remote file is read with ``tail -c +N`` (:class:`RemoteReadFile`) and written through
``cat > FILE`` (:class:`RemoteWriteFile`), over exec channels of the runner's one
connection, so ``become`` applies to them too. A whole file comes here through an
OpenSSH client that writes the local file itself (:class:`OpenSSHFetch`, ~1.7x faster
than paramiko), or through the paramiko channel when there is no ``ssh`` binary or
``sudo -S`` needs stdin (:class:`ChannelFetch`).
"""
from __future__ import annotations

import fcntl
import os
import select
import shutil
import subprocess
import time

from bigskies_ops.errors import CommandError, StorageError
from bigskies_ops.hosts.channels import (ERR_HEAD, ChannelReader, RemoteCommand, SSHProcess, StallError,
                                         keep_head_and_tail, stop_remote_group)
from bigskies_ops.hosts.connection import SSHError
from bigskies_ops.hosts.runners import Fetch, Runner, StderrCollector, redact_argv, tail
from bigskies_ops.hosts.shell import describe, failure_reason, without_marks


class RemoteReadFile(ChannelReader):
    """A remote file streamed over ``tail -c +N``; ``close()`` checks how it ended."""

    def __init__(self, proc: SSHProcess, path: str):
        super().__init__(proc)
        self.path = path
        self.buf = proc.stdout.buf
        proc.stdout = self

    def close(self) -> None:
        self.proc.kill()

    def finish(self) -> None:
        """After reading to the end: raise if the remote reader failed."""
        rc = self.proc.wait(30)
        if rc != 0:
            raise StorageError(f"{self.proc.runner.host.name}: reading {self.path} failed: "
                               f"{tail(self.proc.stderr_text(), 300)}")

    def __exit__(self, *exc):
        self.close()


class RemoteWriteFile:
    """A writer into a remote file through a running ``cat > FILE`` (``proc``, stdin open):
    ``close()`` sends EOF and raises StorageError if the remote side failed (e.g. a full disk)."""

    def __init__(self, proc: SSHProcess, path: str):
        self.proc, self.path = proc, path

    def write(self, data: bytes) -> int:
        try:
            return self.proc.stdin.write(data)
        except OSError as e:
            raise StorageError(f"{self.proc.runner.host.name}: writing {self.path} failed: "
                               f"{failure_reason(self.proc.stderr_text()) if self.proc.stderr_text() else e}") from None

    def flush(self) -> None:
        pass

    def fileno(self):
        raise OSError("remote file")

    def close(self) -> None:
        self.proc.stdin.close()
        rc = self.proc.wait(self.proc.stall_timeout)
        if rc != 0:
            raise StorageError(f"{self.proc.runner.host.name}: writing {self.path} failed: "
                               f"{failure_reason(self.proc.stderr_text())}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            self.proc.kill()


class OpenSSHFetch(Fetch):
    """A copy made by an OpenSSH client (``argv``, from :meth:`SSHRunner.openssh_argv
    <bigskies_ops.hosts.ssh.SSHRunner.openssh_argv>`) that writes the local file itself:
    no Python in the data path, like ``ssh host cat FILE > FILE``."""

    def __init__(self, runner: Runner, path: str, local_path: str, argv: list[str],
                 offset: int | None = None):
        self.runner, self.path, self.local_path = runner, path, local_path
        # ssh writes the file itself: if we die (SIGKILL, OOM) it must die too, or an orphan
        # keeps appending to a .partial that a rerun resumes, checks and publishes (a verified
        # archive would grow afterwards). util-linux setpriv
        # sets PR_SET_PDEATHSIG (prctl(2)) and execs ssh; fork-safe, unlike a preexec_fn.
        setpriv = shutil.which("setpriv")
        if setpriv:
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        fd = os.open(local_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=fd, stderr=subprocess.PIPE)
        finally:
            os.close(fd)
        self.err = StderrCollector(self.proc.stderr)
        self.err.start()
        self.offset: int | None = None  # the first byte asked for, once the remote side was told
        self.start = 0                  # the local file's size at that moment
        if offset is not None:
            self._send_offset(offset)

    def _send_offset(self, offset: int) -> None:
        self.offset = int(offset)
        self.start = os.path.getsize(self.local_path)
        try:
            self.proc.stdin.write(f"{self.offset + 1}\n".encode())
            self.proc.stdin.close()
        except OSError:
            pass  # ssh already ended (e.g. refused): its exit status and stderr say why

    def cancel(self) -> None:
        p = self.proc
        if p.poll() is None:
            p.kill()
        p.wait()
        try:
            p.stdin.close()
        except OSError:
            pass
        self.err.join(5)

    def run(self, offset: int = 0, progress=None) -> int:
        p, host = self.proc, self.runner.host
        if self.offset is None:
            self._send_offset(offset)
        elif int(offset) != self.offset:
            raise ValueError(f"Fetch.run(offset={offset}) after start_fetch(offset={self.offset})")
        offset, start = self.offset, self.start
        stall = self.runner.stall_timeout
        last, last_change = -1, time.monotonic()
        try:
            while True:
                try:
                    rc = p.wait(1.0)
                    break
                except subprocess.TimeoutExpired:
                    pass
                size = os.path.getsize(self.local_path)
                now = time.monotonic()
                if size != last:
                    last, last_change = size, now
                    if progress:
                        progress(offset + size - start, None)
                elif stall and now - last_change > stall:
                    raise StallError(f"{host.name}: reading {self.path} sent no data for {stall:g} s "
                                     f"(backup.stall_timeout); transfer aborted")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.err.join(5)
        text = self.err.buf.decode("utf-8", "replace")
        if rc == 255:
            why = tail(text, 300) or "ssh exited 255 without a message (connection lost or remote end killed)"
            raise SSHError(f"{host.name}: the SSH transfer of {self.path} failed: {why}; run the pull again "
                           f"to resume")
        if rc < 0:  # the local ssh client was killed: the connection is gone, the .partial stays
            raise SSHError(f"{host.name}: the SSH transfer of {self.path} was cut off (ssh client killed by "
                           f"signal {-rc}); run the pull again to resume")
        if rc != 0:
            raise StorageError(f"{host.name}: copying {self.path} failed: {failure_reason(text)}")
        return os.path.getsize(self.local_path) - start


class ChannelFetch(Fetch):
    """The paramiko fallback (no OpenSSH client here, or ``sudo -S`` needs stdin)."""

    def __init__(self, runner: Runner, path: str, local_path: str, offset: int | None = None):
        self.runner, self.path, self.local_path = runner, path, local_path
        self.offset = None if offset is None else int(offset)  # the copy itself starts in run()
        open(local_path, "ab").close()

    def run(self, offset: int = 0, progress=None) -> int:
        if self.offset is not None and int(offset) != self.offset:
            raise ValueError(f"Fetch.run(offset={offset}) after start_fetch(offset={self.offset})")
        start = os.path.getsize(self.local_path) if os.path.exists(self.local_path) else 0
        f = self.runner.open_read(self.path, offset)
        try:
            with open(self.local_path, "ab") as out:
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
                    if progress:
                        progress(offset + out.tell() - start, None)
            f.finish()
        finally:
            f.close()
        return os.path.getsize(self.local_path) - start


class _HeadTailStderr(StderrCollector):
    """A remote command's stderr through the OpenSSH client, its head and tail kept as
    :class:`~bigskies_ops.hosts.channels.SSHProcess` keeps them (channels.keep_head_and_tail)."""

    def run(self):
        for chunk in iter(lambda: self.stream.read1(65536), b""):
            self.buf += chunk
            keep_head_and_tail(self.buf)


class _PipeReader:
    """Binary reader of the OpenSSH client's stdout pipe: ``read(n)`` returns what has
    arrived (at least one byte) or ``b""`` at the end; silence for ``stall_timeout``
    seconds raises :class:`StallError`, as :class:`ChannelReader` does."""

    def __init__(self, proc: "OpenSSHProcess", fd: int):
        self.proc, self.fd = proc, fd
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            out = bytearray()
            while True:
                d = self.read(1 << 20)
                if not d:
                    return bytes(out)
                out += d
        stall = self.proc.stall_timeout
        if stall and not select.select([self.fd], [], [], stall)[0]:
            raise self.proc.stall_error()
        d = os.read(self.fd, n or 65536)
        self.bytes += len(d)
        return d

    read1 = read

    def close(self) -> None:
        pass


class OpenSSHProcess(RemoteCommand):
    """A remote command whose stdout comes here through an OpenSSH client (``ssh_argv``,
    :meth:`SSHRunner.openssh_argv <bigskies_ops.hosts.ssh.SSHRunner.openssh_argv>`) instead
    of a paramiko channel: the same remote command line, the same stdin prefix (environment
    values, the sudo password: never on a command line), the same guard (the remote side
    stops the command when this client's stdin closes: our process ended or
    :meth:`kill`). For bulk streams: OpenSSH decrypts in C, outside this process and its
    GIL (perf-baseline: ~1.7x paramiko's throughput; paramiko's transport thread decrypts
    every byte in this process, on the cores a ``db.pull --restore``'s load needs).

    ``argv`` is the remote command as the caller gave it (messages); ``runner`` the
    :class:`~bigskies_ops.hosts.ssh.SSHRunner` (its paramiko connection stops the remote
    process group in :meth:`kill`)."""

    def __init__(self, runner: Runner, argv: list[str], ssh_argv: list[str], prefix: bytes,
                 stall_timeout: float | None):
        self.runner, self.argv, self.stall_timeout = runner, list(argv), stall_timeout
        setpriv = shutil.which("setpriv")
        if setpriv:  # ssh must not outlive us (see OpenSSHFetch); its stdin closing then stops the remote side
            ssh_argv = [setpriv, "--pdeathsig", "KILL", "--", *ssh_argv]
        self.proc = subprocess.Popen(ssh_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        try:
            fcntl.fcntl(self.proc.stdout.fileno(), 1031, 1 << 20)  # F_SETPIPE_SZ: fewer, larger reads
        except OSError:
            pass
        self.stdout = _PipeReader(self, self.proc.stdout.fileno())
        self.stdin = self.proc.stdin  # kept open: the remote guard waits for its EOF
        self.err = _HeadTailStderr(self.proc.stderr)
        self.err.start()
        if prefix:
            try:
                self.stdin.write(prefix)
                self.stdin.flush()
            except OSError:
                pass  # ssh already ended (refused): its exit status and stderr say why

    def wait(self, timeout: float | None = None) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise CommandError(f"{self.runner.host.name}: {describe(self.argv)} did not finish in {timeout} s",
                               argv=redact_argv(self.argv)) from None
        self.err.join(5)
        if rc == 255 or rc < 0:  # ssh's own failure (connection lost), or the client was killed
            err = without_marks(self.stderr_text())
            raise SSHError(f"{self.runner.host.name}: the SSH connection was lost while running "
                           f"{describe(self.argv)} ({tail(err, 300) or f'ssh exit {rc}'})",
                           argv=redact_argv(self.argv), stderr=tail(err))
        return rc

    def poll(self):
        return self.proc.poll()

    def stderr_text(self) -> str:
        return bytes(self.err.buf).decode("utf-8", "replace")

    def kill(self) -> None:
        """Stop the remote process group (over the paramiko connection, as :meth:`SSHProcess.kill`),
        then the client (its stdin closing stops what is left: the guard)."""
        stop_remote_group(self.runner, bytes(self.err.buf[:ERR_HEAD]), running=self.proc.poll() is None)
        try:
            self.stdin.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
