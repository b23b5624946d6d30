"""The only place that formats for humans (rich tables, progress) or JSON.

Human output and ``--json`` carry the same facts (CONTRACTS.md section 5): UTC
ISO-8601 times, sizes in bytes in JSON. Progress bars appear only when stderr is a
terminal; otherwise output is line-oriented for cron logs.
"""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

_command = "inv"
_out = None
_err = None


def command() -> str:
    """The command that copy-paste hints name: ``bigskies-ops`` when that console script
    (or ``python -m bigskies_ops``) runs, which works from any folder, else ``inv``
    (which needs the repo's tasks.py), so a hint names the command that ran."""
    return _command


def set_command(name: str) -> None:
    """Set what :func:`command` returns (called by the console script's main)."""
    global _command
    _command = name


_inventory_flag = ""


def set_inventory(path: str | None) -> None:
    """Remember the inventory named on the command line (``-i FILE``), so that hints
    repeat it: without it a copied hint acts on ./inventory.yaml's host of the same
    name."""
    global _inventory_flag
    import shlex
    _inventory_flag = f" -i {shlex.quote(path)}" if path else ""


def hint(args: str) -> str:
    """A command line to copy: :func:`command`, ``args`` (a task and its flags), and
    ``-i FILE`` when the inventory was named on the command line."""
    return f"{_command} {args}{_inventory_flag}"


def out() -> "Console":
    global _out
    from rich.console import Console  # (imported on first use: a cron run prints plain lines)
    if _out is None or _out.file is not sys.stdout:
        _out = Console(file=sys.stdout, highlight=False, soft_wrap=True,
                       width=None if sys.stdout.isatty() else 160)
    return _out


def err() -> "Console":
    global _err
    from rich.console import Console
    if _err is None or _err.file is not sys.stderr:
        _err = Console(file=sys.stderr, highlight=False, soft_wrap=True)
    return _err


def say(msg: str = "") -> None:
    """One line of human output on stdout, as is (no markup, no ``:emoji:`` codes).
    Through rich on a terminal (it keeps a progress bar below the lines), else written
    directly (rich is not even imported: ~50 ms of every cron run)."""
    if not sys.stdout.isatty():
        _write(sys.stdout, f"{msg}\n")
        return
    out().print(msg, markup=False, emoji=False)


def note(msg: str) -> None:
    """A progress/notice line on stderr (as :func:`say`)."""
    if not sys.stderr.isatty():
        _write(sys.stderr, f"{msg}\n")
        return
    err().print(msg, markup=False, emoji=False)


def _write(stream, text: str) -> None:
    """Write one line; a reader that went away (``| head``, a closed stderr) does not stop
    the work: the stream is pointed at /dev/null and the task goes on (a pull was failed as
    "writing the .partial failed: Broken pipe" when its progress line met a closed stderr).
    Python docs, signal module, "Note on SIGPIPE"."""
    try:
        try:
            stream.write(text)
        except UnicodeEncodeError:  # a name's bytes that are not UTF-8 (SQL_ASCII): shown as \xNN
            from bigskies_ops.text import printable
            stream.write(printable(text).encode(getattr(stream, "encoding", None) or "utf-8", "backslashreplace")
                         .decode(getattr(stream, "encoding", None) or "utf-8"))
        stream.flush()
    except BrokenPipeError:
        discard(stream)


def discard(stream) -> None:
    """Point ``stream``'s file descriptor at /dev/null: its reader is gone, and whatever is
    still written (here, or by a final flush) must not fail. Python docs, signal module,
    "Note on SIGPIPE"."""
    import os
    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


_json_documents = 0


def json_documents() -> int:
    """How many JSON documents :func:`emit_json` has printed in this process (the ``--json``
    failure document is printed only when the task printed none)."""
    return _json_documents


def emit_json(obj) -> None:
    global _json_documents
    _json_documents += 1
    from bigskies_ops.text import json_bytes
    text = json_bytes(obj).decode()
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:  # a stdout that is not UTF-8
        sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=True, default=str) + "\n")


