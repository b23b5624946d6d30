"""``db.*`` tasks contributed by the remote feature (gathered into the db namespace by bigskies_ops.cli):
``db.pull``, plus the multi-host (fleet) forms of ``db.backup``, ``db.list`` and ``db.status``
and ``db.backup --pull``, which cli/db.py delegates here."""
from __future__ import annotations

from invoke import Exit

from bigskies_ops import output
from bigskies_ops.cli import render
from bigskies_ops.archives.catalog import list_backups
from bigskies_ops.text import human_bytes
from bigskies_ops.errors import UsageError
from bigskies_ops.jobs.fleet import exit_code, run_on_hosts
from bigskies_ops.inventory import Host, Inventory
from bigskies_ops.jobs.pull import pull as run_pull, pull_existing
from bigskies_ops.safety import check_destructive, confirm_or_refuse, group_selector
from bigskies_ops.cli.common import INVENTORY_HELP, JSON_HELP, LOCK_WAIT_HELP, handles_errors, jobs_arg, load_inventory, lock_wait_host, task


class _progress:
    """A pull's progress (output.transfer_progress): a bar with the total and an ETA on a
    terminal, a line every 10 s otherwise (never both), silent with --json."""

    def __init__(self, what: str, quiet: bool):
        self._cm = output.transfer_progress(what, lines=True, quiet=quiet)

    def __enter__(self):
        return self._cm.__enter__()

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def local_destination(inv: Inventory, to: str | None) -> Host:
    """The local host whose ``backup.dir`` receives pulled backups (``<dir>/<origin>/``).

    ``--to HOST`` if given, else ``defaults.host`` when it is local, else the only local host.

    Raises:
        UsageError: --to names an SSH host, or no single local host can be chosen.
    """
    if to:
        h = inv.host(to)
        if h.is_remote:
            raise UsageError(f"--to {to}: must be a local host (connection: local); pulls land on this machine")
        return h
    if inv.default_host and not inv.hosts[inv.default_host].is_remote:
        return inv.hosts[inv.default_host]
    local = [h for h in inv.hosts.values() if not h.is_remote]
    if len(local) == 1:
        return local[0]
    raise UsageError("pass --to HOST: the local host whose backup.dir receives the pulled backup")


def _mbps(n: int, s: float) -> str:
    return f"{n / max(s, 1e-6) / 1e6:.1f} MB/s"


@task(name="pull", optional=["existing"], help={
    "from": "the SSH host to pull from (e.g. prod)",
    "to": "local host whose backup.dir receives the copy under <from>/ (default: defaults.host or the only local host)",
    "restore": "then restore the pulled backup into --to's database (all of db.restore's checks and safety)",
    "existing": "pull an archive already on the host: 'latest' (default when given without a value), "
                "a backup id from db.list --host FROM (or a unique prefix) or a file name",
    "format": "plain (.sql.gz) or custom (.dump) for a fresh dump; default: the source host's backup.format. "
              "With --restore a plain dump is loaded while it arrives (two psql sessions), a custom one "
              "with pg_restore --jobs once complete",
    "label": "free text stored in the manifest",
    "yes": "do not ask before replacing --to's database",
    "terminate_sessions": "terminate sessions still connected when the restored database is swapped in",
    "keep_owners": "accepted for old scripts: owners and privileges are always restored",
    "skip_missing_roles": "with --restore: restore although the dump names roles missing on --to: their objects "
                          "are owned by the restoring user and only the statements naming them are skipped",
    "jobs": "parallel sessions of the restore (pg_restore --jobs, or psql sessions for plain; default 2)",
    "force_protected": "allow --to a protected host (with --confirm DBNAME)",
    "confirm": "the database name of --to, repeated, for protected hosts",
    "lock_wait_timeout": LOCK_WAIT_HELP + " (a fresh dump)",
    "check": "dry run: print the source, its size, the destination and with --restore the restore's plan; "
             "change nothing, exit 0",
    "inventory": INVENTORY_HELP, "json": JSON_HELP})
