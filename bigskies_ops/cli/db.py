"""``db.*`` tasks: back up, list, inspect, restore, run SQL. A thin shell over the library."""
from __future__ import annotations

import os
import shlex
import sys


from bigskies_ops import output
from bigskies_ops.cli import render
from bigskies_ops.pg.access import PostgresAccess, classify_pg_error
from bigskies_ops.jobs.backup import backup as run_backup
from bigskies_ops.archives.catalog import list_backups
from bigskies_ops.text import human_bytes
from bigskies_ops.errors import UsageError
from bigskies_ops.jobs.restore import resolve_archive, restore as run_restore
from bigskies_ops.jobs.swap import pre_restore_copies, undo as run_undo
from bigskies_ops.hosts.runners import tail
from bigskies_ops.hosts import runner_for
from bigskies_ops.hosts.local import LocalRunner
from bigskies_ops.safety import check_destructive, confirm_or_refuse, group_selector, is_tty
from bigskies_ops.jobs.status import status as run_status
from bigskies_ops.cli.common import (HOST_HELP, INVENTORY_HELP, JSON_HELP, LOCK_WAIT_HELP, handles_errors, help_if_requested, jobs_arg,
                     load_inventory, lock_wait_host, optional_positional, task)


def _restore_command(host, path: str) -> str:
    if host.is_remote:  # the archive is on that host; db.restore reads archives on this machine
        return (f"{output.hint(f'db.pull --from {host.name} --existing {shlex.quote(os.path.basename(path))}')}"
                f"   # then: {output.command()} db.restore latest --origin {host.name} --host HOST")
    rel = os.path.relpath(path)
    shown = path if rel.startswith("..") else rel  # relative to this folder only when inside it
    return output.hint(f"db.restore {shlex.quote(shown)} --host {host.name}")


@task(iterable=["exclude_table_data"], help={
    "host": HOST_HELP, "inventory": INVENTORY_HELP,
    "format": "plain (.sql.gz, the guide's format) or custom (.dump, parallel restore); default: the host's backup.format",
    "label": "free text stored in the manifest",
    "exclude_table_data": "pg_dump --exclude-table-data PATTERN (repeatable)",
    "schema_only": "dump the schema without data",
    "pull": "SSH hosts: also copy the archive and its manifest to the local backup dir under <host>/",
    "verbose": "run pg_dump --verbose (its messages land in the manifest's stderr_tail, never in the dump)",
    "lock_wait_timeout": LOCK_WAIT_HELP,
    "skip_space_check": "do not fail when the backup folder seems to lack the space the backup needs "
                        "(the last backup plus 20%, else the database's size)",
    "check": "dry run: print what would happen (CHECK MODE), change nothing, exit 0",
    "json": JSON_HELP})
