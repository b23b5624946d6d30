"""``scenario.*`` tasks: the database guide's "Common Scenarios" 1, 2, 3 and 5.

Each prints its steps as it runs them; see docs/stack.md for the mapping.
"""
from __future__ import annotations

from contextlib import nullcontext

from invoke import Collection

from bigskies_ops import output, report
from bigskies_ops.stack import scenarios
from bigskies_ops.errors import UsageError
from bigskies_ops.safety import check_destructive, confirm_or_refuse, group_selector
from bigskies_ops.cli.common import HOST_HELP, INVENTORY_HELP, JSON_HELP, handles_errors, load_inventory, seconds_arg, task


def _host(inventory, host):
    h = load_inventory(inventory).host(host)
    if h.compose is None:
        raise UsageError(f"hosts.{h.name}: no compose: block in the inventory; scenarios need the compose stack")
    return h


def _destructive_host(inventory, host, check: bool, **flags):
    """``(host, refusals)`` for a scenario that purges: the safety policy refuses a protected
    host without the flags, and a group holding one even when it selects that host alone
    (docs/safety.md), before anything else; with ``check`` the refusal is reported instead."""
    inv = load_inventory(inventory)
    hosts = inv.resolve(host)
    policy = dict(flags, group=group_selector(inv.hosts, host))
    refusals = []
    if check:
        from bigskies_ops.cli.checks import policy_refusal
        r = policy_refusal(hosts, "purge", **policy)
        refusals = [r] if r else []
    else:
        check_destructive(hosts, "purge", **policy)
    if check and refusals and len(hosts) > 1:  # a group refused as a whole: no host to plan
        return None, refusals
    return _host(inventory, host), refusals


def _check(task: str, h, plan: dict, json: bool, refusals: list[str] = (), confirm: str | None = None) -> None:
    from bigskies_ops.cli import checks
    plan["refusals"] = list(refusals) + plan["refusals"]
    checks.report(task, h.name, plan, checks.scenario_lines(plan) + checks.refusal_lines(plan["refusals"], confirm),
                  json)


def _steps(json):
    """The scenario's step lines on stdout; under ``--json`` none (stdout carries the JSON
    only). Its notes stay on stderr either way."""
    return report.reporting(say=None) if json else nullcontext()


def _finish(h, res, json, what):
    if json:
        output.emit_json({"result": "changed", "host": h.name, **res})
    else:
        output.result_line("changed", h.name, what)


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP,
            "restart": "service to restart as the change (the guide restarts bootstrap)",
            "label": "label for the backup", "check": "dry run: print the ordered steps and each step's plan (CHECK MODE), change nothing, exit 0"})
@handles_errors
def before_risky_change(c, host=None, restart=None, label=None, inventory=None, json=False, check=False):
    """Scenario 1: back up, make the change (restart a service), check, say how to go back."""
    h = _host(inventory, host)
    if check:
        return _check("scenario.before-risky-change", h, scenarios.plan_before_risky_change(h, restart_service=restart),
                      json)
    with _steps(json):
        res = scenarios.before_risky_change(h, restart_service=restart, label=label)
    _finish(h, res, json, f"backup {res['backup']} taken before the change")


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP,
            "timeout": "seconds to wait for PostgreSQL after up (default 60)", "check": "dry run: print the ordered steps and each step's plan (CHECK MODE), change nothing, exit 0"})
@handles_errors
def fresh_start(c, host=None, timeout="60", inventory=None, json=False, check=False):
    """Scenario 2: back up, down, build, up, verify the data is intact."""
    timeout_s = seconds_arg(timeout, "--timeout")
    h = _host(inventory, host)
    if check:
        return _check("scenario.fresh-start", h, scenarios.plan_fresh_start(h, timeout=timeout_s), json)
    with _steps(json):
        res = scenarios.fresh_start(h, timeout=timeout_s)
    _finish(h, res, json, f"fresh start done; {res['tables_checked']} tables intact")


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP,
            "no_backup": "purge without the pre-purge backup (nothing to restore afterwards)",
            "no_restore": "leave the new database empty (do not restore the pre-purge backup)",
            "no_roles": "do not create the backup's missing roles before restoring (objects of roles missing then are "
                        "owned by the restoring user; only the statements naming them are skipped)",
            "wait_migrations": "after up, wait for the bootstrap migrations",
            "yes": "do not ask for confirmation",
            "force_protected": "allow this on a protected host (with --confirm DBNAME)",
            "confirm": "the database name, repeated, for protected hosts", "check": "dry run: print the ordered steps and each step's plan (CHECK MODE), change nothing, exit 0"})
@handles_errors
def complete_reset(c, host=None, no_backup=False, no_restore=False, no_roles=False, wait_migrations=False,
                   yes=False, force_protected=False, confirm=None, inventory=None, json=False, check=False):
    """Scenario 3: purge (backup first), build, up, restore the backup with its roles."""
    h, refusals = _destructive_host(inventory, host, check, force_protected=force_protected, confirm=confirm)
    if h is None:
        from bigskies_ops.cli import checks
        return checks.group_refused_report("scenario.complete-reset", load_inventory(inventory), host, refusals[0], json)
    if check:
        return _check("scenario.complete-reset", h, scenarios.plan_complete_reset(
            h, take_backup=not no_backup, restore_backup=not no_restore, roles=not no_roles,
            wait_migrations=wait_migrations), json, refusals, f"purge the stack of {h.name} and start fresh")
    confirm_or_refuse(f"Purge the stack of {h.name} (containers and data volume)"
                      + (" WITHOUT a backup" if no_backup else ", after a backup") + " and start fresh?", yes=yes)
    with _steps(json):
        res = scenarios.complete_reset(h, take_backup=not no_backup, restore_backup=not no_restore,
                                       roles=not no_roles, wait_migrations=wait_migrations)
    _finish(h, res, json, "complete reset done" + (f"; restored {res['restored']}" if res.get("restored") else ""))


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP,
            "archive": "restore this archive (default: the backup just taken, else the newest good one)",
            "no_roles": "do not create the backup's missing roles before restoring (objects of roles missing then are "
                        "owned by the restoring user; only the statements naming them are skipped)",
            "yes": "do not ask for confirmation",
            "force_protected": "allow this on a protected host (with --confirm DBNAME)",
            "confirm": "the database name, repeated, for protected hosts", "check": "dry run: print the ordered steps and each step's plan (CHECK MODE), change nothing, exit 0"})
@handles_errors
def recover_corruption(c, host=None, archive=None, no_roles=False, yes=False, force_protected=False, confirm=None,
                       inventory=None, json=False, check=False):
    """Scenario 5: stop coordinators, try a backup, recreate the volume, restore the last good backup."""
    h, refusals = _destructive_host(inventory, host, check, force_protected=force_protected, confirm=confirm)
    if h is None:
        from bigskies_ops.cli import checks
        return checks.group_refused_report("scenario.recover-corruption", load_inventory(inventory), host, refusals[0], json)
    if check:
        return _check("scenario.recover-corruption", h, scenarios.plan_recover_corruption(
            h, archive=archive, roles=not no_roles), json, refusals,
            f"delete the data volume of {h.name} and restore")
    confirm_or_refuse(f"Delete the data volume of {h.name} and restore the last good backup?", yes=yes)
    with _steps(json):
        res = scenarios.recover_corruption(h, archive=archive, roles=not no_roles)
    _finish(h, res, json, f"recovered from {res['restored']}")


ns = Collection("scenario")
for _t in (before_risky_change, fresh_start, complete_reset, recover_corruption):
    ns.add_task(_t)
