"""``db.schedule``: one managed crontab block keeps a host's whole backup policy.

The block (on the control machine, where ``bigskies-ops`` runs) is marked
``# BEGIN bigskies-ops <host>`` ... ``# END bigskies-ops <host>`` and holds two lines:

* at the host's ``schedule`` (cron expression, default ``0 2 * * *``, system time):
  ``db.scheduled-run``: backup (kind ``scheduled``), then prune, then offsite;
* monthly, on the 1st one hour after the daily run: ``db.scheduled-run --monthly``,
  the guide's test restore (``db.verify latest --restore-test``).

Each line calls the virtualenv's Python by its absolute path with ``-m bigskies_ops``
and the inventory by its absolute path, so it works under cron's bare environment
(no PATH, no virtualenv, HOME as the working directory); output is appended to a
log file. Runs of one host never overlap: a scheduled run holds a lock in the log
folder; a daily run that finds it held reports ``skipped`` and exits 1, the monthly
run waits for it (up to 6 hours).

Exit codes of a run: 0 every step done, 1 a step failed, 4
(:data:`EXIT_SKIPPED_FOR_SAFETY`) the backup was made but a step was skipped for safety:
a protected host whose cron line was installed without ``--force-protected --confirm``
is never pruned by it. That skip is recorded in the new backup's manifest
(``skipped_steps``) and ``db.health`` warns about it, so the backup folder does not fill
up quietly.

Converging is idempotent: ``ok`` when the crontab already holds exactly this block,
``changed`` otherwise; ``--check`` only says which. The crontab is read and written
with the ``crontab`` command, or, when a crontab FILE is given (``--crontab-file`` or
``$BIGSKIES_CRONTAB_FILE``, used by tests), that file.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bigskies_ops import report
from bigskies_ops.archives.catalog import iso, utcnow
from bigskies_ops.errors import BigskiesError, CommandError, LockBusyError, UsageError
from bigskies_ops.cron import cron_field_values, cron_fields
from bigskies_ops.inventory import Host, Inventory
from bigskies_ops.jobs import notify

CRONTAB_FILE_ENV = "BIGSKIES_CRONTAB_FILE"
MONTHLY_WAIT_S = 6 * 3600


def begin_marker(host: str) -> str:
    return f"# BEGIN bigskies-ops {host} (managed by db.schedule; changes inside are overwritten)"


def end_marker(host: str) -> str:
    return f"# END bigskies-ops {host}"


def check_expression(expr: str, where: str) -> list[str]:
    """Split a 5-field cron expression (or an ``@daily``-style macro): the inventory's own
    rule (:func:`bigskies_ops.inventory.cron_fields`), so ``inventory.check`` refuses what
    ``db.schedule`` would.

    Raises:
        InventoryError: (exit 2) anything else, naming ``where``.
    """
    return cron_fields(expr, where)


def monthly_expression(daily: str) -> str:
    """The monthly test restore: the 1st of the month, one hour after the daily run
    (03:00 when the daily time is not a plain minute and hour)."""
    parts = daily.split()
    if len(parts) == 5 and parts[0].isdigit() and parts[1].isdigit():
        return f"{int(parts[0])} {(int(parts[1]) + 1) % 24} 1 * *"
    return "0 3 1 * *"


def default_log(inv: Inventory, host: Host) -> str:
    return str(inv.base_dir / "logs" / f"bigskies-ops-{host.name}.log")


def command(inv: Inventory, host: Host, log: str, *, monthly: bool = False, protected_ok: bool = False) -> str:
    """The shell command of one cron line: absolute interpreter, absolute inventory, log appended.

    Raises:
        UsageError: a path holding ``%`` (cron turns it into a newline).
    """
    argv = [os.path.abspath(sys.executable), "-m", "bigskies_ops", "db.scheduled-run", "--host", host.name,
            "-i", str(Path(inv.path).resolve()), "--log", os.path.abspath(log)]
    if monthly:
        argv.append("--monthly")
    if protected_ok:
        argv += ["--force-protected", "--confirm", host.postgres.database]
    line = shlex.join(argv) + " >> " + shlex.quote(os.path.abspath(log)) + " 2>&1"
    if "%" in line:
        raise UsageError(f"a path in the cron line contains '%', which cron turns into a newline: {line}")
    return line


def block(inv: Inventory, host: Host, log: str, *, protected_ok: bool = False) -> list[str]:
    daily = " ".join(check_expression(host.schedule, f"hosts.{host.name}.schedule"))
    return [begin_marker(host.name),
            f"{daily} {command(inv, host, log, protected_ok=protected_ok)}",
            f"{monthly_expression(daily)} {command(inv, host, log, monthly=True, protected_ok=protected_ok)}",
            end_marker(host.name)]


def replace_block(text: str, host: str, lines: list[str] | None) -> str:
    """``text`` with the host's marked block replaced by ``lines`` (appended when absent,
    removed when ``lines`` is None). Everything outside the block is kept byte for byte."""
    src = text.splitlines()
    out: list[str] = []
    i = 0
    placed = False
    begin = f"# BEGIN bigskies-ops {host} "
    while i < len(src):
        ln = src[i]
        if ln.startswith(begin) or ln == begin.rstrip():
            j = i
            while j < len(src) and src[j] != end_marker(host):
                j += 1
            i = j + 1
            if lines is not None and not placed:
                out += lines
                placed = True
            continue
        out.append(ln)
        i += 1
    if lines is not None and not placed:
        if out and out[-1].strip():
            out.append("")
        out += lines
    return ("\n".join(out) + "\n") if out else ""


class Crontab:
    """Read/write the user's crontab with the ``crontab`` command, or a file."""

    def __init__(self, path: str | None = None):
        self.path = path or os.environ.get(CRONTAB_FILE_ENV) or None

    def read(self) -> str:
        if self.path:
            try:
                return Path(self.path).read_text()
            except FileNotFoundError:
                return ""
        try:
            r = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
        except FileNotFoundError:
            raise CommandError("the crontab command is not installed (Debian: apt-get install cron)") from None
        if r.returncode != 0:
            if "no crontab" in r.stderr.lower():
                return ""
            raise CommandError(f"crontab -l failed: {r.stderr.strip()}")
        return r.stdout

    def write(self, text: str) -> None:
        if self.path:
            tmp = self.path + ".tmp"
            Path(tmp).write_text(text)
            os.replace(tmp, self.path)
            return
        r = subprocess.run(["crontab", "-"], input=text, capture_output=True, text=True)
        if r.returncode != 0:
            raise CommandError(f"crontab - failed: {r.stderr.strip()}")


