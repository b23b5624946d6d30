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
            ``changed``, else ``ok`` (Ansible's check mode does the same).
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
    result_line(f"{word} (check)", host, "would change nothing" if not would_change
                else f"{len(lines)} step(s) would run; run again without --check to do them")


def heading(title: str) -> None:
    say(title)
    say("=" * len(title))
    say()


@contextmanager
def transfer_progress(description: str, total: int | None = None):
    """Yield a callback ``(done_bytes, written_bytes=None)``; draws a bar with bytes, rate
    and ETA on a terminal, does nothing otherwise."""
    if not sys.stderr.isatty() or not err().is_terminal:
        yield None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=err(), transient=True) as p:
        tid = p.add_task(description, total=total)

        def cb(done, written=None):
            p.update(tid, completed=done)
        yield cb


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
