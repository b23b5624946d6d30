"""The ``bigskies-ops`` console script and ``python -m bigskies_ops``: loading the tasks
takes a moment (Invoke, the task modules); a Ctrl-C during it ends the program as an
interrupt does anywhere else (exit 130, one line, no traceback: CONTRACTS.md section 5)."""
import signal
import sys


def main() -> None:
    """Import the CLI, then run it (:func:`bigskies_ops.cli.program.main`)."""
    try:
        from bigskies_ops.cli.program import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted by signal 2 while starting; nothing was done\n")
        sys.exit(128 + signal.SIGINT)
    run()
