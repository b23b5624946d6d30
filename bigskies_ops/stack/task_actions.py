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
    return {"archive": res.backup.path, "id": res.backup.id, "name": res.backup.name, "size_bytes": m.get("bytes"),
            "sha256": m.get("sha256"), "msg": f"backup {res.backup.name} written ({human_bytes(m.get('bytes'))})"}


def _backup_plan(h: Host, a: dict, ctx: RunContext) -> Plan:
    from bigskies_ops.jobs.backup import plan_backup
    p = plan_backup(_backup_host(h, a), fmt=a["format"], exclude_table_data=tuple(a["exclude_table_data"] or ()),
                    schema_only=a["schema_only"])
    where = f" on {p['on_host']}" if p.get("on_host") else ""
    lines = [f"dump database {p['database']!r} ({human_bytes(p['database_bytes'])}) as {p['format']}"
             + (", schema only" if p["schema_only"] else ""),
             f"write {p['archive']}{where} with its manifest",
             f"  free space: {human_bytes(p['free_bytes'])}; about {human_bytes(p['needed_bytes'])} needed"]
    return Plan(not p["refusals"], lines, p, list(p["refusals"]),
                {"archive": StandIn(p["archive"]), "id": StandIn("(the new backup's id)"),
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
}, _backup_run, _backup_plan))


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
}, _verify_run, _verify_plan, changes=False))


# ------------------------------------------------------------------ db.restore
def _target_db(a: dict) -> str | None:
    t = a["target_db"]
    if t is not None and (not t.strip() or len(t.encode()) > 63):
        raise UsageError(f"target_db {t!r}: expected a database name of 1 to 63 bytes")
    return t


def _restore_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.jobs.restore import resolve_archive, restore
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
                   f"({res.checked_tables} tables checked against the manifest)"}


def _restore_plan(h: Host, a: dict, ctx: RunContext) -> Plan:
    from bigskies_ops.jobs.restore import check_restore, resolve_archive
    target = _target_db(a)
    refusals = _policy_refusal(h, "restore", ctx) if target is None else []
    path = None if _is_stand_in(a["archive"]) else resolve_archive(h, a["archive"], origin=a["origin"] or None)
    p = check_restore(h, path, target_db=target, terminate_sessions=a["terminate_sessions"], roles=a["roles"],
                      skip_missing_roles=a["skip_missing_roles"], skip_space_check=a["skip_space_check"]).to_json()
    p["refusals"] = refusals + p["refusals"]
    lines = [f"restore {path or a['archive']} into {p['database']!r} on {h.name}"
             + (" (a new database)" if target else f" (the current one kept as {p.get('pre_restore_copy')!r})")]
    lines += [f"  check FAILED: {c['check']}" + (f" ({c['detail']})" if c.get("detail") else "")
              for c in p["checks"] if not c["ok"]]
    return Plan(not p["refusals"], lines, p, p["refusals"],
                {"archive": path or a["archive"], "database": p["database"],
                 "pre_restore_copy": p.get("pre_restore_copy")})


register(Action("db.restore", "Restore a backup into a side database, check it, then swap it in (old one kept).", {
    "archive": Param(str, default="latest", help="'latest', a backup id, or an archive path or name"),
    "origin": Param(str, help="restore from backups pulled from this host (sub-folder <origin>/)"),
    "target_db": Param(str, help="restore into this NEW database and leave the original alone"),
    "roles": Param(bool, default=False, help="first create the backup's roles missing here"),
    "terminate_sessions": Param(bool, default=False, help="terminate sessions still connected at the swap"),
    "skip_missing_roles": Param(bool, default=False, help="restore although roles the archive names are missing"),
    "skip_space_check": Param(bool, default=False, help="do not refuse for too little free space on the server"),
    "jobs": Param(int, help="parallel sessions on local hosts (1-64; default 2)"),
}, _restore_run, _restore_plan, destructive="restore", destructive_when=lambda a: not a.get("target_db")))


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


def _seconds(a: dict, key: str) -> float:
    v = a[key]
    if v < 0 or v == float("inf"):
        raise UsageError(f"{key}: expected {_SECONDS} (0 or more), got {v!r}")
    return v


def _up_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.stack import lifecycle
    res = lifecycle.up(_compose_host(h), timeout=_seconds(a, "timeout"), wait_for_migrations=a["wait_migrations"],
                       migrations_timeout=_seconds(a, "migrations_timeout"))
    return {"project": res["project"], "ready_after_s": res["ready_after_s"],
            "msg": f"project {res['project']!r} up; PostgreSQL ready after {res['ready_after_s']:.1f} s"}


