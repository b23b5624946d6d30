"""``db.schedule --check`` reports through output.check_report: the host's block before and
after; the crontab file is not touched (content and mtime); exit 0; one JSON document."""
from __future__ import annotations

import json
import os

from tests.conftest import cli, write_inventory


def test_schedule_check_shows_the_block_before_and_after_and_changes_nothing(tmp_path, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": {"connection": "local", "schedule": "15 1 * * *"},
                                                  "dev2": {"connection": "local"}})
    crontab = tmp_path / "crontab"
    crontab.write_text("MAILTO=ops@example.org\n")
    stamp = lambda: (crontab.read_bytes(), os.stat(crontab).st_mtime_ns)  # noqa: E731
    before = stamp()
    r = cli("db.schedule", "-i", str(inv), "--host", "dev", "--crontab-file", str(crontab), "--check", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("CHECK MODE (db.schedule --check): nothing is changed")
    assert f"would change the crontab ({crontab}): add a block for dev" in r.stdout
    assert "  after:  # BEGIN bigskies-ops dev" in r.stdout and "after:  15 1 * * * " in r.stdout
    assert "before:" not in r.stdout and "changed (check): [dev]" in r.stdout
    assert stamp() == before
    # installed, then the time changes in the inventory: before and after both shown
    assert cli("db.schedule", "-i", str(inv), "--host", "dev", "--crontab-file", str(crontab),
               env=cli_env).returncode == 0
    write_inventory(tmp_path / "inv.yaml", {"dev": {"connection": "local", "schedule": "30 3 * * *"},
                                            "dev2": {"connection": "local"}})
    before = stamp()
    r = cli("db.schedule", "-i", str(inv), "--host", "dev", "--crontab-file", str(crontab), "--check", env=cli_env)
    assert r.returncode == 0 and "replace the block of dev" in r.stdout, r.stdout
    assert "before: 15 1 * * * " in r.stdout and "after:  30 3 * * * " in r.stdout
    r = cli("db.schedule", "-i", str(inv), "--host", "dev", "--crontab-file", str(crontab), "--check", "--remove",
            "--json", env=cli_env)
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["result"] == "changed" and doc["check"] is True and doc["task"] == "db.schedule"
    assert doc["plan"]["removed"] is True and doc["plan"]["after"] == [] and len(doc["plan"]["before"]) == 4
    # two hosts under --json: one document
    r = cli("db.schedule", "-i", str(inv), "--host", "dev,dev2", "--crontab-file", str(crontab), "--check",
            "--json", env=cli_env)
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and [h["host"] for h in doc["hosts"]] == ["dev", "dev2"]
    assert stamp() == before
    # nothing to do: ok
    write_inventory(tmp_path / "inv.yaml", {"dev": {"connection": "local", "schedule": "15 1 * * *"}})
    r = cli("db.schedule", "-i", str(inv), "--crontab-file", str(crontab), "--check", env=cli_env)
    assert r.returncode == 0 and "ok (check): [dev] would change nothing" in r.stdout, r.stdout


def test_schedule_check_on_a_protected_host_lists_the_refusal_and_exits_0(tmp_path, cli_env):
    """The block prunes every night: on a protected host the real run needs --force-protected
    --confirm DBNAME (exit 3 without); its --check exits 0, lists that refusal with the flags
    under ``refusals`` and says ``ok`` (docs/cli.md "Dry runs"); the crontab is untouched."""
    inv = write_inventory(tmp_path / "inv.yaml", {"prot": {"connection": "local", "protected": True,
                                                           "postgres": {"database": "app"}}})
    crontab = tmp_path / "crontab"
    crontab.write_text("MAILTO=ops@example.org\n")
    before = (crontab.read_bytes(), os.stat(crontab).st_mtime_ns)
    args = ("db.schedule", "-i", str(inv), "--host", "prot", "--crontab-file", str(crontab))
    r = cli(*args, env=cli_env)
    assert r.returncode == 3 and "--force-protected --confirm app" in r.stderr, r.stderr
    r = cli(*args, "--check", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "the real run would REFUSE: refused: prot is protected; prune needs --force-protected --confirm app" \
        in r.stdout and "ok (check): [prot] would change nothing" in r.stdout, r.stdout
    r = cli(*args, "--check", "--json", env=cli_env)
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["result"] == "ok" and doc["would_change"] is False and doc["task"] == "db.schedule"
    assert ["--force-protected --confirm app" in x for x in doc["plan"]["refusals"]] == [True]
    doc = json.loads(cli(*args, "--check", "--json", "--force-protected", "--confirm", "app", env=cli_env).stdout)
    assert doc["result"] == "changed" and doc["plan"]["refusals"] == [] and "--force-protected" in doc["plan"]["after"][1]
    assert (crontab.read_bytes(), os.stat(crontab).st_mtime_ns) == before