def current_block(text: str, host: str) -> list[str]:
    """The host's marked block as the crontab holds it now (markers included; [] when
    absent): what :func:`replace_block` would replace (pure)."""
    src = text.splitlines()
    begin = f"# BEGIN bigskies-ops {host} "
    for i, ln in enumerate(src):
        if ln.startswith(begin) or ln == begin.rstrip():
            j = i
            while j < len(src) and src[j] != end_marker(host):
                j += 1
            return src[i:j + 1]
    return []


@dataclass
class ScheduleResult:
    host: str
    changed: bool
    lines: list[str]
    removed: bool = False
    warnings: list[str] = field(default_factory=list)
    #: the host's block as the crontab held it before (markers included; [] when none)
    before: list[str] = field(default_factory=list)
    #: where the block lives: the crontab file, or ``crontab -l`` (the user's crontab)
    where: str = "crontab -l"


def converge(inv: Inventory, host: Host, *, remove: bool = False, check: bool = False, crontab_file: str | None = None,
             log: str | None = None, protected_ok: bool = False) -> ScheduleResult:
    """Make the crontab hold exactly this host's block (or none with ``remove``)."""
    log = log or default_log(inv, host)
    lines = None if remove else block(inv, host, log, protected_ok=protected_ok)
    ct = Crontab(crontab_file)
    cur = ct.read()
    new = replace_block(cur, host.name, lines)
    res = ScheduleResult(host.name, new != cur, lines or [], removed=remove, before=current_block(cur, host.name),
                         where=ct.path or "crontab -l")
    if not remove and host.postgres.password_env and not host.container and not host.postgres.passfile:
        res.warnings.append(f"cron runs without your environment: {host.postgres.password_env} will not be set "
                            f"there; give hosts.{host.name}.postgres a passfile for scheduled runs")
    names = [v for _, v in notify.targets(host)] + ([host.heartbeat.url_env] if host.heartbeat.url_env else [])
    if not remove and names:
        res.warnings.append(f"cron runs without your environment: set {', '.join(names)} in the crontab (NAME=value "
                            f"lines above the block) or cron's environment, else the notifications and heartbeats "
                            f"of the scheduled runs are not sent (docs/monitoring.md)")
    if res.changed and not check:
        if not remove:
            Path(log).parent.mkdir(parents=True, exist_ok=True)
        ct.write(new)
    return res


