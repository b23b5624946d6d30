"""``--check`` (dry run) reports: the plans the jobs compute, as the human lines of
:func:`bigskies_ops.output.check_report` (its JSON carries the plan itself).

The plans come from the jobs (``plan_restore``, ``plan_undo``, ``plan_backup``,
``plan_pull``, the stack's and scenarios' plans): the same functions the real runs
execute, so a check cannot say other than what the run would do. Lines read after
"would " (steps) or are indented facts.
"""
from __future__ import annotations

from bigskies_ops import output
from bigskies_ops.errors import SafetyError
from bigskies_ops.safety import check_destructive
from bigskies_ops.text import human_bytes


def _b(n) -> str:
    return human_bytes(n) if n is not None else "unknown"


def policy_refusal(hosts, action: str, **kw) -> str | None:
    """The safety policy's refusal of the real run with these flags (None: allowed), for
    a check that reports it instead of refusing (:func:`bigskies_ops.safety.check_destructive`)."""
    try:
        check_destructive(hosts, action, **kw)
    except SafetyError as e:
        return str(e)
    return None


def group_refusal(inv, selector: str | None, action: str, *, check: bool, force_protected: bool = False,
                  confirm: str | None = None) -> str | None:
    """The safety policy for a ``--host`` value that names a group, ``all`` or a list
    (docs/safety.md): a destructive ``action`` on one holding a protected host is refused
    (exit 3) even when it selects that host alone, and before the task's "takes one host"
    usage error. The real run (``check`` false) raises; a check gets the refusal's message
    to list under ``refusals``. None: not a group, or no protected host in it.

    Raises:
        SafetyError: (not ``check``) the refusal. InventoryError / UsageError: an unknown
            host or group (exit 2)."""
    from bigskies_ops.safety import group_selector
    group = group_selector(inv.hosts, selector)
    if not group:
        return None
    hosts = inv.resolve(selector)
    if check:
        return policy_refusal(hosts, action, force_protected=force_protected, confirm=confirm, group=group)
    check_destructive(hosts, action, force_protected=force_protected, confirm=confirm, group=group)
    return None


def group_refused_report(task: str, inv, selector: str, refusal: str, json: bool) -> None:
    """The check report of a run refused for its group as a whole (:func:`group_refusal`)
    when the group selects several hosts: no host's plan (the run plans none), the hosts it
    selects and the refusal; result ``ok`` (the run would change nothing), exit 0."""
    names = [h.name for h in inv.resolve(selector)]
    plan = {"group": selector, "hosts": names, "refusals": [refusal]}
    report(task, selector, plan, [f"  --host {selector} selects {', '.join(names)}"] + refusal_lines([refusal]), json)


def refusal_lines(refusals: list[str], confirm: str | None = None) -> list[str]:
    """The closing lines: what the real run would refuse (exit 3), or what it would ask."""
    out = [f"{output.REFUSE_PREFIX}{r}" for r in refusals]
    if not refusals and confirm:
        out.append(f"  the real run asks for confirmation ({confirm}) on a terminal, else needs --yes")
    return out


def report(task: str, host: str, plan: dict, lines: list[str], json: bool) -> None:
    """:func:`bigskies_ops.output.check_report` of ``plan``: the run would change something
    unless it would be refused (``plan["refusals"]``)."""
    output.check_report(task, host, plan, lines, would_change=not plan.get("refusals"), json=json)


