"""Tables of backups as ``db.list`` and the tasks that end with a listing show them."""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from bigskies_ops.archives.catalog import Backup, utcnow
from bigskies_ops.output import literal_table
from bigskies_ops.text import human_age, human_bytes

if TYPE_CHECKING:
    from rich.table import Table


def backups_table(backups: list[Backup], now: datetime | None = None) -> "Table":
    from rich import box  # (imported here: a task that prints no table does not pay for it)
    now = now or utcnow()
    t = literal_table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("#", "started (UTC)", "age", "size", "format", "kind", "status", "verified", "file"):
        t.add_column(col, no_wrap=col != "file", justify="right" if col in ("#", "size") else "left")
    for i, b in enumerate(backups, 1):
        started = b.started_at
        when = (started.strftime("%Y-%m-%d %H:%M:%S") if started else "-") + ("?" if b.legacy else "")
        future = b.in_future(now)
        t.add_row(str(i), when + (" !" if future else ""),
                  f"{human_age(now, started)} ahead" if future else human_age(started, now),
                  human_bytes(b.size), b.format or "-",
                  b.kind + ("" if b.legacy or b.complete else f" ({b.contents})"),
                  (b.status.lower() if b.status != "LEGACY" else "legacy") + (", FUTURE" if future else ""),
                  "yes" if b.verified else "no", (f"{b.origin_dir}/" if b.origin_dir else "") + b.name)
    return t


def future_note(backups: list[Backup], now: datetime | None = None) -> str | None:
    """The line under a listing that holds archives dated in the future (None: none)."""
    ahead = [b for b in backups if b.in_future(now)]
    if not ahead:
        return None
    return (f"! dated in the future by this machine's clock ({len(ahead)}: {', '.join(b.name for b in ahead[:3])}"
            f"{' ...' if len(ahead) > 3 else ''}): a clock is wrong; never taken as 'latest' (name the file to use it)")
