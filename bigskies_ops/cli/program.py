"""``bigskies-ops`` console script: the same Collection as ``inv`` through ``invoke.Program``."""
import atexit
import difflib
import os
import re
import sys
import threading

from invoke import Exit, ParseError, Program

from bigskies_ops import __version__
from bigskies_ops import output
from bigskies_ops.cli import common, ns


class ContractProgram:
    """What ``inv`` and ``bigskies-ops`` add to ``invoke.Program`` (docs/cli.md "Flags"):

    - a command line that cannot be parsed exits 2, a usage error (CONTRACTS.md section 5),
      not Invoke's 1, with a did-you-mean for an unknown task or flag (:func:`usage_message`);
    - a stdout closed early (``inv --list | head -1``) ends quietly, without a BrokenPipeError
      traceback (Python docs, signal module, "Note on SIGPIPE").

    A mixin: :class:`_Program` for the console script, and :func:`adopt` puts it under the
    ``inv`` Program that loaded tasks.py."""

    def parse_core(self, argv):
        try:
            return super().parse_core(argv)
        except ParseError as e:
            raise Exit(usage_message(e, getattr(self, "collection", None) or self.namespace), code=2) from None

    def _make_parser(self):
        parser = super()._make_parser()
        # checked against the parser's own contexts: a second Collection.to_contexts() would
        # find every flag's help already taken (Invoke's Task.arg_opts pops it), and --help
        # then printed the flags without their texts
        _refuse_switch_values(self.core.unparsed, parser.contexts)
        return parser

    def parse_tasks(self):
        try:
            return super().parse_tasks()
        except ParseError as e:
            raise Exit(usage_message(e, self.collection), code=2) from None

    def parse_cleanup(self):
        _quiet_pipe(super().parse_cleanup)  # --list, --help print here

    def execute(self):
        _quiet_pipe(super().execute)


class _Program(ContractProgram, Program):
    """The ``bigskies-ops`` console script's Program (see :class:`ContractProgram`)."""


def adopt(prog: Program) -> None:
    """Give the running ``inv`` Program (``invoke.main.program``, which is loading tasks.py)
    the contract's behaviour: it has parsed only the core flags so far; the task names and
    flags are parsed after tasks.py is loaded, by the methods :class:`ContractProgram` overrides."""
    if isinstance(prog, ContractProgram):
        return
    prog.__class__ = type("Inv" + type(prog).__name__, (ContractProgram, type(prog)), {})


def _quiet_pipe(step) -> None:
    """Run ``step``; when stdout's reader has gone (``| head``), point stdout at /dev/null and
    stop with exit 1 instead of a BrokenPipeError traceback (or "Exception ignored" at exit).
    The flush is ours so that a closed pipe is seen here, not at interpreter exit."""
    try:
        step()
    except BrokenPipeError:
        output.discard(sys.stdout)
        raise Exit(code=1) from None
    except Exit:
        _flush_stdout()
        raise
    _flush_stdout()


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader has what it wanted; the task's own exit status stays
        output.discard(sys.stdout)
    except (OSError, ValueError):
        pass


def _refuse_switch_values(argv: list[str], contexts) -> None:
    """Refuse ``--json=yes`` (or ``-y=1``) for a switch: Invoke splits it into ``--json`` and a
    token ``yes`` that it then takes for a task name or a positional argument (``no task
    named 'yes'``, or ``db.verify`` looking for a backup called ``yes``). ``contexts``: the
    parser's task contexts by name and alias (``Parser.contexts``).

    Raises:
        Exit: (code 2) ``error: db.list: --json takes no value; it is a switch, give --json alone
            (inv db.list --help lists its flags)``.
    """
    ctx = None
    for token in argv:
        if token == "--":
            break
        if token in contexts:
            ctx = contexts[token]
        elif ctx is not None and token.startswith("-") and "=" in token:
            flag = token.partition("=")[0]
            arg = ctx.flags.get(flag) or ctx.inverse_flags.get(flag)
            if arg is None and len(flag) == 2:  # a short flag (-y): the parser keeps them per argument
                arg = next((a for a in ctx.args.values() if flag[1] in a.names), None)
            if arg is not None and (flag in ctx.inverse_flags or arg.kind is bool):
                raise Exit(f"error: {ctx.name}: {flag} takes no value; it is a switch, give {flag} alone "
                           f"({output.command()} {ctx.name} --help lists its flags)", code=2)


