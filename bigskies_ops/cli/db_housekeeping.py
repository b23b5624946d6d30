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
    h = inv.host(host)
    if pre_restore is not None:
        if backup:
            raise UsageError(f"--pre-restore drops pre-restore copies and takes no BACKUP (got {backup!r})")
        return _pre_restore(h, pre_restore, check=check, yes=yes, json=json, force_protected=force_protected,
                            confirm=confirm)
    if not backup:
        raise UsageError(f"db.delete needs a backup: its id from `db.list --host {h.name}`, or its file name "
                         f"(or --pre-restore NAME|all)")
    from bigskies_ops.hosts import runner_for
    from bigskies_ops.jobs.housekeeping import delete as run_delete, plan_delete
    if not check:  # a dry run is allowed anywhere: it changes nothing
        check_destructive(h, "delete", database=h.postgres.database, force_protected=force_protected,
                          confirm=confirm)
    with runner_for(h) as runner:
        p = plan_delete(h, runner, backup, origin=origin, inv=inv, with_copies=pulled_copies, allow_last=allow_last)
    b = p.backup
    lines = [f"delete {path} ({human_bytes(n)})" for path, n in p.files]
    for cp in p.copies:
        lines += ([f"delete {path} ({human_bytes(n)}, pulled copy on {cp.host})" for path, n in cp.files]
                  if pulled_copies else [f"  keep the pulled copy {cp.backup.path} on {cp.host} "
                                         f"(--pulled-copies deletes it too)"])
    lines.append(f"free {human_bytes(p.bytes)} ({p.bytes} bytes)")
    if check:
        for w in p.warnings:
            lines.append(f"  warning: {w}")
        output.check_report("db.delete", h.name, p.to_json(), lines, would_change=True, json=json)
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


def _pre_restore(h, which: str, *, check: bool, yes: bool, json: bool, force_protected: bool, confirm) -> None:
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
        lines.append(f"free {human_bytes(total)} ({total} bytes) on the server; `db.restore --undo` can then "
                     f"only go back to the copies left")
    plan = {"database": h.postgres.database, "pre_restore_copies": copies, "bytes": total}
    if check:
        output.check_report("db.delete", h.name, plan, lines, would_change=bool(copies), json=json)
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
