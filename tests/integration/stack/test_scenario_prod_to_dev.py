"""Scenario 4 as a runbook (``runbooks/prod-to-dev.yaml``, ``inv scenario.prod-to-dev``):
"prod" is PostgreSQL in a podman container reached over a real sshd (protected), "dev" the
native test cluster (tests/integration/pull/test_pull.py's world). Data is compared by the
test's own queries; the check and the refusals change nothing.
"""
from __future__ import annotations

import json

from tests.conftest import cli
from tests.integration.pull.test_pull import env, prod_db, prod_template, world  # noqa: F401 (fixtures)
from tests.integration.stack.test_stack import in_order
from tests.pgcheck import db_fingerprint, dir_hashes


def test_scenario_prod_to_dev_pulls_prods_data_into_dev_through_its_runbook(world, pg_sql, env):  # noqa: F811
    w = world
    w.prod_sql("UPDATE users SET email = 'prod-only-' || id || '@example.org' WHERE id % 5 = 0", w.prod_db)
    prod_before = db_fingerprint(w.prod_sql, w.prod_db)
    dev_before = db_fingerprint(pg_sql, w.dev_db)
    assert prod_before != dev_before

    def unchanged():
        assert db_fingerprint(pg_sql, w.dev_db) == dev_before
        assert not w.dev_bdir.exists() or dir_hashes(w.dev_bdir) == {}

    # --check: the runbook's one step planned, nothing changed, exit 0
    r = cli("scenario.prod-to-dev", "-i", str(w.inv), "--check", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    in_order(r.stdout, "CHECK MODE (scenario.prod-to-dev --check)",
             "TASK [Pull production's data and restore it here] (db.pull on dev)", "would dump and stream prod's",
             "restore it into dev's database", "RUNBOOK RECAP")
    unchanged()
    # no --yes and no terminal: refused before the step (exit 3)
    r = cli("scenario.prod-to-dev", "-i", str(w.inv), env=env)
    assert r.returncode == 3 and "--yes" in r.stderr and "TASK [" not in r.stdout, r.stdout + r.stderr
    unchanged()
    # into prod (an SSH host, protected): db.pull's host receives the data and must be local, which
    # is checked before the step (exit 2; the flags lifting the protection would not help)
    r = cli("scenario.prod-to-dev", "-i", str(w.inv), "--to", "prod", "--yes", env=env)
    assert r.returncode == 2 and "host: db.pull runs on the local host that receives the backup; prod is an SSH " \
                                 "host" in r.stderr and "TASK [" not in r.stdout, r.stderr
    unchanged()
    assert db_fingerprint(w.prod_sql, w.prod_db) == prod_before

    r = cli("scenario.prod-to-dev", "-i", str(w.inv), "--from", "prod", "--to", "dev", "--yes", "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["task"] == "scenario.prod-to-dev" and doc["runbook"] == "prod-to-dev" and doc["result"] == "changed"
    (host,) = doc["hosts"]
    assert host["host"] == "dev" and host["recap"]["changed"] == 1 and host["recap"]["failed"] == 0, host
    step = host["steps"][0]
    assert step["task"] == "db.pull" and step["host"] == "dev" and step["facts"]["from"] == "prod", step
    assert step["facts"]["archive"].startswith(str(w.dev_bdir / "prod")), step
    assert db_fingerprint(pg_sql, w.dev_db) == prod_before          # dev now holds prod's data
    assert db_fingerprint(w.prod_sql, w.prod_db) == prod_before      # prod untouched
