"""Runbooks over the compose stack (real podman + podman-compose): ``--check`` of a purge,
build, up and restore plans each step against the state the earlier steps leave (after the
purge, ``up`` creates the containers; the restore waits for the archive the purge's backup
would write) and changes nothing; the same runbook run for real brings the data back
(compared by the test's own psql); a service restart step restarts that service only.
"""
from __future__ import annotations

import json
import textwrap

from tests.integration.stack.test_stack import COORD_SESSIONS, cli_env_module, stack  # noqa: F401 (fixtures)

pytest_plugins = ["tests.infra.fixtures"]

RESET = """
    description: purge with a backup first, rebuild, start fresh, restore that backup with its roles
    steps:
      - name: Purge
        task: docker.purge
        register: purged
      - task: docker.build
      - name: Start fresh
        task: docker.up
        args: {timeout: 90}
      - name: Restore the pre-purge backup
        task: db.restore
        args: {archive: "{{ purged.backup }}", roles: true}
"""


def _write(stack, name: str, text: str):
    d = stack.root / "runbooks"
    d.mkdir(exist_ok=True)
    (d / f"{name}.yaml").write_text(textwrap.dedent(text))


def test_check_plans_each_step_against_the_state_the_earlier_steps_leave(stack):
    _write(stack, "reset", RESET)
    before = stack.harmless()
    r = stack.cli("run", "reset", "--check", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    steps = doc["hosts"][0]["steps"]
    assert [s["result"] for s in steps] == ["changed", "changed", "changed", "changed"], steps
    assert steps[0]["plan"]["volume_exists"] is True and steps[0]["plan"]["backup"]["database"] == "bigskies"
    up = {s["service"]: (s["state"], s["would"]) for s in steps[2]["plan"]["services"]}
    assert up == {s: ("absent", "created and started") for s in ("postgres", "bootstrap", "datastore")}
    assert steps[3]["plan"]["archive"]["path"] is None  # the pre-purge backup is not there yet
    assert "TASK [Start fresh] (docker.up on stack)" in r.stderr
    assert "would run podman-compose up -d" in r.stderr
    assert stack.harmless() == before


def test_the_runbook_purges_starts_fresh_and_restores_the_data(stack):
    _write(stack, "reset", RESET)
    before = stack.fingerprint()
    r = stack.cli("run", "reset", "--yes", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "changed: [stack] project " in r.stdout and "purged; volume" in r.stdout
    assert "stack : ok=0 changed=4 failed=0 skipped=0 unreachable=0 ignored=0" in r.stdout, r.stdout
    assert stack.fingerprint() == before
    stack.wait_sessions(COORD_SESSIONS)


def test_a_service_restart_step_restarts_that_service_and_a_bad_service_fails_the_step(stack):
    _write(stack, "poke", """
        steps:
          - task: db.backup
            register: pre
          - task: docker.restart
            args: {service: datastore}
          - task: db.verify
            args: {archive: "{{ pre.archive }}"}
          - task: docker.restart
            args: {service: nosuch}
          - task: db.backup
    """)
    backups = {p.name for p in stack.backups.iterdir()}
    r = stack.cli("run", "poke", "--json")
    assert r.returncode == 2, r.stdout + r.stderr
    steps = json.loads(r.stdout)["hosts"][0]["steps"]
    assert [s["result"] for s in steps] == ["changed", "changed", "changed", "failed"]
    assert steps[1]["reason"].startswith("service 'datastore' restarted; PostgreSQL ready after")
    assert "'nosuch' is not a service of compose project" in steps[3]["reason"]
    new = {p.name for p in stack.backups.iterdir()} - backups
    assert len([n for n in new if n.endswith(".sql.gz")]) == 1  # the last step did not run
    stack.wait_sessions(COORD_SESSIONS)
