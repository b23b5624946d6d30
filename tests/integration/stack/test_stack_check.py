"""``--check`` of the stack's tasks on real podman + podman-compose: docker.up/down/restart/
build/purge and the four scenarios print what they would do (each service's state and
what would happen to it, the ordered steps with each step's plan) and change nothing:
containers' states, the data volume, the database and the backup folder are as before;
exit 0 without --yes. A group holding a protected host is refused (docs/safety.md).
"""
from __future__ import annotations

import json

from tests.conftest import write_inventory
from tests.integration.stack.test_stack import cli_env_module, stack  # noqa: F401 (fixtures)

pytest_plugins = ["tests.infra.fixtures"]


def _check(st, *args, inv=None):
    r = st.cli(*args, "--check", inv=inv)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_lifecycle_checks_name_each_service_and_change_nothing(stack):
    before = stack.harmless()
    r = _check(stack, "docker.down")
    assert "CHECK MODE (docker.down --check)" in r.stdout and "podman-compose down" in r.stdout
    assert "postgres" in r.stdout and "running   -> stopped and removed (volumes kept)" in r.stdout
    assert "(coordinator)" in r.stdout
    r = _check(stack, "docker.up", "--wait-migrations")
    assert "running   -> kept running" in r.stdout and "until schema_migrations reaches" in r.stdout
    r = _check(stack, "docker.restart")
    assert "-> restarted" in r.stdout and "until PostgreSQL accepts connections" in r.stdout
    doc = json.loads(_check(stack, "docker.build", "--json").stdout)
    plan = doc["plan"]
    assert doc["check"] is True and plan["action"] == "build" and plan["images"]
    assert {s["service"]: s["state"] for s in plan["services"]} == {
        "postgres": "running", "bootstrap": "running", "datastore": "running"}
    assert any(s["would"].startswith("image ") for s in plan["services"])
    assert stack.harmless() == before


def test_purge_check_names_what_would_be_lost_and_the_backup_plan(stack):
    before = stack.harmless()
    r = _check(stack, "docker.purge")
    out = r.stdout
    assert "CHECK MODE (docker.purge --check)" in out and f"DELETE the data volume bsst{stack.suffix}_postgres_data" in out
    assert "would take a pre-purge backup first" in out and "would dump database 'bigskies'" in out
    assert f"bsst{stack.suffix}-postgres" in out and "needs --yes" in out
    plan = json.loads(_check(stack, "docker.purge", "--no-backup", "--json").stdout)["plan"]
    assert plan["backup"] is None and plan["no_backup"] is True and plan["volume_exists"] is True
    # a group holding a protected host: refused for real, reported by the check
    inv = write_inventory(stack.root / "inv-group.yaml", {"stack": stack.host(protected=True)}, groups={"g": ["stack"]})
    r = stack.cli("docker.purge", "--host", "g", "--yes", "--force-protected", "--confirm", "bigskies", inv=inv)
    assert r.returncode == 3 and "group 'g' containing protected host(s) stack" in r.stderr, r.stderr
    r = _check(stack, "docker.purge", "--host", "g", inv=inv)
    assert "the real run would REFUSE: refused: purge on group 'g'" in r.stdout
    # a group of two hosts, one protected: exit 3 for real (not 2, "takes one host"); the check exit 0
    inv = write_inventory(stack.root / "inv-group2.yaml", {"stack": stack.host(protected=True),
                                                           "other": stack.host()}, groups={"g": ["stack", "other"]})
    r = stack.cli("docker.purge", "--host", "g", "--yes", inv=inv)
    assert r.returncode == 3 and "group 'g' containing protected host(s) stack" in r.stderr, r.stderr
    for task in ("docker.purge", "scenario.complete-reset", "scenario.recover-corruption"):
        doc = json.loads(_check(stack, task, "--host", "g", "--json", inv=inv).stdout)
        assert doc["result"] == "ok" and doc["plan"]["hosts"] == ["stack", "other"], (task, doc)
        assert "group 'g'" in doc["plan"]["refusals"][0]
    # the server cannot be read (its container absent): the pre-purge backup, and so the purge, would
    # fail; the check still plans (exit 0), names that as the refusal and the flag that lifts it
    inv = stack.inventory("inv-nocontainer.yaml", container={"name": "bsst-no-such-container"})
    r = _check(stack, "docker.purge", inv=inv)
    assert "the real run would REFUSE: the pre-purge backup would fail" in r.stdout and "--no-backup" in r.stdout
    assert "does not exist" in r.stdout and "ok (check)" in r.stdout, r.stdout
    doc = json.loads(_check(stack, "docker.purge", "--json", inv=inv).stdout)
    assert doc["result"] == "ok" and doc["plan"]["backup"] is None and doc["plan"]["backup_error"]
    doc = json.loads(_check(stack, "docker.purge", "--no-backup", "--json", inv=inv).stdout)
    assert doc["result"] == "changed" and doc["plan"]["refusals"] == []
    assert stack.harmless() == before