def result_line(word: str, host: str, reason: str) -> None:
    """Ansible-like result word: ``ok``, ``changed``, ``failed``, ``skipped`` with a reason."""
    say(f"{word}: [{host}] {reason}")


#: how a ``--check`` line names a refusal of the real run (bigskies_ops.cli.checks.refusal_lines)
REFUSE_PREFIX = "  the real run would REFUSE: "


def check_report(task: str, host: str, plan: dict, lines: list[str], *, would_change: bool,
                 json: bool = False) -> None:
    """Report a ``--check`` run (a dry run: nothing was changed; CONTRACTS.md section 5, exit 0).

    Args:
        task: the task's name as typed (``db.restore``).
        host: the inventory host's name.
        plan: the facts of what would happen (JSON-ready: sizes in bytes, UTC ISO-8601
            times, names); the same facts as ``lines``.
        lines: one human line per step that would happen, in order (``drop database
            'bigskies_pre_restore_...' (1.2 GB)``).
        would_change: whether the real run would change anything; the result word is then
            ``changed``, else ``ok`` (Ansible's check mode does the same). When ``lines``
            name refusals (:data:`REFUSE_PREFIX`), the result line says the run would be
            refused, so the steps listed before them are not read as what would happen.
        json: print one JSON document instead: ``{"result", "check": true, "task", "host",
            "would_change", "plan"}``.
    """
    word = "changed" if would_change else "ok"
    if json:
        emit_json({"result": word, "check": True, "task": task, "host": host, "would_change": would_change,
                   "plan": plan})
        return
    say(f"CHECK MODE ({task} --check): nothing is changed")
    for line in lines:
        say(f"  would {line}" if not line.startswith(("would ", "  ")) else f"  {line}")
    steps = sum(1 for line in lines if not line.startswith("  "))  # indented lines are a step's facts
    refused = sum(1 for line in lines if line.startswith(REFUSE_PREFIX))
    result_line(f"{word} (check)", host, "would change nothing" + (
        f": the real run would be refused ({refused} reason{'s' if refused > 1 else ''} above)" if refused else "")
        if not would_change else f"{steps} step(s) would run; run again without --check to do them")


def heading(title: str) -> None:
    say(title)
    say("=" * len(title))
    say()


# ----------------------------------------------------------------------------- progress
#: off a terminal, a finishing step still running after this many seconds gets one line
#: (a cron log of a quick run has no step lines; a slow step is named while it runs)
STEP_LINE_AFTER = 10.0
#: off a terminal, a transfer that asked for lines (``lines=True``) gets one this often
LINE_EVERY = 10.0
#: characters of a bar on a terminal (at most; narrower when the line needs the room)
BAR_WIDTH = 30
#: the narrowest bar before the description gives up characters
BAR_MIN = 8


def _cut_middle(word: str, keep: int) -> str:
    """``word`` in ``keep`` characters: its start and end around ``…`` (a file name's
    date and extension stay readable)."""
    if len(word) <= keep:
        return word
    if keep <= 1:
        return "…"[:keep]
    head = (keep - 1 + 1) // 2
    tail = keep - 1 - head
    return word[:head] + "…" + (word[-tail:] if tail else "")


def fit_description(description: str, step: str | None, room: int) -> str:
    """The bar's description (``pg_dump app: hashing``) in at most ``room`` characters.

    The step name stays whole: the description before it gives up characters first, its
    longest word (a file name) cut in the middle (``offsite vault: bigskies_b…0101.sql.gz``);
    only when that is not enough is the text cut at its end. Pure."""
    text = f"{description}: {step}" if step else description
    if len(text) <= room:
        return text
    suffix = f": {step}" if step else ""
    words = description.split(" ")
    i = max(range(len(words)), key=lambda k: len(words[k]))
    over = len(text) - room
    keep = max(len(words[i]) - over, 0)
    if keep >= 8:
        words[i] = _cut_middle(words[i], keep)
        return " ".join(words) + suffix
    words[i] = _cut_middle(words[i], min(8, len(words[i])))
    text = " ".join(words) + suffix
    return text if len(text) <= room else text[:max(room - 1, 0)] + "…"[:room]


