"""``scenario.*`` tasks: the database guide's five "Common Scenarios".

Each runs its shipped runbook (``runbooks/NAME.yaml``) through the runbook engine, as
``inv run NAME`` does: the task's flags become the runbook's params (``--no-backup`` is
``backup=false``), the safety flags and ``--check``/``--json`` are the engine's. One
implementation: the steps are in the YAML (docs/stack.md, docs/runbooks.md).
"""
from __future__ import annotations

import sys

from invoke import Collection, Exit

from bigskies_ops.cli.common import HOST_HELP, INVENTORY_HELP, JSON_HELP, handles_errors, load_inventory, seconds_arg, task
from bigskies_ops.stack.scenarios import RUNBOOKS

CHECK_HELP = "dry run: plan every step of the scenario's runbook (CHECK MODE), change nothing, exit 0"
SAFETY_HELP = {"yes": "do not ask for confirmation",
               "force_protected": "allow this on a protected host (with --confirm DBNAME)",
               "confirm": "the database name, repeated, for protected hosts"}
NO_ROLES_HELP = ("do not create the backup's missing roles before restoring (objects of roles missing then are "
                 "owned by the restoring user; only the statements naming them are skipped)")


def _scenario(name: str, params: dict, *, host, inventory, check: bool, json: bool, yes: bool = True,
              force_protected: bool = False, confirm: str | None = None, host_param: str | None = None) -> None:
    """Run scenario ``name``'s runbook with ``params`` (typed values) for ``host`` (a host
    or group); exit with the stopping step's code (CONTRACTS.md section 5).

    ``host_param``: the runbook's param naming the host it runs on (scenario 4's ``to``),
    the run's host when ``host`` is not given (its value, else its default).

    Raises:
        UsageError, SafetyError: the engine's validation (exit 2, 3), before anything runs:
            a step needing the compose stack on a host without a ``compose:`` block is
            refused there with the message ``inv run NAME`` gives."""
    from bigskies_ops.cli.run import run_runbook
    from bigskies_ops.stack import runbook as rb
    inv = load_inventory(inventory)
    book = rb.load(RUNBOOKS[name], inv)
    if host is None and host_param:
        host = params.get(host_param) or book.params[host_param].default
    code = run_runbook(book, inv, host, params, check=check, yes=yes, force_protected=force_protected,
                       confirm=confirm, json=json, task=f"scenario.{name}")
    if code:
        sys.stdout.flush()
        raise Exit(f"error: scenario.{name} stopped: a step failed (exit {code}; the steps after it did not run)",
                   code=code)


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP, "check": CHECK_HELP,
            "restart": "service to restart as the change (the guide restarts bootstrap)",
            "label": "label for the backup"})
@handles_errors
def before_risky_change(c, host=None, restart=None, label=None, inventory=None, json=False, check=False):
    """Scenario 1: back up, make the change (restart a service), check, say how to go back."""
    params = {"restart": restart or ""}
    if label:
        params["label"] = label
    _scenario("before-risky-change", params, host=host, inventory=inventory, check=check, json=json)


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP, "check": CHECK_HELP,
            "timeout": "seconds to wait for PostgreSQL after up (default 60)"})
@handles_errors
def fresh_start(c, host=None, timeout="60", inventory=None, json=False, check=False):
    """Scenario 2: back up, down, build, up, verify the data is intact."""
    _scenario("fresh-start", {"timeout": seconds_arg(timeout, "--timeout")}, host=host, inventory=inventory,
              check=check, json=json)


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP, "check": CHECK_HELP,
            "no_backup": "purge without the pre-purge backup (nothing to restore afterwards)",
            "no_restore": "leave the new database empty (do not restore the pre-purge backup)",
            "no_roles": NO_ROLES_HELP, "wait_migrations": "after up, wait for the bootstrap migrations",
            **SAFETY_HELP})
@handles_errors
def complete_reset(c, host=None, no_backup=False, no_restore=False, no_roles=False, wait_migrations=False,
                   yes=False, force_protected=False, confirm=None, inventory=None, json=False, check=False):
    """Scenario 3: purge (backup first), build, up, restore the backup with its roles."""
    _scenario("complete-reset", {"backup": not no_backup, "restore": not no_restore, "roles": not no_roles,
                                 "wait_migrations": wait_migrations},
              host=host, inventory=inventory, check=check, json=json, yes=yes, force_protected=force_protected,
              confirm=confirm)


@task(help={"from_": "the SSH host to pull from (default: the runbook's, prod)",
            "to": "the local host whose database receives the data (default: the runbook's, dev)",
            "inventory": INVENTORY_HELP, "json": JSON_HELP, "check": CHECK_HELP, **SAFETY_HELP})
@handles_errors
def prod_to_dev(c, from_=None, to=None, yes=False, force_protected=False, confirm=None, inventory=None, json=False,
                check=False):
    """Scenario 4: production's data restored into development's database (db.pull --restore)."""
    params = {k: v for k, v in (("from", from_), ("to", to)) if v}
    _scenario("prod-to-dev", params, host=None, inventory=inventory, check=check, json=json, yes=yes,
              force_protected=force_protected, confirm=confirm, host_param="to")


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP, "check": CHECK_HELP,
            "archive": "restore this archive (default: the backup just taken, else the newest good one)",
            "no_roles": NO_ROLES_HELP, **SAFETY_HELP})
@handles_errors
def recover_corruption(c, host=None, archive=None, no_roles=False, yes=False, force_protected=False, confirm=None,
                       inventory=None, json=False, check=False):
    """Scenario 5: stop coordinators, try a backup, recreate the volume, restore the last good backup."""
    _scenario("recover-corruption", {"archive": archive or "", "roles": not no_roles},
              host=host, inventory=inventory, check=check, json=json, yes=yes, force_protected=force_protected,
              confirm=confirm)


ns = Collection("scenario")
for _t in (before_risky_change, fresh_start, complete_reset, prod_to_dev, recover_corruption):
    ns.add_task(_t)
