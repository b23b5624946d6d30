"""``db.migrate``, ``db.migrations``, ``db.pgpass``: schema migrations and credential files.

Gathered into the ``db`` namespace by :mod:`bigskies_ops.cli` (``TASKS``). The library is
bigskies_ops.jobs.migrations and bigskies_ops.pg.pgpass; docs/migrations.md and
docs/credentials.md describe the behaviour.
"""
from __future__ import annotations

from bigskies_ops import output
from bigskies_ops.errors import SafetyError, UsageError
from bigskies_ops.jobs.migrations import migrate as run_migrate, status as run_status
from bigskies_ops.jobs.migration_apply import DEFAULT_LOCK_TIMEOUT
from bigskies_ops.pg.pgpass import converge
from bigskies_ops.safety import check_destructive
from bigskies_ops.cli.common import HOST_HELP, INVENTORY_HELP, JSON_HELP, handles_errors, load_inventory, task


def _int(flag: str, value) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{flag}: expected a migration version number, got {value!r}")


@task(help={
    "host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP,
    "to": "apply up to and including this version only",
    "check": "dry run: show what would be applied, change nothing, exit 0",
    "fail_if_pending": "change nothing; exit 1 when any migration is pending (deploy gate)",
    "no_backup": "skip the pre-migrate backup (refused on protected hosts)",
    "baseline": "adopt an existing database: record migrations up to VERSION as applied without running them",
    "lock_timeout": f"seconds to wait for the migration lock (default {DEFAULT_LOCK_TIMEOUT:g})",
    "force_protected": "allow this on a protected host (with --confirm DBNAME)",
    "confirm": "the database name, repeated, for protected hosts"})
@handles_errors
def migrate(c, host=None, inventory=None, to=None, check=False, fail_if_pending=False, no_backup=False, baseline=None,
            lock_timeout=None, force_protected=False, confirm=None, json=False):
    """Apply pending schema migrations (pre-migrate backup first); 'ok (up to date)' when none."""
    from bigskies_ops.cli import checks
    inv = load_inventory(inventory)
    # a group holding a protected host: refused as a whole (exit 3), before "takes one host"
    refused = checks.group_refusal(inv, host, "migrate", check=check, force_protected=force_protected,
                                   confirm=confirm)
    if refused and len(inv.resolve(host)) > 1:
        return checks.group_refused_report("db.migrate", inv, host, refused, json)
    h = inv.host(host)
    to_v, base_v = _int("--to", to), _int("--baseline", baseline)
    if check and fail_if_pending:
        raise UsageError("pass either --check (always exits 0) or --fail-if-pending, not both")
    try:
        timeout = float(lock_timeout) if lock_timeout not in (None, "") else DEFAULT_LOCK_TIMEOUT
    except ValueError:
        raise UsageError(f"--lock-timeout: expected seconds, got {lock_timeout!r}")
    read_only = check or fail_if_pending
    if not read_only:
        check_destructive(h, "migrate", database=h.postgres.database, force_protected=force_protected,
                          confirm=confirm)
        if no_backup and h.protected:
            raise SafetyError(f"refused: {h.name} is protected; --no-backup is not allowed there "
                              f"(a pre-migrate backup is always taken)")
    res = run_migrate(h, to=to_v, check=check, fail_if_pending=fail_if_pending, take_backup=not no_backup,
                      baseline=base_v, lock_timeout=timeout)
    if check:
        return _check_report(h, res, [refused] if refused else [], no_backup=no_backup,
                             force_protected=force_protected, confirm=confirm, json=json)
    if json:
        output.emit_json(res.to_json())
        return
    waited = f" (waited {res.waited_s:.1f} s for the migration lock)" if res.waited_s else ""
    if read_only:
        for m in res.pending:
            output.say(f"pending: {m['file']}" + ("" if m["transactional"] else " (non-transactional)"))
        if res.baselined:
            output.say(f"would record as applied (baseline): {', '.join(str(v) for v in res.baselined)}")
        if res.would_refuse:
            output.say(f"would refuse: {res.would_refuse}")
        what = (f"{len(res.pending)} migration(s) would be applied" if res.pending else "up to date")
        if res.would_refuse:
            what = "a real run would be refused (see above)"
        output.result_line("ok", h.name, f"{'--check' if check else '--fail-if-pending'}: {what} "
                                         f"(head {res.head if res.head is not None else '-'}); nothing changed")
        return
    if res.backup:
        output.say(f"pre-migrate backup: {res.backup}")
    for m in res.applied:
        output.say(f"applied: {m['file']} ({m['seconds'] * 1000:.0f} ms)")
    if res.applied:
        output.result_line("changed", h.name, f"applied {len(res.applied)} migration(s), head {res.head}{waited}")
    elif res.baselined:
        output.result_line("changed", h.name, f"baseline recorded {len(res.baselined)} migration(s); "
                                              f"up to date (head {res.head}){waited}")
    else:
        output.result_line("ok", h.name, f"up to date (head {res.head if res.head is not None else '-'}){waited}")


