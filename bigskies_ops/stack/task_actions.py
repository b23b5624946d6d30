"""The runbook actions of the existing CLI tasks (``db.backup``, ``db.restore``, ``docker.up``, ...).

Names are the CLI task names, arguments the CLI flags' names with ``-`` as ``_``. Each
``run`` calls the same job / stack function the CLI task calls, with the same safety checks
and confirmation (the runbook asked once at its start, so ``ctx.yes`` is set); each ``plan``
calls the function the task's ``--check`` calls. Registered on import
(:func:`bigskies_ops.stack.actions.register`).
"""
from __future__ import annotations

import os

from bigskies_ops.errors import UsageError
from bigskies_ops.inventory import Host
from bigskies_ops.stack.actions import Action, Param, Plan, RunContext, StandIn, register
from bigskies_ops.text import human_bytes

_SECONDS = "seconds"


def _policy_refusal(h: Host, action: str, ctx: RunContext) -> list[str]:
    """The safety policy's refusal of ``action`` on ``h`` with the run's flags, as a list (check mode)."""
    from bigskies_ops.errors import SafetyError
    from bigskies_ops.safety import check_destructive
    try:
        check_destructive(h, action, database=h.postgres.database, force_protected=ctx.force_protected,
                          confirm=ctx.confirm)
    except SafetyError as e:
        return [str(e)]
    return []


def _destructive(h: Host, action: str, ctx: RunContext, question: str) -> None:
    """The real run's safety check and confirmation, as the CLI task makes them."""
    from bigskies_ops.safety import check_destructive, confirm_or_refuse
    check_destructive(h, action, database=h.postgres.database, force_protected=ctx.force_protected,
                      confirm=ctx.confirm)
    confirm_or_refuse(question, yes=ctx.yes)


# ------------------------------------------------------------------ db.backup
def _backup_host(h: Host, a: dict) -> Host:
    from bigskies_ops.jobs.backup import with_lock_wait_timeout, without_space_check
    return without_space_check(with_lock_wait_timeout(h, a["lock_wait_timeout"]), a["skip_space_check"])


def _backup_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.jobs.backup import backup
    res = backup(_backup_host(h, a), fmt=a["format"], label=a["label"], exclude_table_data=tuple(a["exclude_table_data"]
                 or ()), schema_only=a["schema_only"], verbose=a["verbose"], task=ctx.task)
    m = res.manifest
    facts = {"archive": res.backup.path, "id": res.backup.id, "name": res.backup.name, "size_bytes": m.get("bytes"),
             "sha256": m.get("sha256"), "pulled": None,
             "msg": f"backup {res.backup.name} written ({human_bytes(m.get('bytes'))})"}
    if a["pull"] and h.is_remote:  # a copy on this machine too (db.backup --pull; docker.purge's pre-purge pull)
        from bigskies_ops.jobs.pull import pull_existing
        out = pull_existing(h, _pull_to(ctx), res.backup.name)
        facts["pulled"] = out.backup.path
        facts["msg"] += f"; pulled to {out.backup.path}"
    return facts


def _backup_plan(h: Host, a: dict, ctx: RunContext) -> Plan:
    from bigskies_ops.jobs.backup import plan_backup
    p = plan_backup(_backup_host(h, a), fmt=a["format"], exclude_table_data=tuple(a["exclude_table_data"] or ()),
                    schema_only=a["schema_only"])
    where = f" on {p['on_host']}" if p.get("on_host") else ""
    lines = [f"dump database {p['database']!r} ({human_bytes(p['database_bytes'])}) as {p['format']}"
             + (", schema only" if p["schema_only"] else ""),
             f"write {p['archive']}{where} with its manifest",
             f"  free space: {human_bytes(p['free_bytes'])}; about {human_bytes(p['needed_bytes'])} needed"]
    if a["pull"] and h.is_remote:
        lines.append(f"copy it to {_pull_to(ctx).backup.dir}/{h.name}/ on this machine (size and sha256 checked)")
    return Plan(not p["refusals"], lines, p, list(p["refusals"]),
                {"archive": StandIn(p["archive"]), "id": StandIn("(the new backup's id)"),
                 "pulled": StandIn("(the local copy)") if a["pull"] and h.is_remote else None,
                 "name": StandIn(os.path.basename(p["archive"])), "size_bytes": p["estimated_bytes"],
                 "sha256": StandIn("(the new backup's sha256)")})


