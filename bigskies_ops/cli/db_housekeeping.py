"""``db.delete``: delete one backup (by the id ``db.list`` shows), or drop pre-restore
copies. Thin: bigskies_ops.jobs.housekeeping decides and deletes."""
from __future__ import annotations

from bigskies_ops import output
from bigskies_ops.cli.common import (HOST_HELP, INVENTORY_HELP, JSON_HELP, handles_errors, help_if_requested,
                                     load_inventory, optional_positional, task)
from bigskies_ops.errors import UsageError
from bigskies_ops.safety import check_destructive, confirm_or_refuse
from bigskies_ops.text import human_bytes


@task(positional=["backup"], help={
    "backup": "the backup: its id (first column of db.list, or its first 4+ characters), file name, or path",
    "host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP,
    "origin": "the backup is in the <origin>/ sub-folder of pulled backups (needed with a file name, not an id)",
    "check": "dry run: list the files it would delete and the bytes freed; change nothing",
    "yes": "do not ask for confirmation",
    "pulled_copies": "also delete the copies of it pulled to this machine (same name and sha256 in a local "
                     "host's <origin>/ folder)",
    "allow_last": "delete it even when it is the only good backup of its database",
    "pre_restore": "drop this pre-restore copy (a database name from db.list --pre-restore), or 'all', instead",
    "force_protected": "allow this on a protected host (with --confirm DBNAME)",
    "confirm": "the database name, repeated, for protected hosts"})
@handles_errors
def delete(c, backup=None, host=None, inventory=None, origin=None, check=False, yes=False, json=False,
           pulled_copies=False, allow_last=False, pre_restore=None, force_protected=False, confirm=None):
    """Delete one backup (archive, manifest, sidecars), or drop pre-restore copies (--pre-restore NAME|all)."""
    help_if_requested(backup, "db.delete")
    inv = load_inventory(inventory)
    from bigskies_ops.cli import checks
    action = "delete" if pre_restore is None else "delete --pre-restore"
    # a group holding a protected host: refused as a whole (exit 3), before "takes one host"
    refused = checks.group_refusal(inv, host, action, check=check, force_protected=force_protected,
                                   confirm=confirm)
    if refused and len(inv.resolve(host)) > 1:
        return checks.group_refused_report("db.delete", inv, host, refused, json)
    h = inv.host(host)
    # what the real run with these flags would refuse: a --check lists it and exits 0
    refusals = [refused] if refused else []
    if check:
        r = checks.policy_refusal(h, action, database=h.postgres.database, force_protected=force_protected,
                                  confirm=confirm)
        refusals += [r] if r else []
    if pre_restore is not None:
        if backup:
            raise UsageError(f"--pre-restore drops pre-restore copies and takes no BACKUP (got {backup!r})")
        return _pre_restore(h, pre_restore, check=check, yes=yes, json=json, force_protected=force_protected,
                            confirm=confirm, refusals=refusals)
    if not backup:
        raise UsageError(f"db.delete needs a backup: its id from `db.list --host {h.name}`, or its file name "
                         f"(or --pre-restore NAME|all)")
    from bigskies_ops.hosts import runner_for
    from bigskies_ops.jobs.housekeeping import delete as run_delete, plan_delete
    if not check:  # a dry run is allowed anywhere: it changes nothing
        check_destructive(h, "delete", database=h.postgres.database, force_protected=force_protected,
                          confirm=confirm)
    with runner_for(h) as runner:
        # an id or name that names no backup (or several) is a lookup error, --check or not
        # (exit 1, as db.restore's): there is nothing to plan
        p = plan_delete(h, runner, backup, origin=origin, inv=inv, with_copies=pulled_copies, allow_last=allow_last,
                        dry_run=check)
    b = p.backup
    lines = [f"delete {path} ({human_bytes(n)})" for path, n in p.files]
    for cp in p.copies:
        lines += ([f"delete {path} ({human_bytes(n)}, pulled copy on {cp.host})" for path, n in cp.files]
                  if pulled_copies else [f"  keep the pulled copy {cp.backup.path} on {cp.host} "
                                         f"(--pulled-copies deletes it too)"])
    lines.append(f"  would free {human_bytes(p.bytes)} ({p.bytes} bytes) in all")  # a fact, not a step
    if check:
        for w in p.warnings:
            lines.append(f"  warning: {w}")
        plan = {**p.to_json(), "refusals": refusals + p.refusals}
        checks.report("db.delete", h.name, plan, lines + checks.refusal_lines(
            plan["refusals"], f"delete backup {b.shown_name} on {h.name}"), json)
        return
    for w in p.warnings:
        output.note(f"warning: {w}")
    if not json:
        output.say(f"Backup {b.id}: {b.shown_name} ({b.status.lower()}) on {h.name}")
        for ln in lines:
            output.say(f"  {ln}")
    confirm_or_refuse(f"Delete backup {b.shown_name} ({b.id}) on {h.name}?", yes=yes)
    gone = run_delete(p)
    if json:
        output.emit_json({"result": "changed", "host": h.name, **p.to_json(), "deleted": gone})
        return
    output.result_line("changed", h.name, f"deleted {b.shown_name} ({b.id}): {len(gone)} file(s), "
                                          f"{human_bytes(p.bytes)} freed")