def _check_report(h, res, refusals: list[str], *, no_backup: bool, force_protected: bool, confirm, json: bool) -> None:
    """``db.migrate --check``: the common dry-run report (:func:`bigskies_ops.output.check_report`):
    ``plan`` holds the migrate facts (``pending``, ``baselined``, ``head``, ``database``,
    ``backup``: whether a pre-migrate backup would be taken) and ``refusals`` (the safety
    policy's with these flags, ``--no-backup`` on a protected host, and the refusal the
    migrations themselves would hit, e.g. a changed applied file)."""
    from bigskies_ops.cli import checks
    r = checks.policy_refusal(h, "migrate", database=h.postgres.database, force_protected=force_protected,
                              confirm=confirm)
    refusals = refusals + ([r] if r else [])
    if no_backup and h.protected:
        refusals.append(f"refused: {h.name} is protected; --no-backup is not allowed there "
                        f"(a pre-migrate backup is always taken)")
    if res.would_refuse:
        refusals.append(res.would_refuse)
    doc = res.to_json()
    takes_backup = bool(res.pending) and not no_backup
    plan = {"database": doc["database"], "pending": doc["pending"], "baselined": doc["baselined"],
            "head": doc["head"], "backup": takes_backup, "refusals": refusals}
    lines = []
    if takes_backup:
        lines.append(f"take a pre-migrate backup of {h.postgres.database!r} into {h.backup.dir}")
    if res.baselined:
        lines.append(f"record as applied (baseline): {', '.join(str(v) for v in res.baselined)}")
    for m in res.pending:
        lines.append(f"apply {m['file']}" + ("" if m["transactional"] else " (non-transactional)"))
    if not res.pending and not res.baselined and not res.would_refuse:
        lines.append(f"  up to date (head {res.head if res.head is not None else '-'}): nothing to apply")
    output.check_report("db.migrate", h.name, plan, lines + checks.refusal_lines(refusals),
                        would_change=bool(res.pending or res.baselined) and not refusals, json=json)


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP})
@handles_errors
def migrations(c, host=None, inventory=None, json=False):
    """Show applied, pending and changed migrations of a host's database."""
    inv = load_inventory(inventory)
    h = inv.host(host)
    st = run_status(h)
    if json:
        output.emit_json(st)
        return
    from rich import box
    t = output.literal_table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("version", "file", "state", "applied at (UTC)", "ms", "checksum"):
        t.add_column(col, justify="right" if col in ("version", "ms") else "left")
    for m in st["migrations"]:
        state = m["state"]
        if m.get("statements_applied"):
            state += f" (statements {','.join(map(str, m['statements_applied']))} applied)"
        if m["transactional"] is False:
            state += " [no-transaction]"
        cs = (m["checksum"] or m["recorded_checksum"] or "")[:12]
        if m["state"] == "changed":
            cs = f"file {m['checksum'][:12]} != recorded {(m['recorded_checksum'] or '')[:12]}"
        t.add_row(str(m["version"]), m["file"] or (m["name"] or "-"), state, str(m["applied_at"] or "-"),
                  "-" if m["duration_ms"] is None else str(m["duration_ms"]), cs)
    output.say(f"Migrations of {st['database']!r} on {st['host']} (folder {st['folder']})")
    output.print_table(t)
    if st["adoption_problem"]:
        output.say(st["adoption_problem"])
    c_ = st["counts"]
    output.say(f"{c_['applied']} applied, {c_['pending']} pending, {c_['changed']} changed, "
               f"{c_['unknown']} unknown; head {st['head'] if st['head'] is not None else '-'}")


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP,
            "path": "pgpass file to converge (default: postgres.passfile, else $PGPASSFILE, else ~/.pgpass)",
            "check": "dry run: show the lines that would change (passwords masked), write nothing (exit 0)"})
@handles_errors
def pgpass(c, host=None, inventory=None, path=None, json=False, check=False):
    """Converge a pgpass file (mode 0600) from the inventory and the password variable it names."""
    inv = load_inventory(inventory)
    hosts = inv.resolve(host)
    results = [converge(h, path=path, check=check) for h in hosts]
    if check:
        # nothing in a pgpass run is refused (no safety policy applies): the list is always empty
        plans = [{"path": r.path, "changes": r.changes, "before": r.before, "after": r.after, "refusals": []}
                 for r in results]
        if json and len(results) > 1:  # one document for the whole run
            output.emit_json({"result": "changed" if any(r.changes for r in results) else "ok", "check": True,
                              "task": "db.pgpass", "hosts": [{"host": r.host, "would_change": bool(r.changes),
                                                              "plan": p} for r, p in zip(results, plans)]})
            return
        for r, plan in zip(results, plans):
            lines = [*(_imperative(ch) for ch in r.changes), *(f"  before: {ln}" for ln in r.before),
                     *(f"  after:  {ln}" for ln in r.after)]
            output.check_report("db.pgpass", r.host, plan, lines, would_change=bool(r.changes), json=json)
        return
    if json:
        output.emit_json(results[0].to_json() if len(results) == 1 else [r.to_json() for r in results])
        return
    for r in results:
        reason = "; ".join(r.changes) if r.changes else "no change"
        output.result_line(r.word, r.host, f"{r.path}: {reason}")


_IMPERATIVE = (("added ", "add "), ("updated ", "update "), ("removed ", "remove "), ("normalised ", "normalise "),
               ("created ", "create "), ("mode ", "change mode "))


def _imperative(change: str) -> str:
    """A pgpass change ("added ...") as a --check step ("add ...")."""
    for past, now in _IMPERATIVE:
        if change.startswith(past):
            return now + change[len(past):]
    return change


def after_restore_report(h, database: str, *, apply: bool = False) -> dict:
    """For ``db.restore``: the restored migration head against the folder (and ``--migrate``).

    Without ``apply`` a failure to compare is reported, not raised (the restore itself
    succeeded). With ``apply`` a failing migration fails the task (exit 1), saying
    that the restore is done.
    """
    from bigskies_ops.errors import BigskiesError
    from bigskies_ops.jobs.migrations import after_restore
    try:
        return after_restore(h, database, apply=apply)
    except BigskiesError as e:
        if apply:
            raise type(e)(f"the restore succeeded, but migrating it failed: {e}", exit_code=e.exit_code) from e
        return {"message": f"migrations: could not compare with {h.migrations.dir}: {e}", "error": str(e),
                "pending": [], "ahead": [], "applied": [], "head": None}


TASKS = [migrate, migrations, pgpass]