register(Action("db.backup", "Back up a host's database into a new archive with its manifest.", {
    "format": Param(str, choices=("plain", "custom"), help="plain (.sql.gz) or custom (.dump); default: the host's"),
    "label": Param(str, help="free text stored in the manifest"),
    "exclude_table_data": Param(list, help="pg_dump --exclude-table-data patterns"),
    "schema_only": Param(bool, default=False, help="dump the schema without data"),
    "verbose": Param(bool, default=False, help="pg_dump --verbose (into the manifest's stderr_tail)"),
    "lock_wait_timeout": Param(float, help="seconds to wait for a table lock (default: the host's)"),
    "skip_space_check": Param(bool, default=False, help="do not fail for too little space in the backup folder"),
    "pull": Param(bool, default=False, help="SSH hosts: also copy the archive and its manifest to this machine's "
                                            "backup folder under <host>/ (a local host: nothing more)"),
}, _backup_run, _backup_plan, facts=("archive", "id", "name", "size_bytes", "sha256", "pulled")))


# ------------------------------------------------------------------ db.verify
def _is_stand_in(v) -> bool:
    return isinstance(v, StandIn)


def _verify_select(h: Host, a: dict):
    from bigskies_ops.hosts import runner_for
    from bigskies_ops.jobs.verify import select
    with runner_for(h) as runner:
        return select(h, runner, a["archive"] or None, False, origin=a["origin"] or None)


def _verify_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.errors import ArchiveError
    from bigskies_ops.jobs.verify import verify_backup
    b = _verify_select(h, a)[0]
    r = verify_backup(h, b, restore_test=a["restore_test"], adopt=a["adopt"], task=ctx.task)
    if not r.ok:
        raise ArchiveError(f"{r.name} failed verification: {r.error}")
    return {"archive": r.path, "name": r.name, "ok": True, "checks": r.checks, "changed": r.recorded or r.adopted,
            "msg": f"{r.name} verified ({', '.join(r.checks)})"
                   + (f"; restore test: {r.restore_test['tables_checked']} tables match" if r.restore_test else "")}


def _verify_plan(h: Host, a: dict, ctx: RunContext) -> Plan:
    if _is_stand_in(a["archive"]):
        return Plan(True, [f"verify {a['archive']} (written by an earlier step) and record it in its manifest"],
                    facts={"archive": a["archive"], "ok": True})
    b = _verify_select(h, a)[0]
    return Plan(True, [f"verify {b.path} and record the result in its manifest"]
                + (["  then restore it into a throwaway database and compare row counts"] if a["restore_test"] else []),
                {"archive": b.path, "name": b.name}, facts={"archive": b.path, "name": b.name, "ok": True})


register(Action("db.verify", "Prove a backup is whole (sha256, compression, trailer); optional restore test.", {
    "archive": Param(str, default="latest", help="'latest', a backup id, or an archive path or name"),
    "origin": Param(str, help="the backup is in the <origin>/ sub-folder of pulled backups"),
    "restore_test": Param(bool, default=False, help="also restore into a throwaway database and compare counts"),
    "adopt": Param(bool, default=False, help="write a manifest for a seed-era file once it passes"),
}, _verify_run, _verify_plan, changes=False, facts=("archive", "name", "ok", "checks")))


# ------------------------------------------------------------------ db.restore
def _database_name(t: str) -> None:
    """A new database's name: 1 to 63 bytes (PostgreSQL's NAMEDATALEN - 1), not blank."""
    if not t.strip() or len(t.encode()) > 63:
        raise UsageError(f"expected a database name of 1 to 63 bytes, got {t!r}")


def _target_db(a: dict) -> str | None:
    t = a["target_db"]
    if t is not None:
        try:
            _database_name(t)
        except UsageError as e:
            raise UsageError(f"target_db: {e}") from None
    return t


def _restore_precheck(h: Host, a: dict) -> None:
    """Before the first step: a ``target_db`` that exists already would make the restore
    refuse after the earlier steps ran (a backup written, then exit 2); read-only."""
    from bigskies_ops.errors import BigskiesError
    from bigskies_ops.pg.access import PostgresAccess
    from bigskies_ops.pg.admin import db_info
    t = a.get("target_db")
    if not isinstance(t, str) or a.get("undo"):
        return
    try:
        with PostgresAccess(h) as access:
            exists = db_info(access.sql(h.postgres.maintenance_db), t) is not None
    except (BigskiesError, OSError):  # not reachable now (a later step may start it): the step finds out
        return
    if exists:
        raise UsageError(f"target_db: database {t!r} already exists on {h.name}; restore into a new name "
                         f"(--set a new one) or drop it first")


