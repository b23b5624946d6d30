"""Runbooks: an ordered list of steps kept as YAML in git, validated whole before the first
step runs, then run (or planned, ``--check``) step by step with Ansible-like output and a recap.

The format is docs/runbooks.md's; the tasks a step can name are
:data:`bigskies_ops.stack.actions.ACTIONS`. The public functions, in the order a caller
(``inv run``, the ``scenario.*`` tasks) uses them:

* :func:`find` / :func:`available`: a runbook by path or name; the runbooks there are.
* :func:`load` (a file) / :func:`parse` (YAML text): the runbook, its structure and its
  references checked (unknown keys, tasks, params, registers, facts flowing backwards).
* :func:`bind_params`: ``--set k=v`` values over the defaults, typed.
* :func:`validate`: against the inventory and the flags: hosts, arguments, the safety policy;
  its ``destructive`` lines are what the caller's one confirmation lists.
* :func:`run` (every selected host; several in parallel) / :func:`execute` (one host):
  step lines go to ``say`` (default :func:`bigskies_ops.report.say`).
* :func:`recap_lines`, :func:`document`, :func:`exit_code`: the recap, the ``--json``
  document, the process's exit code.

An action's ``run`` returns the facts a step registers; two keys are read by the engine
too: ``changed`` (bool: overrides ``Action.changes`` for this run, e.g. ``False`` when there
was nothing to do) and ``msg`` (the reason on the result line).
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from bigskies_ops import report
from bigskies_ops.errors import (EXIT_FAILED, EXIT_OK, BigskiesError, Interrupted, InventoryError, SafetyError,
                                 UsageError)
from bigskies_ops.inventory import Host, Inventory
from bigskies_ops.stack.actions import Action, Plan, RunContext, check_args
from bigskies_ops.stack.runbook_expr import RESULT_KEYS, SkippedRef, describe, refs_in, render
from bigskies_ops.stack.runbook_load import (PARAM_TYPES, SHIPPED_DIR, ParamSpec, Runbook, Step, action_registry,
                                             available, bind_params, find, load, parse)

__all__ = ["PARAM_TYPES", "action_registry", "SHIPPED_DIR", "ParamSpec", "Runbook", "Step", "available", "bind_params", "find", "load",
           "parse", "Validated", "validate", "StepResult", "RunResult", "execute", "run", "recap_lines", "document",
           "exit_code", "header", "recap", "interrupted_lines"]

HEADER_WIDTH = 80
RECAP_KEYS = ("ok", "changed", "failed", "skipped", "unreachable", "ignored")


# ------------------------------------------------------------------ validation
@dataclass
class Validated:
    """What :func:`validate` found: the hosts the runbook runs for (``targets``; the
    ``--host`` group's, or the one host), ``group`` (the ``--host`` value when it named a
    group, ``all`` or a list), ``destructive`` (one line per destructive step and host, for the
    confirmation) and, in check mode, ``refusals`` (what the real run would refuse)."""
    targets: list[Host]
    group: str | None = None
    destructive: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)


class _Deferred(Exception):
    """A registered fact: known only when the step runs."""


def _static_lookup(params: dict, host: Host):
    def lookup(parts):
        if parts[0] == "params":
            return params[parts[1]]
        if parts[0] == "host":
            return host.name
        raise _Deferred(".".join(parts))
    return lookup


def _sample(p) -> Any:
    """A value of ``p``'s type that check_args accepts (stands for a fact filled in later)."""
    if p is None:
        return None
    return p.choices[0] if p.choices else ("x" if p.type is str else p.type())


