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
    hosts = inv.resolve(host) if host else list(inv.hosts.values())
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
    """Validate the inventory; exit 2 naming the path of the first fault."""
    inv = load_inventory(inventory)
    if json:
        output.emit_json({"result": "ok", "host": None, "inventory": str(inv.path), "hosts": sorted(inv.hosts),
                          "groups": sorted(inv.groups)})
        return
    output.result_line("ok", "inventory", f"{inv.path}: {len(inv.hosts)} host(s), {len(inv.groups)} group(s) valid")


ns = Collection("inventory")
ns.add_task(show)
ns.add_task(check)