def test_scenario_checks_print_the_ordered_steps_with_their_plans(stack):
    before = stack.harmless()
    r = _check(stack, "scenario.fresh-start")
    out = r.stdout
    for i, title in enumerate(("Back up the current state", "Stop everything", "Rebuild images", "Start;",
                               "Verify the data is intact"), 1):
        assert f"would run step {i}/5: {title}" in out, out
    assert out.index("step 1/5") < out.index("would dump database 'bigskies'") < out.index("step 2/5")
    assert out.index("step 2/5") < out.index("stopped and removed") < out.index("step 3/5")
    # each later step is planned against the state the earlier ones leave, not the live one:
    # after down the containers are gone, so up creates and starts them
    up_part = out[out.index("step 4/5"):out.index("step 5/5")]
    assert "absent    -> created and started" in up_part and "kept running" not in up_part, out
    assert "data volume: kept" in up_part
    build_part = out[out.index("step 3/5"):out.index("step 4/5")]
    assert "containers untouched" not in build_part and "no container: up creates it" in build_part, out
    r = _check(stack, "scenario.complete-reset")
    assert "would run step 1/4: Purge containers and the data volume" in r.stdout
    out = r.stdout
    up_part = out[out.index("step 3/4"):out.index("step 4/4")]
    assert "absent    -> created and started" in up_part and "kept running" not in up_part, out
    assert "data volume: created empty" in up_part
    assert "DELETE the data volume" in r.stdout and "would run step 4/4: Restore the pre-purge backup" in r.stdout
    doc = json.loads(_check(stack, "scenario.recover-corruption", "--json").stdout)
    steps = doc["plan"]["steps"]
    assert [s["title"] for s in steps][0] == "Stop the coordinators" and len(steps) == 6
    assert "stop bootstrap, datastore" in steps[0]["notes"][0] and steps[2]["kind"] == "purge"
    assert {s["service"]: s["would"] for s in steps[3]["plan"]["services"]} == {
        "postgres": "created and started", "bootstrap": "created and started", "datastore": "created and started"}
    r = _check(stack, "scenario.before-risky-change", "--restart", "bootstrap")
    assert "would run step 2/3: Make the change: restart service 'bootstrap'" in r.stdout
    assert "restart service 'bootstrap' (now running)" in r.stdout
    r = _check(stack, "scenario.before-risky-change", "--restart", "nosuch")
    assert "the real run would REFUSE: 'nosuch' is not a service" in r.stdout
    # protected: the flags the real run would need
    inv = stack.inventory("inv-prot-check.yaml", protected=True)
    r = _check(stack, "scenario.complete-reset", inv=inv)
    assert "needs --force-protected --confirm bigskies" in r.stdout
    assert stack.harmless() == before


def test_restore_check_names_the_running_coordinators_and_their_sessions(stack):
    r = stack.cli("db.backup", "--json")
    assert r.returncode == 0, r.stderr
    before = stack.harmless()
    r = _check(stack, "db.restore", "latest")
    assert "would stop the running coordinators bootstrap, datastore before the swap" in r.stdout, r.stdout
    plan = json.loads(_check(stack, "db.restore", "latest", "--json").stdout)["plan"]
    assert plan["coordinators"] == ["bootstrap", "datastore"]
    assert {s["application"] for s in plan["sessions"]} >= {"bootstrap", "datastore"}
    assert plan["refusals"] == []  # the coordinators' sessions end when they are stopped
    assert stack.harmless() == before