@handles_errors
def backup(c, host=None, format=None, label=None, exclude_table_data=None, schema_only=False, inventory=None,
           json=False, pull=False, verbose=False, lock_wait_timeout=None, skip_space_check=False, check=False):
    """Back up a host's database into a new archive with its manifest."""
    from bigskies_ops.jobs.backup import without_space_check
    inv = load_inventory(inventory)
    hosts = [without_space_check(lock_wait_host(x, lock_wait_timeout), skip_space_check) for x in inv.resolve(host)]
    if check:
        return _check_backup(hosts, format, tuple(exclude_table_data or ()), schema_only, json)
    if len(hosts) > 1:  # a group or a comma list: hosts in parallel, recap per host (cli/db_remote.py)
        from bigskies_ops.cli.db_remote import fleet_backup
        return fleet_backup(inv, hosts, fmt=format, label=label, exclude_table_data=tuple(exclude_table_data or ()),
                            schema_only=schema_only, pull=pull, json=json)
    h = hosts[0]
    if pull and not h.is_remote:
        raise UsageError(f"--pull: {h.name} is a local host; its backup is already here")
    if format not in (None, "plain", "custom"):
        raise UsageError(f"--format: expected plain or custom, got {format!r}")
    db = h.postgres.database
    if not json:
        output.heading("BIG SKIES Framework - Database Backup")
        output.say(f"Backing up database: {db}")
        output.say(f"Host: {h.name} ({h.access_mode})")
        if h.container:
            output.say(f"Container: {h.container.name}")
        output.say(f"Output folder: {h.backup.dir}")
        output.say()
    with output.transfer_progress(f"pg_dump {db}") as cb:
        res = run_backup(h, fmt=format, label=label, exclude_table_data=tuple(exclude_table_data or ()),
                         schema_only=schema_only, progress=cb, verbose=verbose)
    m = res.manifest
    copy = None
    if pull:
        from bigskies_ops.cli.db_remote import pull_after_backup
        copy = pull_after_backup(inv, h, res, json=json)
        m = dict(m, pulled_copy={k: copy[k] for k in ("path", "bytes", "sha256")})
    if json:
        output.emit_json({"result": "changed", "host": h.name, **res.backup.to_json(), "manifest": m,
                          "warnings": res.warnings})
        return
    rows = sum(t["rows"] or 0 for t in m.get("tables", []))
    output.say("Backup completed successfully")
    output.say(f"   File: {res.backup.name}")
    if m.get("raw_bytes"):
        output.say(f"   Size: {human_bytes(m['raw_bytes'])} (SQL)")
    from bigskies_ops.jobs.dump import compression_text
    output.say(f"   Compressed: {human_bytes(m['bytes'])} ({compression_text(m)})")
    output.say(f"   Path: {res.backup.path}" + (f" (on {h.name})" if h.is_remote else ""))
    if copy:
        output.say(f"   Pulled to: {copy['path']} (size and sha256 checked, {copy['rate']})")
    output.say(f"   sha256: {m['sha256']}")
    head = m.get("schema_migrations_head") or {}
    output.say(f"   Tables: {len(m.get('tables', []))}, rows: {rows:,}; migration head: {head.get('version') or '-'}"
               f" {head.get('name') or ''}".rstrip())
    output.say(f"   Took: {m['duration_s']:.1f} s (pg_dump {m['pg_dump_version']}, server {m['server_version']})")
    output.say()
    output.say("Recent backups:")
    output.print_table(render.backups_table(list_backups(LocalRunner(), h.backup.dir)[:5]) if not h.is_remote
                       else render.backups_table(list_backups(runner_for(h), h.backup.dir)[:5]))
    output.say()
    output.say("To restore this backup:")
    if copy:  # already here: restore the local copy
        output.say("  " + output.hint(f"db.restore {shlex.quote(copy['path'])} --host {copy['to']}"))
    else:
        output.say(f"  {_restore_command(h, res.backup.path)}")
    output.result_line("changed", h.name, f"backup {res.backup.name} written")


def _check_backup(hosts, fmt, excl, schema_only, json) -> None:
    """``db.backup --check``: each host's :func:`bigskies_ops.jobs.backup.plan_backup`, changing nothing."""
    from bigskies_ops.cli import checks
    from bigskies_ops.jobs.backup import plan_backup
    docs = []
    for h in hosts:
        plan = plan_backup(h, fmt=fmt, exclude_table_data=excl, schema_only=schema_only)
        if json and len(hosts) > 1:  # one JSON document for the group: a check report per host in it
            docs.append({"result": "ok" if plan["refusals"] else "changed", "check": True, "task": "db.backup",
                         "host": h.name, "would_change": not plan["refusals"], "plan": plan})
            continue
        lines = checks.backup_lines(plan) + checks.refusal_lines(plan["refusals"])
        checks.report("db.backup", h.name, plan, lines, json)
    if docs:
        output.emit_json({"check": True, "task": "db.backup", "hosts": docs})


@task(name="list", help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP,
                         "origin": "list backups pulled from this host (the <origin>/ sub-folder)",
                         "all": "list the host's own and all pulled backups",
                         "pre_restore": "list the pre-restore copies kept in the server instead",
                         "offsite": "list what this offsite target (its name in the inventory) holds instead"})