# ------------------------------------------------------------------ the run cron starts
#: exit code of a scheduled run whose main job (the backup) succeeded but that skipped a
#: step for safety (a protected host's prune); CONTRACTS.md section 5, docs/cli.md "Exit codes"
EXIT_SKIPPED_FOR_SAFETY = 4


@dataclass
class Step:
    name: str
    word: str          # ok | changed | failed | skipped
    reason: str
    #: skipped for safety (not for lack of work): the run exits :data:`EXIT_SKIPPED_FOR_SAFETY`
    #: and the skip is recorded in the new backup's manifest (``skipped_steps``) for db.health
    safety: bool = False


def exit_code(steps: list[Step]) -> int:
    """A scheduled run's exit code: 1 when a step failed, else
    :data:`EXIT_SKIPPED_FOR_SAFETY` when one was skipped for safety, else 0."""
    if any(s.word == "failed" for s in steps):
        return 1
    if any(s.word == "skipped" and s.safety for s in steps):
        return EXIT_SKIPPED_FOR_SAFETY
    return 0


def _schedule_lock(inv: Inventory, host: Host, log: str | None, task: str, wait_s: float):
    from bigskies_ops.archives.locks import host_lock
    from bigskies_ops.hosts.local import LocalRunner
    d = str(Path(log or default_log(inv, host)).parent)
    deadline = time.monotonic() + wait_s
    while True:
        cm = host_lock(LocalRunner(), d, host.name, f"schedule-{host.name}", task)
        try:
            cm.__enter__()
            return cm
        except LockBusyError as e:
            if time.monotonic() >= deadline:
                raise LockBusyError(f"another scheduled run of {host.name} is still running: {e}; this run is "
                                    f"skipped (runs never overlap)") from None
            time.sleep(min(10.0, max(0.5, deadline - time.monotonic())))


