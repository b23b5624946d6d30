"""``db.metrics``: the backups' monitoring facts for Prometheus (a node_exporter textfile,
an HTTP endpoint on 127.0.0.1, or the text on stdout). Thin: bigskies_ops.jobs.metrics
and bigskies_ops.jobs.monitoring do the work (docs/monitoring.md "Metrics")."""
from __future__ import annotations

import sys

from bigskies_ops import output
from bigskies_ops.errors import UsageError
from bigskies_ops.cli.common import INVENTORY_HELP, JSON_HELP, handles_errors, load_inventory, task


@task(help={"host": "inventory host, group, 'a,b' or 'all' (default: defaults.host, else the only host)",
            "inventory": INVENTORY_HELP,
            "json": JSON_HELP + "; the facts per host instead of the Prometheus text",
            "out": "write the Prometheus text format to this file (atomic rename; for node_exporter's textfile "
                   "collector, a name ending in .prom in its --collector.textfile.directory)",
            "serve": "serve the metrics on http://127.0.0.1:PORT/metrics until Ctrl-C; every scrape reads the "
                     "backup folders afresh"})
@handles_errors
def metrics(c, host=None, inventory=None, out=None, serve=None, json=False):
    """Backup metrics for Prometheus per host and database: newest good backup, age, size, rows, verification, offsite lag.

    Read from the manifests in the backup folders; no database login. Without --out or
    --serve the text is printed on stdout."""
    from bigskies_ops.jobs import metrics as m
    if serve is not None and (out or json):
        raise UsageError("--serve runs until stopped; it cannot be combined with --out or --json")
    inv = load_inventory(inventory)
    hosts = inv.resolve(host)
    if out:
        path = m.check_out_path(out)
        facts = m.write_textfile(hosts, path)
        if json:
            output.emit_json({"result": "changed", "host": host, "out": path, "hosts": [_lean(f) for f in facts]})
        else:
            output.result_line("changed", ",".join(h.name for h in hosts),
                               f"metrics of {len(hosts)} host(s) written to {path}")
            _unreadable(facts)
        return
    if serve is not None:
        port = int(str(serve).strip())
        serving = []

        def ready(url):
            serving.append(url)
            output.note(f"serving the backup metrics of {', '.join(h.name for h in hosts)} on {url} (Ctrl-C stops)")
        try:
            m.serve(hosts, port, ready=ready)
        finally:
            if serving:  # a port that could not be bound never served
                output.note(f"stopped serving on 127.0.0.1:{port}")
        return
    text, facts = m.exposition(hosts)
    if json:
        output.emit_json({"result": "ok", "host": host, "out": None, "hosts": [_lean(f) for f in facts]})
        return
    sys.stdout.write(text.decode())
    sys.stdout.flush()
    _unreadable(facts)


def _lean(facts: dict) -> dict:
    """The facts as --json prints them: without the per-backup ``history`` (db.list --json has it)."""
    return {k: v for k, v in facts.items() if k != "history"}


def _unreadable(facts: list[dict]) -> None:
    for f in facts:
        if not f.get("readable"):
            output.note(f"warning: {f['error']} (bigskies_backup_dir_readable 0)")


TASKS: list = [metrics]