def _step_host(s: Step, inv: Inventory, target: Host, params: dict) -> Host:
    """The host step ``s`` runs on for ``target`` (its ``host:`` with params filled in, else ``target``).

    Raises:
        UsageError: an unknown host (did-you-mean) or one naming several hosts."""
    if not s.host:
        return target
    name = render(s.host, _static_lookup(params, target), f"{s.where}: host")
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"{s.where}: host: expected a host name, got {name!r}")
    try:
        hosts = inv.resolve(name)
    except InventoryError as e:
        raise UsageError(f"{s.where}: host: {e}") from None
    if len(hosts) != 1:
        raise UsageError(f"{s.where}: host: {name!r} selects {len(hosts)} hosts ({', '.join(h.name for h in hosts)}); "
                         f"a step runs on one host (run the runbook with --host {name} to run it for each)")
    return hosts[0]


def _static_args(s: Step, action: Action, params: dict, host: Host) -> tuple[dict, dict]:
    """(args with params and host filled in, args that wait for registered facts)."""
    ready, later = {}, {}
    for k, v in s.args.items():
        if any(r[0] not in ("params", "host") for r in refs_in(v, f"{s.where}: args.{k}")):
            later[k] = v
        else:
            ready[k] = render(v, _static_lookup(params, host), f"{s.where}: args.{k}")
    return ready, later


def _check_host_args(s: Step, action: Action, inv: Inventory, args: dict) -> None:
    """Arguments that name a host (``Param.is_host``) name exactly one inventory host."""
    for k, v in args.items():
        if not action.params[k].is_host or v is None:
            continue
        try:
            hosts = inv.resolve(v)
        except InventoryError as e:
            raise UsageError(f"{s.where}: args.{k}: {e}") from None
        if len(hosts) != 1:
            raise UsageError(f"{s.where}: args.{k}: {v!r} selects {len(hosts)} hosts; expected one host")


def _statically_skipped(s: Step, params: dict, host: Host) -> bool:
    """A ``when`` condition on params alone is false: the step is skipped whatever the earlier
    steps do, so the checks of its host and arguments against the inventory do not apply."""
    look = _static_lookup(params, host)
    for c in s.when:
        if c.test is not None or c.ref[0] not in ("params", "host"):
            continue
        if not c.holds(look, {}):
            return True
    return False


def _param_hint(s: Step, key: str) -> str:
    """`` (from --set NAME)`` when argument ``key`` of ``s`` is filled from a param."""
    names = [r[1] for r in refs_in(s.args.get(key), f"{s.where}: args.{key}") if r[0] == "params"]
    return f" (from params.{names[0]}: --set {names[0]}=...)" if names else ""


def _checked_args(s: Step, action: Action, ready: dict, later: dict) -> dict:
    """check_args over the known values and type samples of the deferred ones; an error in an
    argument filled from a param says which param."""
    try:
        return check_args(action, {**ready, **{k: _sample(action.params.get(k)) for k in later}}, f"{s.where}: args")
    except UsageError as e:
        msg = str(e)
        for k in s.args:
            if msg.startswith(f"{s.where}: args.{k}:"):
                raise UsageError(msg + _param_hint(s, k)) from None
        raise


def _field_error(s: Step, e: UsageError, default_field: str) -> UsageError:
    """An action's static check or precheck error (``"from: ..."``) named by the step."""
    msg = str(e)
    head = msg.split(":", 1)[0]
    if head in s.args:
        return UsageError(f"{s.where}: args.{msg}{_param_hint(s, head)}")
    if head == "host":
        return UsageError(f"{s.where}: {msg}")
    return UsageError(f"{s.where}: {default_field}: {msg}")


def _is_destructive(action: Action, args: dict) -> bool:
    if not action.destructive:
        return False
    return action.destructive_when is None or bool(action.destructive_when(args))