@handles_errors
def list_(c, host=None, origin=None, all=False, pre_restore=False, inventory=None, json=False, offsite=None):
    """List backups newest first: id, UTC time, age, size, format, kind, status, verified, file.

    The file name is never cut: on a narrow terminal other columns are left out first."""
    from bigskies_ops.archives.catalog import ID_MIN
    inv = load_inventory(inventory)
    hosts = inv.resolve(host)
    if len(hosts) > 1 and not pre_restore:
        from bigskies_ops.cli.db_remote import fleet_list
        return fleet_list(hosts, origin=origin, all=all, json=json)
    h = inv.host(host)
    if offsite:  # what an offsite target holds (cli/db_policy.py)
        from bigskies_ops.cli.db_policy import list_offsite
        return list_offsite(h, offsite, json, inv)
    if origin and all:
        raise UsageError("pass either --origin HOST or --all, not both")
    if pre_restore:
        with PostgresAccess(h) as access:
            copies = pre_restore_copies(access.sql(h.postgres.maintenance_db), h.postgres.database)
        if json:
            output.emit_json({"host": h.name, "pre_restore_copies": copies})
            return
        if not copies:
            output.say(f"no pre-restore copies of {h.postgres.database!r} on {h.name}")
        for cpy in copies:
            output.say(f"{cpy['name']}  taken {cpy['at']}  {human_bytes(cpy['bytes'])}  replaced by {cpy['replaced_by']}")
        if copies:
            output.say(f"drop one (each is a whole database): {output.hint(f'db.delete --pre-restore NAME --host {h.name}')}"
                       f" (or 'all')")
        return
    runner = runner_for(h)
    pulled: dict[str, int] = {}
    with runner:
        backups = list_backups(runner, h.backup.dir, origin=origin, include_all=all)
        if not backups and not origin and not all and not json:
            # pulled archives sit in <origin>/ sub-folders, which a plain listing leaves out
            for b in list_backups(runner, h.backup.dir, include_all=True):
                if b.origin_dir:
                    pulled[b.origin_dir] = pulled.get(b.origin_dir, 0) + 1
    if json:
        output.emit_json({"result": "ok", "host": h.name, "dir": h.backup.dir,
                          "backups": [b.to_json() for b in backups]})
        return
    if not backups:
        output.say(f"no backups in {h.backup.dir}" + (f" from {origin}" if origin else ""))
        for sub, n in sorted(pulled.items()):
            output.say(f"  {n} pulled from {sub}: {output.hint(f'db.list --host {h.name} --origin {sub}')}")
        return
    output.print_table(render.backups_table(backups))
    output.say(f"ids: give one (or its first {ID_MIN}+ characters) to db.restore, db.verify, db.delete"
               + (", db.pull --existing" if h.is_remote else ""))
    if any(b.verification == "failed" for b in backups):
        output.say(f"FAILED: the newest verification of that backup failed; see why: "
                   f"{output.hint(f'db.list --host {h.name} --json')} (verification_error)")
    if any(b.legacy for b in backups):
        output.say("? legacy file without a manifest: time zone unknown, not verified")
    note = render.future_note(backups)
    if note:
        output.say(note)


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP})
@handles_errors
def status(c, host=None, inventory=None, json=False):
    """Show server state, connection info, database size, tables and the migration head."""
    inv = load_inventory(inventory)
    hosts = inv.resolve(host)
    if len(hosts) > 1:
        from bigskies_ops.cli.db_remote import fleet_status
        return fleet_status(hosts, json=json)
    h = hosts[0]
    st = run_status(h)
    if json:
        output.emit_json(st)
        return
    output.heading("Database Status")
    if st["container"]:
        ctr = st["container"]
        output.say(f"Container: {ctr['name']}")
        output.say(f"  Status: {ctr['status']} since {ctr['started_at'] or 'an unknown time'}")
    output.say(f"Server: PostgreSQL {st['server']['version']}, up {human_age_s(st['server']['uptime_s'])} "
               f"(since {st['server']['started_at']})")
    output.say()
    output.say("Connection Info:")
    for k in ("host", "port", "database", "user", "password_from"):
        output.say(f"  {k.replace('_', ' ').capitalize()}: {st['connection'][k]}")
    output.say()
    output.say(f"Database Size:\n  Total: {human_bytes(st['database']['size_bytes'])}")
    output.say()
    from rich import box
    t = output.literal_table(title="Tables", box=box.SIMPLE_HEAD, show_edge=False)
    for col in ("schema", "name", "rows (estimate)", "size"):
        t.add_column(col, justify="right" if col in ("rows (estimate)", "size") else "left")
    for r in st["tables"]:
        t.add_row(r["schema"], r["name"], (f"{r['rows_estimate']:,}" if r["rows_estimate"] is not None else "? (not analyzed yet)"), human_bytes(r["bytes"]))
    output.print_table(t)
    head = st["schema_migrations_head"]
    output.say(f"Schema migrations: {'none (no schema_migrations table)' if head is None else str(head['count']) + ' applied, head ' + str(head['version']) + ' ' + (head['name'] or '')}")


