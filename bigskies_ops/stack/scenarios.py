"""The guide's "Common Scenarios" 1, 2, 3 and 5, built from the same library calls as
the tasks (backup, stack lifecycle, restore), each step announced before it runs.

| guide | function | task |
|---|---|---|
| Scenario 1: Before Risky Changes | :func:`before_risky_change` | ``scenario.before-risky-change`` |
| Scenario 2: Fresh Start (Keep Data) | :func:`fresh_start` | ``scenario.fresh-start`` |
| Scenario 3: Complete Reset | :func:`complete_reset` | ``scenario.complete-reset`` |
| Scenario 5: Database Corruption | :func:`recover_corruption` | ``scenario.recover-corruption`` |

Scenario 4 (production data on a laptop) is ``db.pull`` + ``db.restore``.
The callers (tasks) apply the safety policy and confirmations first.
"""
from __future__ import annotations

from bigskies_ops import output, report
from bigskies_ops.hosts import compose as cmp
from bigskies_ops.stack import lifecycle as stack
from bigskies_ops.jobs.backup import backup as run_backup, plan_backup
from bigskies_ops.archives.catalog import latest, list_backups
from bigskies_ops.errors import BigskiesError, SafetyError, StorageError, UsageError
from bigskies_ops.inventory import Host
from bigskies_ops.jobs.restore import restore as run_restore
from bigskies_ops.hosts import runner_for
from bigskies_ops.hosts.local import LocalRunner


class Steps:
    """Numbers and announces each step: ``Step 2/5: Stop everything (docker.down)``. The
    titles are the scenario's ordered steps (``*_steps``), the same list its ``--check``
    plan shows; each call announces the next one."""

    def __init__(self, titles: list[str]):
        self.titles = titles
        self.n, self.total = 0, len(titles)
        self.done: list[str] = []

    def __call__(self) -> None:
        title = self.titles[self.n]
        self.n += 1
        report.say(f"Step {self.n}/{self.total}: {title}")
        self.done.append(title)


def before_risky_change_steps(restart_service: str | None) -> list[str]:
    """Scenario 1's ordered steps."""
    return (["Back up the database (db.backup)"]
            + ([f"Make the change: restart service {restart_service!r}"] if restart_service else [])
            + ["Check PostgreSQL accepts connections"])


FRESH_START_STEPS = ["Back up the current state (db.backup)", "Stop everything (docker.down)",
                     "Rebuild images (docker.build)", "Start; the database persists in its volume (docker.up)",
                     "Verify the data is intact (row counts against the backup's manifest)"]


def complete_reset_steps(take_backup: bool, restore_backup: bool, roles: bool) -> list[str]:
    """Scenario 3's ordered steps."""
    return (["Purge containers and the data volume (docker.purge"
             + (", pre-purge backup first)" if take_backup else ", NO backup)"),
             "Rebuild images (docker.build)", "Start fresh (docker.up)"]
            + ([f"Restore the pre-purge backup (db.restore{' --roles' if roles else ''})"] if restore_backup else []))


RECOVER_CORRUPTION_STEPS = ["Stop the coordinators", "Try to back up (may fail on a corrupt database)",
                            "Delete the data volume (docker.purge --no-backup)", "Start fresh (docker.up)",
                            "Wait for the bootstrap migrations", "Restore (db.restore)"]


def _counts(manifest: dict) -> dict:
    return {f"{t['schema']}.{t['name']}": t["rows"] for t in manifest.get("tables", []) if t.get("rows") is not None}


def _current_counts(host: Host, tables: list[str]) -> dict:
    from bigskies_ops.pg.access import PostgresAccess
    from bigskies_ops.jobs.sideload import table_counts
    want = [{"schema": t.split(".", 1)[0], "name": t.split(".", 1)[1]} for t in tables]
    with PostgresAccess(host) as access:
        got = table_counts(access.sql(host.postgres.database), want)
    return {f"{s}.{n}": v for (s, n), v in got.items()}


