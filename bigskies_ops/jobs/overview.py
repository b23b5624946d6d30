"""The facts behind ``db.report``: per host and database, every backup run as a point of a
series (size, duration, status) with the size-alert band, plus the host's state and checks
exactly as ``db.health`` decides them.

Nothing here judges on its own: the state, the newest good backup and its age, the
verification and offsite facts are :func:`bigskies_ops.jobs.health.host_health`'s checks
(the clock check included, so the colour is the one ``db.health`` gives), each backup's
facts are :func:`bigskies_ops.jobs.monitoring.backup_facts` (what ``db.metrics`` exports),
and the band around each backup is health's size rule
(:func:`bigskies_ops.jobs.health.size_change`: the median of up to ``RECENT`` earlier
backups of the same format and contents, ``alerts.size_change_pct`` either side). The
series uses the same backups health judges (:func:`bigskies_ops.jobs.health.own_backups`:
the host's own backups of its database), FAILED runs and manifests whose archive is
missing included.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from bigskies_ops.archives.catalog import Backup, iso, parse_iso, utcnow
from bigskies_ops.hosts import runner_for
from bigskies_ops.inventory import Host
from bigskies_ops.jobs.health import UNKNOWN, host_health, own_backups, size_change
from bigskies_ops.jobs.monitoring import backup_facts
from bigskies_ops.jobs.schedule import next_run


@dataclass
class Point:
    """One backup run of a series: what the charts draw and the page lists."""

    id: str
    name: str
    status: str                   # DONE, FAILED, MISSING (DONE manifest, archive gone), DAMAGED, STARTED, LEGACY
    kind: str
    series: str                   # format/contents (plain/full): sizes compare only within one series
    label: str | None
    started_at: datetime | None
    bytes: int | None             # on disk; for MISSING the manifest's figure
    duration_s: float | None
    verification: str | None      # passed / failed / None (never)
    offsite: list[str]            # targets holding a copy
    error: str | None             # a FAILED run's error
    median_bytes: int | None = None   # health's size median of the earlier backups (None: too few)
    band: tuple[int, int] | None = None  # (low, high) bytes: median -/+ size_change_pct
    outside_band: bool = False    # health's rule: |change| > size_change_pct

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "status": self.status, "kind": self.kind, "series": self.series,
                "label": self.label,
                "started_at": iso(self.started_at), "bytes": self.bytes, "duration_s": self.duration_s,
                "verification": self.verification, "offsite": self.offsite, "error": self.error,
                "median_bytes": self.median_bytes, "band": list(self.band) if self.band else None,
                "outside_band": self.outside_band}


@dataclass
class HostOverview:
    """One host's part of the report: its database, state and checks (``db.health``'s),
    and its backups oldest first."""

    host: str
    database: str
    backup_dir: str
    state: str
    checks: list[dict]
    max_age_hours: float
    size_change_pct: float
    checked_at: datetime
    next_run_at: datetime | None = None   # the schedule's next firing (None: no schedule)
    points: list[Point] = field(default_factory=list)
    error: str | None = None      # the backups could not be read (state ``unknown``)

    def check(self, name: str) -> dict | None:
        return next((c for c in self.checks if c.get("check") == name), None)

    def to_json(self) -> dict:
        good = [p for p in self.points if p.status == "DONE"]
        fresh = self.check("freshness") or {}
        return {"host": self.host, "database": self.database, "backup_dir": self.backup_dir, "state": self.state,
                "checked_at": iso(self.checked_at), "next_run_at": iso(self.next_run_at), "max_age_hours": self.max_age_hours,
                "size_change_pct": self.size_change_pct, "backups": len(self.points), "good_backups": len(good),
                "failed_runs": sum(p.status == "FAILED" for p in self.points),
                "missing_archives": sum(p.status == "MISSING" for p in self.points),
                "damaged_archives": sum(p.status == "DAMAGED" for p in self.points),
                "newest_good": fresh.get("newest_good"), "newest_good_at": fresh.get("newest_good_at"),
                "age_s": fresh.get("age_s"), "error": self.error, "checks": self.checks,
                "points": [p.to_json() for p in self.points]}


def _point(b: Backup, earlier: list[Backup], limit_pct: float) -> Point:
    m = b.manifest or {}
    f = backup_facts(b)  # the same facts db.metrics exports
    size = f["bytes"] if f["bytes"] is not None else m.get("bytes")  # MISSING: the manifest's figure
    p = Point(id=f["id"], name=f["name"], status=f["status"], kind=f["kind"], series=f"{f['format']}/{f['contents']}",
              label=m.get("label"), started_at=parse_iso(f["started_at"]),
              bytes=size if b.status != "FAILED" else None, duration_s=f["duration_s"],
              verification=f["verification"], offsite=f["offsite"],
              error=(" ".join((f["error"] or "no error recorded").split()) if b.status == "FAILED" else None))
    if b.status == "DONE":
        ch = size_change(b, earlier)  # health's own rule: median of the earlier like-for-like backups
        if ch is not None:
            med, pct = ch
            p.median_bytes = med
            p.band = (int(med * (1 - limit_pct / 100)), int(med * (1 + limit_pct / 100)))
            p.outside_band = abs(pct) > limit_pct
    return p


def host_overview(host: Host, *, now: datetime | None = None) -> HostOverview:
    """``host``'s part of the report.

    Args:
        host: an inventory host (its own backups of ``postgres.database`` in ``backup.dir``).
        now: the UTC time ages are measured against (default: this machine's clock).

    Returns:
        a :class:`HostOverview`; never raises for a host whose backups cannot be read
        (``state`` is ``unknown`` and ``error`` says why, as ``db.health`` reports it).
    """
    now = now or utcnow()
    db = host.postgres.database
    base = dict(host=host.name, database=db, backup_dir=host.backup.dir, max_age_hours=host.alerts.max_age_hours,
                size_change_pct=host.alerts.size_change_pct, checked_at=now, next_run_at=next_run(host, now))
    try:
        runner = runner_for(host)
    except Exception as e:  # noqa: BLE001 - an unreachable host is a fact on the page, not a crash
        return HostOverview(state=UNKNOWN, checks=[{"check": "read", "state": UNKNOWN, "message": str(e)}],
                            error=str(e), **base)
    try:
        health = host_health(host, now=now, runner=runner)
        if health["state"] == UNKNOWN and [c["check"] for c in health["checks"]] == ["read"]:
            return HostOverview(state=UNKNOWN, checks=health["checks"], error=health["checks"][0]["message"], **base)
        backups = own_backups(host, runner=runner)
    except Exception as e:  # noqa: BLE001 - as db.health: unreadable is "unknown"
        return HostOverview(state=UNKNOWN, checks=[{"check": "read", "state": UNKNOWN, "message": str(e)}],
                            error=str(e), **base)
    finally:
        runner.close()
    backups = [b for b in backups if b.started_at is not None]
    backups.sort(key=lambda b: (b.started_at, b.name))
    limit = host.alerts.size_change_pct
    points = [_point(b, backups[:i], limit) for i, b in enumerate(backups)]
    return HostOverview(state=health["state"], checks=health["checks"], points=points, **base)
