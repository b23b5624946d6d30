"""``db.metrics``: the monitoring facts in the Prometheus text format (prometheus-client).

Three ways out, one set of metrics (docs/monitoring.md "Metrics" lists each one):

* :func:`write_textfile`: a ``*.prom`` file for node_exporter's textfile collector,
  written by prometheus-client's ``write_to_textfile`` (a temporary file in the same
  folder, then ``rename(2)``: node_exporter never reads half a file, and the temporary
  name, ``FILE.prom.<pid>.<thread>``, does not end in ``.prom`` so it is never collected);
* :func:`serve`: an HTTP endpoint on 127.0.0.1 whose every scrape reads the manifests
  afresh (prometheus-client's WSGI server, threads);
* :func:`exposition`: the text itself (``db.metrics`` without ``--out``).

The facts come from :func:`bigskies_ops.jobs.monitoring.host_facts`: the manifests alone,
no database login (a scrape every 15 s must not log into production). Every metric is a
gauge labelled ``host`` and ``database``; a fact that does not exist (no good backup yet,
never verified, nothing copied offsite) leaves its sample out rather than inventing a 0,
and ``bigskies_backup_present`` says whether there is a good backup at all.

prometheus-client is imported here only, and this module only by ``db.metrics`` and by
a scheduled run whose inventory names a textfile: a plain ``db.backup`` never pays for it.
"""
from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from typing import Callable, Iterable

from bigskies_ops import report
from bigskies_ops.archives.catalog import utcnow
from bigskies_ops.errors import StorageError, UsageError
from bigskies_ops.inventory import Host, Inventory
from bigskies_ops.jobs.monitoring import STATE_VALUE, fleet_facts, seconds

PREFIX = "bigskies_backup_"

#: name (without :data:`PREFIX`) -> (help text, extra label names). Order is the file's order.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "present": ("1 when the backup folder holds a good (DONE, archive on disk) backup of the database, else 0", ()),
    "dir_readable": ("1 when the backup folder could be read, else 0 (the other facts of the host are then absent)",
                     ()),
    "last_success_timestamp_seconds": ("UTC start (Unix seconds) of the newest good backup: its data is as of then",
                                       ()),
    "age_seconds": ("Seconds since the newest good backup started (db.health's freshness age)", ()),
    "max_age_seconds": ("The freshness limit alerts.max_age_hours in seconds: db.health is critical above it", ()),
    "duration_seconds": ("Seconds the newest good backup took, from its manifest", ()),
    "size_bytes": ("Size in bytes of the newest good backup's archive on disk", ()),
    "rows": ("Rows in the newest good backup: the sum of the manifest's exact per-table counts", ()),
    "verified": ("1 when the newest verification of any of the database's backups passed, 0 when it failed or "
                 "none was ever made", ()),
    "verified_timestamp_seconds": ("UTC time (Unix seconds) of the newest verification of any backup", ()),
    "offsite_lag_seconds": ("Seconds the newest copy on an offsite target trails the newest good backup "
                            "(absent while nothing was copied)", ("target",)),
    "failures": ("Backup runs in the folder that left no good backup: FAILED manifests, and DONE manifests whose "
                 "archive is missing or damaged (a gauge: pruning lowers it)", ()),
    "archives": ("Entries of the backup folder of this database, by status (DONE, FAILED, MISSING, DAMAGED, STARTED, LEGACY)",
                 ("status",)),
    "last_failure_timestamp_seconds": ("UTC start (Unix seconds) of the newest FAILED, MISSING or DAMAGED run", ()),
    "next_run_timestamp_seconds": ("When the host's schedule (cron, this machine's local time) fires next, Unix "
                                   "seconds", ()),
    "check_state": ("db.health's verdict per check the manifests answer: 0 ok, 1 warning, 2 critical, 3 unknown",
                    ("check",)),
    "state": ("The worst check_state of the host's database: 0 ok, 1 warning, 2 critical, 3 unknown", ()),
}
COLLECTED = "bigskies_metrics_collected_timestamp_seconds"


def samples(facts: dict) -> Iterable[tuple[str, dict, float]]:
    """``(metric name without prefix, extra labels, value)`` for one host's facts (pure)."""
    def some(name, value, **labels):
        return [] if value is None else [(name, labels, float(value))]

    out = some("dir_readable", 1 if facts.get("readable") else 0)
    if not facts.get("readable"):
        out += some("state", STATE_VALUE["unknown"])
        out += some("next_run_timestamp_seconds", seconds(facts.get("next_run_at")))
        out += some("max_age_seconds", facts.get("max_age_s"))
        return out
    ver = facts.get("verification")
    out += some("present", 1 if facts["present"] else 0)
    out += some("last_success_timestamp_seconds", seconds(facts.get("last_success_at")))
    out += some("age_seconds", facts.get("age_s"))
    out += some("max_age_seconds", facts.get("max_age_s"))
    out += some("duration_seconds", facts.get("duration_s"))
    out += some("size_bytes", facts.get("bytes"))
    out += some("rows", facts.get("rows"))
    out += some("verified", 1 if ver and ver.get("ok") else 0)
    out += some("verified_timestamp_seconds", seconds(ver.get("at")) if ver else None)
    for o in facts.get("offsite") or []:
        out += some("offsite_lag_seconds", o.get("lag_s"), target=o.get("target") or "?")
    out += some("failures", facts.get("failures"))
    for status, n in sorted((facts.get("counts") or {}).items()):
        out += some("archives", n, status=status)
    out += some("last_failure_timestamp_seconds", seconds(facts.get("last_failure_at")))
    out += some("next_run_timestamp_seconds", seconds(facts.get("next_run_at")))
    for c in facts.get("checks") or []:
        out += some("check_state", STATE_VALUE.get(c.get("state"), 3), check=c.get("check"))
    out += some("state", STATE_VALUE.get(facts.get("state"), 3))
    return out


