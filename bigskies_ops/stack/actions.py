"""The tasks a runbook step can name (``task: db.backup``), as data: their arguments with
types, what they do in a real run and in check mode, and which safety rule they fall under.

A runbook (docs/runbooks.md, :mod:`bigskies_ops.stack.runbook`) is validated against this
registry before its first step runs: an unknown task, an unknown or mistyped argument, or a
destructive step on a protected host without the flags is an error naming the step and the
field. The ``scenario.*`` tasks run the runbooks in ``runbooks/`` through the same registry.

An action is a pair of plain functions over one :class:`~bigskies_ops.inventory.Host`:

* ``run(host, args, ctx) -> dict``: does the work and returns the facts a step may
  ``register`` (e.g. ``{"archive": "/path/x.sql.gz"}``); raises a
  :class:`~bigskies_ops.errors.BigskiesError` on failure (the step is ``failed``).
* ``plan(host, args, ctx) -> Plan``: check mode, read-only: what ``run`` would do, against
  the state the earlier steps of the same runbook would leave (``ctx.states``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from bigskies_ops.inventory import Host, Inventory

#: argument types a runbook may give (YAML scalars and lists of strings)
PARAM_TYPES = (str, int, float, bool, list)


@dataclass(frozen=True)
class Param:
    """One argument of an action.

    ``type`` is one of :data:`PARAM_TYPES`; an ``int`` is accepted where ``float`` is
    asked for, never a ``bool`` where a number is; ``choices`` (when given) are the
    accepted values; ``is_host``: the value is an inventory host's name.
    """
    type: type
    required: bool = False
    default: Any = None
    help: str = ""
    choices: tuple = ()
    #: the value names one inventory host (``db.pull``'s ``from``): checked against the
    #: inventory before the first step, like a step's ``host:``
    is_host: bool = False
    #: a check of a value of the right type (``check(value)`` raises UsageError with what
    #: is expected, e.g. "expected a database name of 1 to 63 bytes"), run by
    #: :func:`check_args`: before the first step for values known then (params), else when
    #: the step runs
    check: Callable[[Any], None] | None = None


@dataclass
class RunContext:
    """What every step of one runbook run shares.

    Attributes:
        inventory: the loaded inventory.
        check: check mode (``--check``): only ``plan`` functions are called.
        yes, force_protected, confirm: the run's ``--yes``, ``--force-protected`` and
            ``--confirm`` flags, passed to the actions' own confirmations and safety checks.
        task: the name manifests and notifications record (``run complete-reset``, or
            ``scenario.complete-reset`` when a scenario task runs the runbook).
        registered: facts registered so far, by ``register`` name.
        states: check mode only: per host name, the service states the earlier steps
            would leave (:func:`bigskies_ops.stack.lifecycle.after_stack_action`), so a step
            after a purge is planned against "no containers, no volume".
        once, backups: see below.
    """
    inventory: Inventory
    check: bool = False
    yes: bool = False
    force_protected: bool = False
    confirm: str | None = None
    task: str = "run"
    registered: dict[str, dict] = field(default_factory=dict)
    states: dict[str, Any] = field(default_factory=dict)
    #: a run for several ``--host`` targets: the steps pinned to their own host that run once
    #: for the whole run, shared by the targets' runs (:mod:`bigskies_ops.stack.runbook`)
    once: Any = None
    #: the backups earlier ``db.backup`` steps of this run wrote (check mode: would write),
    #: as (step index, host name, archive path): a later purge names where the data is
    backups: list[tuple[int, str, str]] = field(default_factory=list)


@dataclass
class Plan:
    """Check mode's answer for one step.

    Attributes:
        would_change: the real run would change something.
        lines: human lines describing what it would do (the step's CHECK MODE output).
        plan: the task's own plan document (the same as that task's ``--check --json``).
        refusals: what the real run would refuse (each names the flag that lifts it).
        facts: stand-ins for the facts ``run`` would register, so later steps can be
            planned (e.g. ``{"archive": "(the archive step 'pre' will write)"}``).
    """
    would_change: bool
    lines: list[str] = field(default_factory=list)
    plan: dict = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Action:
    """One task a runbook step can name.

    Attributes:
        name: the task's name, as on the command line where it is one (``db.backup``).
        summary: one line for ``inv run --list-tasks`` and docs/runbooks.md.
        params: argument name -> :class:`Param`.
        run, plan: see the module docstring.
        destructive: the safety rule's action name (:data:`bigskies_ops.safety.DESTRUCTIVE`)
            when the step needs ``--force-protected --confirm DBNAME`` on a protected host.
        changes: False for a read-only action (a success is ``ok``, not ``changed``).
    """
    name: str
    summary: str
    params: dict[str, Param]
    run: Callable[[Host, dict, RunContext], dict]
    plan: Callable[[Host, dict, RunContext], Plan]
    destructive: str | None = None
    changes: bool = True
    #: the step is destructive only when this returns True for its arguments (``db.restore``
    #: with ``target_db`` creates a new database: not destructive); None: always (when
    #: ``destructive`` is set). Arguments filled from registered facts are None here.
    destructive_when: Callable[[dict], bool] | None = None
    #: the facts ``run`` registers (``{{ pre.archive }}``); a template naming another one is
    #: an error before the first step. None: not declared (not checked).
    facts: tuple[str, ...] | None = None
    #: the step's host needs a ``compose:`` block (docker.*, coordinators.stop): checked
    #: before the first step
    needs_compose: bool = False
    #: ``static_check(host, args, inventory)``: before the first step, the checks that need
    #: the inventory but no server (``db.pull``'s ``from`` is an SSH host); ``args`` holds
    #: only the values known then. Raises UsageError whose message starts with the field.
    static_check: Callable[[Host, dict, Inventory], None] | None = None
    #: ``precheck(host, args)``: before the first step, a read-only look at the server for
    #: what would make the step refuse after earlier steps ran (``db.restore``'s
    #: ``target_db`` exists already). Raises UsageError whose message starts with the field;
    #: a server that cannot be reached is not an error here (the step finds out).
    precheck: Callable[[Host, dict], None] | None = None


class StandIn(str):
    """Check mode: a stand-in for a fact that only the real run of an earlier step would
    register (the path of the archive a backup would write, which does not exist yet). A
    ``plan`` given one plans against "not here yet" (e.g. ``check_restore(host, None)``)
    instead of looking the value up. The text says what it stands for."""


ACTIONS: dict[str, Action] = {}


def register(action: Action) -> Action:
    """Add ``action`` to :data:`ACTIONS` (a second one of the same name is a bug)."""
    if action.name in ACTIONS:
        raise ValueError(f"action {action.name!r} registered twice")
    ACTIONS[action.name] = action
    return action


def check_args(action: Action, args: dict, where: str) -> dict:
    """``args`` checked against ``action.params`` and completed with the defaults.

    Args:
        where: the step and field for messages (``step 3 ('Restore'), args``).

    Returns:
        A new dict with every param of the action.

    Raises:
        UsageError: an unknown argument (with the known ones), a missing required one, a
            value of the wrong type, outside ``choices`` or refused by its ``Param.check``.
    """
    from bigskies_ops.errors import UsageError
    from bigskies_ops.text import did_you_mean
    out = {}
    for k in args:
        if k not in action.params:
            raise UsageError(f"{where}.{k}: {action.name} has no argument {k!r}{did_you_mean(k, action.params)}; "
                             f"its arguments: {', '.join(sorted(action.params)) or 'none'}")
    for k, p in action.params.items():
        if k not in args:
            if p.required:
                raise UsageError(f"{where}.{k}: {action.name} needs {k!r} ({p.help or p.type.__name__})")
            out[k] = p.default
            continue
        v = args[k]
        ok = (isinstance(v, p.type) and not (p.type in (int, float) and isinstance(v, bool))) or \
             (p.type is float and isinstance(v, int) and not isinstance(v, bool)) or v is None and not p.required
        if p.type is list and ok and v is not None:
            ok = all(isinstance(x, str) for x in v)
        if not ok:
            want = "a list of strings" if p.type is list else "an int" if p.type is int else f"a {p.type.__name__}"
            raise UsageError(f"{where}.{k}: expected {want}, got {type(v).__name__} {v!r}")
        if p.choices and v not in p.choices:
            raise UsageError(f"{where}.{k}: expected one of {', '.join(map(str, p.choices))}, got {v!r}")
        if p.check is not None and v is not None:
            try:
                p.check(v)
            except UsageError as e:
                raise UsageError(f"{where}.{k}: {e}") from None
        out[k] = float(v) if p.type is float and v is not None else v
    return out