def human_age_s(seconds: int) -> str:
    from datetime import timedelta
    return str(timedelta(seconds=int(seconds)))


@task(positional=["file"], help={"file": "backup id from db.list (or a unique prefix), archive path or name, or 'latest' "
                                                   "(without one on a terminal: a list to pick from)",
            "host": HOST_HELP, "inventory": INVENTORY_HELP,
            "origin": "restore from backups pulled from this host (sub-folder <origin>/)",
            "target_db": "restore into this NEW database and leave the original alone",
            "yes": "do not ask for confirmation",
            "terminate_sessions": "terminate sessions still connected when the names are swapped",
            "keep_owners": "accepted for old scripts: owners and privileges are always restored",
            "roles": "first create the backup's roles missing here (<archive>.roles.sql; existing roles are "
                     "never altered)",
            "skip_space_check": "do not refuse when the server seems to lack the free space the restore needs",
            "skip_missing_roles": "restore although the archive names roles missing here: their objects are owned "
                                  "by the restoring user and only the statements naming them are skipped",
            "undo": "swap the newest pre-restore copy back in",
            "jobs": "parallel sessions on local hosts: pg_restore --jobs for custom, psql sessions for plain (default 2; 1 = one session, one transaction)",
            "force_protected": "allow this on a protected host (with --confirm DBNAME)",
            "confirm": "the database name, repeated, for protected hosts",
            "from_offsite": "fetch FILE (or 'latest') from this offsite target first (to a .partial, checked)",
            "migrate": "afterwards apply the migrations the restored database lacks (docs/migrations.md)",
            "check": "dry run: print what would happen (CHECK MODE), change nothing, exit 0",
            "json": JSON_HELP})
@handles_errors
def restore(c, file=None, host=None, origin=None, target_db=None, yes=False, terminate_sessions=False,
            keep_owners=False, undo=False, jobs=None, force_protected=False, confirm=None, inventory=None,
            json=False, roles=False, from_offsite=None, migrate=False, skip_missing_roles=False,
            skip_space_check=False, check=False):
    """Restore a backup into a side database, check it, then swap it in (old one kept)."""
    help_if_requested(file, "db.restore")
    inv = load_inventory(inventory)
    # a group (or list) holding a protected host is refused even when it selects that host
    # alone (docs/safety.md); a --check reports the refusal instead
    hosts = inv.resolve(host)
    action = "restore --undo" if undo else "restore"
    policy = dict(database=None, force_protected=force_protected, confirm=confirm,
                  group=group_selector(inv.hosts, host))
    from bigskies_ops.cli import checks
    refused = checks.group_refusal(inv, host, action, check=check, force_protected=force_protected, confirm=confirm)
    if refused and len(hosts) > 1:  # --check on a group the run refuses as a whole: no host to plan
        return checks.group_refused_report("db.restore", inv, host, refused, json)
    h = inv.host(host)
    db = h.postgres.database
    policy["database"] = db
    if undo and file:
        raise UsageError(f"--undo swaps the newest pre-restore copy back and takes no FILE (got {file!r})")
    if target_db is not None and (not target_db.strip() or len(target_db.encode()) > 63):
        raise UsageError(f"--target-db {target_db!r}: expected a database name of 1 to 63 bytes")
    jobs = jobs_arg(jobs)
    if check:
        return _check_restore(inv, h, hosts, file, origin, target_db, undo, terminate_sessions, roles,
                              skip_missing_roles, skip_space_check, from_offsite, policy, json)
    if undo:
        check_destructive(h, "restore --undo", database=db, force_protected=force_protected, confirm=confirm)
        confirm_or_refuse(f"Swap the newest pre-restore copy of {db!r} on {h.name} back in?", yes=yes)
        res = run_undo(h, terminate_sessions=terminate_sessions)
        if json:
            output.emit_json({"result": "changed", "host": h.name, **res})
        else:
            output.result_line("changed", h.name, f"{db!r} is back to {res['restored_from']!r}; "
                                                  f"the undone copy is kept as {res['previous_kept_as']!r}")
        return
    if target_db is None:
        check_destructive(h, "restore", database=db, force_protected=force_protected, confirm=confirm)
    if not file:  # "" when omitted (see common.optional_positional)
        if not (is_tty(sys.stdin) and is_tty(sys.stdout)):
            raise UsageError("no archive given and no terminal to choose on; pass FILE or 'latest'")
        file = _pick_interactively(h, origin)
    if from_offsite:  # fetched into the backup folder, sha256-checked, then restored as usual
        from bigskies_ops.jobs.offsite import fetch
        path = fetch(h, from_offsite, file, inv=inv)
    else:
        path = resolve_archive(h, file, origin=origin)
    if not json:
        output.heading("BIG SKIES Framework - Database Restore")
        output.say(f"Backup file: {path}")
        output.say(f"Database: {target_db or db}" + (" (new database)" if target_db else ""))
        output.say(f"Host: {h.name} ({h.access_mode})" + (f", container {h.container.name}" if h.container else ""))
        if h.coordinators:
            output.say(f"Coordinators to pause: {', '.join(h.coordinators)}")
        output.say()
    if target_db is None:
        confirm_or_refuse(f"WARNING: this will replace database {db!r} on {h.name} "
                          f"(the current one is kept as a pre-restore copy).", yes=yes)
    with output.transfer_progress("restoring") as cb:
        res = run_restore(h, path, target_db=target_db, terminate_sessions=terminate_sessions, roles=roles,
                          skip_missing_roles=skip_missing_roles, skip_space_check=skip_space_check,
                          jobs=jobs, progress=cb)
    from bigskies_ops.cli.db_migrations import after_restore_report  # restored head vs the migrations folder
    mig = after_restore_report(h, res.database, apply=migrate)
    _render_restore(h, res, mig, target_db, json)


def _render_restore(h, res, mig: dict, target_db: str | None, json: bool) -> None:
    """The outcome of ``db.restore`` (human or --json)."""
    if json:
        output.emit_json({"result": "changed", "host": h.name, "database": res.database, "archive": res.archive,
                          "migrations": mig,
                          "pre_restore_copy": res.pre_restore_copy, "coordinators_restarted": res.coordinators,
                          "checked_tables": res.checked_tables, "seconds": round(res.seconds, 3),
                          "dropped_pre_restore_copies": res.dropped_copies,
                          "dropping_pre_restore_copies": res.dropping_copies})
        return
    output.say(f"Database restored successfully in {res.seconds:.1f} s "
               f"({res.checked_text})")
    if res.pre_restore_copy:
        output.say(f"   Previous database kept as: {res.pre_restore_copy}  (undo: {output.hint(f'db.restore --undo --host {h.name}')})")
    if res.coordinators:
        output.say(f"   Coordinators restarted: {', '.join(res.coordinators)}")
    output.say(f"   {mig['message']}")
    output.say()
    output.say("Verify with:")
    if target_db:  # db.status shows the host's own database; the new one is inspected by name
        meta = "\\c " + target_db + " \\dt+"  # psql: connect to the new database, list its tables
        output.say("  " + output.hint(f"db.psql --host {h.name} --command {shlex.quote(meta)}"))
    else:
        output.say(f"  {output.hint(f'db.status --host {h.name}')}")
        if h.compose:
            output.say(f"  {' '.join(h.compose.command_argv)} ps")
    output.result_line("changed", h.name, f"{res.database!r} restored from {os.path.basename(res.archive)}")