def restore_lines(p: dict) -> list[str]:
    """Lines of a :class:`bigskies_ops.jobs.restore.RestorePlan` (its ``to_json()``)."""
    a, out = p["archive"], []
    if a.get("path"):
        out.append(f"restore {a['path']} ({_b(a.get('bytes'))}, {a.get('format') or 'format unknown'}, "
                   f"manifest {a.get('manifest') or 'none'})")
    else:
        out.append(f"restore the archive {a.get('pending')}" if a.get("pending", "").startswith("once")
                   else f"restore the archive: {a.get('pending')}")
    for c in p["checks"]:
        out.append(f"  check {'ok' if c['ok'] else 'FAILED'}: {c['check']}"
                   + (f" ({c['detail']})" if c["detail"] and c["ok"] else ""))
    for w in p.get("warnings") or []:
        out.append(f"  warning: {w}")
    sp = p.get("space")
    if sp and sp.get("needed") is None:
        from bigskies_ops.pg.admin import SIZE_UNKNOWN  # loaded already: the plan was computed with it
        out.append(f"  space on the server: {_b(sp.get('free'))} free" + (f" ({sp['where']})" if sp.get("where") else "")
                   + f"; the room needed is not known ({SIZE_UNKNOWN})")
    elif sp:
        out.append(f"  space on the server: about {_b(sp.get('needed'))} needed, {_b(sp.get('free'))} free"
                   + (f" ({sp['where']})" if sp.get("where") else ""))
    if p.get("roles_created"):
        out.append(f"create roles missing here (--roles): {', '.join(p['roles_created'])}")
    if p.get("missing_roles"):
        out.append(f"  roles the archive names that are missing here: {', '.join(p['missing_roles'])}")
    for d in p["drop"]:
        if d["why"].startswith("left"):
            out.append(f"drop database {d['name']!r} ({_b(d['bytes'])}; {d['why']})")
    if p.get("side_db"):
        out.append(f"create side database {p['side_db']!r} and load the archive into it (stop on error), "
                   f"then check it against the manifest")
    sess = p.get("sessions") or []
    if sess:
        listing = "; ".join(f"pid {s['pid']} {s['user']}@{s['client'] or 'local'} {s['application'] or ''}".strip()
                            for s in sess)
        if p.get("terminate_sessions"):
            out.append(f"end {len(sess)} session(s) connected to {p['database']!r} at the swap: {listing}")
        else:
            out.append(f"  {len(sess)} session(s) connected to {p['database']!r} now: {listing}"
                       " (still connected at the swap, they stop the restore: --terminate-sessions ends them)")
    elif p["target_db"] is None and p.get("pre_restore_copy"):
        out.append(f"  no session connected to {p['database']!r} now")
    if p["target_db"] is not None:
        out.append(f"rename it to {p['target_db']!r} (a new database; the host's database is not touched)")
    elif p.get("pre_restore_copy"):
        co = p.get("coordinators") or []
        if co:
            out.append(f"stop the running coordinators {', '.join(co)} before the swap and start them again after")
        out.append(f"swap in one transaction: {p['database']!r} becomes the restored copy, the current one is "
                   f"kept as {p['pre_restore_copy']!r}")
    elif p.get("side_db"):
        out.append(f"rename it to {p['database']!r} (no such database yet)")
    for d in p["drop"]:
        if not d["why"].startswith("left"):
            out.append(f"drop database {d['name']!r} ({_b(d['bytes'])}; {d['why']})")
    return out


def undo_lines(p: dict) -> list[str]:
    """Lines of :func:`bigskies_ops.jobs.swap.check_undo`'s plan."""
    if not p.get("restored_from"):
        return [f"  no pre-restore copy of {p['database']!r}: nothing to swap back"]
    out = [f"swap the pre-restore copy {p['restored_from']!r} (taken {p.get('restored_from_at')}) back in as "
           f"{p['database']!r}; the current {p['database']!r} is kept as {p['previous_kept_as']!r} "
           f"(so the undo can be undone)"]
    if p.get("coordinators"):
        out.insert(0, f"stop the running coordinators {', '.join(p['coordinators'])} and start them again after")
    if p.get("sessions"):
        n = len(p["sessions"])
        out.append(f"end {n} session(s) connected to {p['database']!r}" if p.get("terminate_sessions") else
                   f"  {n} session(s) connected to {p['database']!r} now (they stop the swap: --terminate-sessions)")
    return out


def backup_lines(p: dict) -> list[str]:
    """Lines of :func:`bigskies_ops.jobs.backup.plan_backup`'s plan."""
    where = f" on {p['on_host']}" if p.get("on_host") else ""
    out = [f"dump database {p['database']!r} ({_b(p['database_bytes'])} on the server) "
           f"as {p['format']} (compression level {p['compress_level']})"
           + (", schema only" if p["schema_only"] else "")
           + (f", without the data of {', '.join(p['exclude_table_data'])}" if p["exclude_table_data"] else ""),
           f"write {p['archive']}{where} with its manifest" + ("" if p["dir_exists"] else " (the folder is created)")]
    if p.get("roles_file"):
        out.append("write the cluster's roles beside it (backup.roles)")
    out.append(f"  estimated size: {_b(p['estimated_bytes'])} (the last {p['format']} backup's size)"
               if p["estimated_bytes"] else f"  estimated size: unknown (no earlier {p['format']} backup)")
    out.append(f"  free space in {p['dir']}{where}: {_b(p['free_bytes'])}; about {_b(p['needed_bytes'])} needed, "
               f"from {p['estimate_basis']}" + ("" if p["space_check"] else " (space check off)"))
    out.append(f"  lock waits: {p['lock_wait']['policy']}")
    return out


