"""The Invoke Collection: one module per namespace (db, inventory, docker, scenario).

The repo-root ``tasks.py`` re-exports :data:`ns`; the console script
``bigskies-ops`` runs the same Collection through ``invoke.Program``.
"""
from invoke import Collection

from bigskies_ops.cli.common import optional_positional

from bigskies_ops.cli import (apply, db, db_housekeeping, db_metrics, db_migrations, db_policy, db_remote, db_report,
                              db_stack, docker, inventory, run, scenario)

# the db namespace: the main job (backup, list, status, restore, exec, psql), then the
# tasks of the other feature areas
db_ns = Collection("db")
for _mod in (db, db_remote, db_stack, db_migrations, db_policy, db_housekeeping, db_metrics, db_report):
    for _t in _mod.TASKS:
        db_ns.add_task(_t)

ns = Collection()
for _sub in (db_ns, inventory.ns, docker.ns, scenario.ns):
    if _sub.tasks or _sub.collections:
        ns.add_collection(_sub)
# top-level tasks: ``inv apply`` (the inventory as the desired state, every host) and ``inv run RUNBOOK``
# (a runbook's steps, as Ansible's ansible-playbook beside its modules)
ns.add_task(apply.apply)
ns.add_task(run.run)

# each task learns its dotted name (``db.list``): the --json failure document and the
# per-task typed flags name it (cli.common._Task)
for _name in ns.task_names:
    ns[_name].full_name = _name

# ``docker.logs [SERVICE]``: every service when SERVICE is omitted
optional_positional("docker.logs", "service")
