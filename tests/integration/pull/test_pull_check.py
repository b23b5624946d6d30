"""``db.pull --check`` against a real sshd and a PostgreSQL container ("prod") and the
native test cluster ("dev"): the plan names the source, its size and the destination,
with ``--restore`` the restore's plan on dev; nothing changes on either side (files and
mtimes, database oids). Also issue 18's doc fixes: ``--restore`` without ``--to`` takes
the documented default (docs/remote.md), and a ``--to`` group holding a protected host
is refused (docs/safety.md).
"""
from __future__ import annotations

import json

from tests.conftest import cli, write_inventory
from tests.integration.pull.test_pull import env, prod_db, prod_template, world  # noqa: F401 (fixtures)
from tests.integration.restore.test_restore_check import _databases, _files
from tests.pgcheck import db_fingerprint


def _state(w, pg_sql):
    return _files(w.dev_bdir), _files(w.prod_bdir), _databases(pg_sql), db_fingerprint(w.prod_sql, w.prod_db)


def _check(w, env, *args):
    r = cli("db.pull", "-i", str(w.inv), "--from", "prod", *args, "--check", env=env)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr + r.stdout
    return r


def test_pull_check_names_source_size_destination_and_the_restore_plan(world, pg_sql, env):
    w = world
    before = _state(w, pg_sql)
    r = _check(w, env)
    assert "CHECK MODE (db.pull --check)" in r.stdout
    assert f"would dump prod:'{w.prod_db}'" in r.stdout and "streamed over SSH into" in r.stdout
    assert f"{w.dev_bdir}/prod/{w.prod_db}_backup_" in r.stdout and "free space here" in r.stdout
    plan = json.loads(_check(w, env, "--json").stdout)["plan"]
    assert plan["mode"] == "stream" and plan["format"] == "plain" and plan["to"] == "dev"
    assert plan["source"]["database"] == w.prod_db and plan["source"]["database_bytes"] > 0
    assert plan["destination"].startswith(f"{w.dev_bdir}/prod/{w.prod_db}_backup_") and plan["restore"] is None
    # --restore without --to: dev (defaults.host), as docs/remote.md says; the restore's plan on dev
    r = _check(w, env, "--restore")
    # one coherent statement of when the restore happens (jobs/pull: a plain dump is loaded while it arrives)
    assert "would restore it into dev's database while it arrives (a plain dump is loaded as it streams in):" \
        in r.stdout, r.stdout
    assert "would restore the archive: loaded into the side database while it arrives" in r.stdout
    assert "once it is here" not in r.stdout and "pulled first" not in r.stdout
    r2 = _check(w, env, "--restore", "--format", "custom")
    assert "would restore it into dev's database after the pull (from the complete file):" in r2.stdout, r2.stdout
    assert "while it arrives" not in r2.stdout
    assert "estimated size: unknown (no earlier plain backup pulled from prod)" in r.stdout, r.stdout
    assert f"create side database '{w.dev_db}_restoring_" in r.stdout, r.stdout
    doc = json.loads(_check(w, env, "--restore", "--json").stdout)
    rp = doc["plan"]["restore"]
    assert rp["database"] == w.dev_db and rp["pre_restore_copy"].startswith(w.dev_db + "_pre_")
    assert rp["archive"]["path"] is None and rp["space"]["needed"] > 0 and doc["plan"]["refusals"] == []
    # an existing archive on prod: its path, size and manifest
    r = cli("db.backup", "-i", str(w.inv), "--host", "prod", "--json", env=env)
    assert r.returncode == 0, r.stderr
    remote = json.loads(r.stdout)["path"]
    before = _state(w, pg_sql)
    plan = json.loads(_check(w, env, "--existing", "latest", "--json").stdout)["plan"]
    assert plan["mode"] == "existing" and plan["source"]["path"] == remote and plan["source"]["manifest"] == "DONE"
    assert plan["source"]["bytes"] == (w.prod_bdir / remote.rsplit("/", 1)[1]).stat().st_size
    assert plan["destination"] == f"{w.dev_bdir}/prod/{remote.rsplit('/', 1)[1]}" and plan["already_here"] is False
    # its id and a 4-character prefix, as the real run takes them (one lookup for both)
    bid = json.loads(cli("db.list", "-i", str(w.inv), "--host", "prod", "--json", env=env).stdout)["backups"][0]["id"]
    for spec in (bid, bid[:4]):
        plan = json.loads(_check(w, env, "--existing", spec, "--json").stdout)["plan"]
        assert plan["source"]["path"] == remote, (spec, plan)
    r = cli("db.pull", "-i", str(w.inv), "--from", "prod", "--existing", "ffff0000" if bid != "ffff0000" else "0000ffff",
            "--check", env=env)
    assert r.returncode == 1 and "no backup with that id" in r.stderr, r.stderr
    assert _state(w, pg_sql) == before


def test_pull_restore_without_to_restores_into_the_default_host(world, pg_sql, env):
    w = world
    prod = db_fingerprint(w.prod_sql, w.prod_db)
    r = cli("db.pull", "-i", str(w.inv), "--from", "prod", "--restore", "--yes", env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "needs --to" not in r.stderr and "Restored into dev" in r.stdout
    assert db_fingerprint(pg_sql, w.dev_db) == prod


def test_pull_to_a_group_holding_a_protected_host_is_refused(world, pg_sql, env):
    w = world
    w.hosts["dev"]["protected"] = True
    write_inventory(w.inv, w.hosts, defaults={"host": "dev"}, groups={"production": ["prod"], "laptops": ["dev"]})
    before = _state(w, pg_sql)
    r = cli("db.pull", "-i", str(w.inv), "--from", "prod", "--to", "laptops", "--restore", "--yes",
            "--force-protected", "--confirm", w.dev_db, env=env)
    assert r.returncode == 3, r.stderr + r.stdout
    assert "group 'laptops' containing protected host(s) dev" in r.stderr
    r = _check(w, env, "--to", "laptops", "--restore", "--force-protected", "--confirm", w.dev_db)
    assert "the real run would REFUSE: refused: pull --to on group 'laptops'" in r.stdout
    r = _check(w, env, "--to", "dev", "--restore")
    assert f"needs --force-protected --confirm {w.dev_db}" in r.stdout
    # a --to group of several hosts, one protected: the run exit 3, the check exit 0 with the refusal
    write_inventory(w.inv, dict(w.hosts, dev2=dict(w.hosts["dev"], protected=False)), defaults={"host": "dev"},
                    groups={"production": ["prod"], "laptops": ["dev", "dev2"]})
    r = cli("db.pull", "-i", str(w.inv), "--from", "prod", "--to", "laptops", "--restore", "--yes", env=env)
    assert r.returncode == 3 and "group 'laptops' containing protected host(s) dev" in r.stderr, r.stderr
    doc = json.loads(_check(w, env, "--to", "laptops", "--restore", "--json").stdout)
    assert doc["result"] == "ok" and doc["plan"]["hosts"] == ["dev", "dev2"]
    assert "group 'laptops'" in doc["plan"]["refusals"][0]
    assert _state(w, pg_sql) == before
