"""``docker.*`` tasks: the compose stack's lifecycle (the guide's ``make docker-*`` targets).

Thin shell over :mod:`bigskies_ops.stack.lifecycle`; works for local and SSH hosts alike.
"""
from __future__ import annotations

from contextlib import nullcontext

from invoke import Collection

from bigskies_ops import output, report
from bigskies_ops.stack import lifecycle as stack
from bigskies_ops.errors import UsageError
from bigskies_ops.safety import check_destructive, confirm_or_refuse, group_selector
from bigskies_ops.cli.common import HOST_HELP, INVENTORY_HELP, JSON_HELP, handles_errors, load_inventory, seconds_arg, task


def _host(inventory, host):
    h = load_inventory(inventory).host(host)
    if h.compose is None:
        raise UsageError(f"hosts.{h.name}: no compose: block in the inventory; docker.* tasks need one")
    return h


def _local_host(inv):
    """Where a remote host's pre-purge backup is pulled: the inventory's first local host,
    else ``backups/database`` beside the inventory."""
    for h in inv.hosts.values():
        if not h.is_remote:
            return h
    from bigskies_ops.inventory import BackupSettings, Host
    return Host(name="local", backup=BackupSettings(dir=str(inv.base_dir / "backups" / "database")))


def _notes(json):
    """The stack's progress notes on stderr; under ``--json`` none."""
    return report.reporting(None) if json else nullcontext()


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP, "check": "dry run: print what would happen (CHECK MODE), change nothing, exit 0"})
@handles_errors
def build(c, host=None, inventory=None, json=False, check=False):
    """Rebuild the stack's images (data volume untouched; `make docker-build`)."""
    h = _host(inventory, host)
    if check:
        return _check(h, "build", json)
    with _notes(json):
        res = stack.build(h)
    if json:
        output.emit_json({"result": "changed", "host": h.name, **res})
        return
    output.result_line("changed", h.name, f"images built for project {res['project']!r}: "
                                         f"{', '.join(res['images']) or '(no build services)'}")


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP,
            "timeout": "seconds to wait for PostgreSQL to accept connections (default 60)",
            "wait_migrations": "also wait until schema_migrations reaches the newest migration file",
            "migrations_timeout": "seconds to wait for the migrations (default 120)", "check": "dry run: print what would happen (CHECK MODE), change nothing, exit 0"})
@handles_errors
def up(c, host=None, timeout="60", wait_migrations=False, migrations_timeout="120", inventory=None, json=False,
       check=False):
    """Start the stack and wait until PostgreSQL accepts connections (`make docker-up`)."""
    timeout_s, migrations_s = seconds_arg(timeout, "--timeout"), seconds_arg(migrations_timeout, "--migrations-timeout")
    h = _host(inventory, host)
    if check:
        return _check(h, "up", json, timeout=timeout_s, wait_for_migrations=wait_migrations)
    with _notes(json):
        res = stack.up(h, timeout=timeout_s, wait_for_migrations=wait_migrations, migrations_timeout=migrations_s)
    if json:
        output.emit_json({"result": "changed", "host": h.name, **res})
        return
    _print_services(res["services"])
    mig = res.get("migrations")
    extra = f"; schema_migrations at {mig['version']} ({mig['newest_file']})" if mig else ""
    output.result_line("changed", h.name, f"project {res['project']!r} up; PostgreSQL ready after "
                                         f"{res['ready_after_s']:.1f} s{extra}")


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP, "check": "dry run: print what would happen (CHECK MODE), change nothing, exit 0"})
@handles_errors
def down(c, host=None, inventory=None, json=False, check=False):
    """Stop and remove the containers; the data volume is kept (`make docker-down`)."""
    h = _host(inventory, host)
    if check:
        return _check(h, "down", json)
    with _notes(json):
        res = stack.down(h)
    if json:
        output.emit_json({"result": "changed", "host": h.name, **res})
        return
    output.result_line("changed", h.name, f"project {res['project']!r} down (volumes kept)")


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP,
            "timeout": "seconds to wait for PostgreSQL to accept connections (default 60)", "check": "dry run: print what would happen (CHECK MODE), change nothing, exit 0"})
@handles_errors
def restart(c, host=None, timeout="60", inventory=None, json=False, check=False):
    """Restart the stack's containers and wait for PostgreSQL (`make docker-restart`)."""
    timeout_s = seconds_arg(timeout, "--timeout")
    h = _host(inventory, host)
    if check:
        return _check(h, "restart", json, timeout=timeout_s)
    with _notes(json):
        res = stack.restart(h, timeout=timeout_s)
    if json:
        output.emit_json({"result": "changed", "host": h.name, **res})
        return
    _print_services(res["services"])
    output.result_line("changed", h.name, f"project {res['project']!r} restarted; PostgreSQL ready after "
                                         f"{res['ready_after_s']:.1f} s")


def _check(h, action: str, json: bool, **kw) -> None:
    """``docker.<action> --check``: :func:`bigskies_ops.stack.lifecycle.plan_stack`, changing nothing."""
    from bigskies_ops.cli import checks
    plan = stack.plan_stack(h, action, **kw)
    checks.report(f"docker.{action}", h.name, plan, checks.stack_lines(plan), json)


