"""``inventory.check`` reports what this machine lacks (warnings, exit 0) and refuses a
``schedule`` that ``db.schedule`` would refuse (exit 2 naming the host and field), through
the real CLI. No database is needed. Expected values are literals written here."""
from __future__ import annotations

import json

from tests.conftest import PASSWORD_ENV, cli, write_inventory


def _hosts(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("not really a key\n")
    return {
        "dev": {"connection": "local", "postgres": {"password_env": PASSWORD_ENV}},
        "stage": {"connection": "local", "postgres": {"password_env": "BIGSKIES_TEST_UNSET_VAR"}},
        "prod": {"connection": "ssh", "project_dir": "/srv/bigskies",
                 "ssh": {"host": "prod.example.org", "key_filename": str(tmp_path / "missing_key")}},
        "prod2": {"connection": "ssh", "project_dir": "/srv/bigskies",
                  "ssh": {"host": "prod2.example.org", "key_filename": str(key)}},
    }


def test_unset_variable_and_missing_key_file_are_warnings_naming_host_and_field(tmp_path, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", _hosts(tmp_path))
    env = dict(cli_env)
    env.pop("BIGSKIES_TEST_UNSET_VAR", None)
    before = inv.read_bytes()
    r = cli("inventory.check", "-i", str(inv), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning: [stage] hosts.stage.postgres.password_env: environment variable BIGSKIES_TEST_UNSET_VAR " \
           "is not set here" in r.stdout
    assert f"warning: [prod] hosts.prod.ssh.key_filename: {tmp_path / 'missing_key'} does not exist" in r.stdout
    assert "[dev]" not in r.stdout and "[prod2]" not in r.stdout       # set / present: nothing to say
    assert "4 host(s), 0 group(s) valid, 2 warning(s)" in r.stdout and "inventory.ping" in r.stdout
    r = cli("inventory.check", "-i", str(inv), "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["result"] == "ok" and doc["hosts"] == 4
    assert [(w["host"], w["field"]) for w in doc["warnings"]] == [
        ("stage", "hosts.stage.postgres.password_env"), ("prod", "hosts.prod.ssh.key_filename")]
    assert inv.read_bytes() == before
    # all present: no warning at all
    env["BIGSKIES_TEST_UNSET_VAR"] = "x"
    hosts = _hosts(tmp_path)
    hosts.pop("prod")
    inv2 = write_inventory(tmp_path / "inv2.yaml", hosts)
    r = cli("inventory.check", "-i", str(inv2), env=env)
    assert r.returncode == 0 and "warning" not in r.stdout and "3 host(s), 0 group(s) valid" in r.stdout


def test_a_schedule_db_schedule_would_refuse_is_an_error_naming_host_and_field(tmp_path, cli_env):
    for bad, text in (("0 2 * *", "hosts.dev.schedule: expected a cron expression with 5 fields"),
                      ("@nightly", "hosts.dev.schedule: unknown cron macro '@nightly'"),
                      (5, "hosts.dev.schedule: expected a cron expression in quotes")):
        inv = write_inventory(tmp_path / "inv.yaml", {"dev": {"connection": "local", "schedule": bad}})
        r = cli("inventory.check", "-i", str(inv), env=cli_env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert text in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "valid" not in r.stdout
    # in defaults: the field is named where it is set
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": {"connection": "local"}}, defaults={"schedule": "daily"})
    r = cli("inventory.check", "-i", str(inv), env=cli_env)
    assert r.returncode == 2 and "defaults.schedule: expected a cron expression" in r.stderr
    # what db.schedule accepts, inventory.check accepts
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": {"connection": "local", "schedule": "30 1 * * 1-5"},
                                                  "dev2": {"connection": "local", "schedule": "@daily"}})
    r = cli("inventory.check", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr
