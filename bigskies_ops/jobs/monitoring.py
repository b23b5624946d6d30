"""Monitoring facts per host and database, read from the backup folder's manifests.

One source for everything that watches backups from outside: ``db.metrics`` (Prometheus
text format, :mod:`bigskies_ops.jobs.metrics`), ``db.report`` (the HTML page) and
``--json`` documents. The rules (freshness limit, size alert, verification age, offsite
lag, skipped steps, archives dated in the future) are :mod:`bigskies_ops.jobs.health`'s
own (:func:`~bigskies_ops.jobs.health.backup_checks`), never restated here.

**Pure reading, no database login.** Everything comes from the manifests beside the
archives (``backup.dir``; over SSH for an SSH host) and the inventory: a metrics scrape
every 15 s must not log into production. The one health check that needs the server,
its clock skew, is therefore not part of these facts (``db.health`` has it).
"""
from __future__ import annotations

from datetime import datetime

from bigskies_ops.archives.catalog import Backup, iso, parse_iso, utcnow
from bigskies_ops.inventory import Host
from bigskies_ops.jobs.health import EXIT, backup_checks, own_backups, worst
from bigskies_ops.jobs.schedule import next_run

#: statuses of a run that did not leave a good backup: FAILED (the run failed), MISSING
#: (a DONE manifest whose archive file is gone), DAMAGED (its size differs from the
#: manifest's), STARTED (running now, or killed)
BAD_STATUSES = ("FAILED", "MISSING", "DAMAGED", "STARTED")


def _rows(b: Backup) -> int | None:
    """Sum of the manifest's exact per-table row counts (tables whose data is not in the
    archive count as none); None when the manifest has no counts."""
    tables = (b.manifest or {}).get("tables")
    if not tables:
        return None
    counts = [t.get("rows") for t in tables if isinstance(t, dict) and t.get("rows") is not None]
    return sum(counts) if counts else None


def backup_facts(b: Backup) -> dict:
    """One backup as the monitoring facts list it (times UTC ISO-8601, bytes, seconds):
    ``name``, ``id``, ``status``, ``kind``, ``format``, ``contents``, ``started_at``,
    ``finished_at``, ``duration_s``, ``bytes`` (the archive on disk; None when absent),
    ``rows``, ``tables``, ``verification`` (``passed``/``failed``/None: its newest),
    ``verified_at``, ``offsite`` (target names holding a copy), ``error`` (a FAILED run's)."""
    m = b.manifest or {}
    vs = m.get("verifications") or []
    return {"name": b.name, "id": b.id, "status": b.status, "kind": b.kind, "format": b.format,
            "contents": b.contents, "started_at": iso(b.started_at), "finished_at": m.get("finished_at"),
            "duration_s": m.get("duration_s"), "bytes": b.size, "rows": _rows(b),
            "tables": len(m.get("tables") or []) or None, "verification": b.verification,
            "verified_at": vs[-1].get("at") if vs else None,
            "offsite": sorted({c.get("target") for c in m.get("offsite") or [] if c.get("target")}),
            "error": (m.get("error") or "")[:300] or None if b.status == "FAILED" else None}


def host_facts(host: Host, *, now: datetime | None = None, runner=None) -> dict:
    """The monitoring facts of ``host``'s own backups of its database, from the manifests
    alone (no database connection; see the module docstring).

    Args:
        host: the inventory host.
        now: the time to judge ages at (UTC; default: this machine's clock).
        runner: an open runner for the host (default: one is opened and closed here).

    Returns:
        A dict (times UTC ISO-8601, sizes bytes, durations seconds):
        ``host``, ``database``, ``collected_at``, ``dir``;
        ``readable`` (False when the folder could not be read: ``error`` says why, and
        the backup facts are absent);
        ``present`` (a good (DONE, archive on disk) backup exists);
        ``newest_good`` (:func:`backup_facts` of the newest good backup, or None) and,
        lifted from it, ``last_success_at`` (its UTC start: the data is as of its
        snapshot), ``age_s``, ``duration_s``, ``bytes``, ``rows``;
        ``max_age_s`` (``alerts.max_age_hours``: the freshness limit db.health applies);
        ``verification``: the newest verification of any backup (db.health's rule:
        the monthly restore test proves the pipeline) as ``{"at", "ok", "archive",
        "restore_test"}``, or None when none was ever verified;
        ``offsite``: per inventory target ``{"target", "lag_s", "newest_offsite"}``
        (``lag_s`` None when nothing was copied yet);
        ``counts``: backups in the folder per status (``DONE``, ``FAILED``,
        ``MISSING``, ``DAMAGED``, ``STARTED``, ``LEGACY``); ``failures`` (FAILED + MISSING + DAMAGED);
        ``last_run`` (the newest finished run: ``{"name", "status", "at"}``) and
        ``last_failure_at``;
        ``schedule`` (the cron expression) and ``next_run_at`` (when it fires next,
        :func:`bigskies_ops.jobs.schedule.next_run`; None if never);
        ``state`` and ``checks``: db.health's checks that the manifests answer
        (:func:`~bigskies_ops.jobs.health.backup_checks`: ok/warning/critical/unknown);
        ``history``: :func:`backup_facts` of every backup, oldest first (for charts).

    Never raises for an unreadable folder (that is ``readable: False``).
    """
    now = now or utcnow()
    nxt = next_run(host, now)
    out = {"host": host.name, "database": host.postgres.database, "collected_at": iso(now),
           "dir": host.backup.dir, "schedule": host.schedule, "next_run_at": iso(nxt),
           "max_age_s": int(host.alerts.max_age_hours * 3600)}
    try:
        backups = own_backups(host, runner=runner)
        checks = backup_checks(host, backups, now)
    except Exception as e:  # noqa: BLE001 - an unreadable folder is a fact to export, never a crash
        msg = " ".join(str(e).split())[:300] or type(e).__name__
        return {**out, "readable": False, "error": f"cannot read the backups of {host.name}: {msg}",
                "present": False, "state": "unknown", "checks": [], "history": []}
    by_name = {c.name: c for c in checks}
    good = [b for b in backups if b.status == "DONE" and b.started_at and not b.in_future(now)]
    newest = max(good, key=lambda b: b.started_at) if good else None
    nf = backup_facts(newest) if newest else None
    counts = {s: 0 for s in ("DONE", "FAILED", "MISSING", "DAMAGED", "STARTED", "LEGACY")}
    for b in backups:
        counts[b.status] = counts.get(b.status, 0) + 1
    runs = [b for b in backups if not b.legacy and b.status in ("DONE", "FAILED", "MISSING", "DAMAGED") and b.started_at]
    last = max(runs, key=lambda b: b.started_at) if runs else None
    fails = [b for b in backups if b.status in ("FAILED", "MISSING", "DAMAGED") and b.started_at]
    ver = by_name["verification"].facts
    offsite = [{"target": c.facts.get("target"), "lag_s": c.facts.get("lag_s"),
                "newest_offsite": c.facts.get("newest_offsite")}
               for c in checks if c.name.startswith("offsite ")]
    return {
        **out, "readable": True, "error": None, "present": newest is not None, "newest_good": nf,
        "last_success_at": nf["started_at"] if nf else None,
        "age_s": by_name["freshness"].facts.get("age_s"),
        "duration_s": nf["duration_s"] if nf else None, "bytes": nf["bytes"] if nf else None,
        "rows": nf["rows"] if nf else None,
        "verification": ({"at": ver["last_verification"], "ok": ver["ok"], "archive": ver["archive"],
                          "restore_test": ver["restore_test"]} if ver.get("last_verification") else None),
        "offsite": offsite, "counts": counts, "failures": counts["FAILED"] + counts["MISSING"] + counts["DAMAGED"],
        "last_run": {"name": last.name, "status": last.status, "at": iso(last.started_at)} if last else None,
        "last_failure_at": iso(max(b.started_at for b in fails)) if fails else None,
        "state": worst(c.state for c in checks), "checks": [c.to_json() for c in checks],
        "history": [backup_facts(b) for b in sorted(backups, key=lambda b: (b.started_at or now, b.name))],
    }


def fleet_facts(hosts: list[Host], *, now: datetime | None = None) -> list[dict]:
    """:func:`host_facts` of each host, in the given order, judged at one ``now``."""
    now = now or utcnow()
    return [host_facts(h, now=now) for h in hosts]


def seconds(ts: str | None) -> float | None:
    """A facts time (UTC ISO-8601) as Unix seconds; None stays None."""
    dt = parse_iso(ts)
    return dt.timestamp() if dt else None


#: a check's state as a number, for a gauge: ok 0, warning 1, critical 2, unknown 3
#: (db.health's monitoring exit codes)
STATE_VALUE = dict(EXIT)