def validate(runbook: Runbook, inventory: Inventory, selector: str | None, params: dict, *,
             force_protected: bool = False, confirm: str | None = None, check: bool = False,
             precheck: bool = True) -> Validated:
    """Check the whole runbook against the inventory and the flags before its first step.

    Args:
        selector: the ``--host`` value (a host, group, ``all`` or ``a,b``; None: the
            inventory's default host): the runbook runs once for each host it selects.
        params: :func:`bind_params`'s values.
        check: check mode: a safety refusal is listed in ``refusals`` instead of raised.
        precheck: also run the actions' read-only looks at the servers
            (``Action.precheck``: ``db.restore``'s ``target_db`` exists already), in
            check mode too; a server that cannot be reached now is not an error here.

    Returns:
        :class:`Validated`.

    Raises:
        UsageError / InventoryError: (exit 2) an unknown ``--host``; a step's host unknown
            or naming several hosts; a template naming a missing param; an argument unknown,
            missing, of the wrong type or refused by its ``Param.check`` (``check_args``,
            after filling in params, naming the param; arguments from registered facts are
            checked when the step runs); a step needing a ``compose:`` block on a host
            without one; an action's ``static_check`` or ``precheck``. Steps whose ``when``
            on params is false are not checked against the inventory. Messages name the
            step as ``step N ('name')`` and the field.
        SafetyError: (exit 3, not ``check``) a destructive step on a protected host without
            ``--force-protected --confirm DBNAME``, or for a ``--host`` group holding one
            (:func:`bigskies_ops.safety.check_destructive`).
    """
    from bigskies_ops.safety import check_destructive, group_selector
    actions = action_registry()
    targets = inventory.resolve(selector)
    group = group_selector(inventory.hosts, selector)
    out = Validated(targets, group)
    prechecked: set = set()
    for t in targets:
        stack_changed: set[str] = set()  # hosts an earlier step's compose action changes
        for s in runbook.steps:
            action = actions[s.task]
            h = _step_host(s, inventory, t, params)
            if s.name:
                render(s.name, _static_lookup(params, t), f"{s.where}: name")
            ready, later = _static_args(s, action, params, h)
            args = _checked_args(s, action, ready, later)
            if _statically_skipped(s, params, t):
                continue
            known = {k: v for k, v in args.items() if k not in later}
            _check_host_args(s, action, inventory, known)
            if action.needs_compose and h.compose is None:
                raise UsageError(f"{s.where}: host: {h.name} has no compose: block in the inventory "
                                 f"(hosts.{h.name}.compose); {s.task} needs the compose stack")
            if action.static_check is not None:
                try:
                    action.static_check(h, known, inventory)
                except UsageError as e:
                    raise _field_error(s, e, "args") from None
            if precheck and action.precheck is not None and h.name not in stack_changed \
                    and (s.index, h.name) not in prechecked:
                prechecked.add((s.index, h.name))
                try:
                    action.precheck(h, known)
                except UsageError as e:
                    raise _field_error(s, e, "args") from None
            if action.needs_compose:
                stack_changed.add(h.name)
            if not _is_destructive(action, {**args, **{k: None for k in later}}):
                continue
            line = f"{s.where}: {action.destructive} on {h.name} (database {h.postgres.database!r})"
            if line not in out.destructive:
                out.destructive.append(line)
            hosts, grp = ([h], None) if s.host or not group else (targets, group)
            try:
                check_destructive(hosts, action.destructive, database=h.postgres.database,
                                  force_protected=force_protected, confirm=confirm, group=grp)
            except SafetyError as e:
                if not check:
                    raise SafetyError(f"{s.where}: {e} (nothing was run: the runbook is checked before its "
                                      f"first step)") from None
                msg = f"{s.where}: {e}"
                if msg not in out.refusals:
                    out.refusals.append(msg)
    return out


# ------------------------------------------------------------------ results
@dataclass
class StepResult:
    """One step's outcome on one host. ``result``: ok, changed, failed, skipped or
    unreachable; ``ignored``: a failure tolerated by ``ignore_errors``; ``plan``: check mode's
    plan document; ``exit_code``: the error's (1 failed, 2 usage, 3 refused) or 0;
    ``shared``: a step pinned to its own host that ran once for the whole run, in another
    ``--host`` target's run (its result reused here, not counted again)."""
    index: int
    name: str
    task: str
    host: str
    result: str
    reason: str = ""
    facts: dict = field(default_factory=dict)
    plan: dict | None = None
    ignored: bool = False
    exit_code: int = EXIT_OK
    refusals: list[str] = field(default_factory=list)
    shared: bool = False
    #: the step is destructive with the arguments it ran with (the safety policy's rule)
    destructive: bool = False

    def to_json(self) -> dict:
        out = {"index": self.index, "name": self.name, "task": self.task, "host": self.host, "result": self.result,
               "reason": self.reason, "facts": self.facts, "ignored": self.ignored, "exit_code": self.exit_code,
               "shared": self.shared}
        if self.plan is not None:
            out["plan"] = self.plan
            out["refusals"] = self.refusals
        return out