def before_risky_change(host: Host, *, restart_service: str | None = None, label: str | None = None) -> dict:
    """Scenario 1: back up, (optionally) restart a service as "the change", check the
    server is up again, and say how to go back.

    Raises:
        UsageError: ``restart_service`` is not a service of the project (exit 2).
    """
    steps = Steps(before_risky_change_steps(restart_service))
    steps()
    res = run_backup(host, label=label or "before risky change", task="scenario.before-risky-change")
    report.say(f"  backup: {res.backup.path}")
    if restart_service:
        steps()
        with runner_for(host) as runner:
            project = cmp.resolved_config(runner, host)
            if restart_service not in project.services:
                raise UsageError(f"{restart_service!r} is not a service of compose project {project.name!r}; "
                                 f"its services: {', '.join(sorted(project.services))}")
            cmp.run_compose(runner, host, "restart", restart_service)
    steps()
    stack.wait_ready(host, timeout=60)
    report.say(f"  If something breaks, restore: {output.hint(f'db.restore {res.backup.path} --host {host.name}')}")
    return {"backup": res.backup.path, "steps": steps.done}


def fresh_start(host: Host, *, timeout: float = 60.0) -> dict:
    """Scenario 2: back up, down, build, up (the volume persists), verify the data is intact
    (every table's exact row count equals the backup's manifest).

    Raises:
        StorageError: the data after the restart differs from the backup (exit 1).
    """
    steps = Steps(FRESH_START_STEPS)
    steps()
    res = run_backup(host, label="scenario fresh-start", task="scenario.fresh-start")
    report.say(f"  backup: {res.backup.path}")
    steps()
    stack.down(host)
    steps()
    stack.build(host)
    steps()
    stack.up(host, timeout=timeout)
    steps()
    want = _counts(res.manifest)
    got = _current_counts(host, list(want))
    diff = [f"{t}: {got.get(t)} rows, backup had {n}" for t, n in want.items() if got.get(t) != n]
    if diff:
        raise StorageError("data changed across down/build/up: " + "; ".join(diff[:10]) +
                           f". The backup {res.backup.path} holds the state before.")
    report.say(f"  {len(want)} tables intact")
    return {"backup": res.backup.path, "tables_checked": len(want), "steps": steps.done}


def _refuse(what: str, host: Host, fix: str) -> SafetyError:
    return SafetyError(f"{what}; nothing was purged. {fix}")


def roles_setting_check(host: Host, roles: bool, task: str) -> None:
    """Before anything: a scenario that restores WITH roles needs backups that save them.

    Raises:
        SafetyError (exit 3): ``roles`` and ``backup.roles`` is off for ``host``.
    """
    if roles and not host.backup.roles:
        raise _refuse(f"{task} restores with the cluster's roles, but {host.name}'s backups do not save them "
                      f"(backup.roles is false), so the restore after the purge would miss them", host,
                      f"Set backup.roles: true for {host.name} in the inventory (the default for hosts with a "
                      f"compose block), or pass --no-roles to restore without them.")


def restore_files_ready(runner, host: Host, archive: str, *, roles: bool, task: str):
    """The read-only part of :func:`restore_ready` (also a scenario's ``--check``): ``archive``
    is a finished backup in its folder on ``runner``'s machine and, with ``roles``, its roles
    file is there with the sha256 its manifest records. Returns its catalog entry.

    Raises:
        SafetyError: what is missing or differs (exit 3).
    """
    import hashlib
    import posixpath
    from bigskies_ops.archives.catalog import read_manifest, scan_dir
    from bigskies_ops.archives.roles import roles_path
    folder, name = posixpath.split(archive)
    b = next((x for x in scan_dir(runner, folder or ".") if x.name == name), None)
    if b is None or b.status not in ("DONE", "LEGACY"):
        raise _refuse(f"{task} would restore {archive}, which is "
                      f"{'missing' if b is None else 'not a finished backup (status ' + b.status + ')'}",
                      host, f"Take a backup first: {output.hint(f'db.backup --host {host.name}')}.")
    if roles:
        rp = roles_path(archive)
        want = (read_manifest(runner, archive) or {}).get("roles_sha256")
        if not runner.exists(rp):
            raise _refuse(f"{task} restores with roles, but {archive} has no roles file "
                          f"({posixpath.basename(rp)})", host,
                          f"Set backup.roles: true for {host.name} and take a backup "
                          f"({output.hint(f'db.backup --host {host.name}')}), or pass --no-roles.")
        got = hashlib.sha256(runner.read_bytes(rp)).hexdigest()
        if want and got != want:
            raise _refuse(f"{task}: the roles file of {archive} does not match its manifest (sha256 "
                          f"{got[:12]}..., recorded {want[:12]}...)", host,
                          f"Take a new backup ({output.hint(f'db.backup --host {host.name}')}) or pass --no-roles.")
    return b


