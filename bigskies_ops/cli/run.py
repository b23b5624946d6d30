"""``inv run RUNBOOK``: run a runbook (runbooks/*.yaml) step by step, or plan it (``--check``).

Thin shell over :mod:`bigskies_ops.stack.runbook`; :func:`run_runbook` is also what the
``scenario.*`` tasks call with their shipped runbooks (docs/runbooks.md).
"""
from __future__ import annotations

import signal
import sys

from invoke import Exit

from bigskies_ops import output
from bigskies_ops.errors import Interrupted
from bigskies_ops.cli.common import INVENTORY_HELP, JSON_HELP, handles_errors, load_inventory, optional_positional, task


def _stderr_line(line: str) -> None:
    output.note(line)


def run_runbook(spec, inv, host: str | None, params: dict | list | None, *, check: bool = False, yes: bool = False,
                force_protected: bool = False, confirm: str | None = None, json: bool = False,
                task: str = "run") -> int:
    """Load, validate and run (``check``: plan) runbook ``spec`` (a name or path, or a loaded
    :class:`~bigskies_ops.stack.runbook.Runbook`) for ``host`` (a host, group, ``all``, ``a,b``
    or None), print the step lines and the recap (``json``: step lines on stderr, one
    document on stdout), and return the exit code (0, or the stopping step's).

    ``params``: ``["k=v", ...]`` as ``--set`` gives them, or a mapping of typed values.
    ``task``: the name manifests and the JSON document record (``scenario.complete-reset``).

    Raises:
        UsageError / InventoryError (exit 2), SafetyError (exit 3): before the first step
            (validation, the safety policy, the confirmation asked once when a step is
            destructive: refused without a terminal unless ``yes``).
        Interrupted, KeyboardInterrupt: SIGINT/SIGTERM during a step, after printing the
            steps that finished, the recap and, after a destructive step, where the data is
            and the command restoring it (:func:`bigskies_ops.stack.runbook.interrupted_lines`);
            ``json``: the document so far, with ``"interrupted": SIGNUM``."""
    from bigskies_ops.safety import confirm_or_refuse
    from bigskies_ops.stack import runbook as rb
    from bigskies_ops.stack.actions import RunContext
    book = spec if isinstance(spec, rb.Runbook) else rb.load(spec, inv)
    values = rb.bind_params(book, params)
    valid = rb.validate(book, inv, host, values, force_protected=force_protected, confirm=confirm, check=check)
    say = _stderr_line if json else output.say
    if valid.destructive and not check:
        if not yes:
            say(f"Runbook {book.name} has destructive steps:")
            for line in valid.destructive:
                say(f"  {line}")
        confirm_or_refuse(f"Run runbook {book.name!r} on {', '.join(h.name for h in valid.targets)}?", yes=yes)
    ctx = RunContext(inv, check=check, yes=True, force_protected=force_protected, confirm=confirm, task=task
                     if task != "run" else f"run {book.name}")
    if check:
        # the command the user typed: inv run NAME, or the scenario task that runs the runbook
        say(f"CHECK MODE ({task if task != 'run' else 'run ' + book.name} --check): nothing is changed")
        say("")
    started: list = []
    try:
        results = rb.run(book, ctx, valid, values, say=say, started=started)
    except (Interrupted, KeyboardInterrupt) as e:
        # before the exit (130/143): which steps finished, what they wrote, how to go back
        signum = getattr(e, "signum", signal.SIGINT)
        say("")
        for line in rb.interrupted_lines(started, int(signum), output.hint):
            say(line)
        if json:
            doc = rb.document(book, [r for r, _ in started], check=check, task=task)
            doc.update(result="failed", interrupted=int(signum))
            output.emit_json(doc)
        raise
    for line in rb.recap_lines(results):
        say(line)
    doc = rb.document(book, results, check=check, task=task)
    if check and doc["refusals"]:
        say("the real run would REFUSE:")
        for r in doc["refusals"]:
            say(f"  {r}")
    if json:
        output.emit_json(doc)
    return rb.exit_code(results)


@task(positional=["runbook"], iterable=["set"], help={
    "runbook": "a runbook's name (runbooks/NAME.yaml beside the inventory, else the shipped ones) or a .yaml path",
    "host": "inventory host, group, 'a,b' or 'all': the runbook runs for each, in parallel "
            "(default: defaults.host, else the only host)",
    "set": "set a runbook parameter, NAME=VALUE (repeatable)",
    "check": "dry run: plan every step (CHECK MODE), change nothing, exit 0",
    "yes": "do not ask for confirmation of the destructive steps",
    "force_protected": "allow destructive steps on a protected host (with --confirm DBNAME)",
    "confirm": "the database name, repeated, for protected hosts",
    "list": "list the runbooks found and their descriptions",
    "inventory": INVENTORY_HELP, "json": JSON_HELP})
@handles_errors
def run(c, runbook=None, host=None, set=None, check=False, yes=False, force_protected=False, confirm=None,
        list=False, inventory=None, json=False):
    """Run a runbook (runbooks/NAME.yaml): its steps in order, with a recap; --check plans them."""
    from bigskies_ops.cli.common import help_if_requested
    from bigskies_ops.errors import UsageError
    from bigskies_ops.stack import runbook as rb
    help_if_requested(runbook, "run")
    inv = load_inventory(inventory)
    if list:
        found = rb.available(inv)
        if json:
            output.emit_json({"result": "ok", "task": "run", "runbooks": found})
            return
        width = max((len(r["name"]) for r in found), default=0)
        for r in found:
            output.say(f"{r['name']:<{width}}  " + (f"BROKEN: {r['error']}" if r["error"] else r["description"]))
        if not found:
            output.say("no runbooks found (runbooks/*.yaml beside the inventory, or the shipped ones)")
        return
    if not runbook:
        names = ", ".join(r["name"] for r in rb.available(inv)) or "none"
        raise UsageError(f"name a runbook: inv run NAME (runbooks found: {names}; inv run --list)")
    code = run_runbook(runbook, inv, host, set or [], check=check, yes=yes, force_protected=force_protected,
                       confirm=confirm, json=json)
    if code:
        sys.stdout.flush()
        raise Exit(f"error: runbook {runbook} stopped: a step failed (exit {code})", code=code)


optional_positional("run", "runbook")  # inv run --list names no runbook