class BackupCollector:
    """A prometheus-client collector: every ``collect()`` (a scrape, or a textfile write)
    reads the facts of ``hosts()`` afresh (:func:`bigskies_ops.jobs.monitoring.fleet_facts`)."""

    def __init__(self, hosts: Callable[[], list[Host]], now: Callable[[], datetime] = utcnow):
        self.hosts = hosts
        self.now = now
        self.last_facts: list[dict] = []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        now = self.now()
        facts = fleet_facts(self.hosts(), now=now)
        self.last_facts = facts
        fams = {name: GaugeMetricFamily(PREFIX + name, text, labels=["host", "database", *extra])
                for name, (text, extra) in METRICS.items()}
        for f in facts:
            for name, labels, value in samples(f):
                extra = METRICS[name][1]
                fams[name].add_metric([f["host"], f["database"], *(str(labels[k]) for k in extra)], value)
        for fam in fams.values():
            if fam.samples:
                yield fam
        yield GaugeMetricFamily(COLLECTED, "When bigskies-ops read the backup folders for these metrics, Unix seconds",
                                value=now.timestamp())


def registry(hosts: Callable[[], list[Host]], now: Callable[[], datetime] = utcnow):
    """A fresh ``CollectorRegistry`` holding only a :class:`BackupCollector` (no process
    or platform metrics: the textfile must hold only what belongs to the backups)."""
    from prometheus_client import CollectorRegistry
    reg = CollectorRegistry(auto_describe=False)
    col = BackupCollector(hosts, now)
    reg.register(col)
    return reg, col


def exposition(hosts: list[Host]) -> tuple[bytes, list[dict]]:
    """The Prometheus text format of ``hosts``' facts, and the facts themselves."""
    from prometheus_client import generate_latest
    reg, col = registry(lambda: hosts)
    return generate_latest(reg), col.last_facts


def check_out_path(path: str, what: str = "--out") -> str:
    """``--out``'s path (or the inventory's ``metrics.textfile``, named by ``what`` in the
    messages), absolute, checked before anything is read. node_exporter's textfile
    collector reads only ``*.prom`` files (its documentation), so any other name is refused.

    Raises:
        UsageError: (exit 2) the name does not end in ``.prom``, its folder does not exist or
            is not a folder, or the path is a folder.
    """
    p = os.path.abspath(os.path.expanduser(path))
    folder = os.path.dirname(p)
    if os.path.isdir(p):
        raise UsageError(f"{what} {path}: is a folder; give a file name ending in .prom")
    if not p.endswith(".prom"):
        raise UsageError(f"{what} {path}: node_exporter's textfile collector reads only *.prom files; "
                         f"give a name ending in .prom; nothing was written")
    if not os.path.isdir(folder):
        raise UsageError(f"{what} {path}: the folder {folder} does not exist (create it, or point it into "
                         f"node_exporter's --collector.textfile.directory); nothing was written")
    return p


def write_textfile(hosts: list[Host], path: str, what: str = "--out") -> list[dict]:
    """Write the metrics of ``hosts`` to ``path`` atomically (see the module docstring).

    Returns:
        The facts written (:func:`bigskies_ops.jobs.monitoring.host_facts` per host).

    Raises:
        UsageError: the folder does not exist (:func:`check_out_path`; exit 2).
        StorageError: the file could not be written (permissions, full disk; exit 1). No
            partial file is left: the temporary one is removed, the old file stays whole.
    """
    from prometheus_client import write_to_textfile
    p = check_out_path(path, what)
    reg, col = registry(lambda: hosts)
    try:
        write_to_textfile(p, reg)
    except OSError as e:
        raise StorageError(f"cannot write the metrics file {p}: {e.strerror or e}") from None
    return col.last_facts


def refresh_textfile(inv: Inventory, host: Host) -> str | None:
    """After a scheduled run of ``host``: rewrite its ``metrics.textfile`` with the facts
    of every inventory host that names the same file (one file per node_exporter serves
    several hosts). Never raises: a failure is one ``warning:`` line (the run's own result
    and exit code do not change; docs/monitoring.md).

    Returns:
        The path written, or None (no textfile configured, or the write failed).
    """
    path = host.metrics.textfile
    if not path:
        return None
    hosts = [h for h in inv.hosts.values() if h.metrics.textfile == path]
    try:
        write_textfile(hosts, path, what=f"{host.name}: metrics.textfile")
    except Exception as e:  # noqa: BLE001 - a metrics write never fails the job it follows
        report.note(f"warning: metrics textfile not refreshed: {e}")
        return None
    return path


def serve(hosts: list[Host], port: int, *, addr: str = "127.0.0.1", ready: Callable[[str], None] | None = None,
          stop: threading.Event | None = None) -> None:
    """Serve the metrics on ``http://addr:port/metrics`` (any path answers) until
    interrupted (SIGINT/SIGTERM: :class:`~bigskies_ops.errors.Interrupted` propagates after
    the server is shut down) or ``stop`` is set. Each scrape reads the manifests afresh.

    Raises:
        UsageError: the port is taken or cannot be bound (exit 2).
    """
    from prometheus_client import start_http_server
    reg, _ = registry(lambda: hosts)
    try:
        server, thread = start_http_server(port, addr=addr, registry=reg)
    except OSError as e:
        raise UsageError(f"--serve {port}: cannot listen on {addr}:{port}: {e.strerror or e}") from None
    try:
        if ready:
            ready(f"http://{addr}:{port}/metrics")
        stop = stop or threading.Event()
        while not stop.is_set():
            time.sleep(0.2)  # short sleeps: the signal handler raises in this (main) thread
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