@handles_errors
def pull(c, from_=None, to=None, restore=False, existing=None, format=None, label=None, yes=False,
         terminate_sessions=False, keep_owners=False, jobs=None, force_protected=False, confirm=None,
         inventory=None, json=False, skip_missing_roles=False, lock_wait_timeout=None, check=False):
    """Pull a database from an SSH host to this machine (fresh dump streamed, or an existing archive)."""
    inv = load_inventory(inventory)
    if not from_:
        raise UsageError("pass --from HOST (the SSH host to pull from)")
    src = lock_wait_host(inv.host(from_), lock_wait_timeout)
    if not src.is_remote:
        raise UsageError(f"--from {from_}: not an SSH host (connection: local); use db.backup for local hosts")
    # --to given or taken from defaults (docs/remote.md; --restore too): the same policy; a group
    # holding a protected host is refused even when it names that host alone (docs/safety.md)
    group = group_selector(inv.hosts, to)
    if group and not check:
        check_destructive(inv.resolve(to), "pull --to", force_protected=force_protected, confirm=confirm, group=group)
    if group and check and len(inv.resolve(to)) > 1:  # a --to group refused as a whole: no host to plan
        from bigskies_ops.cli import checks
        refused = checks.group_refusal(inv, to, "pull --to", check=True, force_protected=force_protected,
                                       confirm=confirm)
        if refused:
            return checks.group_refused_report("db.pull", inv, to, refused, json)
    dest = local_destination(inv, to)
    policy = dict(database=dest.postgres.database, force_protected=force_protected, confirm=confirm, group=group)
    spec = None
    if existing == "":
        raise UsageError("--existing: give 'latest' or an archive's file name (an empty value is neither)")
    if existing not in (None, False):
        spec = "latest" if existing is True else existing
    restore_kw = {"terminate_sessions": terminate_sessions, "skip_missing_roles": skip_missing_roles,
                  "jobs": jobs_arg(jobs), "task": "db.pull --restore"} if restore else None
    if check:
        return _check_pull(src, dest, inv.resolve(to) if group else [dest], spec, format, restore_kw, policy, json)
    check_destructive(dest, "pull --to", **{k: v for k, v in policy.items() if k != "group"})
    if restore:
        confirm_or_refuse(f"WARNING: this will replace database {dest.postgres.database!r} on {dest.name} with "
                          f"{src.name}'s data (the current one is kept as a pre-restore copy).", yes=yes)
    if not json:
        output.heading("BIG SKIES Framework - Database Pull")
        output.say(f"From: {src.name} ({src.access_mode})" + (f", container {src.container.name}" if src.container else ""))
        output.say(f"What: {'existing archive ' + spec if spec else 'a fresh dump streamed over SSH (nothing written on ' + src.name + ')'}")
        output.say(f"Into: {dest.backup.dir}/{src.name}/")
        output.say()
    out = run_pull(src, dest, existing=spec, fmt=format, label=label, restore=restore_kw,
                   progress=lambda what: _progress(what, json), pulled=None if json else _say_pulled)
    _render_pull(out, src, dest, json)


def _check_pull(src: Host, dest: Host, dest_hosts, spec, fmt, restore_kw, policy, json) -> None:
    """``db.pull --check``: :func:`bigskies_ops.jobs.pull.plan_pull`, changing nothing, exit 0;
    the safety policy's refusal of the real run with these flags is part of the plan."""
    from bigskies_ops.cli import checks
    from bigskies_ops.jobs.pull import plan_pull
    plan = plan_pull(src, dest, existing=spec, fmt=fmt, restore=restore_kw)
    refusal = checks.policy_refusal(dest_hosts, "pull --to", **policy)
    plan["refusals"] = ([refusal] if refusal else []) + plan["refusals"]
    checks.report("db.pull", src.name, plan, checks.pull_lines(plan) + checks.refusal_lines(
        plan["refusals"], f"replace database {dest.postgres.database!r} on {dest.name}" if restore_kw else None),
        json)


def _say_pulled(out) -> None:
    b, m = out.backup, out.manifest
    if out.already_present:
        output.say(f"Already here (same size and sha256): {b.path}")
        return
    output.say("Pull completed successfully")
    output.say(f"   File: {b.path}")
    output.say(f"   Size: {human_bytes(b.size)}, {_mbps(b.size or 0, out.seconds)} over {out.seconds:.1f} s")
    output.say(f"   sha256: {m.get('sha256')} (checked)")
    if m.get("remote_exit_statuses") and m.get("pull_mode") != "existing":  # a dump ran for this pull
        output.say("   Remote exit statuses: " + ", ".join(f"{k} {v}" for k, v in m["remote_exit_statuses"].items()))


def _render_pull(out, src: Host, dest: Host, json: bool) -> None:
    b, m, rr = out.backup, out.manifest, out.restore
    facts = {"result": "changed", "host": src.name, "to": dest.name, "path": b.path, "name": b.name,
             "bytes": b.size, "sha256": m.get("sha256"), "seconds": round(out.seconds, 3),
             "mode": out.mode, "already_present": out.already_present, "resumed_at": out.resumed_at,
             "remote_exit_statuses": m.get("remote_exit_statuses")}
    if rr is not None:
        facts["restore"] = {"database": rr.database, "pre_restore_copy": rr.pre_restore_copy,
                            "checked_tables": rr.checked_tables, "seconds": round(rr.seconds, 3)}
        if not json:
            output.say(f"Restored into {dest.name}:{rr.database} in {rr.seconds:.1f} s "
                       f"({rr.checked_text})")
            if rr.pre_restore_copy:
                output.say(f"   Previous database kept as: {rr.pre_restore_copy}  "
                           f"(undo: {output.hint(f'db.restore --undo --host {dest.name}')})")
    if json:
        output.emit_json(facts)
        return
    what = "already present" if out.already_present else f"pulled {b.name}"
    output.result_line("ok" if out.already_present and rr is None else "changed", src.name,
                       what + (f", restored into {dest.name}" if rr is not None else ""))