def restore_ready(host: Host, archive: str, *, roles: bool, task: str) -> None:
    """Before the first destructive step of a scenario that purges and then restores
    ``archive``: check everything that restore needs is there and sound: the archive
    (manifest DONE, size and sha256 as recorded, readable by pg_restore/the plain-SQL
    checks: :func:`bigskies_ops.jobs.verify.verify_backup`, which records the verification)
    and, with ``roles``, its roles file (present, sha256 as recorded).

    Refusing is exit 3 (CONTRACTS.md s.5 "refused for safety"): nothing failed and
    nothing changed; the tool declined a destructive step whose way back is missing.

    Raises:
        SafetyError: something is missing or does not verify (the message says what
            and what to run).
    """
    import posixpath
    from bigskies_ops.jobs.verify import verify_backup
    runner = runner_for(host) if host.is_remote else LocalRunner()
    try:
        b = restore_files_ready(runner, host, archive, roles=roles, task=task)
        # last: it records its result in the manifest (a refusal above changes nothing)
        res = verify_backup(host, b, task=task)
        if not res.ok:
            raise _refuse(f"{task} would restore {archive}, which does not verify: {res.error}", host,
                          f"Check it with {output.hint(f'db.verify {archive} --host {host.name}')}; take a new "
                          f"backup or name another archive.")
        report.note(f"checked before purging: {posixpath.basename(archive)} verified"
                    + (", its roles file present" if roles else ""))
    finally:
        runner.close()


def complete_reset(host: Host, *, take_backup: bool = True, restore_backup: bool = True, roles: bool = True,
                   timeout: float = 60.0, wait_migrations: bool = False) -> dict:
    """Scenario 3: purge (after a pre-purge backup), build, up, then restore that backup
    (with ``roles``: the roles missing in the new cluster are created first).

    Before anything is purged, what the restore needs is checked: with ``roles``, that
    this host's backups save roles at all (before the backup is even taken), then that
    the pre-purge backup verifies and has its roles file (:func:`restore_ready`).

    Raises:
        SafetyError: the restore's needs are missing (exit 3; nothing purged).
        BigskiesError: any step's error; if the pre-purge backup fails nothing is purged.
    """
    will_restore = restore_backup and take_backup
    if will_restore:
        roles_setting_check(host, roles, "scenario.complete-reset")
    steps = Steps(complete_reset_steps(take_backup, restore_backup, roles))
    steps()

    def backup_then_check(h, **kw):
        res = run_backup(h, **kw)
        if will_restore:
            restore_ready(h, res.backup.path, roles=roles, task="scenario.complete-reset")
        return res
    pres = stack.purge(host, take_backup=take_backup, backup_fn=backup_then_check)
    if pres["backup"]:
        report.say(f"  pre-purge backup: {pres['backup']}")
    steps()
    stack.build(host)
    steps()
    stack.up(host, timeout=timeout, wait_for_migrations=wait_migrations)
    out = {"backup": pres["backup"], "restored": None, "steps": steps.done}
    if restore_backup:
        if not pres["backup"]:
            report.say("  nothing to restore (no pre-purge backup was taken)")
        else:
            steps()
            rr = run_restore(host, pres["backup"], roles=roles, skip_missing_roles=not roles, terminate_sessions=True)
            out["restored"] = rr.archive
            out["coordinators"] = rr.coordinators
    return out


