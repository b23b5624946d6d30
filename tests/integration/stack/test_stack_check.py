"""``--check`` of the stack's tasks on real podman + podman-compose: docker.up/down/restart/
build/purge and the four scenarios print what they would do (each service's state and
what would happen to it, the ordered steps with each step's plan) and change nothing:
containers' states, the data volume, the database and the backup folder are as before;
exit 0 without --yes. A group holding a protected host is refused (docs/safety.md).
"""
from __future__ import annotations

import json

from tests.conftest import write_inventory
from tests.infra import compose_stack as cs
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
    doc = json.loads(_check(stack, "docker.purge", "--host", "g", "--json", inv=inv).stdout)
    assert doc["result"] == "ok" and doc["plan"]["hosts"] == ["stack", "other"], doc
    assert "group 'g'" in doc["plan"]["refusals"][0]
    for task in ("scenario.complete-reset", "scenario.recover-corruption"):  # the runbook engine's document
        doc = json.loads(_check(stack, task, "--host", "g", "--json", inv=inv).stdout)
        assert doc["task"] == task and doc["check"] is True and doc["result"] == "ok", doc  # refused: ok
        assert [h["host"] for h in doc["hosts"]] == ["stack", "other"], (task, doc)
        assert any("group 'g' containing protected host(s) stack" in x for x in doc["refusals"]), doc["refusals"]
        r = stack.cli(task, "--host", "g", "--yes", inv=inv)
        assert r.returncode == 3 and "group 'g' containing protected host(s) stack" in r.stderr, r.stderr
        assert "TASK [" not in r.stdout, r.stdout  # refused before the first step
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


def _part(out: str, start: str, end: str) -> str:
    """The lines of ``out`` from the header containing ``start`` to the one containing ``end``."""
    i = out.index(start)
    return out[i:out.index(end, i)]


def test_scenario_checks_print_the_ordered_steps_with_their_plans(stack):
    from tests.integration.stack.test_stack import in_order
    before = stack.harmless()
    r = _check(stack, "scenario.fresh-start")
    out = r.stdout
    assert "CHECK MODE (scenario.fresh-start --check)" in out
    in_order(out, "TASK [Back up the current state] (db.backup on stack)", "would dump database 'bigskies'",
             "TASK [Stop everything] (docker.down on stack)", "stopped and removed",
             "TASK [Rebuild images] (docker.build on stack)", "TASK [Start; the database persists in its volume]",
             "TASK [Verify the data is intact] (check.row-counts on stack)", "would count every table's rows",
             "RUNBOOK RECAP")
    # each later step is planned against the state the earlier ones leave, not the live one:
    # after down the containers are gone, so up creates and starts them
    up_part = _part(out, "TASK [Start;", "TASK [Verify")
    assert "absent    -> created and started" in up_part and "kept running" not in up_part, out
    build_part = _part(out, "TASK [Rebuild images]", "TASK [Start;")
    assert "containers untouched" not in build_part and "no container: up creates it" in build_part, out
    # the row counts are compared with the manifest of the backup step 1 would write (a stand-in)
    assert "compare them with the manifest of " + str(stack.backups) in out, out

    r = _check(stack, "scenario.complete-reset")
    out = r.stdout
    in_order(out, "TASK [Check the backups save the roles]", "TASK [Back up before the purge]",
             "TASK [Check the pre-purge backup can be restored]", "would verify the archive",
             "TASK [Purge containers and the data volume]", "DELETE the data volume",
             "TASK [Rebuild images]", "TASK [Start fresh]",
             "TASK [Restore the pre-purge backup with its roles]", "TASK [Restore the pre-purge backup without roles]",
             "skipped: [stack] condition 'not params.roles' is false")
    up_part = _part(out, "TASK [Start fresh]", "TASK [Restore")
    assert "absent    -> created and started" in up_part and "kept running" not in up_part, out
    assert "the real run would REFUSE" not in out, out

    doc = json.loads(_check(stack, "scenario.recover-corruption", "--json").stdout)
    assert doc["task"] == "scenario.recover-corruption" and doc["check"] is True and doc["refusals"] == []
    steps = {s["task"] + ":" + s["name"]: s for s in doc["hosts"][0]["steps"]}
    names = [s["name"] for s in doc["hosts"][0]["steps"]]
    assert names.index("Stop the coordinators") < names.index("Delete the data volume") < names.index("Start fresh")
    assert len(names) == 12 and names[-2:] == ["Restore the last good backup with its roles",
                                              "Restore the last good backup without roles"], names
    assert steps["coordinators.stop:Stop the coordinators"]["reason"] == "stop bootstrap, datastore"
    assert steps["coordinators.stop:Stop the coordinators"]["facts"]["stopped"] == ["bootstrap", "datastore"]
    # planned against the state the coordinators' stop and the purge leave: everything is created again
    up = steps["docker.up:Start fresh"]["plan"]
    assert {s["service"]: s["would"] for s in up["services"]} == {
        "postgres": "created and started", "bootstrap": "created and started", "datastore": "created and started"}
    assert steps["message:Say the backup failed"]["result"] == "skipped"
    assert "runs only if 'bk' failed" in steps["message:Say the backup failed"]["reason"]

    r = _check(stack, "scenario.before-risky-change", "--restart", "bootstrap")
    part = _part(r.stdout, "TASK [Make the change (restart the service)] (docker.restart on stack)",
                 "TASK [Check PostgreSQL")
    assert "restart bootstrap" in part and "running   -> restarted" in part, r.stdout
    # a service the project does not have: exit 2 naming it, at the first step; the real run
    # stops there too, before the backup
    for flags in (["--check"], []):
        r = stack.cli("scenario.before-risky-change", "--restart", "nosuch", *flags)
        assert r.returncode == 2, r.stdout + r.stderr
        in_order(r.stdout, "TASK [Check the service to restart exists] (check.service on stack)",
                 "failed: [stack] service: 'nosuch' is not a service of compose project",
                 "bootstrap, datastore, postgres", "RUNBOOK RECAP")
        assert "TASK [Back up the database]" not in r.stdout, r.stdout
    # protected: the flags the real run would need
    inv = stack.inventory("inv-prot-check.yaml", protected=True)
    r = _check(stack, "scenario.complete-reset", inv=inv)
    assert "the real run would REFUSE:" in r.stdout and "needs --force-protected --confirm bigskies" in r.stdout
    assert stack.harmless() == before