def _undo_args(a: dict) -> None:
    if a["archive"] not in (None, "", "latest") or a["target_db"] is not None:
        raise UsageError("undo swaps the newest pre-restore copy back and takes no archive or target_db")


def _undo_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.jobs.swap import undo
    _undo_args(a)
    _destructive(h, "restore --undo", ctx, f"Swap the newest pre-restore copy of {h.postgres.database!r} on "
                                          f"{h.name} back in?")
    res = undo(h, terminate_sessions=a["terminate_sessions"], task=f"{ctx.task} (db.restore --undo)")
    return {"database": h.postgres.database, "restored_from": res["restored_from"],
            "previous_kept_as": res["previous_kept_as"],
            "msg": f"{h.postgres.database!r} is back to {res['restored_from']!r}; the undone copy is kept as "
                   f"{res['previous_kept_as']!r}"}


def _undo_plan(h: Host, a: dict, ctx: RunContext) -> Plan:
    from bigskies_ops.jobs.swap import check_undo
    _undo_args(a)
    p = check_undo(h, terminate_sessions=a["terminate_sessions"])
    p["refusals"] = _policy_refusal(h, "restore --undo", ctx) + p["refusals"]
    lines = ([f"swap the pre-restore copy {p['restored_from']!r} back in as {p['database']!r}; the current one is "
              f"kept as {p['previous_kept_as']!r}"] if p.get("restored_from") else
             [f"  no pre-restore copy of {p['database']!r}: nothing to swap back"])
    return Plan(not p["refusals"], lines, p, p["refusals"],
                {"database": h.postgres.database, "restored_from": p.get("restored_from"),
                 "previous_kept_as": p.get("previous_kept_as")})


def _restore_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.jobs.restore import resolve_archive, restore
    if a["undo"]:
        return _undo_run(h, a, ctx)
    target = _target_db(a)
    path = resolve_archive(h, a["archive"], origin=a["origin"] or None)
    if target is None:
        _destructive(h, "restore", ctx, f"WARNING: this will replace database {h.postgres.database!r} on {h.name} "
                                        f"(the current one is kept as a pre-restore copy).")
    res = restore(h, path, target_db=target, terminate_sessions=a["terminate_sessions"], roles=a["roles"],
                  skip_missing_roles=a["skip_missing_roles"], skip_space_check=a["skip_space_check"], jobs=a["jobs"],
                  task=ctx.task)
    return {"archive": res.archive, "database": res.database, "pre_restore_copy": res.pre_restore_copy,
            "coordinators_restarted": res.coordinators, "checked_tables": res.checked_tables,
            "msg": f"{res.database!r} restored from {os.path.basename(res.archive)} "
                   f"({res.checked_text})"}


def _restore_plan(h: Host, a: dict, ctx: RunContext) -> Plan:
    from bigskies_ops.jobs.restore import check_restore, resolve_archive
    if a["undo"]:
        return _undo_plan(h, a, ctx)
    target = _target_db(a)
    refusals = _policy_refusal(h, "restore", ctx) if target is None else []
    path = None if _is_stand_in(a["archive"]) else resolve_archive(h, a["archive"], origin=a["origin"] or None)
    p = check_restore(h, path, target_db=target, terminate_sessions=a["terminate_sessions"], roles=a["roles"],
                      skip_missing_roles=a["skip_missing_roles"], skip_space_check=a["skip_space_check"]).to_json()
    p["refusals"] = refusals + p["refusals"]
    lines = [f"restore {path or a['archive']} into {p['database']!r} on {h.name}"
             + (" (a new database)" if target else f" (the current one kept as {p.get('pre_restore_copy')!r})")]
    # the detail says what is wrong; the check's name says what should hold ("... does not exist yet")
    lines += [f"  check FAILED: {c.get('detail') or c['check']}" for c in p["checks"] if not c["ok"]]
    return Plan(not p["refusals"], lines, p, p["refusals"],
                {"archive": path or a["archive"], "database": p["database"],
                 "pre_restore_copy": p.get("pre_restore_copy")})


