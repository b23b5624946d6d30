"""Fleet: ``--host`` takes a group or a comma list; hosts run in parallel, one failure does not
stop the others, a recap line per host, exit 1 when any host failed."""
from __future__ import annotations

import json

from tests.conftest import cli
from tests.infra.sshd import free_port
from tests.remote_helpers import ssh_block
from tests.integration.pull.test_pull import _archives, env, prod_db, prod_template, world  # noqa: F401,F811 - fixtures


def test_backup_on_a_comma_list_runs_every_host_and_recaps_a_failure(world, ssh_server, env):
    w = world
    w.hosts["down"] = {"connection": "ssh", "project_dir": "/nonexistent",
                       "ssh": ssh_block(ssh_server, port=free_port())}
    inv = w.write()
    r = cli("db.backup", "-i", str(inv), "--host", "prod,dev,down", env=env)
    assert r.returncode == 1, r.stderr + r.stdout
    recap = r.stdout[r.stdout.index("Recap:"):].splitlines()[1:]
    assert [line.split(":")[0] + " " + line.split()[1] for line in recap] == [
        "changed [prod]", "changed [dev]", "failed [down]"]
    assert "connection refused" in recap[2]
    assert "1 of 3 hosts failed: down" in r.stderr
    assert len(_archives(w.prod_bdir)) == 1 and len(_archives(w.dev_bdir)) == 1


def test_list_and_status_on_a_group_and_json_recap(world, env):
    w = world
    inv = w.inv
    r = cli("db.status", "-i", str(inv), "--host", "production,dev", "--json", env=env)
    assert r.returncode == 0, r.stderr
    hosts = json.loads(r.stdout)["hosts"]
    assert [(h["host"], h["result"]) for h in hosts] == [("prod", "ok"), ("dev", "ok")]
    assert hosts[0]["status"]["access_mode"] == "ssh-container" and hosts[1]["status"]["access_mode"] == "local-native"
    r = cli("db.list", "-i", str(inv), "--host", "prod,dev", env=env)
    assert r.returncode == 0, r.stderr
    assert "== prod ==" in r.stdout and "== dev ==" in r.stdout and "ok: [prod] 0 backups" in r.stdout


def test_fleet_backup_json_carries_pulled_to_for_every_host(world, env):
    """docs/cli.md "JSON output": a fleet db.backup's hosts[] carry path, bytes, sha256 and
    pulled_to (the local copy with --pull, null otherwise)."""
    from pathlib import Path
    w = world
    r = cli("db.backup", "-i", str(w.inv), "--host", "prod,dev", "--json", env=env)
    assert r.returncode == 0, r.stderr
    hosts = {h["host"]: h for h in json.loads(r.stdout)["hosts"]}
    for name in ("prod", "dev"):
        assert {"path", "bytes", "sha256", "pulled_to"} <= set(hosts[name]), hosts[name]
        assert hosts[name]["pulled_to"] is None
    r = cli("db.backup", "-i", str(w.inv), "--host", "prod,dev", "--pull", "--json", env=env)
    assert r.returncode == 0, r.stderr
    hosts = {h["host"]: h for h in json.loads(r.stdout)["hosts"]}
    assert hosts["dev"]["pulled_to"] is None
    pulled = Path(hosts["prod"]["pulled_to"])
    assert pulled.is_file() and pulled.name == Path(hosts["prod"]["path"]).name
    assert pulled.stat().st_size == hosts["prod"]["bytes"]