def recover_corruption(host: Host, *, archive: str | None = None, timeout: float = 60.0,
                       migrations_timeout: float = 120.0, roles: bool = True) -> dict:
    """Scenario 5: stop coordinators, try a backup (it may fail), recreate the volume
    (down, delete the volume, up, wait for the migrations), restore the given archive or
    the newest good backup (the one just taken when it succeeded).

    What the restore needs (the archive verified, its roles file with ``roles``) is
    checked before the volume is deleted (:func:`restore_ready`).

    Raises:
        StorageError: no good backup to restore from (checked before anything is deleted).
        SafetyError: the archive or its roles file is missing or does not verify (exit 3).
    """
    roles_setting_check(host, roles, "scenario.recover-corruption")
    if archive is not None:  # named: check it before stopping anything
        restore_ready(host, archive, roles=roles, task="scenario.recover-corruption")
    steps = Steps(RECOVER_CORRUPTION_STEPS)
    steps()
    with runner_for(host) as runner:
        project = cmp.resolved_config(runner, host)
        cmp.check_coordinators(host, project)
        running = cmp.running_services(runner, host, project, list(host.coordinators))
        cmp.stop_services(runner, host, [c for c in host.coordinators if c in running], project)
    steps()
    fresh = None
    try:
        fresh = run_backup(host, label="scenario recover-corruption",
                           task="scenario.recover-corruption")
        report.say(f"  backup: {fresh.backup.path}")
    except BigskiesError as e:
        report.say(f"  backup failed ({e}); restoring from the last known good backup")
    if archive is None:
        if fresh is not None:
            archive = fresh.backup.path
        else:
            b = latest(list_backups(runner_for(host) if host.is_remote else LocalRunner(), host.backup.dir),
                       database=host.postgres.database, origin_host=host.name)
            if b is None:
                raise StorageError(f"no good backup of {host.postgres.database!r} in {host.backup.dir}; "
                                   f"nothing was deleted")
            archive = b.path
        restore_ready(host, archive, roles=roles, task="scenario.recover-corruption")
    report.say(f"  will restore: {archive}")
    steps()
    stack.purge(host, take_backup=False)
    steps()
    stack.up(host, timeout=timeout)
    steps()
    try:
        stack.wait_migrations(host, timeout=migrations_timeout)
    except BigskiesError as e:
        report.say(f"  warning: {e}")
    steps()
    rr = run_restore(host, archive, roles=roles, skip_missing_roles=not roles, terminate_sessions=True)
    return {"backup": fresh.backup.path if fresh else None, "restored": rr.archive, "steps": steps.done}


# ------------------------------------------------------------------ --check: each scenario's plan
def _step(title: str, kind: str | None = None, plan: dict | None = None, notes: list[str] | None = None) -> dict:
    return {"title": title, "kind": kind, "plan": plan, "notes": notes or []}


def _refusals(steps: list[dict], extra: list[str] = ()) -> list[str]:
    return list(extra) + [r for st in steps for r in ((st["plan"] or {}).get("refusals") or [])]


def _refusal_of(fn, *a, **kw) -> list[str]:
    try:
        fn(*a, **kw)
    except (SafetyError, UsageError) as e:
        return [str(e)]
    return []


def _attempted_backup(title: str, host: Host) -> dict:
    """Scenario 5's attempted backup step: its plan, or why it would fail now (the scenario
    goes on without it); never a refusal of the scenario."""
    try:
        return _step(title, "backup", dict(plan_backup(host), refusals=[]))
    except UsageError:
        raise
    except BigskiesError as e:
        return _step(title, notes=[f"the backup would fail now ({e}); the scenario goes on without it"])


def plan_before_risky_change(host: Host, *, restart_service: str | None = None) -> dict:
    """Scenario 1's ordered steps (:func:`before_risky_change_steps`) with each step's plan, read-only."""
    titles = before_risky_change_steps(restart_service)
    steps = [_step(titles[0], "backup", plan_backup(host))]
    pre = []
    if restart_service:
        with runner_for(host) as runner:
            project = cmp.resolved_config(runner, host)
            if restart_service not in project.services:
                pre.append(f"{restart_service!r} is not a service of compose project {project.name!r}; "
                           f"its services: {', '.join(sorted(project.services))} (the real run fails after "
                           f"the backup)")
                state = "unknown"
            else:
                state = next(r["state"] for r in stack.services_status(runner, host, project)
                             if r["service"] == restart_service)
        steps.append(_step(titles[1], notes=[f"restart service {restart_service!r} (now {state})"]))
    steps.append(_step(titles[-1], notes=["wait until PostgreSQL accepts connections (up to 60 s)"]))
    return {"scenario": "before-risky-change", "steps": steps, "refusals": _refusals(steps, pre)}