register(Action("db.restore", "Restore a backup into a side database, check it, then swap it in (old one kept).", {
    "archive": Param(str, default="latest", help="'latest', a backup id, or an archive path or name"),
    "origin": Param(str, help="restore from backups pulled from this host (sub-folder <origin>/)"),
    "target_db": Param(str, help="restore into this NEW database and leave the original alone", check=_database_name),
    "roles": Param(bool, default=False, help="first create the backup's roles missing here"),
    "terminate_sessions": Param(bool, default=False, help="terminate sessions still connected at the swap"),
    "skip_missing_roles": Param(bool, default=False, help="restore although roles the archive names are missing"),
    "skip_space_check": Param(bool, default=False, help="do not refuse for too little free space on the server"),
    "jobs": Param(int, help="parallel sessions on local hosts (1-64; default 2)"),
    "undo": Param(bool, default=False, help="swap the newest pre-restore copy back in instead (no archive)"),
}, _restore_run, _restore_plan, destructive="restore", destructive_when=lambda a: not a.get("target_db"),
    facts=("archive", "database", "pre_restore_copy", "coordinators_restarted", "checked_tables", "restored_from",
           "previous_kept_as"),
    precheck=_restore_precheck))


# ------------------------------------------------------------------ docker.*
def _compose_host(h: Host) -> Host:
    if h.compose is None:
        raise UsageError(f"hosts.{h.name}: no compose: block in the inventory; docker.* tasks need one")
    return h


def _stack_plan(h: Host, action: str, ctx: RunContext, **kw) -> Plan:
    """:func:`~bigskies_ops.stack.lifecycle.plan_stack` against the states the earlier steps
    leave (``ctx.states``), and the states this step leaves."""
    from bigskies_ops.stack import lifecycle
    p = lifecycle.plan_stack(_compose_host(h), action, states=ctx.states.get(h.name), **kw)
    before = {r["service"]: r["state"] for r in p["services"]}
    ctx.states[h.name] = lifecycle.after_stack_action(before, action)
    lines = [p["command"]]
    lines += [f"  {s['service']:<16} {s['state']:<9} -> {s['would']}" for s in p["services"]]
    if p.get("waits"):
        lines.append(f"wait {p['waits']}")
    return Plan(True, lines, p)


def _nonnegative_seconds(v: float) -> None:
    if v < 0 or v == float("inf") or v != v:
        raise UsageError(f"expected {_SECONDS} (0 or more), got {v!r}")


def _seconds(a: dict, key: str) -> float:
    v = a[key]
    try:
        _nonnegative_seconds(v)
    except UsageError as e:
        raise UsageError(f"{key}: {e}") from None
    return v


def _up_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.stack import lifecycle
    res = lifecycle.up(_compose_host(h), timeout=_seconds(a, "timeout"), wait_for_migrations=a["wait_migrations"],
                       migrations_timeout=_seconds(a, "migrations_timeout"))
    return {"project": res["project"], "ready_after_s": res["ready_after_s"],
            "msg": f"project {res['project']!r} up; PostgreSQL ready after {res['ready_after_s']:.1f} s"}


register(Action("docker.up", "Start the stack and wait until PostgreSQL accepts connections.", {
    "timeout": Param(float, default=60.0, help="seconds to wait for PostgreSQL", check=_nonnegative_seconds),
    "wait_migrations": Param(bool, default=False, help="also wait until schema_migrations reaches the newest file"),
    "migrations_timeout": Param(float, default=120.0, help="seconds to wait for the migrations",
                                check=_nonnegative_seconds),
}, _up_run, lambda h, a, ctx: _stack_plan(h, "up", ctx, timeout=_seconds(a, "timeout"),
                                         wait_for_migrations=a["wait_migrations"]),
    facts=("project", "ready_after_s"), needs_compose=True))


def _down_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.stack import lifecycle
    res = lifecycle.down(_compose_host(h))
    return {"project": res["project"], "msg": f"project {res['project']!r} down (volumes kept)"}


register(Action("docker.down", "Stop and remove the containers; the data volume is kept.", {},
                _down_run, lambda h, a, ctx: _stack_plan(h, "down", ctx), facts=("project",), needs_compose=True))


def _build_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.stack import lifecycle
    res = lifecycle.build(_compose_host(h))
    return {"project": res["project"], "images": res["images"],
            "msg": f"images built for project {res['project']!r}: {', '.join(res['images']) or '(no build services)'}"}


register(Action("docker.build", "Rebuild the stack's images (data volume untouched).", {},
                _build_run, lambda h, a, ctx: _stack_plan(h, "build", ctx), facts=("project", "images"),
                needs_compose=True))


def _restart_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.hosts import compose as cmp
    from bigskies_ops.hosts import runner_for
    from bigskies_ops.stack import lifecycle
    h = _compose_host(h)
    if not a["service"]:
        res = lifecycle.restart(h, timeout=_seconds(a, "timeout"))
        return {"project": res["project"], "ready_after_s": res["ready_after_s"],
                "msg": f"project {res['project']!r} restarted; PostgreSQL ready after {res['ready_after_s']:.1f} s"}
    with runner_for(h) as runner:
        project = _known_service(h, runner, a["service"])
        cmp.run_compose(runner, h, "restart", a["service"], what=f"compose restart {a['service']}")
        waited = lifecycle.wait_ready(h, timeout=_seconds(a, "timeout"), runner=runner)
    return {"project": project.name, "ready_after_s": round(waited, 3),
            "msg": f"service {a['service']!r} restarted; PostgreSQL ready after {waited:.1f} s"}


