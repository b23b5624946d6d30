"""Shared plumbing for the task modules: load the inventory, map errors to exit codes."""
from __future__ import annotations

import functools
import sys

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
        except BrokenPipeError:
            # stdout's reader went away (``| head -1``): nothing more to tell it, no traceback;
            # exit 1 as in the Python docs' "Note on SIGPIPE"
            output.discard(sys.stdout)
            raise Exit(code=1) from None
        except OSError as e:  # a file or folder the library did not expect: one line, no traceback
            where = f"{e.filename}: " if e.filename else ""
            raise Exit(f"error: {where}{e.strerror or e}", code=1)
        except BigskiesError as e:
            sig = received()
            if sig is not None:  # Ctrl-C reached pg_dump/psql too and they failed first
                raise Exit(f"interrupted by signal {sig}; {_cleanup()} ({e})", code=128 + sig)
            one_line = " | ".join(l.strip() for l in str(e).splitlines() if l.strip())  # tool stderr tails
            raise Exit(f"error: {one_line}", code=e.exit_code)
        except (Exit, invoke.UnexpectedExit, invoke.ParseError):
            raise
        except Exception as e:  # a bug: one line naming it (BIGSKIES_DEBUG=1 shows the traceback)
            import os
            if os.environ.get("BIGSKIES_DEBUG"):
                raise
            raise Exit(f"error: internal error: {type(e).__name__}: {e} "
                       f"(BIGSKIES_DEBUG=1 shows where; please report it)", code=1) from None
    return wrapper


#: The short flags: one table for every task (docs/cli.md "Flags"), so a short flag means
#: the same thing wherever it exists; every other flag is long only (Invoke's automatic
#: short flags made ``-f`` mean --format, --file, --from or --failed, and took ``-h`` from
#: --help). Keys are parameter names, values the letter.
SHORT_FLAGS = {"host": "H", "inventory": "i", "yes": "y", "check": "C", "jobs": "j", "format": "F",
               "command": "c", "follow": "f"}


def _finite_seconds(value, flag: str) -> None:
    seconds_arg(value, flag)


def _jobs_given(value) -> None:
    if value == "":  # ``--jobs ""`` was given: not the same as no --jobs (jobs_arg's None)
        raise UsageError("--jobs: expected a whole number from 1 to 64, got ''")
    jobs_arg(value)


def _whole(minimum: int, what: str):
    def check(value, flag: str) -> None:
        try:
            n = int(str(value).strip())
        except ValueError:
            n = None
        if n is None or n < minimum:
            raise UsageError(f"{flag}: expected {what}, got {value!r}")
    return check


#: Typed flags (parameter name -> check raising UsageError naming the flag): checked before
#: the task body runs, so a wrong value is a usage error (exit 2) whatever the task does with
#: it, never a ValueError traceback. Invoke hands every flag over as text; the body converts.
TYPED_FLAGS = {
    "jobs": lambda v, flag: _jobs_given(v),
    "timeout": _finite_seconds, "migrations_timeout": _finite_seconds, "wait": _finite_seconds,
    "lock_wait_timeout": _finite_seconds, "lock_timeout": _finite_seconds,
    "tail": _whole(0, "a number of lines (0 or more)"),
}
def _port(value, flag: str) -> None:
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if not 1 <= n <= 65535:
        raise UsageError(f"{flag}: expected a TCP port from 1 to 65535, got {value!r}")


#: Flags whose type depends on the task (``db.pull --to`` is a host, ``db.migrate --to`` a version).
TASK_TYPED_FLAGS = {
    "db.migrate": {"to": _whole(0, "a migration version number"),
                   "baseline": _whole(0, "a migration version number")},
    "db.metrics": {"serve": _port},
}


def _flag(name: str) -> str:
    return "--" + name.rstrip("_").replace("_", "-")


def check_flag_types(task_name: str, kwargs: dict) -> None:
    """Check every typed flag given in ``kwargs`` (:data:`TYPED_FLAGS`, :data:`TASK_TYPED_FLAGS`).

    Raises:
        UsageError: the first flag whose value has the wrong type (exit 2), naming the flag."""
    checks = dict(TYPED_FLAGS, **TASK_TYPED_FLAGS.get(task_name, {}))
    for name, value in kwargs.items():
        check = checks.get(name)
        if check is not None and value is not None and not isinstance(value, bool):
            check(value, _flag(name))


def json_failure(task_name: str, kwargs: dict, message: str, code: int) -> None:
    """The ``--json`` failure document (docs/cli.md "JSON output"): one JSON document on stdout
    ``{"result": "failed", "task", "host", "error": {"message", "exit_code"}}``; ``host`` is the
    ``--host`` value as given (``--from`` for db.pull), or null."""
    from bigskies_ops import output
    host = kwargs.get("host", kwargs.get("from_"))
    if message.startswith("error: "):
        message = message[len("error: "):]
    try:
        output.emit_json({"result": "failed", "task": task_name, "host": host if isinstance(host, str) else None,
                          "error": {"message": message, "exit_code": code}})
        sys.stdout.flush()
    except BrokenPipeError:
        output.discard(sys.stdout)


class _Task(invoke.Task):
    """Invoke's Task with the operator contract's flags (docs/cli.md "Flags"):

    - short flags only from :data:`SHORT_FLAGS` (the safety policy's ``--force-protected``,
      ``--confirm DBNAME`` and everything else are typed in full);
    - ``-h``/``--help`` where a positional argument was expected prints the task's help;
    - a typed flag with a value of the wrong type is a usage error (:func:`check_flag_types`);
    - with ``--json``, a failure prints the failure document (:func:`json_failure`) unless the
      task already printed its own document.

    ``full_name`` (``db.list``) is set by :mod:`bigskies_ops.cli` when it builds the Collection."""

    full_name: str | None = None

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        opts["names"] = opts["names"][:1]
        short = SHORT_FLAGS.get(name)
        if short is not None and short not in taken_names:
            opts["names"].append(short)
        return opts

    def __call__(self, *args, **kwargs):
        from bigskies_ops import output
        name = self.full_name or self.name
        for p in self.positional:  # ``inv db.verify -h``: the parser filled the positional with it
            help_if_requested(kwargs.get(p), name)
        json = kwargs.get("json") is True
        emitted = output.json_documents()
        try:
            try:
                check_flag_types(name, kwargs)
            except UsageError as e:
                raise Exit(f"error: {e}", code=e.exit_code) from None
            return super().__call__(*args, **kwargs)
        except Exit as e:
            if json and e.code not in (0, None) and output.json_documents() == emitted:
                json_failure(name, kwargs, e.message or f"exit status {e.code}", e.code)
            raise


task = functools.partial(invoke.task, klass=_Task)


def seconds_arg(value, flag: str) -> float:
    """A flag's number of seconds (``--timeout 60``, ``--wait 1.5``) as a float: Invoke hands
    flags over as text (a typed int flag would fail inside Invoke's parser with a traceback).

    Raises:
        UsageError: not a finite number >= 0 (exit 2), naming ``flag``."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 <= seconds < float("inf"):  # also NaN, "-1" and "1e999" (inf)
        raise UsageError(f"{flag}: expected a number of seconds (0 or more), got {value!r}")
    return seconds


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
