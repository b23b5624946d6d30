"""``db.*`` tasks contributed by the policy feature (gathered into the db namespace by bigskies_ops.cli):
verify, prune, offsite, health, schedule (and the run that cron starts). Thin: the
library modules verify, retention, offsite, health and schedule do the work."""
from __future__ import annotations

from invoke import Exit

from bigskies_ops import output
from bigskies_ops.text import human_age, human_bytes
from bigskies_ops.errors import BigskiesError, UsageError
from bigskies_ops.safety import check_destructive
from bigskies_ops.cli.common import (HOST_HELP, INVENTORY_HELP, JSON_HELP, LOCK_WAIT_HELP, handles_errors, load_inventory, lock_wait_host, seconds_arg,
                     optional_positional, task)

PROTECT_HELP = {"force_protected": "allow this on a protected host (with --confirm DBNAME)",
                "confirm": "the database name, repeated, for protected hosts"}


def _plan_lines(p) -> None:
    for d in p.decisions:
        e = d.entry
        where = "" if e.origin_host is None else f"[{e.origin_host}] "
        output.say(f"{d.action:<5} {where}{e.name}  ({'; '.join(d.reasons)})")


# ------------------------------------------------------------------ db.prune
@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP,
            "check": "dry run: print the plan (keep/prune with reasons), the files it would delete and the bytes "
                     "it would free; change nothing",
            "dry_run": "the same as --check (the older name)",
            "failed": "also prune FAILED runs, unfinished runs and .partial files",
            "include_legacy": "let seed-era files without a manifest take part in retention",
            **PROTECT_HELP})
@handles_errors
def prune(c, host=None, inventory=None, check=False, dry_run=False, failed=False, include_legacy=False,
          force_protected=False, confirm=None, json=False):
    """Apply GFS retention (daily/weekly/monthly) to a host's backups; --check shows the plan and the bytes freed."""
    from bigskies_ops.jobs.retention import PruneRefused, prune as run_prune
    from bigskies_ops.cli import checks
    dry_run = bool(check or dry_run)
    inv = load_inventory(inventory)
    # a group holding a protected host: refused as a whole (exit 3), before "takes one host"
    refused_group = checks.group_refusal(inv, host, "prune", check=dry_run, force_protected=force_protected,
                                         confirm=confirm)
    if refused_group and len(inv.resolve(host)) > 1:
        return checks.group_refused_report("db.prune", inv, host, refused_group, json)
    h = inv.host(host)
    policy = dict(database=h.postgres.database, force_protected=force_protected, confirm=confirm)
    if not dry_run:
        check_destructive(h, "prune", **policy)
    # what the real run with these flags would refuse (a --check lists it, exit 0)
    policy_refusals = [r for r in (refused_group, dry_run and checks.policy_refusal(h, "prune", **policy)) if r]
    try:
        res = run_prune(h, dry_run=dry_run, include_failed=failed, include_legacy=include_legacy)
        p, deleted, refused, freed, files = res.plan, res.deleted, None, res.freed, res.files
    except PruneRefused as e:
        p, deleted, refused, freed, files = e.plan, e.deleted, e, None, e.deleted
    facts = {"retention": vars(h.retention), "decisions": [d.to_json() for d in p.decisions],
             "refused": [{"origin_host": g[0], "database": g[1], "reason": r} for g, r in p.refused.items()]}
    if dry_run:
        if not json:
            r = h.retention
            output.say(f"Retention for {h.name}: daily {r.daily}, weekly {r.weekly}, monthly {r.monthly}; "
                       f"safety backups {h.backup.keep_safety_days} days")
            _plan_lines(p)
        lines = [f"delete {f}" for f in files]
        if files:
            lines.append(f"  would free {human_bytes(freed)} ({freed} bytes) in {h.backup.dir}")  # a fact, not a step
        lines += [f"refuse {g[1]!r} from {g[0]}: {why}" for g, why in p.refused.items()]
        # every refusal of the run: the safety policy's (the run stops before anything) and
        # retention's per group (the run prunes the other groups, then exits 3)
        refusals = policy_refusals + [f"{g[1]!r} from {g[0]}: {why}" for g, why in p.refused.items()]
        lines += checks.refusal_lines(policy_refusals)
        output.check_report("db.prune", h.name, {**facts, "dry_run": True, "would_delete": files,
                                                 "bytes_freed": freed, "prune": len(p.prune), "keep": len(p.keep),
                                                 "refusals": refusals},
                            lines, would_change=bool(files) and not policy_refusals, json=json)
        return
    if json:
        output.emit_json({"result": "changed" if deleted else ("failed" if refused else "ok"), "host": h.name,
                          "dry_run": False, **facts, "deleted": deleted, "bytes_freed": freed})
    else:
        r = h.retention
        output.say(f"Retention for {h.name}: daily {r.daily}, weekly {r.weekly}, monthly {r.monthly}; "
                   f"safety backups {h.backup.keep_safety_days} days")
        _plan_lines(p)
        if deleted and refused is None:
            output.result_line("changed", h.name, f"pruned {len(p.prune)} backup(s) ({len(deleted)} files, "
                                                  f"{human_bytes(freed)} freed), kept {len(p.keep)}")
        elif deleted:
            output.result_line("changed", h.name, f"pruned {len(deleted)} file(s) of the groups not refused")
        elif refused is None:
            output.result_line("ok", h.name, f"nothing to prune, kept {len(p.keep)}")
    if refused is not None:
        raise Exit(f"error: {refused}", code=refused.exit_code)


