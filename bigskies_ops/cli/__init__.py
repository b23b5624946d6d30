"""The Invoke Collection: one module per namespace (db, inventory, docker, scenario).

The repo-root ``tasks.py`` re-exports :data:`ns`; the console script
``bigskies-ops`` runs the same Collection through ``invoke.Program``.
"""
from invoke import Collection

from bigskies_ops.cli import db
from bigskies_ops.cli import docker
from bigskies_ops.cli import inventory
from bigskies_ops.cli import scenario

ns = Collection()
for _sub in (db.ns, inventory.ns, docker.ns, scenario.ns):
    if _sub.tasks or _sub.collections:
        ns.add_collection(_sub)
