"""``inventory.*`` tasks: show the resolved inventory, validate it."""
from __future__ import annotations

from invoke import Collection

from bigskies_ops import output
from bigskies_ops.inventory import redacted_view
from bigskies_ops.cli.common import INVENTORY_HELP, JSON_HELP, handles_errors, load_inventory, task


@task(help={"host": "host, group or comma list (default: every host)", "inventory": INVENTORY_HELP,
            "json": JSON_HELP})
@handles_errors
def show(c, host=None, inventory=None, json=False):
    """Print the resolved inventory (defaults and groups merged; secrets are only variable names)."""
    inv = load_inventory(inventory)
    hosts = inv.resolve(host) if host is not None else list(inv.hosts.values())
    view = {"inventory": str(inv.path), "default_host": inv.default_host,
            "groups": {g: list(m) for g, m in inv.groups.items()},
            "hosts": {h.name: redacted_view(h) for h in hosts}}
    if json:
        output.emit_json(view)
        return
    import yaml
    output.say(yaml.safe_dump(view, sort_keys=False, allow_unicode=True).rstrip())


@task(help={"inventory": INVENTORY_HELP, "json": JSON_HELP})
@handles_errors
def check(c, inventory=None, json=False):
    """Validate the inventory; exit 2 naming the path of the first fault.

    Warns (exit 0) about what this machine lacks: a password or notification variable that is
    not set, an SSH key file that is missing. A notification URL set here that apprise cannot
    read is an error (exit 2, naming its variable)."""
    from bigskies_ops.errors import InventoryError
    from bigskies_ops.inventory import inventory_warnings
    inv = load_inventory(inventory)
    warnings = inventory_warnings(inv)
    if any(h.notify.urls_env or h.alerts.webhook_env or h.heartbeat.url_env for h in inv.hosts.values()):
        from bigskies_ops.jobs.notify import check_urls
        bad = check_urls(inv)  # a URL apprise (or a heartbeat) cannot use: named by its variable, never printed
        if bad:
            raise InventoryError(f"{bad[0]['field']}: {bad[0]['message']}"
                                 + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    summary = f"{inv.path}: {len(inv.hosts)} host(s), {len(inv.groups)} group(s) valid"
    if json:
        output.emit_json({"result": "ok", "task": "inventory.check", "host": None, "inventory": str(inv.path),
                          "hosts": len(inv.hosts), "groups": len(inv.groups), "warnings": warnings})
        return
    for w in warnings:
        output.say(f"warning: [{w['host']}] {w['field']}: {w['message']}")
    output.result_line("ok", "inventory", summary + (f", {len(warnings)} warning(s) (see above; "
                                                     f"{output.hint('inventory.ping')} checks the hosts)"
                                                     if warnings else ""))


@task(help={"host": "host, group, 'all' or comma list (default: every host)", "inventory": INVENTORY_HELP,
            "json": JSON_HELP})
@handles_errors
def ping(c, host=None, inventory=None, json=False):
    """Check that each host can be backed up now (hosts in parallel; exit 1 names each failing check).

    The checks: SSH and host key, password, container, PostgreSQL login, tool versions, backup
    folder writable, free space."""
    from invoke import Exit
    from bigskies_ops.jobs.ping import ping_hosts
    inv = load_inventory(inventory)
    hosts = inv.resolve(host) if host is not None else list(inv.hosts.values())

    def show_host(r):
        fails = f" failed: {', '.join(r.failed)}" if r.failed else ""
        output.say(f"{r.result}: [{r.host}] ({r.access_mode}){fails}")
        for ch in r.checks:
            output.say(f"   {ch.state:<8} {ch.name}: {ch.message}")

    results = ping_hosts(hosts, on_done=None if json else show_host)
    failed = [r for r in results if r.failed]
    if json:
        from bigskies_ops.archives.catalog import iso, utcnow
        output.emit_json({"result": "failed" if failed else "ok", "task": "inventory.ping", "checked_at": iso(utcnow()),
                          "hosts": [r.to_json() for r in results]})
    else:
        output.say()
        output.say("PING RECAP")
        width = max(len(r.host) for r in results)
        for r in results:
            n = r.counts()
            output.say(f"{r.host:<{width}} : " + " ".join(f"{k}={v}" for k, v in n.items()))
    if failed:
        msg = (f"error: {len(failed)} of {len(results)} host(s) failed: "
               + "; ".join(f"{r.host} ({', '.join(r.failed)})" for r in failed))
        raise Exit(None if json else msg, code=1)


ns = Collection("inventory")
ns.add_task(show)
ns.add_task(check)
ns.add_task(ping)