# ------------------------------------------------------------------ db.verify
@task(positional=["file"], help={
    "file": "'latest' (default), a backup's id (db.list's first column), or an archive (path or name in the "
            "backup folder)",
    "all": "verify every DONE and legacy backup of the folder (and of pulled sub-folders)",
    "host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP,
    "restore_test": "also restore into a throwaway database and compare row counts with the manifest",
    "offsite": "verify the copy held by this offsite target instead (sha256 of the object)",
    "adopt": "write a manifest for a seed-era file (no manifest) once it passes its checks",
    "origin": "the backup is in the <origin>/ sub-folder of pulled backups (needed with a file name, not an id)"})
@handles_errors
def verify(c, file=None, host=None, inventory=None, all=False, restore_test=False, offsite=None, adopt=False,
           json=False, origin=None):
    """Prove backups are whole: sha256, compression, completion trailer or full read; optional restore test."""
    from bigskies_ops.hosts import runner_for
    from bigskies_ops.jobs.verify import select, verify_backup
    from bigskies_ops.cli.common import help_if_requested
    help_if_requested(file, "db.verify")
    inv = load_inventory(inventory)
    h = inv.host(host)
    if offsite:
        if restore_test or adopt:
            raise UsageError("--offsite checks the remote copy; it cannot be combined with --restore-test or --adopt")
        if origin:
            raise UsageError("--origin names a pulled sub-folder of the backup folder; it cannot be combined "
                             "with --offsite")
        from bigskies_ops.jobs.offsite import verify_remote
        results = verify_remote(h, offsite, file or None, all, inv=inv)
    else:
        with runner_for(h) as runner:
            backups = select(h, runner, file or None, all, origin=origin or None)
        if not backups:
            raise UsageError(f"no backups to verify in {h.backup.dir}")
        results = []
        with output.transfer_progress("verify") as cb:  # bytes read against each archive's size (docs/cli.md "Progress")
            for b in backups:
                results.append(verify_backup(h, b, restore_test=restore_test, adopt=adopt, progress=cb))
    failed = [r for r in results if not r.ok]
    if json:
        output.emit_json({"result": "failed" if failed else ("changed" if any(r.recorded for r in results) else "ok"),
                          "host": h.name, "offsite": offsite, "results": [r.to_json() for r in results],
                          "ok": not failed})
    else:
        for r in results:
            if r.ok:
                rt = r.restore_test
                extra = f"; restore test: {rt['tables_checked']} tables match the manifest" if rt else ""
                output.result_line("ok", h.name, f"{r.name} verified ({', '.join(r.checks)}){extra}"
                                   + (" - recorded in its manifest" if r.recorded else ""))
            else:
                output.result_line("failed", h.name, f"{r.name}: {r.error}")
            for n in r.notes:
                output.say(f"   note: {n}")
    if failed:
        raise Exit(f"error: {len(failed)} of {len(results)} backup(s) failed verification", code=1)