def _known_service(h: Host, runner, service: str):
    from bigskies_ops.hosts import compose as cmp
    project = cmp.resolved_config(runner, h)
    if service not in project.services:
        raise UsageError(f"service: {service!r} is not a service of compose project {project.name!r}; "
                         f"its services: {', '.join(sorted(project.services))}")
    return project


def _restart_plan(h: Host, a: dict, ctx: RunContext) -> Plan:
    plan = _stack_plan(h, "restart", ctx, timeout=_seconds(a, "timeout"))
    if a["service"]:
        services = [s for s in plan.plan["services"] if s["service"] == a["service"]]
        if not services:
            raise UsageError(f"service: {a['service']!r} is not a service of compose project "
                             f"{plan.plan['project']!r}; its services: "
                             f"{', '.join(sorted(s['service'] for s in plan.plan['services']))}")
        plan.plan["services"] = services
        plan.lines = [plan.lines[0] + f" {a['service']}"] + [l for l in plan.lines[1:]
                                                             if l.strip().startswith(a["service"]) or l.startswith("wait")]
    return plan


register(Action("docker.restart", "Restart the stack's containers (or one service) and wait for PostgreSQL.", {
    "service": Param(str, help="restart only this compose service (default: all)"),
    "timeout": Param(float, default=60.0, help="seconds to wait for PostgreSQL", check=_nonnegative_seconds),
}, _restart_run, _restart_plan, facts=("project", "ready_after_s"), needs_compose=True))


def _pull_to(ctx: RunContext) -> Host:
    """Where a remote host's pre-purge backup is pulled (as ``docker.purge`` does): the
    inventory's first local host, else ``backups/database`` beside the inventory."""
    from bigskies_ops.inventory import BackupSettings
    for h in ctx.inventory.hosts.values():
        if not h.is_remote:
            return h
    return Host(name="local", backup=BackupSettings(dir=str(ctx.inventory.base_dir / "backups" / "database")))


def _earlier_backup(h: Host, ctx: RunContext) -> tuple[int, str] | None:
    """(step index, archive) of the newest backup of ``h`` an earlier step of the runbook wrote
    (check mode: will write), or None."""
    mine = [(i, arch) for i, host, arch in ctx.backups if host == h.name]
    return mine[-1] if mine else None


def _purge_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.stack import lifecycle
    h = _compose_host(h)
    _destructive(h, "purge", ctx, f"Purge the compose project on {h.name}"
                                  + (" (after a backup)?" if a["backup"] else " WITHOUT a backup?"))
    res = lifecycle.purge(h, take_backup=a["backup"], pull=a["pull"], pull_to=_pull_to(ctx) if h.is_remote else None)
    earlier = _earlier_backup(h, ctx)
    return {"backup": res["backup"], "pulled": res.get("pulled"), "volume": res["volume"], "project": res["project"],
            "msg": f"project {res['project']!r} purged; volume {res['volume']} removed"
                   + (f"; pre-purge backup {res['backup']}" if res["backup"] else
                      f"; its data is in {earlier[1]} (step {earlier[0]}'s backup)" if earlier else
                      "; no pre-purge backup")}


def _purge_plan(h: Host, a: dict, ctx: RunContext) -> Plan:
    from bigskies_ops.stack import lifecycle
    h = _compose_host(h)
    p = lifecycle.plan_purge(h, take_backup=a["backup"])
    p["refusals"] = _policy_refusal(h, "purge", ctx) + p["refusals"]
    ctx.states[h.name] = lifecycle.after_stack_action(ctx.states.get(h.name) or {}, "purge")
    earlier = _earlier_backup(h, ctx)
    lines = (["take a pre-purge backup first (if it fails nothing is purged)"] if a["backup"] else
             [f"  no pre-purge backup in this step (backup: false): the volume's data is kept in the backup step "
              f"{earlier[0]} will write ({earlier[1]})"] if earlier else
             ["  no pre-purge backup in this step (backup: false): the volume's data survives only in backups "
              "already taken"])
    lines += [f"remove the containers of compose project {p['project']!r}: {', '.join(p['containers']) or 'none'}",
              f"DELETE the data volume {p['volume']} ("
              + (f"size {p['volume_size']}" if p["volume_exists"] else "does not exist") + ")"]
    backup = (p.get("backup") or {}).get("archive")
    return Plan(not p["refusals"], lines, p, p["refusals"],
                {"backup": StandIn(backup) if backup else None, "volume": p["volume"], "project": p["project"]})


