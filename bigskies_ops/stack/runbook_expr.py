"""A runbook's references, templates and ``when`` conditions (docs/runbooks.md), as pure functions.

A reference is a dotted name: ``params.NAME``, ``REG`` (a ``register`` name: its step's
result), ``REG.KEY`` (a registered fact, or one of result/ok/changed/failed/skipped/msg),
or ``host`` (the step's default host). Templates are ``{{ REF }}`` inside a string; nothing
else is allowed inside the braces (no filters, no expressions: a runbook is data a team
reviews, not a program). ``when`` strings are ``[not] REF`` or ``REF is [not] TEST``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from bigskies_ops.errors import UsageError

TEMPLATE_RE = re.compile(r"\{\{(.*?)\}\}", re.S)
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
REF_RE = re.compile(rf"^{_NAME}(\.{_NAME})?$")
NAME_RE = re.compile(rf"^{_NAME}$")
TESTS = ("ok", "changed", "failed", "skipped", "succeeded", "unreachable")
#: the result words each test accepts: an unreachable host is a failure too (Ansible's
#: ``is failed`` is true for it; docs/runbooks.md "ignore_errors")
_TEST_WORDS = {"ok": ("ok",), "changed": ("changed",), "failed": ("failed", "unreachable"), "skipped": ("skipped",),
               "succeeded": ("ok", "changed"), "unreachable": ("unreachable",)}
_WHEN_RE = re.compile(rf"^(?P<not>not\s+)?(?P<ref>{_NAME}(\.{_NAME})?)"
                      rf"(\s+is\s+(?P<tnot>not\s+)?(?P<test>{_NAME}))?$")
#: the keys every registered value has besides the action's facts
RESULT_KEYS = ("result", "ok", "changed", "failed", "skipped", "msg")


class SkippedRef(Exception):
    """A reference to a fact of a step that was skipped: the step needing it is skipped too."""

    def __init__(self, reg: str):
        super().__init__(reg)
        self.reg = reg


def parse_ref(text: str, where: str) -> tuple[str, ...]:
    """``text`` (``params.x``, ``pre``, ``pre.archive``, ``host``) as its parts.

    Raises:
        UsageError: anything but a dotted name of one or two parts (``where`` names the
            step and field)."""
    t = text.strip()
    if not REF_RE.match(t):
        raise UsageError(f"{where}: {{{{ {t} }}}} is not a reference; only dotted names are allowed inside "
                         f"{{{{ }}}} (params.NAME, REG.KEY, host), no filters or expressions")
    parts = tuple(t.split("."))
    if parts[0] == "params" and len(parts) != 2:
        raise UsageError(f"{where}: {t!r}: a parameter is params.NAME")
    if parts[0] == "host" and len(parts) != 1:
        raise UsageError(f"{where}: {t!r}: 'host' is the step's host name and has no keys")
    return parts


def ref_sites(value: Any, where: str) -> list[tuple[str, tuple[str, ...]]]:
    """Every ``{{ REF }}`` in ``value`` (a string, or lists and mappings of them), parsed, with
    where it is (``where`` extended by the keys and indexes: ``step 2 ('x'): args.archive``)."""
    out: list[tuple[str, tuple[str, ...]]] = []
    if isinstance(value, str):
        for m in TEMPLATE_RE.finditer(value):
            out.append((where, parse_ref(m.group(1), where)))
        rest = TEMPLATE_RE.sub("", value)
        if "{{" in rest or "}}" in rest:
            raise UsageError(f"{where}: unbalanced {{{{ }}}} in {value!r}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += ref_sites(v, f"{where}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            out += ref_sites(v, f"{where}.{k}")
    return out


def refs_in(value: Any, where: str) -> list[tuple[str, ...]]:
    """The references of :func:`ref_sites`, without where they are."""
    return [r for _, r in ref_sites(value, where)]


def render(value: Any, lookup: Callable[[tuple[str, ...]], Any], where: str) -> Any:
    """``value`` with its templates filled in by ``lookup(parts)``. A string that is exactly one
    ``{{ REF }}`` becomes the referenced value itself (its type kept: bool, int, list); inside a
    longer string a value is written as text (a bool as ``true``/``false``, YAML's words).

    Raises:
        SkippedRef, UsageError: from ``lookup``."""
    if isinstance(value, str):
        whole = TEMPLATE_RE.fullmatch(value.strip())
        if whole:
            return lookup(parse_ref(whole.group(1), where))

        def text(m) -> str:
            v = lookup(parse_ref(m.group(1), where))
            return ("true" if v else "false") if isinstance(v, bool) else "" if v is None else str(v)
        return TEMPLATE_RE.sub(text, value)
    if isinstance(value, list):
        return [render(v, lookup, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: render(v, lookup, f"{where}.{k}") for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Cond:
    """One ``when`` condition: ``[not] REF`` (``test`` None) or ``REF is [not] TEST``."""

    text: str
    ref: tuple[str, ...]
    negate: bool = False
    test: str | None = None

    def holds(self, lookup: Callable[[tuple[str, ...]], Any], registered: dict[str, dict]) -> bool:
        """Whether the condition holds; ``registered``: register name -> registered value.

        Raises:
            SkippedRef: a fact (``REG.KEY``, KEY not a result key) of a skipped step."""
        if self.test is not None:
            word = registered[self.ref[0]]["result"]
            got = word in _TEST_WORDS[self.test]
        elif len(self.ref) == 1 and self.ref[0] in registered:  # a register name alone: its step succeeded
            got = registered[self.ref[0]]["result"] in ("ok", "changed")
        else:
            got = bool(lookup(self.ref))
        return got != self.negate


def parse_when(text: Any, where: str) -> Cond:
    """One ``when`` string as a :class:`Cond`.

    Raises:
        UsageError: not a string, a template (``{{ }}``), an unknown TEST, or not of the
            form ``[not] REF`` / ``REF is [not] TEST``."""
    if not isinstance(text, str):
        raise UsageError(f"{where}: expected a condition (a string such as 'params.backup' or 'pre is failed'), "
                         f"got {type(text).__name__} {text!r}")
    t = " ".join(text.split())
    if "{{" in t:
        raise UsageError(f"{where}: {text!r}: write the reference without {{{{ }}}} in a condition "
                         f"(e.g. 'params.backup', 'pre is failed')")
    m = _WHEN_RE.match(t)
    if not m:
        raise UsageError(f"{where}: {text!r} is not a condition; write '[not] REF' or 'REF is [not] TEST' "
                         f"(TEST one of {', '.join(TESTS)}; REF params.NAME, REG or REG.KEY)")
    ref = parse_ref(m.group("ref"), where)
    test = m.group("test")
    if test is not None:
        if test not in TESTS:
            from bigskies_ops.text import did_you_mean
            raise UsageError(f"{where}: {text!r}: unknown test {test!r}{did_you_mean(test, TESTS)}; "
                             f"tests: {', '.join(TESTS)}")
        if m.group("not"):
            raise UsageError(f"{where}: {text!r}: write 'REF is not TEST', not 'not REF is TEST'")
        if len(ref) != 1 or ref[0] in ("params", "host"):
            raise UsageError(f"{where}: {text!r}: 'is {test}' tests a step's result: name its register "
                             f"(e.g. 'pre is {test}')")
    return Cond(text, ref, bool(m.group("not") or m.group("tnot")), test)


def describe(cond: Cond) -> str:
    """The condition as the skip reason shows it."""
    return " ".join(cond.text.split())