def scheduled_run(inv: Inventory, host: Host, *, monthly: bool = False, wait_s: float | None = None,
                  log: str | None = None, protected_ok: bool = False) -> list[Step]:
    """What a cron line runs: daily backup -> prune -> offsite, or the monthly restore test.

    Holds the host's schedule lock for the whole run. Each step's failure is reported
    and later steps still run where that is safe (prune never runs after a failed
    backup; offsite copies whatever is there, so a target that was down catches up).

    Raises:
        LockBusyError: another scheduled run of this host holds the lock (daily: at once;
            monthly: after waiting up to 6 hours).
    """
    report.say(f"=== bigskies-ops scheduled {'monthly restore test' if monthly else 'run'} of {host.name} "
               f"at {iso(utcnow())} (pid {os.getpid()}) ===")
    wait = (MONTHLY_WAIT_S if monthly else 0.0) if wait_s is None else wait_s
    cm = _schedule_lock(inv, host, log, "db.scheduled-run", wait)
    steps: list[Step] = []
    try:
        if monthly:
            steps.append(_verify_step(host))
        else:
            b, res = _backup_step(host)
            steps.append(b)
            if b.word == "failed":
                steps.append(Step("prune", "skipped", "the backup failed; nothing is pruned after a failed backup"))
            else:
                steps.append(_prune_step(host, protected_ok))
                _record_skips(host, res, [s for s in steps if s.word == "skipped" and s.safety])
                for s in steps:
                    if s.word == "skipped" and s.safety:
                        notify.notify(host, "prune_skipped", task="db.scheduled-run", step=s.name, error=s.reason,
                                      hint=hand_prune_command(host))
            if host.offsite:
                steps += _offsite_steps(inv, host)
            else:
                steps.append(Step("offsite", "skipped", "no offsite targets configured"))
    finally:
        cm.__exit__(None, None, None)
    for s in steps:
        report.say(f"{s.word}: [{host.name}] {s.name}: {s.reason}")
    return steps


def _backup_step(host: Host):
    """``(Step, BackupResult or None)``."""
    from bigskies_ops.jobs.backup import backup
    try:
        res = backup(host, kind="scheduled", task="db.scheduled-run")
    except BigskiesError as e:
        return Step("backup", "failed", str(e)), None
    extra = f" (warning: {'; '.join(res.warnings)})" if res.warnings else ""
    return Step("backup", "changed", f"{res.backup.name} written, {res.manifest.get('bytes')} bytes{extra}"), res


def _record_skips(host: Host, res, skipped: list[Step]) -> None:
    """Write the steps skipped for safety into the new backup's manifest
    (``skipped_steps``: ``[{"step", "reason", "at"}]``), where ``db.health`` reads them
    (:func:`bigskies_ops.jobs.health.host_health`). A failure to write is only noted:
    the exit code still tells."""
    if not skipped or res is None:
        return
    from bigskies_ops.archives.catalog import read_manifest, write_manifest
    from bigskies_ops.hosts import runner_for
    try:
        with runner_for(host) as runner:
            m = read_manifest(runner, res.backup.path) or dict(res.manifest)
            m["skipped_steps"] = [{"step": s.name, "reason": s.reason, "at": iso(utcnow())} for s in skipped]
            write_manifest(runner, res.backup.path, m)
    except (BigskiesError, OSError) as e:
        report.note(f"warning: could not record the skipped step(s) in {res.backup.name}'s manifest: {e}")


def hand_prune_command(host: Host) -> str:
    """The command that prunes a protected host by hand (what its nightly run skipped)."""
    from bigskies_ops import output
    return output.hint(f"db.prune --host {host.name} --force-protected --confirm {host.postgres.database}")


def _prune_step(host: Host, protected_ok: bool) -> Step:
    from bigskies_ops.jobs.retention import PruneRefused, prune
    if host.protected and not protected_ok:
        return Step("prune", "skipped", f"{host.name} is protected and this cron line was installed without "
                                        f"--force-protected --confirm {host.postgres.database}: nothing was "
                                        f"pruned, the backup folder grows. Prune by hand "
                                        f"({hand_prune_command(host)}), or let the schedule prune "
                                        f"(db.schedule --host {host.name} --force-protected --confirm "
                                        f"{host.postgres.database})", safety=True)
    try:
        r = prune(host, task="db.scheduled-run")
    except PruneRefused as e:
        return Step("prune", "failed", str(e))
    except BigskiesError as e:
        return Step("prune", "failed", str(e))
    if r.deleted:
        return Step("prune", "changed", f"pruned {len(r.plan.prune)} backup(s), kept {len(r.plan.keep)}")
    return Step("prune", "ok", f"nothing to prune, kept {len(r.plan.keep)}")


