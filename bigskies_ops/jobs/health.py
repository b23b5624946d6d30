"""``db.health``: is each host's backup policy actually working? Monitoring exit codes.

Per host and database (CONTRACTS.md section 5: 0 ok / 1 warning / 2 critical / 3 unknown):

* freshness: the newest good (DONE) backup and its age; older than
  ``alerts.max_age_hours`` (or none at all) is critical; a newer FAILED run is a warning;
* size trend: the newest good backup against the median of up to
  :data:`RECENT` earlier ones of the same format and contents (full, schema only, or
  the same tables' data excluded); more than
  ``alerts.size_change_pct`` away is a warning (needs :data:`MIN_HISTORY` earlier ones);
* verification: the newest verification of any backup; a failed one, or none in
  :data:`VERIFY_MAX_DAYS` days, is a warning (the schedule restores-tests monthly);
* offsite lag per target: how far the newest copy on the target trails the newest
  good backup; nothing copied, or more than ``alerts.max_age_hours`` behind, is a warning;
* schedule: the newest scheduled run skipped a step for safety (a protected host's
  nightly prune, recorded in its backup's manifest ``skipped_steps``): a warning with the
  command that prunes by hand;
* clock: the server's clock against this machine's; a server that cannot be reached
  leaves the skew unmeasured: ``unknown``.

The run's state is the worst one, ranked critical > unknown > warning > ok (a host we
cannot read is unknown, which must not hide another host's critical).

:func:`size_alert_after_backup` is the same size rule applied by ``db.backup`` right
after a new archive is published; it warns and sends ``health_degraded`` to the host's
notification targets (``notify.urls_env`` and ``alerts.webhook_env``: jobs.notify).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from bigskies_ops import output, report
from bigskies_ops.archives.catalog import Backup, iso, list_backups, parse_iso, utcnow
from bigskies_ops.archives.offsite_stores import parse_target
from bigskies_ops.hosts import runner_for
from bigskies_ops.inventory import Host
from bigskies_ops.jobs import notify
from bigskies_ops.pg.access import PostgresAccess
from bigskies_ops.text import human_age, human_bytes

OK, WARNING, CRITICAL, UNKNOWN = "ok", "warning", "critical", "unknown"
EXIT = {OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3}
RANK = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}
RECENT = 7            # earlier backups the size median is taken over
MIN_HISTORY = 3       # earlier backups needed before a size change is judged
VERIFY_MAX_DAYS = 35  # a verification at least this recent (the schedule runs one monthly)


def worst(states) -> str:
    states = list(states) or [OK]
    return max(states, key=lambda s: RANK[s])


@dataclass
class Check:
    name: str
    state: str
    message: str
    facts: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"check": self.name, "state": self.state, "message": self.message, **self.facts}


def contents_key(b: Backup) -> tuple[bool, tuple[str, ...]]:
    """What a backup holds, for comparing sizes like with like: ``(schema_only, sorted
    tables whose data was excluded)``; a full backup is ``(False, ())``."""
    m = b.manifest or {}
    return bool(m.get("schema_only")), tuple(sorted(m.get("excluded_table_data") or ()))


def size_change(new: Backup, earlier: list[Backup]) -> tuple[int, float] | None:
    """``(median_bytes, change_pct)`` of ``new`` against up to :data:`RECENT` earlier DONE
    backups of the same database, format and contents (:func:`contents_key`: a
    ``--schema-only`` or ``--exclude-table-data`` backup is only compared with backups
    made the same way, a full one only with full ones); None without
    :data:`MIN_HISTORY` of them."""
    key = contents_key(new)
    same = [b for b in earlier if b.status == "DONE" and b.name != new.name and b.database == new.database
            and b.format == new.format and b.size and b.started_at and new.started_at
            and b.started_at <= new.started_at and contents_key(b) == key]
    same.sort(key=lambda b: (b.started_at, b.name), reverse=True)
    same = same[:RECENT]
    if len(same) < MIN_HISTORY or not new.size:
        return None
    med = int(statistics.median(b.size for b in same))
    if med <= 0:
        return None
    return med, (new.size - med) * 100.0 / med


def size_alert_after_backup(host: Host, new: Backup, *, runner=None, task: str = "db.backup") -> str | None:
    """The size rule for a just-published backup: returns the warning text (also noted,
    :func:`bigskies_ops.report.note`, and sent as ``health_degraded``, step ``size``, to the
    host's notification targets, :mod:`bigskies_ops.jobs.notify`) or None when the size is
    within the threshold."""
    own = runner is None
    runner = runner or runner_for(host)
    try:
        earlier = list_backups(runner, new.dir)
    finally:
        if own:
            runner.close()
    ch = size_change(new, earlier)
    if ch is None:
        return None
    med, pct = ch
    limit = host.alerts.size_change_pct
    if abs(pct) <= limit:
        return None
    msg = (f"backup size changed {pct:+.0f}% ({human_bytes(new.size)} vs median {human_bytes(med)} of recent "
           f"backups; threshold {limit:g}%): {new.name}")
    report.note(f"warning: {msg}")
    notify.notify(host, "health_degraded", task=task, step="size", error=msg, database=new.database,
                  facts={"check": "size", "archive": new.name, "bytes": new.size, "median_bytes": med,
                         "change_pct": round(pct, 1), "threshold_pct": limit})
    return msg


def notify_degraded(h: dict, host: Host, task: str = "db.health") -> None:
    """Raise ``health_degraded`` for a :func:`host_health` report that is not ok, naming
    its checks that are not ok (stale, size, verification, offsite, schedule, clock)."""
    bad = [c for c in h.get("checks") or [] if c.get("state") != OK]
    if h.get("state") == OK or not bad:
        return
    notify.notify(host, "health_degraded", task=task, step=", ".join(c["check"] for c in bad),
                  error=f"{h['state']}: " + "; ".join(f"{c['check']}: {c['message']}" for c in bad),
                  database=h.get("database"), facts={"state": h["state"], "checks": [c["check"] for c in bad]})


def host_health(host: Host, *, now: datetime | None = None, runner=None) -> dict:
    """Health of ``host``'s own backups of its database. Never raises for an unreadable
    host: that is the ``unknown`` state with the reason."""
    now = now or utcnow()
    db = host.postgres.database
    out = {"host": host.name, "database": db, "checked_at": iso(now)}
    try:
        backups = own_backups(host, runner=runner)
    except Exception as e:  # noqa: BLE001 - any failure to read is "unknown", never a crash
        c = Check("read", UNKNOWN, f"cannot read the backups of {host.name}: {e}")
        return {**out, "state": UNKNOWN, "checks": [c.to_json()]}
    server_now, skew, why = server_clock(host)
    checks = backup_checks(host, backups, now, server_now=server_now)
    checks.append(_clock(host, skew, why))
    state = worst(c.state for c in checks)
    return {**out, "state": state, "checks": [c.to_json() for c in checks]}


def own_backups(host: Host, *, runner=None) -> list[Backup]:
    """The host's own backups of its database (``postgres.database``; pulled copies of
    other hosts' backups left out), newest first, read from the manifests in
    ``backup.dir`` (:func:`bigskies_ops.archives.catalog.list_backups`). No database
    connection; an SSH host's folder is read over SSH.

    Raises:
        BigskiesError, OSError: the folder cannot be read.
    """
    db = host.postgres.database
    own = runner is None
    runner = runner or runner_for(host)
    try:
        return [b for b in list_backups(runner, host.backup.dir)
                if b.database == db and (b.origin_host or host.name) == host.name]
    finally:
        if own:
            runner.close()


def backup_checks(host: Host, backups: list[Backup], now: datetime, *,
                  server_now: datetime | None = None) -> list[Check]:
    """Every check of :func:`host_health` that the manifests alone answer (freshness, size,
    verification, offsite lag per target, skipped steps, archives dated in the future),
    in that order; the clock check (a database login) is not among them. Pure: judges
    ``backups`` (:func:`own_backups`) at ``now`` (UTC); ``server_now`` (the server's clock,
    when measured) also marks archives ahead of it as in the future."""
    ahead = [b for b in backups if b.in_future(now) or (server_now is not None and b.in_future(server_now))]
    backups = [b for b in backups if b not in ahead]  # judged without them: their age would be negative
    checks = [_freshness(host, backups, now), _size(host, backups), _verification(backups, now)]
    checks += _offsite(host, backups)
    skipped = _skipped_steps(host, backups)
    if skipped is not None:
        checks.append(skipped)
    if ahead:
        checks.append(_future(ahead, now, server_now))
    return checks


def _freshness(host: Host, backups: list[Backup], now: datetime) -> Check:
    good = [b for b in backups if b.status == "DONE"]
    runs = [b for b in backups if not b.legacy and b.status in ("DONE", "FAILED", "DAMAGED")]
    newest = max(good, key=lambda b: b.started_at) if good else None
    # damaged archives newer than the newest good one: named whatever else the check says
    damaged = [b for b in runs if b.status == "DAMAGED" and b.started_at is not None
               and (newest is None or b.started_at > newest.started_at)]
    note = (f"; {len(damaged)} newer archive(s) damaged, newest {max(damaged, key=lambda b: b.started_at).name} "
            f"(size differs from its manifest)" if damaged else "")
    limit = host.alerts.max_age_hours
    if newest is None:
        return Check("freshness", CRITICAL, f"no good backup of {host.postgres.database!r} in {host.backup.dir}"
                                            + note, {"newest_good": None, "age_s": None})
    age = max(0.0, (now - newest.started_at).total_seconds())  # (a few seconds ahead: within the slack)
    facts = {"newest_good": newest.name, "newest_good_at": iso(newest.started_at), "age_s": int(age),
             "max_age_hours": limit}
    if age > limit * 3600:
        return Check("freshness", CRITICAL, f"newest good backup {newest.name} is {age / 3600:.1f} h old "
                                            f"(max {limit:g} h)" + note, facts)
    last = max(runs, key=lambda b: b.started_at) if runs else newest
    if last.status == "FAILED":
        return Check("freshness", WARNING, f"the last backup run {last.name} FAILED "
                                           f"({(last.manifest or {}).get('error', '')[:120]}); newest good one is "
                                           f"{age / 3600:.1f} h old" + note, {**facts, "last_failed": last.name})
    if last.status == "DAMAGED":
        return Check("freshness", WARNING, f"the newest backup {last.name} is damaged ({last.damage}: truncated "
                                           f"or changed); newest good one is {age / 3600:.1f} h old",
                     {**facts, "last_damaged": last.name})
    return Check("freshness", OK, f"newest good backup {newest.name} is {age / 3600:.1f} h old", facts)


def _size(host: Host, backups: list[Backup]) -> Check:
    good = sorted([b for b in backups if b.status == "DONE"], key=lambda b: b.started_at, reverse=True)
    if not good:
        return Check("size", UNKNOWN, "no good backup to judge", {})
    ch = size_change(good[0], good[1:])
    if ch is None:
        return Check("size", OK, f"{human_bytes(good[0].size)}; not enough history to judge a trend "
                                 f"(needs {MIN_HISTORY} earlier backups)", {"bytes": good[0].size})
    med, pct = ch
    facts = {"bytes": good[0].size, "median_bytes": med, "change_pct": round(pct, 1),
             "threshold_pct": host.alerts.size_change_pct}
    if abs(pct) > host.alerts.size_change_pct:
        return Check("size", WARNING, f"newest backup is {pct:+.0f}% vs the median of recent ones "
                                      f"({human_bytes(good[0].size)} vs {human_bytes(med)})", facts)
    return Check("size", OK, f"{human_bytes(good[0].size)}, {pct:+.0f}% vs median {human_bytes(med)}", facts)


def _verification(backups: list[Backup], now: datetime) -> Check:
    ver = []
    for b in backups:
        for v in (b.manifest or {}).get("verifications") or []:
            at = parse_iso(v.get("at"))
            if at:
                ver.append((at, b, v))
    if not ver:
        return Check("verification", WARNING, "no backup was ever verified (run db.verify latest --restore-test)",
                     {"last_verification": None})
    at, b, v = max(ver, key=lambda x: x[0])
    facts = {"last_verification": iso(at), "archive": b.name, "ok": bool(v.get("ok")),
             "restore_test": bool(v.get("restore_test"))}
    if not v.get("ok"):
        return Check("verification", WARNING, f"the last verification ({iso(at)}, {b.name}) FAILED: "
                                              f"{(v.get('error') or '')[:160]}", facts)
    if now - at > timedelta(days=VERIFY_MAX_DAYS):
        return Check("verification", WARNING, f"last verification was {(now - at).days} days ago", facts)
    return Check("verification", OK, f"last verification {iso(at)} of {b.name} passed", facts)


def _offsite(host: Host, backups: list[Backup]) -> list[Check]:
    good = [b for b in backups if b.status == "DONE"]
    out = []
    for item in host.offsite:
        t = parse_target(item)
        name = f"offsite {t.name}"
        if not good:
            out.append(Check(name, UNKNOWN, "no good backup to copy", {"target": t.name}))
            continue
        newest = max(good, key=lambda b: b.started_at)
        copied = [b for b in good if any(c.get("target") == t.name for c in b.manifest.get("offsite") or [])]
        if not copied:
            out.append(Check(name, WARNING, f"nothing copied to {t.name} yet", {"target": t.name, "lag_s": None}))
            continue
        last = max(copied, key=lambda b: b.started_at)
        lag = (newest.started_at - last.started_at).total_seconds()
        facts = {"target": t.name, "newest_offsite": last.name, "lag_s": int(lag)}
        if lag > host.alerts.max_age_hours * 3600:
            out.append(Check(name, WARNING, f"{t.name} trails by {lag / 3600:.1f} h (newest copy {last.name})", facts))
        else:
            out.append(Check(name, OK, f"{t.name} holds {last.name}" + (" (up to date)" if lag == 0 else
                                                                          f", {lag / 3600:.1f} h behind"), facts))
    return out


def _skipped_steps(host: Host, backups: list[Backup]) -> Check | None:
    """A warning when the newest scheduled run skipped a step for safety (its backup's
    manifest ``skipped_steps``, written by :mod:`bigskies_ops.jobs.schedule`: a protected
    host's nightly prune); None when the newest scheduled run skipped nothing (or there is
    none)."""
    runs = [b for b in backups if b.status == "DONE" and (b.manifest or {}).get("kind") == "scheduled"
            and b.started_at]
    if not runs:
        return None
    newest = max(runs, key=lambda b: b.started_at)
    skipped = (newest.manifest or {}).get("skipped_steps") or []
    if not skipped:
        return None
    steps = ", ".join(s.get("step", "?") for s in skipped)
    db = host.postgres.database
    hint = (f"prune by hand: {output.hint(f'db.prune --host {host.name} --force-protected --confirm {db}')}"
            if any(s.get("step") == "prune" for s in skipped) else "see the scheduled run's log")
    return Check("schedule", WARNING, f"the scheduled run of {iso(newest.started_at)} skipped {steps} for safety "
                                      f"(exit 4): the backup folder is not being pruned; {hint}",
                 {"skipped_steps": skipped, "archive": newest.name})


#: |server clock - this machine's clock| above which db.health warns, seconds
CLOCK_SKEW_WARN_S = 60.0


def server_clock(host: Host) -> tuple[datetime | None, float | None, str | None]:
    """The server's ``clock_timestamp()`` and its skew against this machine's clock.

    Returns:
        ``(server_now, skew_s, None)`` with ``skew_s`` = server minus this machine (the
        round trip's midpoint), or ``(None, None, reason)`` when the server cannot be
        reached (never raises: db.health reports it).
    """
    quick = replace(host, postgres=replace(host.postgres, connect_timeout=min(5, host.postgres.connect_timeout)))
    try:
        with PostgresAccess(quick) as access:
            sql = access.sql(host.postgres.database)
            t0 = time.time()
            v = sql.value("SELECT extract(epoch FROM clock_timestamp())::float8 AS epoch_s")
            t1 = time.time()
    except Exception as e:  # noqa: BLE001 - unreachable is a fact to report, not a crash
        return None, None, str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    skew = float(v) - (t0 + t1) / 2
    return datetime.fromtimestamp(float(v), timezone.utc), skew, None


def _clock(host: Host, skew: float | None, why: str | None) -> Check:
    if skew is None:  # unmeasured is not "ok": a health check that cannot reach the server must not say all is well
        return Check("clock", UNKNOWN, f"server not reachable, clock skew not measured ({why})",
                     {"skew_s": None, "error": why})
    facts = {"skew_s": round(skew, 3), "threshold_s": CLOCK_SKEW_WARN_S}
    side = "ahead of" if skew > 0 else "behind"
    if abs(skew) > CLOCK_SKEW_WARN_S:
        return Check("clock", WARNING, f"the server's clock is {abs(skew):.0f} s {side} this machine's "
                                       f"(archive times come from this machine; check NTP on both)", facts)
    return Check("clock", OK, f"server and this machine agree within {max(abs(skew), 0.001):.3f} s", facts)


def _future(ahead: list[Backup], now: datetime, server_now: datetime | None) -> Check:
    b = max(ahead, key=lambda x: x.started_at)
    names = ", ".join(x.name for x in ahead[:3]) + (" ..." if len(ahead) > 3 else "")
    msg = (f"{len(ahead)} archive(s) dated in the future ({names}; newest {iso(b.started_at)}, "
           f"{human_age(now, b.started_at)} ahead of this machine's clock"
           + (f" and {human_age(server_now, b.started_at)} of the server's" if server_now else "")
           + "): a clock is or was wrong; they are never taken as 'latest' and not counted as fresh")
    return Check("future", WARNING, msg, {"future_archives": [x.name for x in ahead]})
