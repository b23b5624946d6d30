"""The runbook actions only the guide's scenarios need (docs/runbooks.md, "The shipped
runbooks"): the checks a scenario makes before a destructive step, the waits after one,
the coordinators stopped before a volume is deleted, the archive a recovery restores, and
a line telling the operator how to go back.

Each is an :class:`~bigskies_ops.stack.actions.Action` registered on import (the engine,
:mod:`bigskies_ops.stack.runbook`, imports this module). ``run`` does the work and returns
the facts a step may ``register``; ``plan`` is read-only and answers against the state the
earlier steps would leave (``ctx.states``, :func:`bigskies_ops.stack.lifecycle.after_stack_action`).

| action | does | facts |
|---|---|---|
| ``check.roles-saved`` | refuses (exit 3) a restore with roles when ``backup.roles`` is off | |
| ``check.restorable`` | verifies an archive and, with roles, its roles file (:func:`~bigskies_ops.stack.scenarios.restore_ready`) | archive |
| ``check.row-counts`` | every table's exact row count equals an archive's manifest | tables_checked |
| ``wait.postgres`` | waits until PostgreSQL accepts connections | seconds |
| ``wait.migrations`` | waits until schema_migrations reaches the newest migration file | version |
| ``coordinators.stop`` | stops the host's running coordinators | stopped |
| ``backup.choose`` | the archive to restore: the one named, else the newest good backup | archive |
| ``check.service`` | a compose service exists (exit 2 if not) | |
| ``message`` | prints a line (and a command to copy) | |
"""
from __future__ import annotations

import posixpath

from bigskies_ops import output, report
from bigskies_ops.errors import SafetyError, StorageError, UsageError
from bigskies_ops.hosts import runner_for
from bigskies_ops.inventory import Host
from bigskies_ops.stack import lifecycle as stack
from bigskies_ops.stack import scenarios
from bigskies_ops.stack.actions import Action, Param, Plan, RunContext, StandIn, register


def pending(value) -> bool:
    """``value`` is a check-mode stand-in (:class:`~bigskies_ops.stack.actions.StandIn`) for a
    fact only the real run of an earlier step would register (the archive a backup would
    write): nothing can be read from it yet."""
    return isinstance(value, StandIn)


def states(host: Host, ctx: RunContext) -> dict[str, str]:
    """The services' states (service -> running/exited/absent) a check-mode step plans
    against: what the earlier steps would leave (``ctx.states``), else the live ones (read)."""
    if host.name not in ctx.states:
        ctx.states[host.name] = stack.service_states(host)
    return ctx.states[host.name]


def _refusal(fn, *a, **kw) -> list[str]:
    try:
        fn(*a, **kw)
    except (SafetyError, UsageError, StorageError) as e:
        return [str(e)]
    return []


# ------------------------------------------------------------------ check.roles-saved
def _roles_saved_run(host: Host, args: dict, ctx: RunContext) -> dict:
    scenarios.roles_setting_check(host, args["roles"], ctx.task)
    return {"msg": "backup.roles is on: the backups save the cluster's roles" if args["roles"]
            else "restoring without roles: nothing to check"}


def _roles_saved_plan(host: Host, args: dict, ctx: RunContext) -> Plan:
    refusals = _refusal(scenarios.roles_setting_check, host, args["roles"], ctx.task)
    return Plan(False, [f"check that {host.name}'s backups save the cluster's roles (backup.roles: "
                        f"{'true' if host.backup.roles else 'false'})" if args["roles"]
                        else "nothing to check (restoring without roles)"], refusals=refusals)


# ------------------------------------------------------------------ check.restorable
def _restorable_run(host: Host, args: dict, ctx: RunContext) -> dict:
    scenarios.restore_ready(host, args["archive"], roles=args["roles"], task=ctx.task)
    return {"archive": args["archive"], "msg": f"{posixpath.basename(args['archive'])} verified"
            + (", its roles file present" if args["roles"] else "")}


def _restorable_plan(host: Host, args: dict, ctx: RunContext) -> Plan:
    archive, roles = args["archive"], args["roles"]
    what = "verify the archive (manifest, size, sha256, readable)" + (" and check its roles file" if roles else "")
    with runner_for(host) as runner:
        if pending(archive):  # written by an earlier step: nothing to read yet, but where it goes
            refusals = _refusal(scenarios.outside_the_volume, runner, host, archive, task=ctx.task)
        else:
            refusals = _refusal(scenarios.restore_files_ready, runner, host, archive, roles=roles, task=ctx.task)
    return Plan(False, [f"{what}: {archive}"], refusals=refusals, facts={"archive": archive})


