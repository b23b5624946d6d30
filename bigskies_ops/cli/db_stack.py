"""``db.*`` tasks contributed by the stack feature (gathered into the db namespace by bigskies_ops.cli)."""
from __future__ import annotations

from bigskies_ops import output
from bigskies_ops.stack import lifecycle as stack
from bigskies_ops.text import human_bytes
from bigskies_ops.errors import UsageError
from bigskies_ops.cli.common import HOST_HELP, INVENTORY_HELP, JSON_HELP, handles_errors, load_inventory, task


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": JSON_HELP})
@handles_errors
def volume(c, host=None, inventory=None, json=False):
    """Show the data volume: real name, exists, size, created; warn on a bind mount."""
    h = load_inventory(inventory).host(host)
    if h.compose is None:
        raise UsageError(f"hosts.{h.name}: no compose: block in the inventory")
    v = stack.volume_info(h)
    if json:
        output.emit_json(v)
        return
    output.say(f"Data volume of {h.name} (compose project {v['project']!r}, key {v['key']!r}):")
    output.say(f"  Name: {v['name']}")
    output.say(f"  Exists: {'yes' if v['exists'] else 'NO'}")
    if v["exists"]:
        size = human_bytes(v["size_bytes"]) if v["size_bytes"] is not None else v["size"]
        output.say(f"  Size: {size}")
        output.say(f"  Created: {v['created_at']}")
        output.say(f"  Driver: {v['driver']}  Mountpoint: {v['mountpoint']}")
    for w in v["warnings"]:
        output.say(f"warning: {w}")
    output.result_line("ok", h.name, f"volume {v['name']} {'exists' if v['exists'] else 'does not exist'}")


TASKS: list = [volume]