register(Action("docker.purge", "Remove the containers AND the data volume, after a pre-purge backup.", {
    "backup": Param(bool, default=True, help="take the pre-purge backup first (false: the data is gone for good)"),
    "pull": Param(bool, default=True, help="for a remote host: pull the pre-purge backup here"),
}, _purge_run, _purge_plan, destructive="purge", facts=("backup", "pulled", "volume", "project"),
    needs_compose=True))


# ------------------------------------------------------------------ db.pull
def _pull_static_check(h: Host, a: dict, inv) -> None:
    """Before the first step: ``from`` is an SSH host and the step's host a local one (else
    the step would fail only after the earlier steps ran)."""
    if isinstance(a.get("from"), str) and not inv.resolve(a["from"])[0].is_remote:
        raise UsageError(f"from: {a['from']} is not an SSH host (connection: local); db.pull pulls from an SSH "
                         f"host (use db.backup for a local host)")
    if h.is_remote:
        raise UsageError(f"host: db.pull runs on the local host that receives the backup; {h.name} is an SSH host "
                         f"(give the step host: a local host)")
    if a.get("existing") == "":
        _pull_spec(a)


def _pull_hosts(h: Host, a: dict, ctx: RunContext) -> tuple[Host, Host]:
    """(the SSH source ``from``, the step's host: the local destination)."""
    from bigskies_ops.jobs.backup import with_lock_wait_timeout
    src = with_lock_wait_timeout(ctx.inventory.host(a["from"]), a["lock_wait_timeout"])
    if not src.is_remote:
        raise UsageError(f"from {a['from']}: not an SSH host (connection: local); use db.backup for local hosts")
    if h.is_remote:
        raise UsageError(f"db.pull runs on the local host that receives the backup; {h.name} is an SSH host "
                         f"(give the step host: a local host)")
    return src, h


def _pull_spec(a: dict) -> str | None:
    if a.get("existing") == "":
        raise UsageError("existing: give 'latest', a backup id or an archive's file name (an empty value is neither)")
    return a["existing"]


def _pull_restore_kw(a: dict, ctx: RunContext) -> dict | None:
    if not a["restore"]:
        return None
    return {"terminate_sessions": a["terminate_sessions"], "skip_missing_roles": a["skip_missing_roles"],
            "jobs": a["jobs"], "task": f"{ctx.task} (db.pull --restore)"}


def _pull_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.jobs.pull import pull
    src, dest = _pull_hosts(h, a, ctx)
    spec = _pull_spec(a)
    if a["restore"]:
        _destructive(dest, "pull --to", ctx, f"WARNING: this will replace database {dest.postgres.database!r} on "
                                             f"{dest.name} with {src.name}'s data (the current one is kept as a "
                                             f"pre-restore copy).")
    out = pull(src, dest, existing=spec, fmt=a["format"], label=a["label"], restore=_pull_restore_kw(a, ctx))
    facts = {"archive": out.backup.path, "name": out.backup.name, "id": out.backup.id, "from": src.name,
             "size_bytes": out.manifest.get("bytes"), "database": None, "pre_restore_copy": None}
    if out.restore is not None:
        facts.update(database=out.restore.database, pre_restore_copy=out.restore.pre_restore_copy)
    facts["msg"] = (f"pulled {out.backup.name} from {src.name}" + (" (already here)" if out.already_present else "")
                    + (f"; restored into {out.restore.database!r}" if out.restore is not None else ""))
    facts["changed"] = not out.already_present or out.restore is not None
    return facts


def _pull_plan(h: Host, a: dict, ctx: RunContext) -> Plan:
    from bigskies_ops.jobs.pull import plan_pull
    src, dest = _pull_hosts(h, a, ctx)
    p = plan_pull(src, dest, existing=_pull_spec(a), fmt=a["format"], restore=_pull_restore_kw(a, ctx))
    p["refusals"] = (_policy_refusal(dest, "pull --to", ctx) if a["restore"] else []) + p["refusals"]
    lines = [f"{'copy' if p['mode'] == 'existing' else 'dump and stream'} {src.name}'s "
             f"{'archive ' + str(p['source'].get('path')) if p['mode'] == 'existing' else 'database'} "
             f"into {p['destination']}"]
    if p.get("already_here"):
        lines = [f"  {p['destination']} is here already: compare its size and sha256, copy nothing"]
    if a["restore"]:
        lines.append(f"restore it into {dest.name}'s database {dest.postgres.database!r} ({p.get('restore_how')})")
    return Plan(not p["refusals"] and not (p.get("already_here") and not a["restore"]), lines, p, p["refusals"],
                {"archive": StandIn(p["destination"]), "name": StandIn(os.path.basename(p["destination"])),
                 "from": src.name, "database": dest.postgres.database if a["restore"] else None})


