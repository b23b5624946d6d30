"""The Invoke Collection: one module per namespace (db, inventory, ...).

The repo-root ``tasks.py`` re-exports :data:`ns`; the console script
``bigskies-ops`` runs the same Collection through ``invoke.Program``.
"""
from invoke import Collection

from . import db, inventory

ns = Collection()
ns.add_collection(db.ns)
ns.add_collection(inventory.ns)