def test_scenarios_on_a_protected_host_are_refused_before_the_first_step(stack):
    inv = stack.inventory("inv-prot-run.yaml", protected=True)
    before = stack.harmless()
    for task in ("scenario.complete-reset", "scenario.recover-corruption"):
        r = stack.cli(task, "--yes", inv=inv)
        assert r.returncode == 3, (task, r.stdout, r.stderr)
        assert "protected" in r.stderr and "--force-protected --confirm bigskies" in r.stderr, r.stderr
        assert "TASK [" not in r.stdout, r.stdout
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


def test_scenarios_refuse_an_archive_inside_the_data_volume_they_delete(stack):
    """The way back must survive the purge: a pre-purge backup planned inside the data volume
    (backup.dir under its mount point) is a refusal of the check; a named archive there is
    refused for real before anything is stopped (exit 3), and nothing changes."""
    from tests.integration.stack.test_stack import in_order
    mnt = cs.podman(stack.env, "volume", "inspect", "--format", "{{.Mountpoint}}", stack.n["volume"]).stdout.strip()
    assert mnt, "the data volume has no mount point"
    before = stack.harmless()
    inv = stack.inventory("inv-in-volume.yaml", backup={"dir": f"{mnt}/backups"})
    r = _check(stack, "scenario.complete-reset", inv=inv)
    in_order(r.stdout, "TASK [Check the pre-purge backup can be restored]", "the real run would REFUSE:",
             "lies inside the data volume", "TASK [Purge containers and the data volume]")
    archive = f"{mnt}/bigskies_backup_20260101_000000.sql.gz"
    r = stack.cli("scenario.recover-corruption", "--archive", archive, "--yes")
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"would restore {archive}, which lies inside the data volume" in r.stdout, r.stdout
    assert "nothing was purged" in r.stdout and "TASK [Stop the coordinators]" not in r.stdout, r.stdout
    assert stack.harmless() == before
