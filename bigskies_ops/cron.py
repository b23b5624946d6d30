"""Cron expressions as crontab(5) reads them: the one rule that the inventory's
``schedule`` key, ``inventory.check``, ``db.schedule`` and the next-run computation
(:func:`bigskies_ops.jobs.schedule.next_fire`) share."""
from __future__ import annotations

import re

from bigskies_ops.errors import InventoryError
from bigskies_ops.text import did_you_mean



CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
CRON_FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")
# crontab(5): the values each field allows; day of week 0 and 7 are both Sunday.
CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_CRON_NAMES = {3: ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
               4: ("sun", "mon", "tue", "wed", "thu", "fri", "sat")}
_CRON_FIELD_RE = re.compile(r"^[0-9A-Za-z*/,\-]+$")


def cron_field_values(text: str, index: int) -> set[int]:
    """The values one field of a 5-field cron expression allows, by crontab(5): a list
    (``,``) of ``*``, a number, a range ``a-b`` (upward), each optionally with a step
    ``/n`` (n >= 1; ``a/n`` only as ``*/n`` or ``a-b/n``, as Debian's cron reads it);
    month (``jan``-``dec``) and day-of-week (``sun``-``sat``) names in any case. ``index``:
    0 minute, 1 hour, 2 day of month, 3 month, 4 day of week (7 is Sunday, also returned
    as 0). Pure.

    Raises:
        ValueError: the reason the field is not one cron accepts (``61 is out of range 0-59``).
    """
    lo, hi = CRON_RANGES[index]
    names = _CRON_NAMES.get(index, ())

    def num(t: str) -> int:
        if t.lower() in names:
            return names.index(t.lower()) + (1 if index == 3 else 0)
        if not t.isdigit():
            hint = f" or a name ({names[0]}-{names[-1]})" if names else ""
            raise ValueError(f"{t!r} is not a number{hint}")
        v = int(t)
        if not lo <= v <= hi:
            raise ValueError(f"{v} is out of range {lo}-{hi}")
        return v

    out: set[int] = set()
    for part in text.split(","):
        rng, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"step {step_text!r} is not a whole number >= 1")
            step = int(step_text)
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            a, b = (num(x) for x in rng.split("-", 1))
            if a > b:
                raise ValueError(f"range {rng!r} runs backwards (cron matches nothing in it)")
        elif slash:
            raise ValueError(f"a step needs '*' or a range before it (*/{step_text} or {rng}-{hi}/{step_text})")
        else:
            a = b = num(rng)
        out.update(range(a, b + 1, step))
    if index == 4 and 7 in out:
        out.add(0)
    return out


def cron_fields(expr: str, where: str) -> list[str]:
    """Split a 5-field cron expression (``0 2 * * *``) or an ``@daily``-style macro into
    its fields, each checked against its range (:func:`cron_field_values`); the one rule
    ``db.schedule``, ``inventory.check`` and the inventory's ``schedule`` key share
    (crontab(5)).

    Raises:
        InventoryError: (exit 2) anything else, naming ``where`` (``hosts.prod.schedule``),
            the field and its value.
    """
    e = expr.strip()
    if e.startswith("@"):
        if e not in CRON_MACROS:
            raise InventoryError(f"{where}: unknown cron macro {e!r}{did_you_mean(e, CRON_MACROS)}")
        return [e]
    parts = e.split()
    if len(parts) != 5 or not all(_CRON_FIELD_RE.match(p) for p in parts):
        raise InventoryError(f"{where}: expected a cron expression with 5 fields (minute hour day month weekday), "
                             f"got {expr!r}")
    for i, p in enumerate(parts):
        lo, hi = CRON_RANGES[i]
        try:
            cron_field_values(p, i)
        except ValueError as err:
            raise InventoryError(f"{where}: {expr!r}: {CRON_FIELD_NAMES[i]} field {p!r}: {err} "
                                 f"(crontab(5): {CRON_FIELD_NAMES[i]} {lo}-{hi}"
                                 f"{', or names' if i in _CRON_NAMES else ''})") from None
    return parts