_NO_IDEA = re.compile(r"No idea what '(.*)' is!")
_NEEDS_VALUE = re.compile(r"Flag <Argument: ([\w-]+)")


def usage_message(e: ParseError, collection) -> str:
    """One line for a command line Invoke's parser refused, with a did-you-mean (difflib)
    for an unknown task or flag, e.g. ``error: no task named 'db.lst'; did you mean db.list?
    (inv --list shows them all)``."""
    binary = output.command()
    text = str(e)
    ctx = getattr(e, "context", None)
    task = getattr(ctx, "name", None)
    m = _NO_IDEA.match(text)
    if m:
        token = m.group(1)
        if token.startswith("-"):
            if task:
                flags = [f for f in (*ctx.flags, *ctx.inverse_flags) if f.startswith("--")]
                close = difflib.get_close_matches(token, flags, n=3, cutoff=0.6)
                return (f"error: {task}: no flag {token}" + (f"; did you mean {' or '.join(close)}?" if close else "")
                        + f" ({binary} {task} --help lists its flags)")
            return f"error: no flag {token} ({binary} --help lists the core flags)"
        names = list(collection.task_names) if collection is not None else []
        names += [a for n in names for a in collection.task_names[n]] if collection is not None else []
        close = difflib.get_close_matches(token, names, n=3, cutoff=0.75)
        if not close and "." not in token:  # "lst" for "db.list": compare with the task part
            close = [n for n in names if difflib.get_close_matches(token, [n.rpartition(".")[2]], n=1, cutoff=0.75)]
        where = f" (after {task})" if task and token not in names else ""
        return (f"error: no task named {token!r}{where}" + (f"; did you mean {' or '.join(close[:3])}?" if close else "")
                + f" ({binary} --list shows them all)")
    m = _NEEDS_VALUE.match(text)
    if m:
        flag = "--" + m.group(1).replace("_", "-")
        return f"error: {task + ': ' if task else ''}{flag} needs a value ({binary} {task or ''} --help)".replace("  ", " ")
    return f"error: {text}"


program = _Program(namespace=ns, version=__version__, name="bigskies-ops", binary="bigskies-ops")
common.console_program = program


def main() -> None:
    """Run the task named on the command line, then exit without the interpreter's teardown.

    Freeing every module and object of Invoke, Fabric/paramiko, psycopg and rich costs
    0.15-0.25 s of CPU after the work is done (measured on the benchmark machine:
    ``db.pull --existing`` of 779 MB 4.41 -> 4.17 s, the same run with and without it).
    The tasks close and fsync their own files, so nothing depends on that teardown;
    what does run at exit still runs: :mod:`atexit` callbacks (logging, paramiko's
    transport join, ``weakref.finalize`` such as ``TemporaryDirectory``), then stdout and
    stderr are flushed. While a non-daemon thread is still running, the normal exit
    (which waits for it) is used instead.

    Exit status: the task's (``invoke.Exit`` code; CONTRACTS.md section 5), 0 on success,
    1 without a traceback when stdout is a pipe closed early (``| head``).
    """
    output.set_command("bigskies-ops")
    try:
        program.run()
        code = 0
    except SystemExit as e:
        code = e.code
    except BrokenPipeError:
        # stdout closed early while Invoke printed (``--list | head``): no traceback, exit
        # status 1 as in the Python docs' "Note on SIGPIPE"
        output.discard(sys.stdout)
        code = 1
    _exit_now(code)


def _exit_now(code) -> None:
    """``sys.exit(code)`` minus the teardown (see :func:`main`); same status rules:
    None -> 0, an int as is, anything else printed on stderr -> 1."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    me = threading.current_thread()
    if any(t is not me and t.is_alive() and not t.daemon for t in threading.enumerate()):
        sys.exit(status)
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe (| head): nothing left to tell
                pass
        os._exit(status)