# ------------------------------------------------------------------ check.row-counts
def _manifest_counts(host: Host, archive: str) -> dict[str, int]:
    from bigskies_ops.archives.catalog import read_manifest
    with runner_for(host) as runner:
        manifest = read_manifest(runner, archive)
    if not manifest or not manifest.get("tables"):
        raise StorageError(f"{archive} has no manifest with row counts to compare the live tables with")
    return {f"{t['schema']}.{t['name']}": t["rows"] for t in manifest["tables"] if t.get("rows") is not None}


def _live_counts(host: Host, tables: list[str]) -> dict[str, int | None]:
    from bigskies_ops.pg.access import PostgresAccess
    from bigskies_ops.jobs.sideload import table_counts
    want = [{"schema": t.split(".", 1)[0], "name": t.split(".", 1)[1]} for t in tables]
    with PostgresAccess(host) as access:
        got = table_counts(access.sql(host.postgres.database), want)
    return {f"{s}.{n}": v for (s, n), v in got.items()}


def _row_counts_run(host: Host, args: dict, ctx: RunContext) -> dict:
    want = _manifest_counts(host, args["archive"])
    got = _live_counts(host, list(want))
    diff = [f"{t}: {got.get(t)} rows, the backup had {n}" for t, n in want.items() if got.get(t) != n]
    if diff:
        raise StorageError(f"the data differs from {args['archive']}: " + "; ".join(diff[:10])
                           + (f" (and {len(diff) - 10} more)" if len(diff) > 10 else "")
                           + ". That backup holds the state before.")
    return {"tables_checked": len(want), "msg": f"{len(want)} tables intact (exact row counts as in "
                                                f"{posixpath.basename(args['archive'])})"}


def _row_counts_plan(host: Host, args: dict, ctx: RunContext) -> Plan:
    return Plan(False, [f"count every table's rows and compare them with the manifest of {args['archive']}"],
                facts={"tables_checked": 0})


# ------------------------------------------------------------------ wait.*
def _wait_postgres_run(host: Host, args: dict, ctx: RunContext) -> dict:
    waited = stack.wait_ready(host, timeout=args["timeout"])
    return {"seconds": round(waited, 3), "msg": f"PostgreSQL accepts connections (after {waited:.1f} s)"}


def _wait_postgres_plan(host: Host, args: dict, ctx: RunContext) -> Plan:
    return Plan(False, [f"wait until PostgreSQL accepts connections (up to {args['timeout']:g} s)"],
                facts={"seconds": 0.0})


def _wait_migrations_run(host: Host, args: dict, ctx: RunContext) -> dict:
    res = stack.wait_migrations(host, timeout=args["timeout"])
    return {"version": res["version"], "msg": f"schema_migrations at {res['version']} ({res['newest_file']})"}


def _wait_migrations_plan(host: Host, args: dict, ctx: RunContext) -> Plan:
    return Plan(False, [f"wait until schema_migrations reaches the newest migration file in "
                        f"{host.migrations.dir} (up to {args['timeout']:g} s)"], facts={"version": 0})


# ------------------------------------------------------------------ coordinators.stop
def _coordinators_stop_run(host: Host, args: dict, ctx: RunContext) -> dict:
    from bigskies_ops.hosts.compose import stop_services
    from bigskies_ops.jobs.coordinators import running_coordinators
    with runner_for(host) as runner:
        project, running = running_coordinators(runner, host)
        if running:
            report.note(f"Stopping coordinators: {', '.join(running)}")
            stop_services(runner, host, running, project)
    return {"stopped": running, "changed": bool(running),
            "msg": f"stopped {', '.join(running)}" if running else "no coordinator is running"}


def _coordinators_stop_plan(host: Host, args: dict, ctx: RunContext) -> Plan:
    from bigskies_ops.jobs.coordinators import running_coordinators
    now = states(host, ctx)
    if host.coordinators:  # the services of the project are checked (an unknown one: exit 2)
        with runner_for(host) as runner:
            running_coordinators(runner, host)
    running = [c for c in host.coordinators if now.get(c) == "running"]
    ctx.states[host.name] = stack.after_stack_action(now, "stop", running)
    return Plan(bool(running), [f"stop {', '.join(running)}" if running else "no coordinator is running"],
                facts={"stopped": running})


# ------------------------------------------------------------------ backup.choose
def _newest_good(host: Host):
    from bigskies_ops.archives.catalog import latest, list_backups
    with runner_for(host) as runner:
        # complete backups only: a schema-only one would restore empty tables
        return latest(list_backups(runner, host.backup.dir), database=host.postgres.database,
                      origin_host=host.name, complete_only=True)