def _offsite_steps(inv: Inventory, host: Host) -> list[Step]:
    from bigskies_ops.jobs.offsite import upload
    try:
        results = upload(host, inv=inv, task="db.scheduled-run")
    except BigskiesError as e:
        return [Step("offsite", "failed", str(e))]
    out = []
    for r in results:
        if r.error:
            out.append(Step(f"offsite {r.target}", "failed", r.failure()))
        elif r.uploaded or r.pruned:
            out.append(Step(f"offsite {r.target}", "changed", f"copied and verified {len(r.uploaded)}, "
                                                              f"pruned {len(r.pruned)} on the target"))
        else:
            out.append(Step(f"offsite {r.target}", "ok", f"{r.already} backup(s) already there"))
    return out


def _verify_step(host: Host) -> Step:
    from bigskies_ops.hosts import runner_for
    from bigskies_ops.jobs.verify import select, verify_backup
    try:
        with runner_for(host) as runner:
            [b] = select(host, runner, "latest", False)
    except BigskiesError as e:  # nothing to test is a failure of the monthly run (verify_backup raises its own)
        notify.notify(host, "verify_failed", task="db.scheduled-run", step="verify latest --restore-test",
                      error=str(e))
        return Step("verify latest --restore-test", "failed", str(e))
    try:
        r = verify_backup(host, b, restore_test=True, task="db.scheduled-run")
    except BigskiesError as e:
        return Step("verify latest --restore-test", "failed", str(e))
    if not r.ok:
        return Step("verify latest --restore-test", "failed", f"{r.name}: {r.error}")
    return Step("verify latest --restore-test", "ok",
                f"{r.name}: {', '.join(r.checks)}; {r.restore_test['tables_checked']} tables match the manifest")


# ------------------------------------------------------------------ when cron fires next
_MACRO_FIELDS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
                 "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}


def _cron_values(text: str, i: int) -> set[int]:
    """The values one cron field allows: the inventory's rule
    (:func:`bigskies_ops.inventory.cron_field_values`, crontab(5))."""
    return cron_field_values(text, i)


def next_fire(expr: str, after: datetime) -> datetime | None:
    """The first minute strictly after ``after`` (a naive wall-clock time, as cron reads the
    system clock) at which the cron expression ``expr`` fires; None when it never does
    within 5 years (``0 0 30 2 *``). Pure. Day of month and day of week: when both are
    restricted (neither starts with ``*``) either one matching is enough (crontab(5)).

    Raises:
        ValueError: a field that :func:`bigskies_ops.inventory.cron_fields` let through but
            that holds no valid value (``61 * * * *``).
    """
    fields = _MACRO_FIELDS.get(expr.strip(), expr).split()
    minutes, hours, doms, months, dows = (_cron_values(f, i) for i, f in enumerate(fields))
    dom_any, dow_any = fields[2].startswith("*"), fields[4].startswith("*")
    t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    end = after + timedelta(days=5 * 366)
    while t < end:
        if t.month not in months:
            t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
            continue
        dom_ok, dow_ok = t.day in doms, (t.weekday() + 1) % 7 in dows
        day_ok = (dom_ok or dow_ok) if not (dom_any or dow_any) else (dom_ok and dow_ok)
        if not day_ok:
            t = t.replace(hour=0, minute=0) + timedelta(days=1)
        elif t.hour not in hours:
            t = t.replace(minute=0) + timedelta(hours=1)
        elif t.minute not in minutes:
            t += timedelta(minutes=1)
        else:
            return t
    return None


def next_run(host: Host, now: datetime | None = None) -> datetime | None:
    """When the host's daily scheduled run (its ``schedule``, read by cron in this machine's
    local time) fires next after ``now`` (UTC, default: the clock), as a UTC datetime; None
    when the expression never fires. Says what the inventory declares; whether
    ``db.schedule`` installed that line in the crontab is not checked."""
    now = now or utcnow()
    local = now.astimezone().replace(tzinfo=None)
    try:
        t = next_fire(host.schedule, local)
    except ValueError:
        return None
    return t.astimezone(timezone.utc) if t else None  # naive = local time, as cron reads it