register(Action("db.pull", "Pull a database from an SSH host to this machine (the step's host); optionally restore it.", {
    "from": Param(str, required=True, is_host=True, help="the SSH host to pull from"),
    "existing": Param(str, help="pull an archive already there: 'latest', a backup id or a file name "
                                "(default: a fresh dump streamed over SSH)"),
    "restore": Param(bool, default=False, help="then restore it into the step host's database"),
    "format": Param(str, choices=("plain", "custom"), help="a fresh dump's format (default: the source's)"),
    "label": Param(str, help="free text stored in the manifest"),
    "terminate_sessions": Param(bool, default=False, help="with restore: end sessions still connected at the swap"),
    "skip_missing_roles": Param(bool, default=False, help="with restore: restore although roles are missing"),
    "jobs": Param(int, help="parallel sessions of the restore (1-64)"),
    "lock_wait_timeout": Param(float, help="a fresh dump: seconds to wait for a table lock"),
}, _pull_run, _pull_plan, destructive="pull --to", destructive_when=lambda a: bool(a.get("restore")),
    facts=("archive", "name", "id", "from", "size_bytes", "database", "pre_restore_copy"),
    static_check=_pull_static_check))


# ------------------------------------------------------------------ db.prune
def _prune_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.jobs.retention import prune
    from bigskies_ops.safety import check_destructive
    check_destructive(h, "prune", database=h.postgres.database, force_protected=ctx.force_protected,
                      confirm=ctx.confirm)
    res = prune(h, include_failed=a["failed"], include_legacy=a["include_legacy"], task=ctx.task)
    return {"deleted": res.deleted, "bytes_freed": res.freed, "kept": len(res.plan.keep), "changed": bool(res.deleted),
            "msg": (f"pruned {len(res.plan.prune)} backup(s) ({len(res.deleted)} files, {human_bytes(res.freed)} "
                    f"freed), kept {len(res.plan.keep)}") if res.deleted else
                   f"nothing to prune, kept {len(res.plan.keep)}"}


def _prune_plan(h: Host, a: dict, ctx: RunContext) -> Plan:
    from bigskies_ops.jobs.retention import prune
    res = prune(h, dry_run=True, include_failed=a["failed"], include_legacy=a["include_legacy"])
    refusals = _policy_refusal(h, "prune", ctx) + [f"{g[1]!r} from {g[0]}: {why}"
                                                   for g, why in res.plan.refused.items()]
    lines = [f"delete {f}" for f in res.files] or ["  nothing to prune"]
    if res.files:
        lines.append(f"  would free {human_bytes(res.freed)} ({res.freed} bytes) in {h.backup.dir}")
    plan = {"would_delete": res.files, "bytes_freed": res.freed, "decisions": [d.to_json() for d in res.plan.decisions],
            "refusals": refusals}
    return Plan(bool(res.files) and not refusals, lines, plan, refusals,
                {"deleted": res.files, "bytes_freed": res.freed})


register(Action("db.prune", "Apply GFS retention (daily/weekly/monthly) to the host's backups.", {
    "failed": Param(bool, default=False, help="also prune FAILED runs, unfinished runs and .partial files"),
    "include_legacy": Param(bool, default=False, help="let seed-era files without a manifest take part"),
}, _prune_run, _prune_plan, destructive="prune", facts=("deleted", "bytes_freed", "kept")))


# ------------------------------------------------------------------ db.offsite
def _offsite_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.errors import BigskiesError
    from bigskies_ops.jobs.offsite import upload
    results = upload(h, a["target"], inv=ctx.inventory, task=ctx.task)
    bad = [r for r in results if r.error]
    if bad:
        raise BigskiesError("offsite copy failed: " + "; ".join(f"{r.target}: {r.failure()}" for r in bad),
                            exit_code=bad[0].exit_code or 1)
    uploaded = [n for r in results for n in r.uploaded]
    pruned = [n for r in results for n in r.pruned]
    return {"uploaded": uploaded, "pruned_remote": pruned, "targets": [r.target for r in results],
            "changed": bool(uploaded or pruned),
            "msg": f"offsite {', '.join(r.target for r in results)}: copied and verified {len(uploaded)}, "
                   f"pruned {len(pruned)} on the target(s)"}


