"""``db.report``: one self-contained HTML page of the fleet's backups (docs/monitoring.md
"Report"). Thin: :mod:`bigskies_ops.jobs.overview` gathers the facts (db.health's states and
checks, every backup run with health's size band), :mod:`bigskies_ops.cli.report_html`
draws the page."""
from __future__ import annotations

import os

from bigskies_ops import output
from bigskies_ops.cli.common import INVENTORY_HELP, JSON_HELP, handles_errors, load_inventory, task
from bigskies_ops.errors import UsageError
from bigskies_ops.text import human_bytes


@task(help={"host": "a host, a group, a,b or all (default: all: the page is the fleet)",
            "inventory": INVENTORY_HELP, "json": JSON_HELP,
            "out": "the HTML file to write (replaced atomically; its folder must exist)"})
@handles_errors
def report(c, host=None, inventory=None, out=None, json=False):
    """Write one self-contained HTML page: per host the newest good backup, its age, verification, offsite, charts."""
    from bigskies_ops.archives.catalog import iso, utcnow
    from bigskies_ops.cli.report_html import render
    from bigskies_ops.hosts.local import LocalRunner
    from bigskies_ops.jobs.overview import host_overview
    if not out:
        raise UsageError("db.report needs --out FILE.html (the page to write)")
    path = os.path.abspath(os.path.expanduser(out))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise UsageError(f"--out {out}: the folder {folder} does not exist (create it, or pick another)")
    if os.path.isdir(path):
        raise UsageError(f"--out {out}: is a folder; give a file name such as {os.path.join(out, 'report.html')}")
    inv = load_inventory(inventory)
    hosts = inv.resolve(host or "all")
    now = utcnow()
    overviews = [host_overview(h, now=now) for h in hosts]
    page = render(overviews, now).encode("utf-8")
    LocalRunner().write_atomic(path, page, mode=0o644)  # temp file + fsync + rename: never a half page
    if json:
        output.emit_json({"result": "changed", "host": host, "path": path, "bytes": len(page),
                          "generated_at": iso(now), "hosts": [o.to_json() for o in overviews]})
        return
    for o in overviews:
        good = sum(p.status == "DONE" for p in o.points)
        bad = len(o.points) - good
        output.say(f"{o.state.upper()}: [{o.host}] {o.database}: " + (
            o.error if o.error else "no backups yet" if not o.points else
            f"{good} good backup(s)" + (f", {bad} FAILED/MISSING/DAMAGED/unfinished" if bad else "")))
    output.result_line("changed", host or "all", f"report written to {path} ({human_bytes(len(page))}, "
                                                 f"{len(overviews)} host(s))")


#: the tasks of this module; :mod:`bigskies_ops.cli` gathers them into the ``db`` namespace
TASKS = (report,)
