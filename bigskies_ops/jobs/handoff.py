"""The SQL of a pull in progress, followed by the load that restores it (``db.pull --restore``).

:class:`GrowingFile` is the meeting point of the two threads: the pull writes the archive
(and hands its SQL over in memory), the parallel loader
(:func:`bigskies_ops.jobs.parload.load_plain_parallel`) reads it as it arrives.
"""
from __future__ import annotations

import collections
import threading
import time

#: SQL a pull may hand over ahead of the load's reader (:class:`GrowingFile`), bytes.
HANDOFF_BYTES = 16 * 1024 * 1024


class GrowingFile:
    """A file another thread is still writing (a pull in progress): readers follow it.

    The writer calls :meth:`start` once the file exists, :meth:`finish` after its last
    byte is written (or :meth:`fail`); :meth:`raw_chunks` yields what is there, waits
    for more at the end, and stops at the real end. A reader never decides that the
    data is complete or valid: the caller checks the finished archive (size, sha256,
    manifest) before anything is swapped in.

    With ``handed`` (bigskies_ops.jobs.destinations.StreamSqlHere) the writer hands the
    dump's SQL over in memory (:meth:`hand`) and the reader reads that instead of the
    compressed archive (:attr:`compressed` is False). At most :data:`HANDOFF_BYTES` wait
    unread: a writer ahead of the load waits for it (the source, pg_dump, follows the
    load's pace, as in ``pg_dump | pg_restore``), and memory stays flat. Once the reading
    side has ended (:meth:`detach`: the load finished, failed or was stopped) the writer
    goes on alone, so a pull whose load failed still leaves its archive.
    """

    def __init__(self, poll: float = 0.02):
        self.path: str | None = None
        self.error: BaseException | None = None
        self.cancelled = threading.Event()  # set by the reading side: the writer should stop
        self.cancel_reason = "the restore following this pull was interrupted"  # the writer's error then
        self.proc = None  # the writer's source process (kill() stops a read that waits for data): attach()
        self._opened = threading.Event()
        self._done = threading.Event()
        self.poll = poll
        self.handed = False  # the SQL is handed over in memory (hand), not read from ``path``
        self._cond = threading.Condition()
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0  # bytes handed over and not read yet
        self._detached = False

    @property
    def compressed(self) -> bool:
        """The readers get the gzip archive (True) or the SQL itself (handed over, False)."""
        return not self.handed

    def start(self, path: str, handed: bool = False) -> None:
        self.path = path
        self.handed = handed
        self._opened.set()

    def wait_started(self) -> None:
        """Wait until the writer has started (or failed)."""
        self._opened.wait()

    def hand(self, chunk: bytes) -> None:
        """The writer's next ``chunk`` of SQL for the reader. Waits while :data:`HANDOFF_BYTES` are
        unread; returns at once once the reader has gone (:meth:`detach`) or :attr:`cancelled`."""
        with self._cond:  # a source that has ended (a lost pull) is read to its end: its error reaches the load
            while (self._queued >= HANDOFF_BYTES and not self._detached and not self.cancelled.is_set()
                   and (self.proc is None or self.proc.poll() is None)):
                self._cond.wait(0.2)
            if self._detached:
                return
            self._queue.append(chunk)
            self._queued += len(chunk)
            self._cond.notify_all()

    def detach(self) -> None:
        """The reading side has ended: drop what it did not read; the writer no longer waits."""
        with self._cond:
            self._detached = True
            self._queue.clear()
            self._queued = 0
            self._cond.notify_all()

    def finish(self) -> None:
        self._done.set()
        with self._cond:
            self._cond.notify_all()

    def cancel(self, reason: str | None = None) -> None:
        """The reading side gives up (Ctrl-C, SIGTERM; ``reason``: another cause, for the
        writer's error): the writer stops at once, even while its source sends nothing
        (pg_dump waiting for a lock), and fails; a source attached later is killed then."""
        if reason:
            self.cancel_reason = reason
        self.cancelled.set()
        with self._cond:
            self._cond.notify_all()
        _kill(self.proc)

    def attach(self, proc) -> None:
        """The writer's source process (``proc.kill()``, ``proc.poll()``), killed at once if
        the reading side has already given up (:meth:`cancel` before the source started)."""
        self.proc = proc
        if self.cancelled.is_set():
            _kill(proc)

    def fail(self, e: BaseException) -> None:
        self.error = e
        self._done.set()
        self._opened.set()
        with self._cond:
            self._cond.notify_all()

    def raw_chunks(self, chunk: int = 1 << 20):
        """``(bytes read so far, bytes)`` in file order until the writer has finished.

        Raises:
            the writer's error, if it failed (or never opened the file).
        """
        self._opened.wait()
        if self.path is None:
            raise self.error or RuntimeError("the writer never started")
        if self.handed:
            yield from self._handed_chunks()
            return
        done = 0
        with open(self.path, "rb") as f:  # kept open: the writer may rename the file when done
            while True:
                b = f.read(chunk)
                if b:
                    done += len(b)
                    yield done, b
                    continue
                if self.error is not None:
                    raise self.error
                if self._done.is_set():
                    b = f.read(chunk)  # bytes written between our last read and finish()
                    if not b:
                        return
                    done += len(b)
                    yield done, b
                    continue
                time.sleep(self.poll)

    def _handed_chunks(self):
        done = 0
        while True:
            with self._cond:
                while not self._queue:
                    if self.error is not None:
                        raise self.error
                    if self._done.is_set():  # set after the last hand(): nothing can follow
                        return
                    self._cond.wait(0.2)
                b = self._queue.popleft()
                self._queued -= len(b)
                self._cond.notify_all()
            done += len(b)
            yield done, b


def _kill(proc) -> None:
    if proc is not None:
        try:
            proc.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass
