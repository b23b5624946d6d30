"""``inventory.check`` / ``inventory.show`` and host selection, through the real CLI.

No database is needed: these tests only read inventories. Expected values are
literals written here, never the product's own output.
"""
from __future__ import annotations

import json

import pytest

from tests.conftest import PASSWORD, PASSWORD_ENV, cli, write_inventory


def _hosts():
    return {
        "dev": {"connection": "local",
                "postgres": {"host": "127.0.0.1", "port": 5433, "password_env": PASSWORD_ENV},
                "backup": {"keep_pre_restore": 4}},
        "stage": {"connection": "local", "postgres": {"port": 5434, "database": "stage_db"}},
        "prod": {"connection": "ssh", "ssh": {"host": "prod.example.org", "user": "deploy"},
                 "project_dir": "/srv/bigskies", "protected": True,
                 "container": {"name": "bigskies-postgres", "engine_command": "docker"},
                 "postgres": {"password_env": "BIGSKIES_UNSET_VAR_FOR_TEST"}},
    }


@pytest.fixture
def inv(tmp_path):
    return write_inventory(
        tmp_path / "inventory.yaml", _hosts(),
        defaults={"postgres": {"database": "bigskies", "user": "bigskies"},
                  "backup": {"compress_level": 3, "keep_pre_restore": 2, "format": "plain"},
                  "retention": {"daily": 9}},
        groups={"laptops": {"hosts": ["dev", "stage"],
                            "vars": {"backup": {"compress_level": 5, "format": "custom"},
                                     "retention": {"weekly": 6}}},
                "production": ["prod"]})


def test_check_ok(inv, cli_env):
    r = cli("inventory.check", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "3 host(s)" in r.stdout and "2 group(s)" in r.stdout


@pytest.mark.parametrize("mutate,path_text", [
    (lambda h: h["dev"]["postgres"].update(port="fivefourthree"), "hosts.dev.postgres.port: expected an integer"),
    (lambda h: h["dev"]["backup"].update(format="zip"), "hosts.dev.backup.format: expected one of plain, custom"),
    (lambda h: h["stage"].update(conection="local"), "hosts.stage.conection: unknown key (did you mean 'connection'?)"),
    (lambda h: h["prod"]["ssh"].update(port=70000), "hosts.prod.ssh.port: expected an integer from 1 to 65535"),
    (lambda h: h["prod"].pop("project_dir"), "hosts.prod.project_dir: required for connection: ssh"),
    (lambda h: h["dev"]["postgres"].update(password_env="not a name!"), "hosts.dev.postgres.password_env: expected the NAME"),
])
def test_check_faults_exit_2_naming_the_path(tmp_path, cli_env, mutate, path_text):
    hosts = _hosts()
    mutate(hosts)
    inv = write_inventory(tmp_path / "bad.yaml", hosts)
    r = cli("inventory.check", "-i", str(inv), env=cli_env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert path_text in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_show_json_redacts_and_merges_defaults_group_host(inv, cli_env):
    env = dict(cli_env)
    env.pop("BIGSKIES_UNSET_VAR_FOR_TEST", None)
    r = cli("inventory.show", "-i", str(inv), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert PASSWORD not in r.stdout
    view = json.loads(r.stdout)
    dev, stage, prod = (view["hosts"][n] for n in ("dev", "stage", "prod"))
    # secrets: the variable NAME and whether it is set, never the value
    assert dev["postgres"]["password_env"] == f"{PASSWORD_ENV} (set)"
    assert prod["postgres"]["password_env"] == "BIGSKIES_UNSET_VAR_FOR_TEST (NOT SET)"
    # precedence: defaults < group vars < host
    assert dev["backup"]["compress_level"] == 5           # group laptops beats defaults (3)
    assert dev["backup"]["format"] == "custom"            # group
    assert dev["backup"]["keep_pre_restore"] == 4         # host beats defaults (2)
    assert stage["backup"]["keep_pre_restore"] == 2       # defaults
    assert prod["backup"]["compress_level"] == 3          # defaults only (production has no vars)
    assert prod["backup"]["format"] == "plain"
    assert dev["retention"] == {"daily": 9, "weekly": 6, "monthly": 12}
    assert prod["retention"] == {"daily": 9, "weekly": 4, "monthly": 12}
    assert stage["postgres"]["database"] == "stage_db" and dev["postgres"]["database"] == "bigskies"
    assert stage["postgres"]["port"] == 5434 and dev["postgres"]["port"] == 5433
    assert prod["access_mode"] == "ssh-container" and dev["access_mode"] == "local-native"
    assert dev["groups"] == ["laptops"] and prod["protected"] is True
    assert view["groups"] == {"laptops": ["dev", "stage"], "production": ["prod"]}
    human = cli("inventory.show", "-i", str(inv), env=cli_env)
    assert human.returncode == 0 and PASSWORD not in human.stdout
    assert f"{PASSWORD_ENV} (set)" in human.stdout


def test_host_group_resolution_and_several_hosts_error(inv, cli_env):
    r = cli("inventory.show", "-i", str(inv), "--host", "laptops", "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(r.stdout)["hosts"]) == ["dev", "stage"]
    r = cli("inventory.show", "-i", str(inv), "--host", "production,dev", "--json", env=cli_env)
    assert sorted(json.loads(r.stdout)["hosts"]) == ["dev", "prod"]
    # a single-host task without --host and several hosts: exit 2 listing them
    r = cli("db.status", "-i", str(inv), env=cli_env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "pass --host" in r.stderr and "dev, prod, stage" in r.stderr
    # a group given to a single-host task
    r = cli("db.restore", "latest", "-i", str(inv), "--host", "laptops", "--yes", env=cli_env)
    assert r.returncode == 2
    assert "selects 2 hosts" in r.stderr
    # unknown name gets a hint
    r = cli("inventory.show", "-i", str(inv), "--host", "stagee", env=cli_env)
    assert r.returncode == 2
    assert "unknown host or group 'stagee'" in r.stderr and "did you mean 'stage'" in r.stderr
    # an empty --host (a script's unset variable) is neither the default host nor every host
    for task in (["inventory.show"], ["db.status"], ["apply", "--check"], ["run", "before-risky-change", "--check"]):
        r = cli(*task, "-i", str(inv), "--host", "", env=cli_env)
        assert r.returncode == 2, (task, r.stdout + r.stderr)
        assert "--host '' names no host; pass a host, a group or 'all'" in r.stderr, (task, r.stderr)


def test_bigskies_inventory_env_picks_the_file(inv, tmp_path, cli_env):
    other = write_inventory(tmp_path / "other.yaml", {"solo": {"connection": "local"}})
    env = dict(cli_env, BIGSKIES_INVENTORY=str(other))
    r = cli("inventory.show", "--json", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    view = json.loads(r.stdout)
    assert list(view["hosts"]) == ["solo"] and view["inventory"] == str(other)
    # -i beats the environment variable
    r = cli("inventory.show", "--json", "-i", str(inv), env=env, cwd=tmp_path)
    assert sorted(json.loads(r.stdout)["hosts"]) == ["dev", "prod", "stage"]
    # without either, ./inventory.yaml in the current folder
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("inventory.check", env=cli_env, cwd=empty)
    assert r.returncode == 2 and "file not found" in r.stderr


def test_check_refuses_a_repeated_key(tmp_path, cli_env):
    """PyYAML alone keeps the last of two ``protected:`` keys: a safety flag silently off."""
    inv = tmp_path / "dup.yaml"
    inv.write_text("hosts:\n  prod:\n    protected: true\n    postgres: {database: bigskies}\n    protected: false\n")
    for task in ("inventory.check", "inventory.show"):
        r = cli(task, "-i", str(inv), env=cli_env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "line 5 column 5" in r.stderr and "duplicate key 'protected' (first given at line 3" in r.stderr
        assert "Traceback" not in r.stderr and "protected: false" not in r.stdout
