"""Where the library's progress lines go: one reporter, not a callback on every function.

Library code does not print (DESIGN.md, "the layered target"). It sends lines on two
channels and whoever runs it decides where they land:

* :func:`note`: notices, warnings and progress (a lock wait, a stale lock removed, "Dropped
  old pre-restore copy ..."); the CLI prints them on stderr.
* :func:`say`: the step lines a scenario or a scheduled run exists to show ("Step 2/5: ...",
  "ok: [prod] backup: ..."); the CLI prints them on stdout, and drops them under ``--json``.
* :func:`step`: the name of the finishing step now running ("hashing the archive",
  "checking row counts", "swapping"); the CLI's progress display shows it as its bar's
  description on a terminal, or one line when the step runs long (output.transfer_progress).

Bytes moved go to the ``progress`` callback a job is given (``progress(done, written)``);
:func:`total` tells such a callback what the bytes run to, when the callback can show it.

Nothing is sent anywhere until a sink is given: a program that uses the library as a
library gets silence unless it asks. :func:`install` sets the process-wide sinks (the CLI
does, for the length of a task); :func:`reporting` overrides them in the current context
only (a :class:`contextvars.ContextVar`), e.g. ``[host]``-prefixed notes per fleet worker,
or none at all for a sub-step whose chatter is not wanted.

A thread does not inherit its starter's context (Python 3.11): a plain thread sees the
installed sinks. Work that should report like its starter (a per-host prefix, a test's
collector) is run through :func:`carried`. Sinks are called from several threads at
once, one line per call.
"""
from __future__ import annotations

import contextvars
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple, Optional

#: one line of text (no trailing newline) -> shown somewhere
Sink = Callable[[str], None]


class Sinks(NamedTuple):
    """Where each channel goes (None: dropped)."""

    note: Optional[Sink] = None
    say: Optional[Sink] = None
    step: Optional[Sink] = None


_installed = Sinks()
_KEEP = object()  # reporting(): leave this channel as it is
_current: contextvars.ContextVar[Optional[Sinks]] = contextvars.ContextVar("bigskies_report", default=None)


def sinks() -> Sinks:
    """The sinks in effect here: this context's override, else the installed ones."""
    return _current.get() or _installed


def note(msg: str) -> None:
    """Send one notice line (``msg``, no newline) to the note sink in effect; nothing when none."""
    fn = sinks().note
    if fn is not None:
        fn(msg)


def say(msg: str = "") -> None:
    """Send one step line to the say sink in effect; nothing when none."""
    fn = sinks().say
    if fn is not None:
        fn(msg)


def step(name: str) -> None:
    """Name the step now running (``"hashing the archive"``, lower case, no trailing dots):
    shown until the next step or the end of the job; nothing when no step sink is in effect."""
    fn = sinks().step
    if fn is not None:
        fn(name)


def total(progress, nbytes: int | None, *, estimate: bool = False, basis: str = "", what: str = "") -> None:
    """Tell ``progress`` (a job's byte callback, or None) what its byte counts run to.

    Args:
        nbytes: the total, bytes (None or 0: unknown, nothing is told).
        estimate: True when ``nbytes`` is a guess (the last backup's size, the database's
            size), which the display must say; False for a known size (a file's).
        basis: where an estimate comes from, a few words (``"last backup"``).
        what: a new transfer through the same callback (the next archive of an offsite
            upload): its name; the byte count starts again from 0.

    A callback without a ``set_total`` method (a plain function) is left alone."""
    fn = getattr(progress, "set_total", None)
    if fn is not None and nbytes:
        fn(int(nbytes), estimate=estimate, basis=basis, **({"what": what} if what else {}))


def warn(msg: str) -> None:
    """A warning that must not go unseen (the server of an SSH connection is not
    authenticated): the note sink when there is one, else stderr."""
    fn = sinks().note
    if fn is not None:
        fn(msg)
    else:
        print(msg, file=sys.stderr, flush=True)


def install(note: Optional[Sink], say: Optional[Sink] = None, step: Optional[Sink] = None) -> Sinks:
    """Set the process-wide sinks (seen by every thread and context without an override of
    :func:`reporting`); None drops that channel. Returns the previous ones, for
    ``install(*previous)``."""
    global _installed
    previous, _installed = _installed, Sinks(note, say, step)
    return previous


@contextmanager
def installed(note: Optional[Sink], say: Optional[Sink] = None) -> Iterator[None]:
    """:func:`install` for the length of a block, then the previous sinks again."""
    previous = install(note, say)
    try:
        yield
    finally:
        install(*previous)


@contextmanager
def reporting(note=_KEEP, *, say=_KEEP, step=_KEEP) -> Iterator[None]:
    """In this context (this thread, and what :func:`carried` hands on), send notes to
    ``note``, step lines to ``say`` and step names to ``step`` while the block runs; None
    drops the channel, a channel not given stays as it is. The previous sinks are back
    after the block."""
    cur = sinks()
    token = _current.set(Sinks(cur.note if note is _KEEP else note, cur.say if say is _KEEP else say,
                               cur.step if step is _KEEP else step))
    try:
        yield
    finally:
        _current.reset(token)


_prefix_lock = threading.Lock()


def prefixed(prefix: str, sink: Optional[Sink] = _KEEP) -> Optional[Sink]:
    """A sink that sends ``f"[{prefix}] {msg}"`` to ``sink`` (default: the note sink in
    effect now), one whole line at a time; None when there is nowhere to send."""
    target = sinks().note if sink is _KEEP else sink
    if target is None:
        return None

    def f(msg: str) -> None:
        with _prefix_lock:
            target(f"[{prefix}] {msg}")
    return f


def carried(fn: Callable) -> Callable:
    """``fn`` bound to a copy of the caller's context: a thread started with
    ``target=carried(work)`` reports where its starter does. Wrap once per thread: one
    context cannot be entered by two threads at once."""
    ctx = contextvars.copy_context()
    return lambda *a, **kw: ctx.run(fn, *a, **kw)