def _pre_restore(h, which: str, *, check: bool, yes: bool, json: bool, force_protected: bool, confirm,
                 refusals: list[str] = ()) -> None:
    """``db.delete --pre-restore NAME|all``: drop pre-restore copies (whole databases)."""
    from bigskies_ops.jobs.housekeeping import drop_pre_restore, pre_restore_plan
    if not which:
        raise UsageError("--pre-restore: give a copy's name (db.list --pre-restore) or 'all'")
    if not check:
        check_destructive(h, "delete --pre-restore", database=h.postgres.database,
                          force_protected=force_protected, confirm=confirm)
    copies = pre_restore_plan(h, which)
    total = sum(cp["bytes"] or 0 for cp in copies)
    lines = [f"drop database {cp['name']!r} ({human_bytes(cp['bytes'])}; pre-restore copy taken {cp['at']}, "
             f"replaced by {cp['replaced_by']})" for cp in copies]
    if copies:
        lines.append(f"  would free {human_bytes(total)} ({total} bytes) on the server; `db.restore --undo` can then "
                     f"only go back to the copies left")
    plan = {"database": h.postgres.database, "pre_restore_copies": copies, "bytes": total}
    if check:
        from bigskies_ops.cli import checks
        plan["refusals"] = list(refusals)
        output.check_report("db.delete", h.name, plan, lines + checks.refusal_lines(plan["refusals"]),
                            would_change=bool(copies) and not refusals, json=json)
        return
    if not copies:
        if json:
            output.emit_json({"result": "ok", "host": h.name, **plan, "dropped": []})
        else:
            output.result_line("ok", h.name, f"no pre-restore copies of {h.postgres.database!r}")
        return
    if not json:
        for ln in lines:
            output.say(f"  {ln}")
    confirm_or_refuse(f"Drop {len(copies)} pre-restore cop{'y' if len(copies) == 1 else 'ies'} of "
                      f"{h.postgres.database!r} on {h.name}?", yes=yes)
    dropped = drop_pre_restore(h, [cp["name"] for cp in copies])
    if json:
        output.emit_json({"result": "changed" if dropped else "ok", "host": h.name, **plan, "dropped": dropped})
        return
    output.result_line("changed" if dropped else "ok", h.name,
                       f"dropped {len(dropped)} pre-restore cop{'y' if len(dropped) == 1 else 'ies'} "
                       f"({human_bytes(total)})")


optional_positional("db.delete", "backup")  # db.delete --pre-restore NAME takes no BACKUP
#: the tasks of this module; :mod:`bigskies_ops.cli` gathers them into the ``db`` namespace
TASKS = (delete,)
