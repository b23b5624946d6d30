"""The shipped scenario runbooks (runbooks/*.yaml) as data: each parses and validates
against an inventory with the params the ``scenario.*`` tasks map their flags to; the
branches of their ``when`` conditions run the right steps (the actions replaced, for this
test only, by recorders with the same arguments: the real actions run against podman in
tests/integration/stack/); a protected host is refused before step 1; the docs table of
the scenario-only actions matches the registry."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bigskies_ops.errors import SafetyError, StorageError
from bigskies_ops.inventory import parse as parse_inventory
from bigskies_ops.stack import runbook as rb
from bigskies_ops.stack.actions import ACTIONS, RunContext
from bigskies_ops.stack.scenarios import RUNBOOKS
from tests.unit.test_runbook_docs import _cell, _rows

COMPOSE = {"compose": {"file": "docker-compose.yml"}, "coordinators": ["bootstrap"],
           "postgres": {"database": "app"}}
INV = parse_inventory({"defaults": {"host": "dev"},
                       "hosts": {"dev": COMPOSE, "live": {**COMPOSE, "protected": True},
                                 "prod": {"connection": "ssh", "ssh": {"host": "prod.example"}, "project_dir": "/srv/app",
                                          "postgres": {"database": "app"}}}},
                      Path("/nonexistent/inventory.yaml"))
CALLS: list[tuple[str, dict]] = []
FAIL: set[str] = set()


@pytest.fixture
def recorders():
    """Every action a shipped runbook names, replaced by a recorder with the same arguments:
    it records (task, args), fails for a task in FAIL, registers an ``archive``."""
    rb.action_registry()
    saved = dict(ACTIONS)

    def fake(name):
        def run(h, a, ctx):
            CALLS.append((name, dict(a)))
            if name in FAIL:
                raise StorageError(f"{name} failed")
            return {"archive": f"/b/{name}.sql.gz", "msg": name}
        return run
    for name in list(ACTIONS):
        ACTIONS[name] = dataclasses.replace(ACTIONS[name], run=fake(name))
    CALLS.clear()
    FAIL.clear()
    yield
    ACTIONS.clear()
    ACTIONS.update(saved)


def _run(name: str, params: dict) -> rb.RunResult:
    book = rb.load(RUNBOOKS[name])
    values = rb.bind_params(book, params)
    valid = rb.validate(book, INV, None, values)
    ctx = RunContext(INV, yes=True, task=f"scenario.{name}")
    return rb.execute(book, ctx, valid.targets[0], values, say=lambda line: None)


def test_every_scenario_runbook_parses_with_the_params_its_task_sets():
    # the params cli/scenario.py maps its flags to (literals: a renamed param breaks the task)
    sets = {"before-risky-change": {"restart": "bootstrap", "label": "x"}, "fresh-start": {"timeout": 5.0},
            "complete-reset": {"backup": False, "restore": False, "roles": False, "wait_migrations": True},
            "prod-to-dev": {"from": "prod", "to": "dev"},
            "recover-corruption": {"archive": "/b/a.sql.gz", "roles": False}}
    assert set(sets) == set(RUNBOOKS)
    for name, params in sets.items():
        book = rb.load(RUNBOOKS[name])
        assert book.path.parent == rb.SHIPPED_DIR and book.description.startswith("Scenario "), name
        rb.validate(book, INV, "dev", rb.bind_params(book, params), force_protected=False)


def test_complete_reset_checks_the_backup_before_the_purge_and_restores_it_with_roles(recorders):
    r = _run("complete-reset", {})
    assert [t for t, _ in CALLS] == ["check.roles-saved", "db.backup", "check.restorable", "docker.purge",
                                     "docker.build", "docker.up", "db.restore"]
    args = dict(CALLS)
    assert args["check.restorable"]["archive"] == "/b/db.backup.sql.gz" and args["check.restorable"]["roles"] is True
    assert args["docker.purge"]["backup"] is False
    assert args["db.restore"]["archive"] == "/b/db.backup.sql.gz" and args["db.restore"]["roles"] is True
    assert args["db.restore"]["terminate_sessions"] is True
    assert r.recap["skipped"] == 1 and r.stopped is None


def test_complete_reset_without_backup_purges_and_skips_what_needs_the_backup(recorders):
    r = _run("complete-reset", {"backup": False})
    assert [t for t, _ in CALLS] == ["docker.purge", "docker.build", "docker.up"]
    reasons = {s.name: s.reason for s in r.steps if s.result == "skipped"}
    assert reasons["Check the pre-purge backup can be restored"] == "needs 'pre' of step 2 ('Back up before the " \
                                                                    "purge'), which was skipped"


def test_complete_reset_without_roles_restores_skipping_missing_roles(recorders):
    _run("complete-reset", {"roles": False})
    args = dict(CALLS)
    assert "check.roles-saved" in args and args["check.roles-saved"]["roles"] is False
    assert args["db.restore"]["roles"] is False and args["db.restore"]["skip_missing_roles"] is True


def test_a_refused_check_stops_complete_reset_before_the_backup(recorders):
    FAIL.add("check.roles-saved")
    r = _run("complete-reset", {})
    assert [t for t, _ in CALLS] == ["check.roles-saved"] and r.stopped.task == "check.roles-saved"


def test_recover_corruption_goes_on_when_the_backup_fails(recorders):
    FAIL.add("db.backup")
    r = _run("recover-corruption", {})
    assert [t for t, _ in CALLS] == ["check.roles-saved", "coordinators.stop", "db.backup", "message",
                                     "backup.choose", "check.restorable", "docker.purge", "docker.up",
                                     "wait.migrations", "db.restore"]
    args = dict(CALLS)
    assert args["message"]["msg"].startswith("the backup failed (db.backup failed)")
    assert args["backup.choose"]["archive"] == "" and args["db.restore"]["archive"] == "/b/backup.choose.sql.gz"
    assert r.recap["ignored"] == 1 and r.stopped is None


def test_recover_corruption_with_a_named_archive_checks_it_before_stopping_anything(recorders):
    _run("recover-corruption", {"archive": "/b/named.sql.gz"})
    tasks = [t for t, _ in CALLS]
    assert tasks[:3] == ["check.roles-saved", "check.restorable", "coordinators.stop"]
    assert tasks.count("check.restorable") == 1 and CALLS[1][1]["archive"] == "/b/named.sql.gz"


def test_recover_corruption_stops_before_deleting_when_no_backup_can_be_chosen(recorders):
    FAIL.update({"db.backup", "backup.choose"})
    r = _run("recover-corruption", {})
    assert "docker.purge" not in [t for t, _ in CALLS] and r.stopped.task == "backup.choose"


def test_the_destructive_scenarios_are_refused_on_a_protected_host_before_step_1():
    for name in ("complete-reset", "recover-corruption"):
        book = rb.load(RUNBOOKS[name])
        with pytest.raises(SafetyError) as e:
            rb.validate(book, INV, "live", rb.bind_params(book, {}))
        assert "--force-protected --confirm app" in str(e.value) and "nothing was run" in str(e.value)
    book = rb.load(RUNBOOKS["prod-to-dev"])
    with pytest.raises(SafetyError):
        rb.validate(book, INV, None, rb.bind_params(book, {"to": "live"}))


def test_the_docs_table_lists_every_scenario_action_with_its_arguments():
    rows = _rows()
    ours = {n: a for n, a in rb.action_registry().items() if a.run.__module__ == "bigskies_ops.stack.scenario_actions"}
    assert set(ours) <= set(rows), f"not in docs/runbooks.md: {sorted(set(ours) - set(rows))}"
    for name, a in ours.items():
        assert tuple(rows[name][1:]) == _cell(a), name


def test_complete_reset_check_names_the_backup_the_runbook_takes_before_the_purge(recorders, monkeypatch):
    from bigskies_ops.stack import lifecycle
    from bigskies_ops.stack.actions import Plan, StandIn

    def planned(name):
        def plan(h, a, ctx):
            return Plan(True, [f"{name}"], facts={"archive": StandIn("/b/pre.sql.gz")})
        return plan
    for name in ACTIONS:
        if name != "docker.purge":
            ACTIONS[name] = dataclasses.replace(ACTIONS[name], plan=planned(name))
    # the compose project's state is podman's (tests/integration/stack); here only the wording is checked
    monkeypatch.setattr(lifecycle, "plan_purge", lambda h, take_backup: {
        "project": "app", "containers": [], "volume": "app_pgdata", "volume_exists": True, "volume_size": "1 MiB",
        "refusals": []})
    book = rb.load(RUNBOOKS["complete-reset"])
    values = rb.bind_params(book, {})
    valid = rb.validate(book, INV, None, values, check=True)
    ctx = RunContext(INV, check=True, task="scenario.complete-reset")
    r = rb.execute(book, ctx, valid.targets[0], values, say=lambda line: None)
    purge = next(s for s in r.steps if s.task == "docker.purge")
    assert purge.reason == ("no pre-purge backup in this step (backup: false): the volume's data is kept in the "
                            "backup step 2 will write (/b/pre.sql.gz)")
    assert ctx.backups == [(2, "dev", "/b/pre.sql.gz")]