def plan_fresh_start(host: Host, *, timeout: float = 60.0) -> dict:
    """Scenario 2's ordered steps (:data:`FRESH_START_STEPS`) with each step's plan, read-only."""
    t = FRESH_START_STEPS
    # each step is planned against the state the earlier ones leave (computed, not read):
    # after down the containers are gone, so up creates and starts them
    now = stack.service_states(host)
    after_down = stack.after_stack_action(now, "down")
    steps = [_step(t[0], "backup", plan_backup(host)), _step(t[1], "stack", stack.plan_stack(host, "down", states=now)),
             _step(t[2], "stack", stack.plan_stack(host, "build", states=after_down)),
             _step(t[3], "stack", dict(stack.plan_stack(host, "up", timeout=timeout, states=after_down),
                                       volume_note="kept (down keeps volumes): the data is still there")),
             _step(t[4], notes=["count every table's rows and compare them with the new backup's manifest"])]
    return {"scenario": "fresh-start", "steps": steps, "refusals": _refusals(steps)}


def plan_complete_reset(host: Host, *, take_backup: bool = True, restore_backup: bool = True, roles: bool = True,
                        timeout: float = 60.0, wait_migrations: bool = False) -> dict:
    """Scenario 3's ordered steps (:func:`complete_reset_steps`) with each step's plan, read-only;
    the refusals :func:`complete_reset` makes before purging are listed (``refusals``)."""
    t = complete_reset_steps(take_backup, restore_backup, roles)
    pre = _refusal_of(roles_setting_check, host, roles, "scenario.complete-reset") \
        if restore_backup and take_backup else []
    # planned against the state each step leaves: after the purge no container and no data volume
    gone = stack.after_stack_action(stack.service_states(host), "purge")
    steps = [_step(t[0], "purge", stack.plan_purge(host, take_backup=take_backup)),
             _step(t[1], "stack", stack.plan_stack(host, "build", states=gone)),
             _step(t[2], "stack", dict(stack.plan_stack(host, "up", timeout=timeout, wait_for_migrations=wait_migrations,
                                                        states=gone),
                                       volume_note="created empty (step 1 deleted it)"))]
    if restore_backup:
        steps.append(_step(t[3], notes=[
            "restore the pre-purge backup into the new database, sessions ended, the coordinators stopped "
            "and started again" + (", the backup's missing roles created first" if roles else "")
            + "; before anything is purged the backup is verified" + (" and its roles file checked" if roles else "")
            if take_backup else "nothing to restore (no pre-purge backup: --no-backup)"]))
    return {"scenario": "complete-reset", "steps": steps, "refusals": _refusals(steps, pre)}


def plan_recover_corruption(host: Host, *, archive: str | None = None, timeout: float = 60.0,
                            roles: bool = True) -> dict:
    """Scenario 5's ordered steps (:data:`RECOVER_CORRUPTION_STEPS`) with each step's plan,
    read-only; the refusals :func:`recover_corruption` makes before deleting are listed."""
    from bigskies_ops.jobs.coordinators import running_coordinators
    t = RECOVER_CORRUPTION_STEPS
    pre = _refusal_of(roles_setting_check, host, roles, "scenario.recover-corruption")
    with runner_for(host) as runner:
        _project, running = running_coordinators(runner, host)
        if archive is not None:
            pre += _refusal_of(restore_files_ready, runner, host, archive, roles=roles,
                               task="scenario.recover-corruption")
            what = archive
        else:
            b = latest(list_backups(runner, host.backup.dir), database=host.postgres.database, origin_host=host.name)
            what = ("the backup taken in step 2, else the newest good one now: "
                    + (b.path if b is not None else "none (the real run stops before deleting anything)"))
    # planned against the state each step leaves (computed, not read): coordinators stopped,
    # then after the purge no container and no data volume, so up creates and starts them all
    gone = stack.after_stack_action(stack.after_stack_action(stack.service_states(host), "stop", list(running)),
                                    "purge")
    steps = [_step(t[0], notes=[f"stop {', '.join(running)}" if running else "no coordinator is running"]),
             _attempted_backup(t[1], host),  # it may fail: the scenario goes on
             _step(t[2], "purge", stack.plan_purge(host, take_backup=False)),
             _step(t[3], "stack", dict(stack.plan_stack(host, "up", timeout=timeout, states=gone),
                                       volume_note="created empty (step 3 deleted it)")),
             _step(t[4], notes=["wait until schema_migrations reaches the newest migration file"]),
             _step(t[5], notes=[f"restore {what}" + (" with its roles" if roles else "")
                                + ", verified before the volume is deleted"])]
    return {"scenario": "recover-corruption", "steps": steps, "refusals": _refusals(steps, pre)}