register(Action("docker.up", "Start the stack and wait until PostgreSQL accepts connections.", {
    "timeout": Param(float, default=60.0, help="seconds to wait for PostgreSQL"),
    "wait_migrations": Param(bool, default=False, help="also wait until schema_migrations reaches the newest file"),
    "migrations_timeout": Param(float, default=120.0, help="seconds to wait for the migrations"),
}, _up_run, lambda h, a, ctx: _stack_plan(h, "up", ctx, timeout=_seconds(a, "timeout"),
                                         wait_for_migrations=a["wait_migrations"])))


def _down_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.stack import lifecycle
    res = lifecycle.down(_compose_host(h))
    return {"project": res["project"], "msg": f"project {res['project']!r} down (volumes kept)"}


register(Action("docker.down", "Stop and remove the containers; the data volume is kept.", {},
                _down_run, lambda h, a, ctx: _stack_plan(h, "down", ctx)))


def _build_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.stack import lifecycle
    res = lifecycle.build(_compose_host(h))
    return {"project": res["project"], "images": res["images"],
            "msg": f"images built for project {res['project']!r}: {', '.join(res['images']) or '(no build services)'}"}


register(Action("docker.build", "Rebuild the stack's images (data volume untouched).", {},
                _build_run, lambda h, a, ctx: _stack_plan(h, "build", ctx)))


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
    "timeout": Param(float, default=60.0, help="seconds to wait for PostgreSQL"),
}, _restart_run, _restart_plan))


def _pull_to(ctx: RunContext) -> Host:
    """Where a remote host's pre-purge backup is pulled (as ``docker.purge`` does): the
    inventory's first local host, else ``backups/database`` beside the inventory."""
    from bigskies_ops.inventory import BackupSettings
    for h in ctx.inventory.hosts.values():
        if not h.is_remote:
            return h
    return Host(name="local", backup=BackupSettings(dir=str(ctx.inventory.base_dir / "backups" / "database")))


def _purge_run(h: Host, a: dict, ctx: RunContext) -> dict:
    from bigskies_ops.stack import lifecycle
    h = _compose_host(h)
    _destructive(h, "purge", ctx, f"Purge the compose project on {h.name}"
                                  + (" (after a backup)?" if a["backup"] else " WITHOUT a backup?"))
    res = lifecycle.purge(h, take_backup=a["backup"], pull=a["pull"], pull_to=_pull_to(ctx) if h.is_remote else None)
    return {"backup": res["backup"], "pulled": res.get("pulled"), "volume": res["volume"], "project": res["project"],
            "msg": f"project {res['project']!r} purged; volume {res['volume']} removed"
                   + (f"; pre-purge backup {res['backup']}" if res["backup"] else "; no backup")}


def _purge_plan(h: Host, a: dict, ctx: RunContext) -> Plan:
    from bigskies_ops.stack import lifecycle
    h = _compose_host(h)
    p = lifecycle.plan_purge(h, take_backup=a["backup"])
    p["refusals"] = _policy_refusal(h, "purge", ctx) + p["refusals"]
    ctx.states[h.name] = lifecycle.after_stack_action(ctx.states.get(h.name) or {}, "purge")
    lines = (["take a pre-purge backup first (if it fails nothing is purged)"] if a["backup"] else
             ["  NO pre-purge backup (backup: false): the data is gone for good"])
    lines += [f"remove the containers of compose project {p['project']!r}: {', '.join(p['containers']) or 'none'}",
              f"DELETE the data volume {p['volume']} ("
              + (f"size {p['volume_size']}" if p["volume_exists"] else "does not exist") + ")"]
    backup = (p.get("backup") or {}).get("archive")
    return Plan(not p["refusals"], lines, p, p["refusals"],
                {"backup": StandIn(backup) if backup else None, "volume": p["volume"], "project": p["project"]})


register(Action("docker.purge", "Remove the containers AND the data volume, after a pre-purge backup.", {
    "backup": Param(bool, default=True, help="take the pre-purge backup first (false: the data is gone for good)"),
    "pull": Param(bool, default=True, help="for a remote host: pull the pre-purge backup here"),
}, _purge_run, _purge_plan, destructive="purge"))
