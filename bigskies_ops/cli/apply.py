"""``apply``: converge every host to what the inventory declares (docs/apply.md).

Thin: :mod:`bigskies_ops.jobs.apply` does the work; this module parses the flags, asks
for the safety policy's consent where ``db.schedule`` does, and prints item lines as each
host finishes, then the ``APPLY RECAP``."""
from __future__ import annotations

from invoke import Exit

from bigskies_ops import output
from bigskies_ops.cli.common import INVENTORY_HELP, JSON_HELP, handles_errors, load_inventory, task
from bigskies_ops.errors import SafetyError


@task(help={"host": "host, group, 'all' or comma list (default: every host of the inventory)",
            "inventory": INVENTORY_HELP, "json": JSON_HELP,
            "check": "dry run: say per item what would change; write nothing (no file, crontab, mode or probe); "
                     "exit 0 when every host could be planned, 1 when one was unreachable",
            "diff": "show the unified diff of the files apply manages (crontab block; pgpass, passwords masked)",
            "force_protected": "allow a protected host's crontab block, which prunes (with --confirm DBNAME), "
                               "as db.schedule asks",
            "confirm": "the protected host's database name, repeated"})
@handles_errors
def apply(c, host=None, inventory=None, check=False, diff=False, json=False, force_protected=False, confirm=None):
    """Converge every host to the inventory (folders, crontab, pgpass, offsite, notify, metrics, roles); a recap.

    Hosts run in parallel; each item reports ok, changed, failed or skipped. Exit 1 when a
    host failed or was unreachable (under --check: only unreachable)."""
    from bigskies_ops.jobs.apply import Options, apply_hosts, consent, exit_code, overall
    inv = load_inventory(inventory)
    hosts = inv.resolve(host) if host is not None else list(inv.hosts.values())
    allowed, refused = consent(inv, hosts, force_protected=force_protected, confirm=confirm)
    if refused and not check:  # before anything changes on any host (db.schedule's consent)
        raise SafetyError("; ".join(refused.values()) + "; nothing was changed (apply --check shows the plan)")
    line = output.note if json else output.say
    if check and not json:
        output.say("CHECK MODE (apply --check): nothing is changed")

    def show(r) -> None:
        for i in r.items:
            line(f"{i.result}: [{r.host}] {i.item}: {i.reason}")
            for w in i.warnings:
                line(f"   warning: {w}")
            for d in i.diff:
                line(f"    {d}")

    results = apply_hosts(inv, hosts, Options(check=check, diff=diff, protected_ok=allowed), on_done=show)
    code = exit_code(results)
    if json:
        output.emit_json({"result": overall(results), "task": "apply", "check": bool(check),
                          "hosts": [r.to_json(with_diff=diff) for r in results]})
    else:
        output.say()
        output.say("APPLY RECAP" + (" (check: nothing was changed)" if check else ""))
        width = max(len(r.host) for r in results)
        for r in results:
            output.say(f"{r.host:<{width}} : " + " ".join(f"{k}={v}" for k, v in r.recap().items()))
    if code:
        bad = [r for r in results if r.exit_code]
        msg = (f"error: {len(bad)} of {len(results)} host(s) "
               + ("unreachable: " if check else "failed or unreachable: ")
               + "; ".join(f"{r.host} ({r.result}: {', '.join(r.failed_items())})" for r in bad))
        raise Exit(None if json else msg, code=code)


TASKS: list = [apply]