def pull_lines(p: dict) -> list[str]:
    """Lines of :func:`bigskies_ops.jobs.pull.plan_pull`'s plan."""
    s = p["source"]
    if p["mode"] == "existing":
        out = [f"copy {p['from']}:{s['path']} ({_b(s['bytes'])}, manifest {s.get('manifest') or 'none'}) "
               f"to {p['destination']}"]
        if p["already_here"]:
            out = [f"  {p['destination']} is here already: compare its size and sha256, copy nothing"]
        elif p.get("resume_at"):
            out.append(f"  resume at byte {p['resume_at']} of its .partial")
    else:
        out = [f"dump {p['from']}:{s['database']!r} ({_b(s['database_bytes'])} on the server) as {p['format']}, "
               f"streamed over SSH into {p['destination']} (nothing written on {p['from']})",
               f"  estimated size: {_b(p['estimated_bytes'])} (the last {p['format']} backup pulled from "
               f"{p['from']})" if p.get("estimated_bytes") else
               f"  estimated size: unknown (no earlier {p['format']} backup pulled from {p['from']})"]
    out.append(f"  free space here ({p['dir']}): {_b(p['free_bytes'])}")
    if p.get("restore") is not None:
        when = ("while it arrives (a plain dump is loaded as it streams in)" if p["restore_how"] == "while arriving"
                else "after the pull (from the complete file)")
        out.append(f"restore it into {p['to']}'s database {when}:")
        out += ["  " + (l if l.startswith("  ") else "would " + l) for l in restore_lines(p["restore"])]
    return out


def stack_lines(p: dict) -> list[str]:
    """Lines of :func:`bigskies_ops.stack.lifecycle.plan_stack`'s plan."""
    out = [f"{p['command']} (compose project {p['project']!r} on {p['host']})"]
    for s in p["services"]:
        out.append(f"  {s['service']:<16} {s['state']:<9} -> {s['would']}"
                   + ("  (coordinator)" if s.get("coordinator") else ""))
    if p.get("images"):
        out.append(f"  images built: {', '.join(p['images'])}")
    if p.get("volume_note"):
        out.append(f"  data volume: {p['volume_note']}")
    if p.get("waits"):
        out.append(f"wait {p['waits']}")
    return out


def purge_lines(p: dict) -> list[str]:
    """Lines of a ``docker.purge`` plan (``stack.lifecycle.PurgePlan`` plus the backup's plan)."""
    out = []
    if p.get("backup"):
        out.append("take a pre-purge backup first (if it fails nothing is purged):")
        out += ["  " + (l if l.startswith("  ") else "would " + l) for l in backup_lines(p["backup"])]
    elif p.get("backup") is None and p.get("no_backup"):
        out.append("  NO pre-purge backup (--no-backup): the data is gone for good")
    elif p.get("backup_error"):
        out.append("take a pre-purge backup first: it cannot be taken now (see the refusal below)")
    out.append(f"remove the containers of compose project {p['project']!r}: {', '.join(p['containers']) or 'none'}")
    out.append(f"DELETE the data volume {p['volume']} ("
               + (f"size {p['volume_size']}" if p["volume_exists"] else "does not exist") + ")")
    if p.get("other_volumes"):
        out.append(f"delete the project's other volumes: {', '.join(p['other_volumes'])}")
    return out


def scenario_lines(p: dict) -> list[str]:
    """Lines of a scenario's plan (:mod:`bigskies_ops.stack.scenarios`): each step, then its plan."""
    out = []
    for i, st in enumerate(p["steps"], 1):
        out.append(f"run step {i}/{len(p['steps'])}: {st['title']}")
        sub = st.get("plan")
        kind = st.get("kind")
        lines = (backup_lines(sub) if kind == "backup" else stack_lines(sub) if kind == "stack"
                 else purge_lines(sub) if kind == "purge" else restore_lines(sub) if kind == "restore"
                 else [f"  {x}" for x in (st.get("notes") or [])])
        out += ["  " + (l if l.startswith("  ") else "would " + l) for l in lines] if sub is not None or lines else []
    return out