def _print_services(rows):
    for r in rows:
        output.say(f"  {r['service']:<16} {r['state']:<9} {', '.join(r['containers']) or '-'}"
                   f"{'  (coordinator)' if r['coordinator'] else ''}")


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP})
@handles_errors
def ps(c, host=None, inventory=None, json=False):
    """Show each service of the stack: its containers and their state."""
    h = _host(inventory, host)
    res = stack.ps(h)
    if json:
        output.emit_json({"host": h.name, **res})
        return
    output.say(f"compose project {res['project']!r} on {h.name}:")
    _print_services(res["services"])


@task(positional=["service"], help={"service": "one service (default: all)", "follow": "keep following the logs",
                                    "tail": "only the last N lines", "host": HOST_HELP, "inventory": INVENTORY_HELP})
@handles_errors
def logs(c, service=None, follow=False, tail=None, host=None, inventory=None):
    """Show the stack's logs (one service or all), optionally following them."""
    h = _host(inventory, host)
    n = None
    if tail is not None:
        try:
            n = int(tail)
        except ValueError:
            raise UsageError(f"--tail: expected a number of lines, got {tail!r}")
    # "" = SERVICE not given (optional: bigskies_ops.cli); -h/--help here is cli.common._Task's
    rc = stack.logs(h, service or None, follow=follow, tail_lines=n)
    if rc not in (0, None):
        from invoke import Exit
        raise Exit(code=1)


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP,
            "no_backup": "do not take the pre-purge backup (needs typed confirmation or --yes)",
            "no_pull": "for a remote host: leave the pre-purge backup there (do not pull it here)",
            "yes": "do not ask for confirmation",
            "force_protected": "allow this on a protected host (with --confirm DBNAME)",
            "confirm": "the database name, repeated, for protected hosts",
            "check": "dry run: print what would be lost, change nothing, exit 0"})
@handles_errors
def purge(c, host=None, no_backup=False, no_pull=False, yes=False, force_protected=False, confirm=None,
          inventory=None, json=False, check=False):
    """Remove the containers AND the data volume, after a pre-purge backup (`make docker-purge`)."""
    inv = load_inventory(inventory)
    hosts = inv.resolve(host)
    policy = dict(force_protected=force_protected, confirm=confirm, group=group_selector(inv.hosts, host))
    if not check:
        check_destructive(hosts, "purge", **policy)
    elif len(hosts) > 1 and policy["group"]:  # a group the run refuses as a whole: no host to plan
        from bigskies_ops.cli import checks
        refused = checks.group_refusal(inv, host, "purge", check=True, force_protected=force_protected,
                                       confirm=confirm)
        if refused:
            return checks.group_refused_report("docker.purge", inv, host, refused, json)
    if len(hosts) != 1:
        raise UsageError("docker.purge takes one host")
    h = hosts[0]
    if h.compose is None:
        raise UsageError(f"hosts.{h.name}: no compose: block in the inventory; docker.* tasks need one")
    if check:
        return _check_purge(h, hosts, policy, no_backup, json)
    plan = stack.purge_plan(h)
    if not json:
        output.heading("BIG SKIES Framework - Docker Purge")
        output.say("This will be lost:")
        for line in plan.lines():
            output.say("  " + line)
        output.say(f"  database {h.postgres.database!r} on {h.name} (everything in the volume)")
        output.say()
        if no_backup:
            output.say("NO backup will be taken (--no-backup).")
        else:
            output.say(f"A pre-purge backup is taken first into {h.backup.dir}; if it fails nothing is purged.")
        output.say()
    if no_backup:
        confirm_or_refuse(f"Purge {plan.project!r} on {h.name} WITHOUT a backup? The data is gone for good.",
                          yes=yes)
    else:
        confirm_or_refuse(f"Purge {plan.project!r} on {h.name} (after a backup)?", yes=yes)
    with _notes(json):
        res = stack.purge(h, take_backup=not no_backup, pull=not no_pull,
                          pull_to=_local_host(inv) if h.is_remote else None)
    if json:
        output.emit_json({"result": "changed", "host": h.name, **res})
        return
    if res["backup"]:
        output.say(f"Pre-purge backup: {res['backup']}")
        again = output.hint(f"db.restore {res['backup']} --host {h.name} --roles")
        output.say(f"  restore after `{output.hint('docker.up')}`: {again}")
    output.result_line("changed", h.name, f"project {res['project']!r} purged; volume {res['volume']} removed")


def _check_purge(h, hosts, policy, no_backup: bool, json: bool) -> None:
    """``docker.purge --check``: what would be lost and the pre-purge backup's plan
    (:func:`bigskies_ops.stack.lifecycle.plan_purge`); the safety policy's refusal of the real run
    with these flags is part of it."""
    from bigskies_ops.cli import checks
    facts = stack.plan_purge(h, take_backup=not no_backup)
    refusal = checks.policy_refusal(hosts, "purge", **policy)
    facts["refusals"] = ([refusal] if refusal else []) + facts["refusals"]
    checks.report("docker.purge", h.name, facts, checks.purge_lines(facts) + checks.refusal_lines(
        facts["refusals"], f"purge {facts['project']!r} on {h.name}"), json)


ns = Collection("docker")
for _t in (build, up, down, restart, ps, logs, purge):
    ns.add_task(_t)