@dataclass
class RunResult:
    """One host's run of a runbook: its steps (those that ran; a failure stops the run and
    later steps are not listed), the recap counts, the result word and exit code, and in
    check mode the refusals of the real run."""
    host: str
    steps: list[StepResult] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    stopped: StepResult | None = None

    @property
    def recap(self) -> dict[str, int]:
        """This run's counts (the steps it ran, on whichever host; shared steps not again)."""
        return _count(s for s in self.steps if not s.shared)

    @property
    def result(self) -> str:
        r = _count(self.steps)
        return "failed" if r["failed"] or r["unreachable"] else "changed" if r["changed"] else "ok"

    @property
    def exit_code(self) -> int:
        return self.stopped.exit_code if self.stopped is not None else EXIT_OK

    def to_json(self) -> dict:
        return {"host": self.host, "result": self.result, "exit_code": self.exit_code, "recap": self.recap,
                "steps": [s.to_json() for s in self.steps], "refusals": self.refusals}


def _count(steps) -> dict[str, int]:
    c = dict.fromkeys(RECAP_KEYS, 0)
    for s in steps:
        c["ignored" if s.ignored else s.result] += 1
    return c


def recap(results: list[RunResult]) -> dict[str, dict[str, int]]:
    """The recap: per host WHERE the steps ran (a step's own ``host:``, else its run's
    ``--host`` target), as Ansible's PLAY RECAP; a step pinned to a host that ran once for
    a several-host run is counted once. Hosts in the order they first ran a step."""
    out: dict[str, list[StepResult]] = {}
    for r in results:
        for s in r.steps:  # a shared step orders its host too: the same order whichever run owned it
            out.setdefault(s.host, [])
            if not s.shared:
                out[s.host].append(s)
    return {h: _count(steps) for h, steps in out.items()}