def _check_restore(inv, h, hosts, file, origin, target_db, undo, terminate, roles, skip_missing_roles,
                   skip_space_check, from_offsite, policy, json) -> None:
    """``db.restore --check``: the restore's (or undo's) plan, changing nothing, exit 0; what
    the real run would refuse with these flags (the safety policy included) is part of it.
    Needs no --yes and no terminal: an archive must be named (or 'latest')."""
    from bigskies_ops.cli import checks
    from bigskies_ops.jobs.restore import check_restore
    from bigskies_ops.jobs.swap import check_undo
    refusals = []
    if undo or target_db is None or policy["group"]:
        r = checks.policy_refusal(hosts, "restore --undo" if undo else "restore", **policy)
        refusals += [r] if r else []
    if undo:
        plan = check_undo(h, terminate_sessions=terminate)
        plan["refusals"] = refusals + plan["refusals"]
        checks.report("db.restore --undo", h.name, plan, checks.undo_lines(plan)
                      + checks.refusal_lines(plan["refusals"], "Swap the newest pre-restore copy back in?"), json)
        return
    if not file:
        raise UsageError("--check needs the archive to check: pass FILE or 'latest'")
    if from_offsite:  # fetching would write into the backup folder: the check names what it would fetch
        raise UsageError("--check with --from-offsite: fetch first (db.offsite), or check the archive once it is "
                         "here")
    # FILE naming no backup (or several, or a failed run) is a lookup error, --check or not
    # (exit 1, as db.delete's): there is no archive to plan a restore of (docs/cli.md "Dry runs")
    path = resolve_archive(h, file, origin=origin)
    rp = check_restore(h, path, target_db=target_db, terminate_sessions=terminate, roles=roles,
                       skip_missing_roles=skip_missing_roles, skip_space_check=skip_space_check)
    plan = rp.to_json()
    plan["refusals"] = refusals + plan["refusals"]
    checks.report("db.restore", h.name, plan, checks.restore_lines(plan) + checks.refusal_lines(
        plan["refusals"], None if target_db else f"replace database {h.postgres.database!r}"), json)


def _pick_interactively(h, origin) -> str:
    backups = [b for b in list_backups(LocalRunner(), h.backup.dir, origin=origin)
               if b.status in ("DONE", "LEGACY")]
    if not backups:
        raise UsageError(f"no backups to restore in {h.backup.dir}")
    output.say("Available backups (newest first):")
    for i, b in enumerate(backups, 1):
        when = b.started_at.strftime("%Y-%m-%d %H:%M:%S UTC") if b.started_at else "time unknown"
        extra = "" if b.legacy or b.complete else f", {b.contents}"
        output.say(f"  {i:>3}) {b.id}  {when}  {human_bytes(b.size):>10}  {b.kind}{extra}  {b.name}")
    choice = input("Restore which backup? Number (1 = newest): ").strip()
    try:
        idx = int(choice)
        return backups[idx - 1].path
    except (ValueError, IndexError):
        raise UsageError(f"no backup number {choice!r}")


READ_ONLY_PGOPTIONS = "-c default_transaction_read_only=on"


@task(help={"sql": "SQL text to run", "file": "SQL file to run ('-': standard input)", "host": HOST_HELP,
            "inventory": INVENTORY_HELP,
            "write": "allow writes on a protected host (needs --force-protected --confirm DBNAME)",
            "force_protected": "allow writes on a protected host", "confirm": "the database name, repeated"})
@handles_errors
def exec(c, sql=None, file=None, host=None, write=False, force_protected=False, confirm=None, inventory=None):
    """Run SQL (--sql or --file) with psql; read-only on protected hosts unless --write."""
    inv = load_inventory(inventory)
    if write:  # a group holding a protected host: refused as a whole (exit 3), before "takes one host"
        from bigskies_ops.cli.checks import group_refusal
        group_refusal(inv, host, "exec --write", check=False, force_protected=force_protected, confirm=confirm)
    h = inv.host(host)
    if bool(sql) == bool(file):
        raise UsageError("pass exactly one of --sql TEXT or --file PATH")
    text = sql if sql else _read(file)
    _run_sql(h, text, read_only=_read_only(h, "exec", write=write, force_protected=force_protected, confirm=confirm),
             task="exec")


def _read_only(h, task: str, *, write: bool, force_protected: bool, confirm: str | None) -> bool:
    """Whether ``db.<task>`` (exec, psql) runs read-only on ``h``: on a protected host
    unless ``--write``, which needs ``--force-protected --confirm DBNAME``.

    Raises:
        SafetyError (exit 3): ``--write`` on a protected host without those flags.
    """
    if h.protected and write:
        check_destructive(h, f"db.{task} --write", database=h.postgres.database, force_protected=force_protected,
                          confirm=confirm)
    return h.protected and not write