def progress_layout(width: int, description: str, step: str | None,
                    statuses: list[str]) -> tuple[str, int, int]:
    """(description text, bar width, index into ``statuses``) that keep a bar's line
    (description, bar, status, one space between each) within ``width`` columns, so it
    never wraps (a wrapped bar is redrawn as two lines). ``statuses``: the figures beside
    the bar from the fullest to the most compact (:meth:`Meter.status_text`).

    Room is made in this order: the bar shrinks from :data:`BAR_WIDTH` to :data:`BAR_MIN`,
    the figures get more compact, the bar shrinks to 1; only then does the description give
    up characters (:func:`fit_description`: file names cut in the middle, the step name
    kept). Pure."""
    text = f"{description}: {step}" if step else description

    def avail(status: str) -> int:  # one column spare: a line of exactly the width wraps on some terminals
        return width - 1 - 2 - len(status)
    for i, status in enumerate(statuses):
        bar = min(BAR_WIDTH, avail(status) - len(text))
        if bar >= BAR_MIN:
            return text, bar, i
    last = len(statuses) - 1
    room = avail(statuses[last])
    if room - len(text) >= 1:
        return text, room - len(text), last
    return fit_description(description, step, max(room - 1, 1)), 1, last


def total_text(total: int, estimate: bool) -> str:
    """``"~1.2 GiB est."`` for an estimate, ``"1.2 GiB"`` for a known size (bytes in)."""
    from bigskies_ops.text import human_bytes
    return f"~{human_bytes(total)} est." if estimate else human_bytes(total)


def bar_total(done: int, total: int | None, estimate: bool) -> int | None:
    """The total a bar is drawn against, or None for an indeterminate (pulsing) bar: an
    estimate that ``done`` has passed is not kept (the bar would sit at 100% until the end),
    and a known size is never passed by more than rounding."""
    if not total:
        return None
    if done > total:
        return None if estimate else done
    return total


def amount_text(done: int, total: int | None, estimate: bool) -> str:
    """``"300.0 MiB of ~1.2 GiB est."``, ``"1.3 GiB (over the ~1.2 GiB est.)"`` or, with
    no total, ``"300.0 MiB"`` (bytes in)."""
    from bigskies_ops.text import human_bytes
    if not total:
        return human_bytes(done)
    if done > total and estimate:
        return f"{human_bytes(done)} (over the {total_text(total, estimate)})"
    return f"{human_bytes(done)} of {total_text(total, estimate)}"


def eta_seconds(done: int, total: int | None, rate: float | None) -> float | None:
    """Seconds left at ``rate`` (bytes/s) to reach ``total`` from ``done``; None when it
    cannot be told (no total, no rate yet, or an estimate already passed)."""
    if not total or not rate or rate <= 0 or done > total:
        return None
    return (total - done) / rate