# ------------------------------------------------------------------ db.offsite
def report_offsite(h, results, json: bool) -> int:
    """Print offsite results; return the exit code (0, or the first failure's)."""
    if json:
        word = ("failed" if any(r.error for r in results) else
                "changed" if any(r.uploaded or r.pruned for r in results) else "ok")
        output.emit_json({"result": word, "host": h.name, "targets": [r.to_json() for r in results]})
    for r in results:
        if json:
            break
        for s in r.skipped:
            output.say(f"   skipped: {s}")
        if r.error:
            if r.uploaded or r.pruned:  # done before it failed: the same facts as --json's
                output.say(f"   {r.copied()}")
            output.result_line("failed", h.name, f"offsite {r.target}: {r.failure(copies=False)}")
        elif r.uploaded or r.pruned:
            output.result_line("changed", h.name, f"offsite {r.target}: {r.copied()}")
        else:
            output.result_line("ok", h.name, f"offsite {r.target}: {r.already} backup(s) already there, "
                                             f"nothing to prune")
    codes = [r.exit_code for r in results if r.error]
    return codes[0] if codes else 0


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP,
            "target": "only this offsite target (its name in the inventory); default: all of them",
            "check": "dry run: list what would be uploaded and what the target's retention would delete there "
                     "(with the bytes); upload, record and delete nothing"})
@handles_errors
def offsite(c, host=None, inventory=None, target=None, json=False, check=False):
    """Copy backups not yet offsite to the host's targets, verify each copy, prune remotely (--check: dry run)."""
    from bigskies_ops.jobs.offsite import upload
    inv = load_inventory(inventory)
    h = inv.host(host)
    if check:
        results = upload(h, target, inv=inv, check=True)
        lines = []
        for r in results:
            if r.error:
                lines.append(f"  {r.target}: cannot tell, {r.error}")
                continue
            lines += [f"upload {n} to {r.target}" for n in r.uploaded]
            lines += [f"  {r.target}: {s}" for s in r.skipped]
            lines += [f"delete {n} on {r.target} (the host's retention)" for n in r.pruned]
            if r.uploaded or r.pruned:
                lines.append(f"  {r.target}: {human_bytes(r.upload_bytes)} to upload ({r.upload_bytes} bytes), "
                             f"{human_bytes(r.pruned_bytes)} freed there ({r.pruned_bytes} bytes)")
        output.check_report("db.offsite", h.name, {"targets": [r.to_json() for r in results]}, lines,
                            would_change=any(r.uploaded or r.pruned for r in results), json=json)
        codes = [r.exit_code for r in results if r.error]
        if codes:
            raise Exit("error: offsite target unreachable: " + ", ".join(r.target for r in results if r.error),
                       code=codes[0])
        return
    with output.transfer_progress("offsite") as cb:  # bytes sent against each archive's size (docs/cli.md "Progress")
        results = upload(h, target, inv=inv, progress=cb)
    code = report_offsite(h, results, json)
    if code:
        raise Exit("error: offsite copy failed for " + ", ".join(r.target for r in results if r.error), code=code)


# ------------------------------------------------------------------ db.health
@task(help={"host": "inventory host, group or 'all' (default: defaults.host, else the only host)",
            "inventory": INVENTORY_HELP, "json": JSON_HELP})
@handles_errors
def health(c, host=None, inventory=None, json=False):
    """Backup health per host: newest good backup and age, size trend, last verification, offsite lag.

    Exit codes are monitoring ones: 0 ok, 1 warning, 2 critical, 3 unknown."""
    from bigskies_ops.jobs.health import EXIT, host_health, worst
    try:
        inv = load_inventory(inventory)
        hosts = inv.resolve(host)
    except BigskiesError as e:
        raise Exit(f"unknown: {e}", code=EXIT["unknown"])
    reports = [host_health(h) for h in hosts]
    from bigskies_ops.jobs.health import notify_degraded
    for h, r in zip(hosts, reports):  # notify.on: [health_degraded] (a send failure is only a stderr line)
        notify_degraded(r, h)
    state = worst(r["state"] for r in reports)
    if json:
        output.emit_json({"state": state, "hosts": reports})
    else:
        for r in reports:
            output.say(f"{r['state'].upper()}: [{r['host']}] {r['database']}")
            for ch in r["checks"]:
                output.say(f"   {ch['state']:<8} {ch['check']}: {ch['message']}")
        if len(reports) > 1:
            output.say("recap: " + ", ".join(f"{r['host']}={r['state']}" for r in reports))
    if EXIT[state]:
        raise Exit(code=EXIT[state])