def _run_sql(h, text: str, *, read_only: bool, task: str) -> None:
    """Run ``text`` (SQL) with psql on host ``h`` (stops at the first error) and print
    its output. ``read_only``: every transaction is read-only
    (``default_transaction_read_only``, set for the session through ``PGOPTIONS``, so
    nothing is added to the output).

    Raises:
        SafetyError (exit 3): SQL that tried to write in a read-only session.
        PostgresError (exit 1): psql failed.
    """
    from bigskies_ops.errors import PostgresError, SafetyError
    from bigskies_ops.pg.tools import PSQL_BASE
    with PostgresAccess(h) as access:
        r = access.run_tool("psql", [*[a for a in PSQL_BASE if a != "-q"], "--dbname", h.postgres.database],
                            input=text.encode(), check=False, pgoptions=READ_ONLY_PGOPTIONS if read_only else None)
    sys.stdout.write(r.text)
    if r.returncode != 0:
        if read_only and "read-only transaction" in r.stderr:  # SQLSTATE 25006
            raise SafetyError(
                f"refused: {h.name} is protected, so db.{task} runs read-only there and PostgreSQL refused a "
                f"write ({tail(r.stderr, 200)}); to write, pass --write --force-protected --confirm "
                f"{h.postgres.database}")
        # psql's own exit status (2: no connection, 3: an error in the SQL with ON_ERROR_STOP);
        # ours is 1 (failed), CONTRACTS.md section 5
        why = classify_pg_error(r.stderr, h) or r.stderr.strip()[-600:]
        what = "the SQL failed" if r.returncode == 3 else "psql failed"
        raise PostgresError(f"{what} (psql exit status {r.returncode}): {why}")


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"--file {path}: {e.strerror}")


@task(help={"command": "run this SQL and exit, as psql -c does (no terminal needed)",
            "host": HOST_HELP, "inventory": INVENTORY_HELP,
            "write": "allow writes on a protected host (needs --force-protected --confirm DBNAME)",
            "force_protected": "allow writes on a protected host", "confirm": "the database name, repeated"})
@handles_errors
def psql(c, command=None, host=None, write=False, force_protected=False, confirm=None, inventory=None):
    """Open psql on a host's database; with -c SQL or SQL piped in, run it and exit.

    The interactive shell is the only task that gets a real TTY; SQL given with -c or on a
    standard input that is not a terminal runs as db.exec runs it."""
    inv = load_inventory(inventory)
    if write:  # a group holding a protected host: refused as a whole (exit 3), before "takes one host"
        from bigskies_ops.cli.checks import group_refusal
        group_refusal(inv, host, "psql --write", check=False, force_protected=force_protected, confirm=confirm)
    h = inv.host(host)
    read_only = _read_only(h, "psql", write=write, force_protected=force_protected, confirm=confirm)
    if command is not None or not sys.stdin.isatty():
        # `-c SQL` is psql's own flag (not an interactive shell waiting on a remote pty); piped SQL is a script, not a session
        _run_sql(h, command if command is not None else sys.stdin.read(), read_only=read_only, task="psql")
        return
    with PostgresAccess(h) as access:
        argv = access.tool_argv("psql", ["--dbname", h.postgres.database])
        env = dict(os.environ, **access.env())
        if read_only:
            env["PGOPTIONS"] = READ_ONLY_PGOPTIONS
        if h.container:
            i = argv.index("exec")
            argv[i + 1:i + 2] = ["-it"] + (["-e", "PGOPTIONS"] if read_only else [])
        if h.is_remote:
            rc = access.runner.interactive(argv, env=env)
        else:
            import subprocess
            rc = subprocess.call(argv, env=env)
    if rc != 0:
        from invoke import Exit
        raise Exit(code=rc)


optional_positional("db.restore", "file")  # db.restore --undo / interactive pick take no FILE
#: the tasks of this module; :mod:`bigskies_ops.cli` gathers them into the ``db`` namespace
TASKS = (backup, list_, status, restore, exec, psql)