def clock(seconds: float | None) -> str:
    """``"1:05"``, ``"1:02:03"``; ``"--:--"`` for None."""
    if seconds is None:
        return "--:--"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Meter:
    """The progress of one transfer, given to a job as its ``progress`` callback.

    Called ``meter(done_bytes, written_bytes=None)`` as bytes move; :meth:`set_total` (through
    :func:`bigskies_ops.report.total`) gives the total or an estimate, :meth:`step` (through
    :func:`bigskies_ops.report.step`) names the finishing step now running. What it shows:

    * on a terminal, a bar: ``pg_dump app ━━━━━  300.0 MiB of ~1.2 GiB est.  40.1 MiB/s  ETA 0:23``;
      an estimate passed turns the bar indeterminate (``over the ~1.2 GiB est.``, no ETA);
      a step makes the description ``pg_dump app: hashing the archive`` and the bar pulse
      with the step's seconds;
    * off a terminal, no bar and no ``\\r``: with ``lines`` a transfer line every
      :data:`LINE_EVERY` seconds, and a step still running after :data:`STEP_LINE_AFTER`
      seconds one line (CONTRACTS.md section 5).
    """

    def __init__(self, description: str, *, lines: bool = False, clock=None):
        import threading
        import time
        self.description, self.lines = description, lines
        self._now = clock or time.monotonic
        self.done = 0
        self.total: int | None = None
        self.estimate = False
        self.first: tuple[float, int] | None = None  # (time, bytes) of the first bytes seen
        self.last_line = self._now()
        self.step_name: str | None = None
        self.step_t0 = 0.0
        self._progress = None  # rich Progress (terminal) and the task id
        self._task = None
        self._timer = None
        self._lock = threading.Lock()
        self.bar_width, self.compact = BAR_WIDTH, 0  # this frame's (progress_layout)

    @property
    def shows_bytes(self) -> bool:
        """Whether the bytes a job reports are shown (a bar on a terminal, or ``lines``): a
        job may skip work done only to report them (the side database's size, a query a
        second during a custom restore, is one psql process each off a terminal too)."""
        return self._progress is not None or self.lines

    # -- what jobs call
    def __call__(self, done: int, written: int | None = None) -> None:
        now = self._now()
        self.done = done
        if self.first is None and done > 0:
            self.first = (now, done)
            self._refresh(bar=True)
        elif self._progress is not None:
            self._progress.update(self._task, completed=done, total=self._bar_total())
        elif self.lines and now - self.last_line >= LINE_EVERY:
            self.last_line = now
            note(f"{self.description}: {self.status_text(now)}")

    def set_total(self, total: int, *, estimate: bool = False, basis: str = "", what: str = "") -> None:
        if what:  # the next transfer through this meter: counted from 0
            self.step(None)
            self.description, self.done, self.first = what, 0, None
        self.total, self.estimate = int(total), estimate
        self._refresh(bar=True)

    def step(self, name: str | None) -> None:
        import threading
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.step_name, self.step_t0 = name, self._now()
            if name and self._progress is None:  # off a terminal: a line only if it runs long
                t = threading.Timer(STEP_LINE_AFTER, self._step_line, args=(name,))
                t.daemon = True
                self._timer = t
                t.start()
        self._refresh(bar=True)

    # -- what is shown
    def rate(self, now: float) -> float | None:
        """Bytes per second since the first bytes (a resumed pull's first count excluded)."""
        if self.first is None or now - self.first[0] < 0.05:
            return None
        return (self.done - self.first[1]) / (now - self.first[0])

    def status_text(self, now: float, compact: int = 0) -> str:
        """The text beside the bar (or of a line): amount, rate, ETA; during a step the
        amount and the step's seconds (its name is in the description). ``compact`` (a
        narrow terminal): 1 leaves out the rate, 2 also the total (a step: the amount)."""
        from bigskies_ops.text import human_bytes
        parts = [amount_text(self.done, self.total if compact < 2 else None, self.estimate)]
        if self.step_name:  # named in the description; here its seconds so far
            return f"{parts[0]}  {clock(now - self.step_t0)}"
        rate = self.rate(now)
        if rate is not None and compact < 1:
            parts.append(f"{human_bytes(int(rate))}/s")
        if self.total and not (self.estimate and self.done > self.total):
            parts.append(f"ETA {clock(eta_seconds(self.done, self.total, rate))}")
        return "  ".join(parts)

    def _bar_total(self) -> int | None:
        if self.step_name:
            return None  # a step: the bar pulses
        return bar_total(self.done, self.total, self.estimate)

    def _describe(self) -> str:
        """The description with the running step (``pg_dump app: hashing``), whole; on a
        terminal each frame fits it to the line (:meth:`_fitted`)."""
        return f"{self.description}: {self.step_name}" if self.step_name else self.description

    def _fitted(self) -> str:
        """This frame's description, fitted with the bar to the terminal's width
        (:func:`progress_layout`); sets the bar's width for the frame."""
        width = self._progress.console.width if self._progress is not None else 160
        now = self._now()
        text, self.bar_width, self.compact = progress_layout(
            width, self.description, self.step_name, [self.status_text(now, c) for c in (0, 1, 2)])
        return text

    def _refresh(self, bar: bool = False) -> None:
        if self._progress is None:
            return
        self._progress.update(self._task, description=self._describe(), completed=self.done,
                              total=self._bar_total())
        if bar:
            self._progress.refresh()  # a short step is shown, not only the 10 Hz frames

    def _step_line(self, name: str) -> None:
        with self._lock:
            if self.step_name != name:
                return
        note(f"{self.description}: {name} (still running after {STEP_LINE_AFTER:g} s)")

    def attach(self, progress) -> None:
        """Draw on ``progress`` (a rich Progress on stderr)."""
        self._progress = progress
        self._task = progress.add_task(self._describe(), total=self._bar_total())
        self._refresh(bar=True)

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.step_name = None