# ------------------------------------------------------------------ db.schedule / db.scheduled-run
@task(help={"host": "inventory host or group (default: defaults.host, else the only host)",
            "inventory": INVENTORY_HELP, "json": JSON_HELP,
            "remove": "remove the host's managed block from the crontab",
            "check": "only say whether the crontab would change (dry run, exit 0)",
            "crontab_file": f"edit this file instead of the user's crontab (also ${'{'}BIGSKIES_CRONTAB_FILE{'}'})",
            "log": "log file the scheduled runs append to (default: <inventory folder>/logs/bigskies-ops-<host>.log)",
            **PROTECT_HELP})
@handles_errors
def schedule(c, host=None, inventory=None, remove=False, check=False, crontab_file=None, log=None,
             force_protected=False, confirm=None, json=False):
    """Converge the crontab block that runs backup, prune, offsite daily and a monthly test restore."""
    from bigskies_ops.jobs.schedule import converge
    inv = load_inventory(inventory)
    hosts = inv.resolve(host)
    results, refusals = [], []
    for h in hosts:
        protected_ok = False
        refused = None
        if h.protected and not remove:
            # the block prunes on its own every night: that consent is given once, here; a
            # --check lists the refusal and plans the block the run would write with the flags
            policy = dict(database=h.postgres.database, force_protected=force_protected, confirm=confirm)
            if check:
                from bigskies_ops.cli.checks import policy_refusal
                refused = policy_refusal(h, "prune", **policy)
            else:
                check_destructive(h, "prune", **policy)
            protected_ok = True
        refusals.append([refused] if refused else [])
        results.append(converge(inv, h, remove=remove, check=check, crontab_file=crontab_file,
                                log=log if len(hosts) == 1 else None, protected_ok=protected_ok))
    if check:
        _schedule_check_report(results, refusals, json)
        return
    if json:
        output.emit_json({"check": check, "hosts": [{"host": r.host, "result": "changed" if r.changed else "ok",
                                                     "removed": r.removed, "lines": r.lines, "warnings": r.warnings}
                                                    for r in results]})
        return
    for r in results:
        for w in r.warnings:
            output.note(f"warning: {w}")
        what = "block removed" if r.removed else "backup, prune, offsite daily; restore test monthly"
        if r.changed:
            output.result_line("changed", r.host, what)
            for ln in r.lines:
                output.say(f"   {ln}")
        else:
            output.result_line("ok", r.host, "crontab already " + ("has no block" if r.removed else "up to date"))


def _schedule_check_report(results, refusals: list[list[str]], json: bool) -> None:
    """``db.schedule --check``: per host the block before and after (output.check_report)
    and ``refusals`` (per host: the safety policy's refusal of the real run with these
    flags; such a host would change nothing); several hosts under --json: one document."""
    plans = []
    for r, refused in zip(results, refusals):
        plans.append({"crontab": r.where, "removed": r.removed, "before": r.before,
                      "after": [] if r.removed else r.lines, "warnings": r.warnings, "refusals": refused})
    changes = [r.changed and not p["refusals"] for r, p in zip(results, plans)]
    if json and len(results) > 1:
        output.emit_json({"result": "changed" if any(changes) else "ok", "check": True,
                          "task": "db.schedule", "hosts": [{"host": r.host, "would_change": ch, "plan": p}
                                                           for r, p, ch in zip(results, plans, changes)]})
        return
    from bigskies_ops.cli.checks import refusal_lines
    for r, plan, changed in zip(results, plans, changes):
        if not json:
            for w in r.warnings:
                output.note(f"warning: {w}")
        lines = []
        if r.changed:
            verb = ("remove the block of" if r.removed else "replace the block of" if r.before
                    else "add a block for")
            lines.append(f"change the crontab ({r.where}): {verb} {r.host}")
            lines += [f"  before: {ln}" for ln in r.before]
            lines += [f"  after:  {ln}" for ln in plan["after"]]
        lines += refusal_lines(plan["refusals"])
        output.check_report("db.schedule", r.host, plan, lines, would_change=changed, json=json)


