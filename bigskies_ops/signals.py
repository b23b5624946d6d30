"""SIGINT/SIGTERM turn into :class:`~bigskies_ops.errors.Interrupted` so cleanup runs.

Without this, SIGTERM (systemd, docker stop, ``timeout``, a CI runner) kills Python
without running ``finally`` blocks: the private pgpass file stays on disk, the lock
stays taken, a side database stays behind. The first signal raises; later ones
(while the cleanup runs) are only recorded, so a second Ctrl-C cannot cut a
coordinator restart short. A SIGINT that was ignored when we started (``nohup``,
a background job of a non-interactive shell) stays ignored, as POSIX tools do.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from bigskies_ops.errors import Interrupted

_received: list[int] = []
_held: list[int] = []   # signals that arrived inside deferred(), raised when it ends
_depth = 0
_insist = 0  # deferred(insist=True) blocks open: there a second signal is raised at once


def received() -> int | None:
    """The first signal received while :func:`interrupts_unwind` was active, or None."""
    return _received[0] if _received else None


@contextmanager
def interrupts_unwind(signals=(signal.SIGINT, signal.SIGTERM)):
    """Install the handlers for the ``with`` body (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}

    def handler(signum, frame):
        first = not _received
        _received.append(signum)
        if first:
            if _depth:
                _held.append(signum)
                return
            raise Interrupted(signum)
        if _insist and _held:  # a second signal inside deferred(insist=True): the user insists
            _held.clear()
            raise Interrupted(signum)

    for s in signals:
        prev = signal.getsignal(s)
        if s == signal.SIGINT and prev == signal.SIG_IGN:
            continue
        old[s] = prev
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, prev in old.items():
            signal.signal(s, prev if prev is not None else signal.SIG_DFL)


@contextmanager
def deferred(insist: bool = False):
    """Hold SIGINT/SIGTERM during a step that must not be cut in two (an archive renamed
    into place and its DONE manifest: cut in two, a complete archive would be published
    with an empty or FAILED manifest). A signal that arrives meanwhile is raised as
    :class:`Interrupted` when the step has ended without an error. ``insist``: for a step
    that may wait on the server (a lock), a second signal is raised at once. Main thread
    only (where the handlers run); elsewhere a plain block."""
    global _depth, _insist
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    _insist += int(insist)
    held: list[int] = []
    try:
        yield
    finally:
        _depth -= 1
        _insist -= int(insist)
        if not _depth:  # an error leaving the step ends the command anyway: drop what was held
            held, _held[:] = _held[:], []
    if held:
        raise Interrupted(held[0])


#: what an interrupted task could not clean up (a sentence with the command that
#: finishes it each); the CLI reports these instead of "cleanup done"
_left_behind: list[str] = []


def left_behind(what: str | None = None) -> list[str]:
    """Record ``what`` (when given); return everything recorded in this process."""
    if what:
        _left_behind.append(what)
    return list(_left_behind)