def _meter_columns(meter: Meter) -> list:
    """The bar's three columns, fitted to the terminal's width at every frame: the
    description (:meth:`Meter._fitted`, which also sizes the bar), the bar, the figures."""
    from rich.progress import BarColumn, ProgressColumn
    from rich.text import Text

    class DescriptionColumn(ProgressColumn):
        def render(self, task):
            return Text(meter._fitted(), no_wrap=True, overflow="crop")

    class FittedBar(BarColumn):
        def render(self, task):
            self.bar_width = meter.bar_width
            return super().render(task)

    class MeterColumn(ProgressColumn):
        def render(self, task):
            return Text(meter.status_text(meter._now(), meter.compact), no_wrap=True, overflow="crop")
    return [DescriptionColumn(), FittedBar(bar_width=BAR_WIDTH), MeterColumn()]


def stderr_is_terminal() -> bool:
    """Progress bars only there (CONTRACTS.md section 5)."""
    return sys.stderr.isatty() and err().is_terminal


@contextmanager
def transfer_progress(description: str, total: int | None = None, *, estimate: bool = False,
                      lines: bool = False, quiet: bool = False):
    """Yield a :class:`Meter` (the job's ``progress`` callback) for the block, and show the
    finishing steps the library names (:func:`bigskies_ops.report.step`) through it.

    Args:
        description: what moves (``"pg_dump app"``, ``"pull from prod"``).
        total: bytes it runs to, if known now (else the job tells it: report.total).
        estimate: ``total`` is a guess (shown ``~1.2 GiB est.``).
        lines: off a terminal, a line every :data:`LINE_EVERY` seconds (a pull's cron log);
            otherwise bytes are not shown there, only steps that run long.
        quiet: yield None and show nothing (``--json`` where stderr must stay clean).
    """
    if quiet:
        yield None
        return
    from bigskies_ops import report
    meter = Meter(description, lines=lines)
    if total:
        meter.set_total(total, estimate=estimate)
    if not stderr_is_terminal():
        try:
            with report.reporting(step=meter.step):
                yield meter
        finally:
            meter.close()
        return
    from rich.progress import Progress
    with Progress(*_meter_columns(meter), console=err(), transient=True) as p:
        meter.attach(p)
        try:
            with report.reporting(step=meter.step):
                yield meter
        finally:
            meter.close()


def literal_table(**kw) -> "Table":
    """A rich ``Table(**kw)`` whose string cells are shown as is: a table, file or label
    named ``a[/b]c`` or ``x:smile:`` is neither read as markup nor as an emoji
    code. Column headers are ours."""
    from rich.table import Table
    from rich.text import Text

    class LiteralTable(Table):
        def add_row(self, *cells, **kwargs):
            super().add_row(*(Text(c) if isinstance(c, str) else c for c in cells), **kwargs)
    return LiteralTable(**kw)


def print_table(t: "Table") -> None:
    out().print(t)
