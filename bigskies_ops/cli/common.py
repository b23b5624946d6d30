"""Shared plumbing for the task modules: load the inventory, map errors to exit codes."""
from __future__ import annotations

import functools

import invoke
from invoke import Exit

from bigskies_ops.errors import BigskiesError, Interrupted, UsageError
from bigskies_ops.signals import interrupts_unwind, left_behind, received
from bigskies_ops.inventory import Inventory, load

INVENTORY_HELP = "inventory file (default: $BIGSKIES_INVENTORY, else ./inventory.yaml)"
HOST_HELP = "inventory host (default: defaults.host, else the only host)"
JSON_HELP = "machine-readable output (UTC ISO-8601 times, sizes in bytes)"


def load_inventory(path: str | None) -> Inventory:
    """The inventory at ``path`` (``-i``), else $BIGSKIES_INVENTORY, else ./inventory.yaml;
    hints printed later repeat ``-i path`` (:func:`bigskies_ops.output.hint`)."""
    from bigskies_ops import output
    output.set_inventory(path)
    return load(path)


# Invoke has no optional positional arguments: a positional whose default is None is
# required, and one with another default is never consumed. ``db.restore [FILE]`` needs
# one (``--undo`` and the interactive pick take no FILE), so when a listed task's
# context ends without it we fill in "" (the task treats "" as "not given").
OPTIONAL_POSITIONALS: dict[str, set[str]] = {}


def optional_positional(context_name: str, *arg_names: str) -> None:
    """Let ``context_name`` (``db.restore``) be called without the positional ``arg_names``."""
    OPTIONAL_POSITIONALS.setdefault(context_name, set()).update(arg_names)
    from invoke.parser.parser import ParseMachine
    if getattr(ParseMachine.complete_context, "_bigskies_optional", False):
        return
    orig = ParseMachine.complete_context

    def complete_context(self):
        ctx = self.context
        if ctx is not None:
            names = set().union(*(OPTIONAL_POSITIONALS.get(n, set()) for n in (ctx.name, *ctx.aliases)))
            for arg in ctx.missing_positional_args:
                if arg.name in names:
                    arg.value = ""
        return orig(self)

    complete_context._bigskies_optional = True
    ParseMachine.complete_context = complete_context


#: the ``bigskies-ops`` console script's Program (set by :mod:`bigskies_ops.cli.program`)
console_program = None


def running_program():
    """The ``invoke.Program`` that parsed this command line: ours when the ``bigskies-ops``
    console script runs, else Invoke's own ``inv`` (which runs tasks.py)."""
    if console_program is not None and getattr(console_program, "parser", None) is not None:
        return console_program
    from invoke.main import program as inv_program
    return inv_program


def help_if_requested(value: str | None, task_name: str) -> None:
    """``inv db.restore --help``: Invoke hands ``--help`` to an optional positional as its
    value; show the task's help instead of looking for a file named ``--help``."""
    if value in ("--help", "-h"):
        from invoke import Exit
        # the running Program has parsed this command line: its task contexts carry the
        # per-option help (a nested run printed none)
        running_program().print_task_help(task_name)
        raise Exit(code=0)


def _cleanup() -> str:
    left = left_behind()
    return "cleanup done" if not left else "cleanup INCOMPLETE: " + "; ".join(left)


def handles_errors(fn):
    """Turn library errors into ``invoke.Exit(message, code)`` (CONTRACTS.md section 5):
    one line on stderr, exit 1 failed / 2 usage or inventory / 3 refused for safety.
    While the task runs, the library reports (:mod:`bigskies_ops.report`) through
    :func:`bigskies_ops.output.note` (stderr) and :func:`bigskies_ops.output.say` (stdout)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from bigskies_ops import output, report
        try:
            # the library's notes (lock waits, warnings, progress) on stderr, step lines on stdout
            with interrupts_unwind(), report.installed(output.note, say=output.say):
                return fn(*args, **kwargs)
        except Interrupted as e:
            raise Exit(f"interrupted by signal {e.signum}; {_cleanup()}", code=e.exit_code)
        except KeyboardInterrupt:
            raise Exit(f"interrupted; {_cleanup()}", code=130)
        except OSError as e:  # a file or folder the library did not expect: one line, no traceback
            where = f"{e.filename}: " if e.filename else ""
            raise Exit(f"error: {where}{e.strerror or e}", code=1)
        except BigskiesError as e:
            sig = received()
            if sig is not None:  # Ctrl-C reached pg_dump/psql too and they failed first
                raise Exit(f"interrupted by signal {sig}; {_cleanup()} ({e})", code=128 + sig)
            one_line = " | ".join(l.strip() for l in str(e).splitlines() if l.strip())  # tool stderr tails
            raise Exit(f"error: {one_line}", code=e.exit_code)
    return wrapper


class _Task(invoke.Task):
    """Invoke's Task, but the safety policy's confirmation flags (``--force-protected``,
    ``--confirm DBNAME``) and the flags that waive a restore's checks (``--skip-missing-roles``,
    ``--skip-space-check``) have no short form: they are typed in full, and ``-c`` stays
    free for what it means elsewhere (``db.psql -c SQL`` as in psql), so no short flag means different
    things in two tasks."""

    LONG_ONLY = frozenset({"force_protected", "confirm", "skip_missing_roles", "skip_space_check"})

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        if name in self.LONG_ONLY:
            opts["names"] = opts["names"][:1]
        return opts


task = functools.partial(invoke.task, klass=_Task)


def seconds_arg(value, flag: str) -> float:
    """A flag's number of seconds (``--timeout 60``, ``--wait 1.5``): Invoke hands flags over
    as text (a typed int flag would fail inside Invoke's parser with a traceback).

    Raises:
        UsageError: not a number (exit 2)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{flag}: expected a number of seconds, got {value!r}") from None


def jobs_arg(jobs) -> int | None:
    """``--jobs`` as given on the command line: None when absent, else a whole number 1-64.

    Raises:
        UsageError: anything else (exit 2, not a ValueError traceback).
    """
    if jobs in (None, "", False):
        return None
    try:
        n = int(jobs)
    except (TypeError, ValueError):
        n = 0
    if not 1 <= n <= 64:  # each job is a session and an open archive: 100000 ran out of file handles
        raise UsageError(f"--jobs: expected a whole number from 1 to 64, got {jobs!r}")
    return n


LOCK_WAIT_HELP = ("give up after this many seconds waiting for a table lock (pg_dump --lock-wait-timeout); "
                  "default: the host's backup.lock_wait_timeout, else wait (the wait is reported)")


def lock_wait_host(h, value):
    """``h`` with ``--lock-wait-timeout VALUE`` (seconds) applied over its inventory's
    ``backup.lock_wait_timeout``; ``h`` itself when the flag was not given.

    Raises:
        UsageError: not a number >= 0.
    """
    if value is None:
        return h
    from bigskies_ops.jobs.backup import with_lock_wait_timeout
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--lock-wait-timeout: expected seconds (a number), got {value!r}") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise UsageError(f"--lock-wait-timeout: expected seconds >= 0, got {value!r}")
    return with_lock_wait_timeout(h, seconds)
