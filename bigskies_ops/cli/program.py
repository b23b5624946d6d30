"""``bigskies-ops`` console script: the same Collection as ``inv`` through ``invoke.Program``."""
import atexit
import os
import sys
import threading

from invoke import Exit, ParseError, Program

from bigskies_ops import __version__
from bigskies_ops import output
from bigskies_ops.cli import common, ns


class _Program(Program):
    """Invoke's Program, but a command line it cannot parse (unknown task or flag, a flag
    without its value) exits 2, a usage error (CONTRACTS.md section 5), not Invoke's 1."""

    def parse_core(self, argv):
        try:
            return super().parse_core(argv)
        except ParseError as e:
            raise Exit(str(e), code=2) from None

    def parse_tasks(self):
        try:
            return super().parse_tasks()
        except ParseError as e:
            raise Exit(str(e), code=2) from None


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