def _choose_run(host: Host, args: dict, ctx: RunContext) -> dict:
    if args["archive"]:
        return {"archive": args["archive"], "msg": f"the archive named: {args['archive']}"}
    b = _newest_good(host)
    if b is None:
        raise StorageError(f"no good backup of {host.postgres.database!r} in {host.backup.dir} to restore; "
                           f"nothing was deleted")
    return {"archive": b.path, "msg": f"the newest good backup: {b.path}"}


def _choose_plan(host: Host, args: dict, ctx: RunContext) -> Plan:
    if args["archive"]:
        return Plan(False, [f"restore the archive named: {args['archive']}"], facts={"archive": args["archive"]})
    b = _newest_good(host)
    # not a refusal when there is none now: an earlier step of the runbook may write one (the
    # real run fails here, before anything is deleted, if there is still none)
    now = b.path if b is not None else "none; the real run fails here unless an earlier step writes one"
    return Plan(False, [f"choose the newest good backup of {host.postgres.database!r} (one an earlier step "
                        f"writes, else the newest now: {now})"],
                facts={"archive": StandIn("(the newest good backup when this step runs)")})


# ------------------------------------------------------------------ check.service
def _service_check(host: Host, args: dict) -> str:
    from bigskies_ops.hosts import compose as cmp
    if host.compose is None:
        raise UsageError(f"hosts.{host.name}: no compose: block in the inventory; no services to name")
    with runner_for(host) as runner:
        project = cmp.resolved_config(runner, host)
    if args["service"] not in project.services:
        raise UsageError(f"service: {args['service']!r} is not a service of compose project {project.name!r}; "
                         f"its services: {', '.join(sorted(project.services))}")
    return project.name


def _service_run(host: Host, args: dict, ctx: RunContext) -> dict:
    project = _service_check(host, args)
    return {"msg": f"{args['service']!r} is a service of compose project {project!r}"}


def _service_plan(host: Host, args: dict, ctx: RunContext) -> Plan:
    project = _service_check(host, args)
    return Plan(False, [f"check that {args['service']!r} is a service of compose project {project!r}"])


# ------------------------------------------------------------------ message
def _message_text(args: dict) -> str:
    return args["msg"] + (f" {output.hint(args['command'])}" if args["command"] else "")


def _message_run(host: Host, args: dict, ctx: RunContext) -> dict:
    text = _message_text(args)
    report.say(f"  {text}")
    return {"msg": text}


def _message_plan(host: Host, args: dict, ctx: RunContext) -> Plan:
    return Plan(False, [f"say: {_message_text(args)}"])


ROLES = Param(bool, default=True, help="with the cluster's roles (the backup's roles file)")

register(Action("check.roles-saved", "Refuse (exit 3) a restore with roles when the host's backups do not save them.",
                {"roles": ROLES}, _roles_saved_run, _roles_saved_plan, changes=False, facts=()))
register(Action("check.restorable", "Verify an archive and (roles) its roles file before a destructive step; refuse (exit 3) if not sound.",
                {"archive": Param(str, required=True, help="the archive a later step restores"), "roles": ROLES},
                _restorable_run, _restorable_plan, changes=False, facts=("archive",)))
register(Action("check.row-counts", "Check every table's exact row count equals an archive's manifest.",
                {"archive": Param(str, required=True, help="the backup whose manifest holds the counts")},
                _row_counts_run, _row_counts_plan, changes=False, facts=("tables_checked",)))
register(Action("wait.postgres", "Wait until PostgreSQL accepts connections.",
                {"timeout": Param(float, default=60.0, help="seconds")}, _wait_postgres_run, _wait_postgres_plan,
                changes=False, facts=("seconds",)))
register(Action("wait.migrations", "Wait until schema_migrations reaches the newest migration file.",
                {"timeout": Param(float, default=120.0, help="seconds")}, _wait_migrations_run,
                _wait_migrations_plan, changes=False, facts=("version",)))
register(Action("coordinators.stop", "Stop the host's running coordinators (compose services).", {},
                _coordinators_stop_run, _coordinators_stop_plan, facts=("stopped",), needs_compose=True))
register(Action("backup.choose", "Choose the archive to restore: the one named, else the newest good backup.",
                {"archive": Param(str, default="", help="an archive path; empty: the newest good backup")},
                _choose_run, _choose_plan, changes=False, facts=("archive",)))
register(Action("check.service", "Check a compose service exists (before a step that acts on it); exit 2 if not.",
                {"service": Param(str, required=True, help="a compose service name")},
                _service_run, _service_plan, changes=False, facts=(), needs_compose=True))
register(Action("message", "Print a line (and a command to copy, with the program's name).",
                {"msg": Param(str, required=True), "command": Param(str, default="", help="task and flags")},
                _message_run, _message_plan, changes=False, facts=()))