def _offsite_plan(h: Host, a: dict, ctx: RunContext) -> Plan:
    from bigskies_ops.errors import BigskiesError
    from bigskies_ops.jobs.offsite import upload
    results = upload(h, a["target"], inv=ctx.inventory, check=True)
    bad = [r for r in results if r.error]
    if bad:
        raise BigskiesError("offsite target unreachable: " + "; ".join(f"{r.target}: {r.error}" for r in bad),
                            exit_code=bad[0].exit_code or 1)
    lines = [f"upload {n} to {r.target}" for r in results for n in r.uploaded]
    lines += [f"delete {n} on {r.target} (the host's retention)" for r in results for n in r.pruned]
    would = any(r.uploaded or r.pruned for r in results)
    return Plan(would, lines or ["  every backup is offsite already; nothing to prune there"],
                {"targets": [r.to_json() for r in results]},
                facts={"uploaded": [n for r in results for n in r.uploaded]})


register(Action("db.offsite", "Copy backups not yet offsite to the host's targets, verify each, prune remotely.", {
    "target": Param(str, help="only this offsite target (its name in the inventory); default: all"),
}, _offsite_run, _offsite_plan, facts=("uploaded", "pruned_remote", "targets")))


# ------------------------------------------------------------------ db.migrate
def _no_backup_refusal(h: Host, a: dict) -> list[str]:
    if a["no_backup"] and h.protected:
        return [f"refused: {h.name} is protected; no_backup is not allowed there (a pre-migrate backup is always "
                f"taken)"]
    return []


def _migrate_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.errors import SafetyError
    from bigskies_ops.jobs.migrations import migrate
    from bigskies_ops.safety import check_destructive
    check_destructive(h, "migrate", database=h.postgres.database, force_protected=ctx.force_protected,
                      confirm=ctx.confirm)
    refused = _no_backup_refusal(h, a)
    if refused:
        raise SafetyError(refused[0])
    res = migrate(h, to=a["to"], take_backup=not a["no_backup"], baseline=a["baseline"],
                  lock_timeout=_seconds(a, "lock_timeout"), task=ctx.task)
    return {"applied": [m["file"] for m in res.applied], "head": res.head, "backup": res.backup,
            "baselined": res.baselined, "changed": res.word == "changed",
            "msg": f"applied {len(res.applied)} migration(s), head {res.head}" if res.applied else
                   f"up to date (head {res.head if res.head is not None else '-'})"}


def _migrate_plan(h: Host, a: dict, ctx: RunContext) -> Plan:
    from bigskies_ops.jobs.migrations import migrate
    res = migrate(h, to=a["to"], check=True, take_backup=not a["no_backup"], baseline=a["baseline"],
                  lock_timeout=_seconds(a, "lock_timeout"))
    refusals = _policy_refusal(h, "migrate", ctx) + _no_backup_refusal(h, a) + (
        [res.would_refuse] if res.would_refuse else [])
    takes_backup = bool(res.pending) and not a["no_backup"]
    lines = [f"take a pre-migrate backup of {h.postgres.database!r} into {h.backup.dir}"] if takes_backup else []
    lines += [f"apply {m['file']}" for m in res.pending]
    if res.baselined:
        lines.append(f"record as applied (baseline): {', '.join(str(v) for v in res.baselined)}")
    if not lines:
        lines = [f"  up to date (head {res.head if res.head is not None else '-'}): nothing to apply"]
    doc = res.to_json()
    plan = {k: doc[k] for k in ("database", "pending", "baselined", "head")}
    plan.update(backup=takes_backup, refusals=refusals)
    return Plan(bool(res.pending or res.baselined) and not refusals, lines, plan, refusals,
                {"applied": [m["file"] for m in res.pending], "head": res.head})


register(Action("db.migrate", "Apply pending schema migrations (a pre-migrate backup first).", {
    "to": Param(int, help="apply up to and including this version only"),
    "no_backup": Param(bool, default=False, help="skip the pre-migrate backup (refused on protected hosts)"),
    "baseline": Param(int, help="record migrations up to this version as applied without running them"),
    "lock_timeout": Param(float, default=60.0, help="seconds to wait for the migration lock",
                          check=_nonnegative_seconds),
}, _migrate_run, _migrate_plan, destructive="migrate", facts=("applied", "head", "backup", "baselined")))