def pull_after_backup(inv: Inventory, h: Host, res, *, json: bool = False) -> dict:
    """``db.backup --host prod --pull``: copy the archive just written on ``h`` (and its
    manifest) into the local backup dir under ``<h>/``, size and sha256 checked.

    Returns:
        ``{"path", "bytes", "sha256"}`` of the local copy, plus ``"to"`` (the local host
        that received it) and ``"rate"`` (text, for the summary); the caller prints them.
    """
    if not h.is_remote:
        raise UsageError(f"--pull: {h.name} is a local host; its backup is already here")
    dest = local_destination(inv, None)
    with _progress(f"pull from {h.name}", json) as cb:
        pr = pull_existing(h, dest, res.backup.path, progress=cb)
    return {"path": pr.backup.path, "bytes": pr.backup.size, "sha256": pr.manifest.get("sha256"),
            "to": dest.name, "rate": _mbps(pr.backup.size or 0, pr.seconds)}


# ----------------------------------------------------------------------------- fleet forms
def _recap(outcomes, json: bool, extra=None) -> None:
    if json:
        output.emit_json({"hosts": [dict(o.to_json(), **(extra(o) if extra else {})) for o in outcomes]})
    else:
        output.say()
        output.say("Recap:")
        for o in outcomes:
            output.result_line(o.word, o.host, o.reason)
    code = exit_code(outcomes)
    if code:
        failed = [o.host for o in outcomes if o.failed]
        raise Exit(f"error: {len(failed)} of {len(outcomes)} hosts failed: {', '.join(failed)}", code=code)


def _as_each_finishes(json: bool):
    """The ``finished`` callback of :func:`bigskies_ops.jobs.fleet.run_on_hosts`: one line per
    host as it finishes (result word, host, reason, seconds), before the recap; none with --json."""
    if json:
        return None

    def told(o) -> None:
        output.result_line(o.word, o.host, f"{o.reason} [{o.seconds:.1f} s]")
    return told


def fleet_backup(inv: Inventory, hosts: list[Host], *, fmt=None, label=None, exclude_table_data=(),
                 schema_only=False, pull=False, json=False) -> None:
    """``db.backup --host GROUP|a,b``: back up every host in parallel, recap per host."""
    from bigskies_ops.jobs.backup import backup as run_backup
    if not json:
        output.heading("BIG SKIES Framework - Database Backup")
        output.say(f"Hosts: {', '.join(h.name for h in hosts)} (in parallel)")
        output.say()

    def job(h: Host):
        res = run_backup(h, fmt=fmt, label=label, exclude_table_data=tuple(exclude_table_data),
                         schema_only=schema_only)
        reason = f"backup {res.backup.name} written ({human_bytes(res.backup.size)})"
        # pulled_to: the local copy (--pull, SSH hosts), else null: every entry has the same keys
        data = {"path": res.backup.path, "bytes": res.backup.size, "sha256": res.manifest.get("sha256"),
                "pulled_to": None}
        if pull and h.is_remote:
            dest = local_destination(inv, None)
            pr = pull_existing(h, dest, res.backup.path)
            reason += f"; pulled to {pr.backup.path}"
            data["pulled_to"] = pr.backup.path
        return "changed", reason, data

    outcomes = run_on_hosts(hosts, job, finished=_as_each_finishes(json))
    _recap(outcomes, json, extra=lambda o: o.data or {})


def fleet_list(hosts: list[Host], *, origin=None, all=False, json=False) -> None:
    """``db.list --host GROUP``: list every host's backups (fetched in parallel)."""
    from bigskies_ops.hosts import runner_for

    def job(h: Host):
        with runner_for(h) as r:
            bs = list_backups(r, h.backup.dir, origin=origin, include_all=all)
        done = [b for b in bs if b.status == "DONE"]
        newest = done[0].started_at.strftime("%Y-%m-%d %H:%M:%SZ") if done and done[0].started_at else "-"
        return "ok", f"{len(bs)} backups ({len(done)} done), newest done {newest}", bs

    outcomes = run_on_hosts(hosts, job, finished=_as_each_finishes(json))
    if not json:
        for o in outcomes:
            output.say(f"== {o.host} ==")
            if o.failed:
                output.say(f"failed: {o.reason}")
            elif not o.data:
                output.say("no backups")
            else:
                output.print_table(render.backups_table(o.data))
            output.say()
    _recap(outcomes, json, extra=lambda o: {"backups": [b.to_json() for b in (o.data or [])]})


def fleet_status(hosts: list[Host], *, json=False) -> None:
    """``db.status --host GROUP``: server version, uptime and database size of every host."""
    from bigskies_ops.jobs.status import status as run_status

    def job(h: Host):
        st = run_status(h)
        return "ok", (f"PostgreSQL {st['server']['version']}, {st['database']['name']} "
                      f"{human_bytes(st['database']['size_bytes'])}, {len(st['tables'])} tables, "
                      f"migration head {(st['schema_migrations_head'] or {}).get('version') or '-'}"), st

    outcomes = run_on_hosts(hosts, job, finished=_as_each_finishes(json))
    _recap(outcomes, json, extra=lambda o: {"status": o.data} if o.data else {})


TASKS: list = [pull]
