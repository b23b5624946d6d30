"""Reading a runbook: find its file, parse the YAML, check its structure and references
(before anything about hosts is known), and bind its params. The public API is re-exported
by :mod:`bigskies_ops.stack.runbook`; import it from there."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigskies_ops.errors import BigskiesError, UsageError
from bigskies_ops.inventory import Inventory
from bigskies_ops.stack.actions import ACTIONS, Action
from bigskies_ops.stack.runbook_expr import NAME_RE, RESULT_KEYS, Cond, parse_when, ref_sites
from bigskies_ops.text import did_you_mean

TOP_KEYS = ("description", "params", "steps")
STEP_KEYS = ("name", "task", "host", "args", "when", "register", "ignore_errors")
PARAM_KEYS = ("type", "default", "help", "choices")
PARAM_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list": list}
RESERVED = ("params", "host")
#: where shipped runbooks live: ``runbooks/`` at the repo's top (beside the package)
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "runbooks"


def action_registry() -> dict[str, Action]:
    """The registry, filled: both action modules register on import (imported here, not at
    the top, so a module they import may import this one)."""
    from bigskies_ops.stack import task_actions  # noqa: F401
    import importlib
    try:
        importlib.import_module("bigskies_ops.stack.scenario_actions")
    except ModuleNotFoundError as e:  # not written yet on this branch
        if e.name != "bigskies_ops.stack.scenario_actions":
            raise
    return ACTIONS


# ------------------------------------------------------------------ the runbook
@dataclass(frozen=True)
class ParamSpec:
    """One ``params:`` entry: its type (a Python type of ``PARAM_TYPES``), default, help, choices."""
    name: str
    type: type
    default: Any = None
    help: str = ""
    choices: tuple = ()


@dataclass(frozen=True)
class Step:
    """One step as written (templates not filled in). ``index`` counts from 1."""
    index: int
    task: str
    name: str | None = None
    host: str | None = None
    args: dict = field(default_factory=dict)
    when: tuple[Cond, ...] = ()
    register: str | None = None
    ignore_errors: bool = False

    @property
    def where(self) -> str:
        """``step 3 ('Restore')``: how messages name the step."""
        return f"step {self.index} ({self.name or self.task!r})"


@dataclass(frozen=True)
class Runbook:
    """A parsed runbook: ``name`` (its file's stem), ``path``, description, params, steps."""
    name: str
    path: Path | None
    description: str
    params: dict[str, ParamSpec]
    steps: tuple[Step, ...]


def _unknown_keys(d: dict, known: tuple, where: str) -> None:
    for k in d:
        if k not in known:
            raise UsageError(f"{where}: unknown key {k!r}{did_you_mean(str(k), known)}; known: {', '.join(known)}")


def _a(tname: str) -> str:
    return "an int" if tname == "int" else "a list of strings" if tname == "list" else f"a {tname}"


def _typed(value: Any, t: type) -> bool:
    if t in (int, float) and isinstance(value, bool):
        return False
    if t is float:
        return isinstance(value, (int, float))
    if t is list:
        return isinstance(value, list) and all(isinstance(x, str) for x in value)
    return isinstance(value, t)


def _parse_params(doc: Any, where: str) -> dict[str, ParamSpec]:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: expected a mapping of parameter name -> {{type, default, help, choices}}")
    out = {}
    for name, spec in doc.items():
        w = f"{where}.{name}"
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise UsageError(f"{w}: a parameter name is a word of letters, digits and _")
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise UsageError(f"{w}: expected a mapping {{type, default, help, choices}}, got {spec!r}")
        _unknown_keys(spec, PARAM_KEYS, w)
        tname = spec.get("type", "str")
        if tname not in PARAM_TYPES:
            raise UsageError(f"{w}.type: expected one of {', '.join(PARAM_TYPES)}, got {tname!r}"
                             f"{did_you_mean(str(tname), PARAM_TYPES)}")
        t = PARAM_TYPES[tname]
        choices = spec.get("choices") or ()
        if not isinstance(choices, (list, tuple)):
            raise UsageError(f"{w}.choices: expected a list")
        default = spec.get("default")
        if default is not None and not _typed(default, t):
            raise UsageError(f"{w}.default: expected {_a(tname)}, got {type(default).__name__} {default!r}")
        if default is not None and choices and default not in choices:
            raise UsageError(f"{w}.default: {default!r} is not one of its choices {', '.join(map(str, choices))}")
        out[name] = ParamSpec(name, t, float(default) if t is float and default is not None else default,
                              str(spec.get("help") or ""), tuple(choices))
    return out


def _parse_step(i: int, doc: Any, actions: dict[str, Action]) -> Step:
    where = f"step {i}"
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: expected a mapping (task, host, args, when, register, ...), got {doc!r}")
    name = doc.get("name")
    if name is not None and not isinstance(name, str):
        raise UsageError(f"{where}: name: expected a string, got {name!r}")
    task = doc.get("task")
    if name or isinstance(task, str) and task:
        where = f"step {i} ({name or task!r})"
    _unknown_keys(doc, STEP_KEYS, where)
    if task is not None and not isinstance(task, str):
        raise UsageError(f"{where}: task: expected a task name (a string), got {task!r}")
    if not task:
        raise UsageError(f"{where}: task: missing; every step names a task (docs/runbooks.md lists them)")
    if task not in actions:
        raise UsageError(f"{where}: task: unknown task {task!r}{did_you_mean(task, actions)}; "
                         f"tasks a step can name: {', '.join(sorted(actions))}")
    host = doc.get("host")
    if host is not None and not isinstance(host, str):
        raise UsageError(f"{where}: host: expected a host name, got {host!r}")
    args = doc.get("args") or {}
    if not isinstance(args, dict):
        raise UsageError(f"{where}: args: expected a mapping of argument -> value, got {args!r}")
    when = doc.get("when")
    whens = [] if when is None else when if isinstance(when, list) else [when]
    conds = tuple(parse_when(w, f"{where}: when") for w in whens)
    reg = doc.get("register")
    if reg is not None and (not isinstance(reg, str) or not NAME_RE.match(reg) or reg in RESERVED):
        raise UsageError(f"{where}: register: expected a name of letters, digits and _ (not params or host), "
                         f"got {reg!r}")
    ign = doc.get("ignore_errors", False)
    if not isinstance(ign, bool):
        raise UsageError(f"{where}: ignore_errors: expected true or false, got {ign!r}")
    return Step(i, task, name or None, host, dict(args), conds, reg, ign)


def _check_fact(w: str, ref: tuple[str, ...], step: Step, actions: dict[str, Action]) -> None:
    """``REG.KEY`` names a fact ``step`` (the step registering REG) can register: one of its
    action's declared facts or a result key; else the run would stop at the step using it,
    after the earlier steps ran."""
    facts = actions[step.task].facts
    if len(ref) < 2 or facts is None or ref[1] in RESULT_KEYS or ref[1] in facts:
        return
    raise UsageError(f"{w}: {'.'.join(ref)!r}: {step.where} ({step.task}) registers no fact {ref[1]!r}"
                     f"{did_you_mean(ref[1], list(facts) + list(RESULT_KEYS))}; its facts: "
                     f"{', '.join(facts) or 'none'} (and {', '.join(RESULT_KEYS)})")


def _check_refs(steps: tuple[Step, ...], params: dict[str, ParamSpec], actions: dict[str, Action]) -> None:
    """Every reference names a param, ``host``, or a register of an EARLIER step, and a fact
    (``REG.KEY``) that step's task registers."""
    regs = {s.register: s.index for s in steps if s.register}
    for s in steps:
        fields = [("name", s.name), ("host", s.host), ("args", s.args)]
        uses = [(f, w, r) for f, v in fields for w, r in ref_sites(v, f"{s.where}: {f}")]
        uses += [("when", f"{s.where}: when", c.ref) for c in s.when]
        facts_ok = {"args", "when"}
        for f, w, ref in uses:
            head = ref[0]
            if head == "params":
                if ref[1] not in params:
                    raise UsageError(f"{w}: 'params.{ref[1]}': no such parameter{did_you_mean(ref[1], params)}; "
                                     f"parameters: {', '.join(params) or 'none'}")
            elif head == "host":
                if f == "when":
                    raise UsageError(f"{w}: 'host' is a name, not a condition")
            elif head in regs:
                if f not in facts_ok:
                    raise UsageError(f"{w}: {'.'.join(ref)!r}: a step's {f} may use params and host only, "
                                     f"never registered facts ({f} is checked before the first step runs)")
                n = regs[head]
                if n == s.index:
                    raise UsageError(f"{w}: {'.'.join(ref)!r} is registered by this step itself: facts flow "
                                     f"forward only (a cycle)")
                if n > s.index:
                    raise UsageError(f"{w}: {'.'.join(ref)!r} is registered by step {n}, which runs later: "
                                     f"facts flow forward only (a cycle)")
                _check_fact(w, ref, steps[n - 1], actions)
            else:
                known = [r for r, n in regs.items() if n < s.index]
                raise UsageError(f"{w}: {'.'.join(ref)!r}: no earlier step registers {head!r}"
                                 f"{did_you_mean(head, list(regs) + ['params', 'host'])}; registered before this "
                                 f"step: {', '.join(known) or 'none'} (or params.NAME, host)")


def parse(text: str, name: str = "<runbook>", path: Path | None = None) -> Runbook:
    """A runbook from YAML ``text``, its structure and references checked.

    Raises:
        UsageError: (exit 2) not YAML, an unknown key (with did-you-mean), a missing or
            empty ``steps``, an unknown task, a duplicate ``register``, a reference to a
            param or register that does not exist or is registered by the same or a later
            step (a cycle), a fact the registering step's task never registers, a
            malformed template or condition. The message names the step
            as ``step N ('name')`` and the field."""
    import yaml
    from bigskies_ops import yamlfile
    label = str(path) if path else name
    try:
        doc = yamlfile.load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UsageError(f"runbook {label}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"runbook {label}: expected a mapping with description, params and steps")
    _unknown_keys(doc, TOP_KEYS, f"runbook {label}")
    desc = doc.get("description") or ""
    if not isinstance(desc, str):
        raise UsageError(f"runbook {label}: description: expected a string")
    params = _parse_params(doc.get("params"), "params")
    steps_doc = doc.get("steps")
    if not isinstance(steps_doc, list) or not steps_doc:
        raise UsageError(f"runbook {label}: steps: expected a non-empty list of steps"
                         + (f", got {steps_doc!r}" if steps_doc not in (None, []) else " (there are none)"))
    actions = action_registry()
    steps = tuple(_parse_step(i, s, actions) for i, s in enumerate(steps_doc, 1))
    seen: dict[str, Step] = {}
    for s in steps:
        if s.register in seen:
            raise UsageError(f"{s.where}: register: {s.register!r} is registered by {seen[s.register].where} "
                             f"already; register names are unique in a runbook")
        if s.register:
            seen[s.register] = s
    _check_refs(steps, params, actions)
    return Runbook(name, path, desc, params, steps)


# ------------------------------------------------------------------ finding runbooks
def _dirs(inventory: Inventory | None) -> list[Path]:
    out = [inventory.base_dir / "runbooks"] if inventory is not None else []
    return out + ([SHIPPED_DIR] if SHIPPED_DIR not in out else [])


def available(inventory: Inventory | None = None) -> list[dict]:
    """The runbooks by name: ``runbooks/*.yaml`` beside the inventory, then the shipped ones
    (a name beside the inventory hides the shipped one). Each ``{"name", "path",
    "description", "error"}``: ``error`` is None, or for a file that cannot be read or does
    not parse the message ``inv run NAME`` would give (its description is then "")."""
    seen: dict[str, dict] = {}
    for d in _dirs(inventory):
        for p in sorted(d.glob("*.y*ml")) if d.is_dir() else []:
            if p.stem in seen or p.suffix not in (".yaml", ".yml"):
                continue
            desc, error = "", None
            try:
                desc = parse(p.read_text(encoding="utf-8"), p.stem, p).description
            except (BigskiesError, OSError, UnicodeDecodeError) as e:
                error = " | ".join(x.strip() for x in str(e).splitlines() if x.strip())
            seen[p.stem] = {"name": p.stem, "path": str(p), "description": desc, "error": error}
    return list(seen.values())


def find(spec: str, inventory: Inventory | None = None) -> Path:
    """The file of runbook ``spec``: a path to a ``.yaml`` file, else ``runbooks/NAME.yaml``
    beside the inventory file, else the shipped ``runbooks/NAME.yaml``.

    Raises:
        UsageError: (exit 2) no such file; the message lists the runbooks found."""
    looks_like_path = spec.endswith((".yaml", ".yml")) or "/" in spec or spec.startswith(".")
    if looks_like_path:
        p = Path(spec).expanduser()
        if p.is_file():
            return p
    else:
        for d in _dirs(inventory):
            for ext in (".yaml", ".yml"):
                if (d / f"{spec}{ext}").is_file():
                    return d / f"{spec}{ext}"
    found = available(inventory)
    names = [r["name"] for r in found]
    where = " or ".join(str(d) for d in _dirs(inventory))
    raise UsageError(f"runbook {spec!r} not found" + ("" if looks_like_path else f" in {where}")
                     + did_you_mean(spec, names)
                     + f"; runbooks found: {', '.join(names) or 'none'} (inv run --list)")


def load(spec: str | Path, inventory: Inventory | None = None) -> Runbook:
    """:func:`find` then :func:`parse`. Raises UsageError (exit 2) as those do."""
    path = find(str(spec), inventory)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"runbook {path}: cannot be read: {e}") from None
    return parse(text, path.stem, path)


# ------------------------------------------------------------------ params
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _convert(p: ParamSpec, text: str) -> Any:
    t = text.strip()
    if p.type is bool:
        if t.lower() in _TRUE + _FALSE:
            return t.lower() in _TRUE
        raise UsageError(f"--set {p.name}={text}: expected true or false")
    if p.type in (int, float):
        try:
            return p.type(t)
        except ValueError:
            raise UsageError(f"--set {p.name}={text}: expected a{'n int' if p.type is int else ' number'}") from None
    if p.type is list:
        return [x.strip() for x in t.split(",") if x.strip()]
    return text


def bind_params(runbook: Runbook, sets: list[str] | dict | None = None) -> dict[str, Any]:
    """Every param's value: ``sets`` (``["k=v", ...]`` as ``--set`` gives them, converted to
    the param's type: bool true/false/yes/no/1/0, a list comma-separated; or a mapping of
    typed values) over the defaults.

    Raises:
        UsageError: an unknown param (did-you-mean), a malformed ``k=v``, a value of the
            wrong type or outside the param's choices."""
    values = {n: p.default for n, p in runbook.params.items()}
    items = sets.items() if isinstance(sets, dict) else []
    if not isinstance(sets, dict):
        pairs = []
        for s in sets or []:
            if "=" not in s:
                raise UsageError(f"--set {s!r}: expected NAME=VALUE")
            pairs.append(tuple(s.split("=", 1)))
        items = pairs
    for k, v in items:
        k = k.strip()
        p = runbook.params.get(k)
        if p is None:
            raise UsageError(f"--set {k}: runbook {runbook.name} has no parameter {k!r}"
                             f"{did_you_mean(k, runbook.params)}; parameters: {', '.join(runbook.params) or 'none'}")
        v = _convert(p, v) if isinstance(v, str) and p.type is not str else v
        if not _typed(v, p.type):
            raise UsageError(f"--set {k}: expected {_a(p.type.__name__)}, got {v!r}")
        if p.choices and v not in p.choices:
            raise UsageError(f"--set {k}: expected one of {', '.join(map(str, p.choices))}, got {v!r}")
        values[k] = float(v) if p.type is float else v
    return values