class _Once:
    """The steps pinned to their own host in a several-host run: the first target's run to
    reach one runs it; the others wait for it and reuse its result and facts (the step runs
    once per run, not once per ``--host`` entry: a backup of ``prodp`` is taken once)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._slots: dict[int, dict] = {}

    def claim(self, index: int, target: str) -> tuple[bool, dict]:
        with self._lock:
            slot = self._slots.get(index)
            if slot is None:
                slot = self._slots[index] = {"done": threading.Event(), "sr": None, "facts": {}, "by": target}
                return True, slot
            return False, slot


def _pinned(s: Step) -> bool:
    """The step names its own host, the same for every target (not ``{{ host }}``)."""
    return bool(s.host) and not any(r[0] == "host" for r in refs_in(s.host, f"{s.where}: host"))


def header(name: str, task: str, host: str) -> str:
    """``TASK [name] (task on host) ****``, padded with ``*`` to 80 characters (Ansible's)."""
    text = f"TASK [{name}] ({task} on {host}) "
    return text + "*" * max(3, HEADER_WIDTH - len(text))


def _registered(sr: StepResult, facts: dict) -> dict:
    return {"result": sr.result, "ok": sr.result in ("ok", "changed"), "changed": sr.result == "changed",
            "failed": sr.result in ("failed", "unreachable"), "skipped": sr.result == "skipped", "msg": sr.reason,
            **{k: v for k, v in facts.items() if k not in ("changed", "msg")}}


class _Scope:
    """What a step's templates and conditions can see: params, the host, registered values."""

    def __init__(self, runbook: Runbook, params: dict, host: Host, ctx: RunContext):
        self.params, self.host, self.ctx = params, host, ctx
        self.by_reg = {s.register: s for s in runbook.steps if s.register}

    def lookup(self, parts):
        if parts[0] == "params":
            return self.params[parts[1]]
        if parts[0] == "host":
            return self.host.name
        reg = self.ctx.registered.get(parts[0])
        if reg is None or (reg["skipped"] and (len(parts) == 1 or parts[1] not in RESULT_KEYS)):
            raise SkippedRef(parts[0])
        if len(parts) == 1:
            return reg
        if parts[1] not in reg:
            facts = sorted(k for k in reg if k not in RESULT_KEYS)
            raise UsageError(f"{'.'.join(parts)!r}: {self.by_reg[parts[0]].where} registered no fact "
                             f"{parts[1]!r}" + (" (it failed)" if reg["failed"] else "")
                             + f"; its facts: {', '.join(facts) or 'none'} (and {', '.join(RESULT_KEYS)})")
        return reg[parts[1]]

    def skipped_reason(self, reg: str) -> str:
        return f"needs {reg!r} of {self.by_reg[reg].where}, which was skipped"


def _skip_reason(s: Step, scope: _Scope, check: bool) -> str | None:
    """Why step ``s`` is skipped (a false ``when``, a fact of a skipped step), or None."""
    for c in s.when:
        try:
            if c.holds(scope.lookup, scope.ctx.registered):
                continue
        except SkippedRef as e:
            return scope.skipped_reason(e.reg)
        if check and c.test in ("failed", "unreachable") and not c.negate:
            return f"runs only if {c.ref[0]!r} {c.test if c.test == 'failed' else 'was unreachable'} " \
                   f"(check mode plans no failure)"
        return f"condition {describe(c)!r} is false"
    return None


def _plan_line(line: str) -> str:
    return f"  would {line}" if not line.startswith(("would ", "  ")) else f"  {line}"


def _unreachable(e: BaseException) -> bool:
    from bigskies_ops.hosts.connection import SSHError
    return isinstance(e, SSHError)


def _do(s: Step, action: Action, h: Host, args: dict, ctx: RunContext, sr: StepResult, say) -> dict:
    """Run (or plan) the step; fill in ``sr``; return the facts to register."""
    if not ctx.check:
        facts = action.run(h, args, ctx) or {}
        changed = facts.get("changed", action.changes)
        sr.result = "changed" if changed else "ok"
        sr.reason = str(facts.get("msg") or (f"{s.task} done" if changed else f"{s.task}: nothing to change"))
        sr.facts = {k: v for k, v in facts.items() if k not in ("changed", "msg")}
        return facts
    try:
        plan = action.plan(h, args, ctx)
    except (UsageError, InventoryError):
        raise
    except BigskiesError as e:
        if h.name not in ctx.states or _unreachable(e):
            raise
        # an earlier step of this plan changes the stack (a purge, a down): what this step would
        # find cannot be read now; the real run finds out
        plan = Plan(True, [f"run {s.task} (it cannot be planned before the earlier steps have run: {e})"])
    sr.result = "changed" if plan.would_change else "ok"
    sr.plan = dict(plan.plan, refusals=list(plan.refusals)) if plan.plan or plan.refusals else {}
    sr.refusals = [f"{s.where}: {r}" for r in plan.refusals]
    sr.facts = dict(plan.facts)
    sr.reason = "would change nothing" if not plan.would_change else (plan.lines[0].strip() if plan.lines else "would run")
    for line in plan.lines:
        say(_plan_line(line))
    for r in plan.refusals:
        say(f"  the real run would REFUSE: {r}")
    return plan.facts


def _one_step(s: Step, action: Action, inv: Inventory, target: Host, params: dict, ctx: RunContext,
              scope: _Scope, say) -> StepResult:
    if ctx.once is None or not _pinned(s):
        return _own_step(s, action, inv, target, params, ctx, scope, say)
    owner, slot = ctx.once.claim(s.index, target.name)
    if owner:
        try:
            sr = _own_step(s, action, inv, target, params, ctx, scope, say)
            slot["sr"], slot["facts"] = sr, ctx.registered.get(s.register) if s.register else None
        finally:  # also on an interrupt: the other targets' runs must not wait for ever
            slot["done"].set()
        return sr
    slot["done"].wait()
    done: StepResult | None = slot["sr"]
    if done is None:  # the run that owned it was interrupted
        raise RuntimeError(f"{s.where}: the run of --host {slot['by']} ended inside this step")
    say(header(done.name, s.task, done.host))
    sr = dataclasses.replace(done, shared=True)
    say(f"{sr.result}: [{sr.host}] ran once for the whole run (in --host {slot['by']}'s run): {sr.reason}"
        + (" ...ignoring" if sr.ignored else ""))
    if s.register and slot["facts"] is not None:
        ctx.registered[s.register] = dict(slot["facts"])
    return sr


def _own_step(s: Step, action: Action, inv: Inventory, target: Host, params: dict, ctx: RunContext,
              scope: _Scope, say) -> StepResult:
    h = _step_host(s, inv, target, params)
    name = render(s.name, scope.lookup, f"{s.where}: name") if s.name else f"{s.task} on {h.name}"
    say(header(name, s.task, h.name))
    sr = StepResult(s.index, name, s.task, h.name, "skipped")
    facts: dict = {}
    why = _skip_reason(s, scope, ctx.check)
    if why is None:
        try:
            try:
                args = check_args(action, render(s.args, scope.lookup, f"{s.where}: args"), f"{s.where}: args")
            except SkippedRef as e:
                why = scope.skipped_reason(e.reg)
            else:
                sr.destructive = _is_destructive(action, args)
                facts = _do(s, action, h, args, ctx, sr, say)
        except BigskiesError as e:
            sr.result = "unreachable" if _unreachable(e) else "failed"
            sr.reason, sr.exit_code = " | ".join(x.strip() for x in str(e).splitlines() if x.strip()), e.exit_code
        except OSError as e:  # a file or folder the job did not expect: failed, as the task would be
            sr.result, sr.exit_code = "failed", EXIT_FAILED
            sr.reason = f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"
        except Exception as e:  # noqa: BLE001 - a bug in one action: one line, the run stops as for a failure
            sr.result, sr.exit_code = "failed", EXIT_FAILED
            sr.reason = f"internal error: {type(e).__name__}: {e}"
    if why is not None:
        sr.result, sr.reason = "skipped", why
    if s.task == "db.backup" and sr.result in ("ok", "changed") and facts.get("archive"):
        ctx.backups.append((s.index, h.name, str(facts["archive"])))
    sr.ignored = sr.result in ("failed", "unreachable") and s.ignore_errors
    planned = ctx.check and sr.result in ("ok", "changed")
    shown = ("would change nothing" if sr.result == "ok" else "would change (above)") if planned else sr.reason
    if planned and sr.refusals:  # the real run stops here: say so on the step's line, not "would change nothing"
        sr.reason = shown = f"the real run would REFUSE this step: {sr.refusals[0].removeprefix(f'{s.where}: ')}"
    say(f"{sr.result}{' (check)' if planned else ''}: [{h.name}] {shown}" + (" ...ignoring" if sr.ignored else ""))
    if s.register:
        ctx.registered[s.register] = _registered(sr, facts)
    return sr


# ------------------------------------------------------------------ running
def execute(runbook: Runbook, ctx: RunContext, host: Host, params: dict, *,
            say: Callable[[str], None] | None = None, started: list | None = None) -> RunResult:
    """Run (``ctx.check``: plan) every step of ``runbook`` for one target ``host`` (the host of
    steps without ``host:``), in order; :func:`validate` has passed. Each step prints its
    header and result line to ``say``; a failed (or unreachable) step stops the run unless
    it has ``ignore_errors``; registered values land in ``ctx.registered``.

    Never raises for a step's failure (it is in the result); ``Interrupted`` and
    ``KeyboardInterrupt`` propagate (the actions' own cleanup has run), the step they cut
    short added to the result as ``failed`` ("interrupted ..."). ``started``: the result is
    appended to it before the first step, so a caller that catches the interrupt can say
    which steps finished (:func:`interrupted_lines`)."""
    say = say or report.say
    actions = action_registry()
    scope = _Scope(runbook, params, host, ctx)
    res = RunResult(host.name)
    if started is not None:
        started.append((res, ctx))
    for s in runbook.steps:
        try:
            sr = _one_step(s, actions[s.task], ctx.inventory, host, params, ctx, scope, say)
        except (Interrupted, KeyboardInterrupt) as e:
            try:
                where = _step_host(s, ctx.inventory, host, params).name
            except BigskiesError:
                where = host.name
            sig = getattr(e, "signum", 2)
            res.stopped = StepResult(s.index, s.name or s.task, s.task, where, "failed", f"interrupted by signal {sig}",
                                     exit_code=128 + sig, destructive=bool(actions[s.task].destructive))
            res.steps.append(res.stopped)
            raise
        res.steps.append(sr)
        res.refusals += [r for r in sr.refusals if r not in res.refusals]
        say("")
        if sr.result in ("failed", "unreachable") and not sr.ignored:
            res.stopped = sr
            break
    return res


def run(runbook: Runbook, ctx: RunContext, validated: Validated, params: dict, *,
        say: Callable[[str], None] | None = None, started: list | None = None) -> list[RunResult]:
    """:func:`execute` for every target of ``validated``: one host in this thread, several in
    parallel (:func:`bigskies_ops.jobs.fleet.run_on_hosts`), each with its own copy of
    ``ctx`` (its registered facts and planned states), its lines printed together when it
    finishes. Results in the targets' order; ``validated.refusals`` are added to each.
    ``started``: as :func:`execute`'s, (result, ctx) of each target's run as it starts."""
    say = say or report.say
    targets = validated.targets
    if len(targets) == 1:
        results = [execute(runbook, ctx, targets[0], params, say=say, started=started)]
    else:
        from bigskies_ops.jobs.fleet import run_on_hosts

        once = _Once()

        def one(h: Host):
            lines: list[str] = []
            own = dataclasses.replace(ctx, registered={}, states={}, once=once, backups=[])
            r = execute(runbook, own, h, params, say=lines.append, started=started)
            return r.result, "", (r, lines)

        def finished(o) -> None:
            for line in (o.data[1] if o.data else [f"failed: [{o.host}] {o.reason}"]):
                say(line)

        outcomes = run_on_hosts(targets, one, finished=finished)
        results = []
        for o in outcomes:
            if o.data is None:  # execute never raises for a step; a bug elsewhere is one failed "step"
                r = RunResult(o.host)
                r.stopped = StepResult(0, "run", "run", o.host, "failed", o.reason, exit_code=o.exit_code)
                r.steps.append(r.stopped)
                results.append(r)
            else:
                results.append(o.data[0])
    for r in results:
        r.refusals = [x for x in validated.refusals if x not in r.refusals] + r.refusals
    return results


def recap_lines(results: list[RunResult]) -> list[str]:
    """``RUNBOOK RECAP`` and one line per host where steps ran (:func:`recap`):
    ``dev : ok=2 changed=1 failed=0 ...``."""
    counts = recap(results)
    width = max((len(h) for h in counts), default=0)
    out = ["RUNBOOK RECAP " + "*" * (HEADER_WIDTH - len("RUNBOOK RECAP "))]
    for h, c in counts.items():
        out.append(f"{h:<{width}} : " + " ".join(f"{k}={v}" for k, v in c.items()))
    return out


def exit_code(results: list[RunResult], check: bool = False) -> int:
    """The run's exit code: the stopping step's (1 failed, 3 refused, ...) of the first host
    that stopped; a multi-host run whose hosts stopped with different codes: 1. 0 when
    nothing failed (ignored failures allowed; a check with refusals too)."""
    codes = {r.exit_code for r in results if r.exit_code}
    if not codes:
        return EXIT_OK
    return codes.pop() if len(codes) == 1 else EXIT_FAILED


def document(runbook: Runbook, results: list[RunResult], *, check: bool, task: str = "run") -> dict:
    """The ``--json`` document: ``{"result", "task", "runbook", "check", "hosts": [{"host",
    "result", "exit_code", "recap", "steps": [...], "refusals"}], "recap": {HOST: counts},
    "refusals"}``: ``hosts`` are the ``--host`` targets' runs (each ``recap`` counts the steps
    that run ran, wherever), the top-level ``recap`` counts per host where steps ran."""
    words = [r.result for r in results]
    result = "failed" if "failed" in words else "changed" if "changed" in words else "ok"
    refusals = []
    for r in results:
        refusals += [x for x in r.refusals if x not in refusals]
    if check and refusals and result != "failed":  # a refused plan changes nothing (docs/cli.md "Dry runs")
        result = "ok"
    return {"result": result, "task": task, "runbook": runbook.name, "check": check,
            "hosts": [r.to_json() for r in results], "recap": recap(results), "refusals": refusals}


#: the facts an operator needs after an interrupt (where the data is, what was stopped)
_FACTS_TO_SHOW = ("archive", "pulled", "backup", "pre_restore_copy", "restored_from", "previous_kept_as", "stopped",
                  "volume")


def interrupted_lines(started: list, signum: int, hint: Callable[[str], str] = lambda a: f"inv {a}") -> list[str]:
    """What to print when SIGINT/SIGTERM cut a run short (:func:`execute`'s ``started``):
    the step it stopped in, the steps that finished with the facts that matter (the archive a
    backup wrote, a pre-restore copy), the recap, and, when a destructive step ran or was
    cut short, where the data is (the newest backup an earlier step of the run wrote of that
    host) and the command that restores it. ``hint(args)``: a command line to copy
    (:func:`bigskies_ops.output.hint`). Returns the lines; prints nothing."""
    from bigskies_ops.stack.actions import StandIn
    out: list[str] = []
    results = [r for r, _ in started]
    for r, ctx in started:
        cut = r.stopped if r.stopped is not None and r.stopped.reason.startswith("interrupted") else None
        where = (f" in step {cut.index} ({cut.name!r}, {cut.task} on {cut.host}); it did not finish and the steps "
                 f"after it did not run") if cut else ""
        out.append(f"INTERRUPTED by signal {signum}{where}" + (f" (--host {r.host})" if len(started) > 1 else ""))
        done = [s for s in r.steps if s is not cut]
        out.append("Steps that finished:" if done else "No step finished.")
        for s in done:
            out.append(f"  step {s.index} ({s.name!r}, {s.task} on {s.host}): {s.result}: {s.reason}")
            for k in _FACTS_TO_SHOW:
                v = s.facts.get(k)
                if v and not isinstance(v, StandIn):
                    out.append(f"      {k}: {', '.join(map(str, v)) if isinstance(v, list) else v}")
        for s in [x for x in r.steps if x.destructive and (x is cut or x.result == "changed")][:1]:
            backups = [(i, a) for i, h, a in ctx.backups if h == s.host and i < s.index]
            what = "was cut short" if s is cut else "ran"
            if backups:
                i, archive = backups[-1]
                out.append(f"A destructive step {what} (step {s.index}, {s.task} on {s.host}): the data from before "
                           f"it is in {archive} (written by step {i}). To restore it:")
                out.append(f"  {hint(f'db.restore {archive} --host {s.host} --roles')}")
            else:
                out.append(f"A destructive step {what} (step {s.index}, {s.task} on {s.host}) and no earlier step of "
                           f"this run took a backup of {s.host}; its backups: {hint(f'db.list --host {s.host}')}")
    out += recap_lines(results)
    return out
