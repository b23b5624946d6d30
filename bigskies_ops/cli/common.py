"""Shared plumbing for the task modules: load the inventory, map errors to exit codes."""
from __future__ import annotations

import functools
import sys

from invoke import Exit

from .. import output
from ..errors import BigskiesError
from ..inventory import Inventory, load

INVENTORY_HELP = "inventory file (default: $BIGSKIES_INVENTORY, else ./inventory.yaml)"
HOST_HELP = "inventory host (default: defaults.host, else the only host)"
JSON_HELP = "machine-readable output (UTC ISO-8601 times, sizes in bytes)"


def load_inventory(path: str | None) -> Inventory:
    return load(path)


def handles_errors(fn):
    """Turn library errors into ``invoke.Exit(message, code)`` (CONTRACTS.md section 5):
    one line on stderr, exit 1 failed / 2 usage or inventory / 3 refused for safety."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BigskiesError as e:
            raise Exit(f"error: {e}", code=e.exit_code)
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130)
        except BaseException as e:
            if type(e).__name__ == "_Terminated":
                raise Exit("terminated (SIGTERM)", code=143)
            raise
    return wrapper