@task(name="scheduled-run", help={
    "host": HOST_HELP, "inventory": INVENTORY_HELP,
    "monthly": "run the monthly test restore (db.verify latest --restore-test) instead",
    "wait": "seconds to wait for a running scheduled run of this host (default: 0 daily, 6 h monthly)",
    "log": "the schedule's log file: its folder holds the run lock; the cron line's own `>> LOG 2>&1` "
           "appends the run's output to it (this option does not write it)",
    "lock_wait_timeout": LOCK_WAIT_HELP,
    **PROTECT_HELP})
@handles_errors
def scheduled_run(c, host=None, inventory=None, monthly=False, wait=None, log=None, force_protected=False,
                  confirm=None, lock_wait_timeout=None):
    """What the cron lines run: backup, then prune, then offsite (or --monthly: a test restore)."""
    from bigskies_ops.jobs.schedule import scheduled_run as run
    wait_s = seconds_arg(wait, "--wait") if wait is not None else None
    inv = load_inventory(inventory)
    h = lock_wait_host(inv.host(host), lock_wait_timeout)
    protected_ok = False
    if h.protected and force_protected:
        check_destructive(h, "prune", database=h.postgres.database, force_protected=force_protected,
                          confirm=confirm)
        protected_ok = True
    from bigskies_ops.jobs.notify import scheduled_run_monitor, summary_of
    from bigskies_ops.jobs.schedule import EXIT_SKIPPED_FOR_SAFETY, exit_code
    # heartbeat start/end with the exit code; the success digest (docs/monitoring.md)
    with scheduled_run_monitor(h) as outcome:
        steps = run(inv, h, monthly=monthly, wait_s=wait_s, log=log,
                    protected_ok=protected_ok)
        if h.metrics.textfile:  # the inventory's metrics.textfile, rewritten after each run; a failure only warns
            from bigskies_ops.jobs.metrics import refresh_textfile
            if refresh_textfile(inv, h):
                output.say(f"ok: [{h.name}] metrics textfile {h.metrics.textfile} refreshed")
        code = exit_code(steps)
        outcome.code, outcome.steps, outcome.summary = code, steps, summary_of(h, steps, code)
    if code == 1:
        raise Exit("error: scheduled run: " + "; ".join(f"{s.name} failed" for s in steps if s.word == "failed"),
                   code=1)
    if code == EXIT_SKIPPED_FOR_SAFETY:  # the backup is good; say what was left undone (exit 4)
        raise Exit("warning: scheduled run: the backup was made, but "
                   + "; ".join(f"{s.name} was skipped for safety" for s in steps if s.word == "skipped" and s.safety)
                   + f" (exit {code}; db.health reports it)", code=code)


def list_offsite(h, target: str, json: bool, inv=None) -> None:
    """``db.list --offsite T``: what a target holds, newest first."""
    from bigskies_ops.jobs.offsite import list_remote
    items = list_remote(h, target, inv)
    if json:
        output.emit_json({"host": h.name, "offsite": target, "backups": [r.to_json() for r in items]})
        return
    if not items:
        output.say(f"offsite target {target} holds no backups")
        return
    from rich import box
    t = output.literal_table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    from bigskies_ops.archives.catalog import backup_id
    for col in ("id", "started (UTC)", "age", "size", "origin", "kind", "status", "file"):
        t.add_column(col, justify="right" if col == "size" else "left", no_wrap=True, overflow="ignore")
    for r in items:
        st = r.started_at
        t.add_row(backup_id(r.name), st.strftime("%Y-%m-%d %H:%M:%S") if st else "-", human_age(st), human_bytes(r.size),
                  r.origin, (r.manifest or {}).get("kind", "-"), r.status.lower(), r.name)
    output.print_table(t)


optional_positional("db.verify", "file")  # db.verify --all takes no FILE

TASKS: list = [prune, verify, offsite, health, schedule, scheduled_run]
