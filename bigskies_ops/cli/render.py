"""Tables of backups as ``db.list`` and the tasks that end with a listing show them.

The archive's name is never cut: the table is made to fit the terminal by leaving out
the columns an operator needs least, in the order of :data:`DROP_ORDER` (format first:
the name's extension says it, then the start time, also in the name; the name and the id last: they are what is typed into
the next command). When even ``id`` and the name do not fit, each backup is printed as
two lines, the name whole (a terminal wraps it, nothing cuts it).
"""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from bigskies_ops.archives.catalog import Backup, utcnow
from bigskies_ops.output import literal_table
from bigskies_ops.text import human_age, human_bytes

if TYPE_CHECKING:
    from rich.console import RenderableType

COLUMNS = ("id", "started (UTC)", "age", "size", "format", "kind", "status", "verified", "file")
#: the columns left out first when the terminal is too narrow (id and file are never left out)
#: (the start time and the format are in the name itself: ``..._backup_20261129_085200.sql.gz``)
DROP_ORDER = ("format", "started (UTC)", "kind", "age", "size", "verified", "status")
#: characters between two columns (box.SIMPLE_HEAD: padding, separator, padding)
GAP = 3


def verified_word(b: Backup) -> str:
    """``yes`` (the newest verification passed), ``FAILED`` (it failed), ``never``
    (not verified yet), ``-`` (nothing to verify: a failed run, a missing archive)."""
    if b.status == "DAMAGED":
        return "FAILED" if b.verification == "failed" else "-"
    if b.status not in ("DONE", "LEGACY"):
        return "-"
    v = b.verification
    return {"passed": "yes", "failed": "FAILED"}.get(v, "never")


def _cells(b: Backup, now: datetime) -> dict[str, str]:
    started = b.started_at
    when = (started.strftime("%Y-%m-%d %H:%M:%S") if started else "-") + ("?" if b.legacy else "")
    future = b.in_future(now)
    return {
        "id": b.id,
        "started (UTC)": when + (" !" if future else ""),
        "age": f"{human_age(now, started)} ahead" if future else human_age(started, now),
        "size": human_bytes(b.size),
        "format": b.format or "-",
        "kind": b.kind + ("" if b.legacy or b.complete else f" ({b.contents})"),
        "status": (b.status.lower() if b.status != "LEGACY" else "legacy") + (", FUTURE" if future else ""),
        "verified": verified_word(b),
        "file": b.shown_name,
    }


def fit_columns(rows: list[dict[str, str]], width: int) -> list[str] | None:
    """The columns of :data:`COLUMNS` that fit in ``width`` characters with every cell
    whole, dropping in :data:`DROP_ORDER`; None when not even ``id`` and ``file`` fit."""
    from rich.cells import cell_len
    widths = {c: max([cell_len(c)] + [cell_len(r[c]) for r in rows]) for c in COLUMNS}
    cols = list(COLUMNS)

    def total(cs):
        return sum(widths[c] for c in cs) + GAP * (len(cs) - 1)
    for c in DROP_ORDER:
        if total(cols) <= width:
            break
        cols.remove(c)
    return cols if total(cols) <= width else None


def backups_table(backups: list[Backup], now: datetime | None = None, width: int | None = None) -> "RenderableType":
    """The listing of ``backups`` for a terminal ``width`` characters wide (default: the
    console's): a table whose file names are whole (:func:`fit_columns`), or for a
    very narrow terminal two lines per backup."""
    from rich import box
    from rich.text import Text
    now = now or utcnow()
    if width is None:
        from bigskies_ops.output import out
        width = out().width
    rows = [_cells(b, now) for b in backups]
    cols = fit_columns(rows, width)
    if cols is None:  # two lines each: the name, then its id and facts, indented
        lines = []
        for r in rows:
            lines.append(r["file"])
            lines.append(f"  id {r['id']}  {r['size']}  {r['status']}  verified {r['verified']}")
        return Text("\n".join(lines), no_wrap=False, overflow="fold")
    t = literal_table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in cols:
        t.add_column(col, no_wrap=True, overflow="ignore", justify="right" if col == "size" else "left")
    for r in rows:
        t.add_row(*(r[c] for c in cols))
    return t


def future_note(backups: list[Backup], now: datetime | None = None) -> str | None:
    """The line under a listing that holds archives dated in the future (None: none)."""
    ahead = [b for b in backups if b.in_future(now)]
    if not ahead:
        return None
    return (f"! dated in the future by this machine's clock ({len(ahead)}: {', '.join(b.name for b in ahead[:3])}"
            f"{' ...' if len(ahead) > 3 else ''}): a clock is wrong; never taken as 'latest' (name the file to use it)")
