"""``db.backup --check`` on the native test cluster: the plan names the database and its
size, the archive path, the estimated size (the last manifest), the free space and the
lock-wait policy; nothing is written (the backup folder's files and mtimes), exit 0."""
from __future__ import annotations

import json
import re

from tests.conftest import cli, native_host, write_inventory
from tests.integration.restore.test_restore_check import _databases, _files


def test_backup_check_names_the_plan_and_writes_nothing(pg, pg_sql, tmp_path, dbname, cli_env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml",
                          {"dev": native_host(pg, dbname, bdir, backup={"lock_wait_timeout": 30})})
    dbs = _databases(pg_sql)
    r = cli("db.backup", "-i", str(inv), "--check", env=cli_env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert not bdir.exists()  # not even the folder
    assert f"would dump database '{dbname}'" in r.stdout and "as plain" in r.stdout
    assert f"would write {bdir}/{dbname}_backup_" in r.stdout and "(the folder is created)" in r.stdout
    assert "give up after 30 s waiting for a table lock" in r.stdout and "free space in" in r.stdout
    # the estimate and the space need read as two plain facts (no nested parentheses)
    assert "estimated size: unknown (no earlier plain backup)" in r.stdout, r.stdout
    assert "needed, from the database's size (first backup in this format)" in r.stdout, r.stdout
    size = int(pg_sql(f"SELECT pg_database_size('{dbname}')", "postgres").strip())
    plan = json.loads(cli("db.backup", "-i", str(inv), "--check", "--json", env=cli_env).stdout)["plan"]
    assert plan["database"] == dbname and abs(plan["database_bytes"] - size) < 1 << 20
    assert plan["estimated_bytes"] is None and plan["needed_bytes"] == plan["database_bytes"]
    assert plan["free_bytes"] > 0 and plan["lock_wait"]["timeout_s"] == 30 and plan["refusals"] == []
    # after a backup: the estimate is the last manifest's size, the name a new one
    r = cli("db.backup", "-i", str(inv), "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout)
    before = _files(bdir)
    doc = json.loads(cli("db.backup", "-i", str(inv), "--check", "--json", "--format", "plain", env=cli_env).stdout)
    plan = doc["plan"]
    assert doc["check"] is True and doc["result"] == "changed" and doc["host"] == "dev"
    assert plan["estimated_bytes"] == last["bytes"] and plan["needed_bytes"] == int(last["bytes"] * 1.2)
    r = cli("db.backup", "-i", str(inv), "--check", env=cli_env)
    assert "(the last plain backup's size)" in r.stdout and "needed, from the last plain backup" in r.stdout, r.stdout
    assert re.fullmatch(re.escape(f"{bdir}/{dbname}_backup_") + r"\d{8}_\d{6}(_\d+)?\.sql\.gz", plan["archive"])
    assert plan["archive"] != last["path"]
    assert _files(bdir) == before and _databases(pg_sql) == dbs


def test_backup_check_of_a_group_is_one_json_document_with_a_plan_per_host(pg, pg_sql, tmp_path, dbname, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", {"a": native_host(pg, dbname, tmp_path / "a"),
                                                  "b": native_host(pg, dbname, tmp_path / "b")},
                          groups={"both": ["a", "b"]})
    r = cli("db.backup", "-i", str(inv), "--host", "both", "--check", "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["check"] is True and [d["host"] for d in doc["hosts"]] == ["a", "b"]
    assert doc["hosts"][1]["plan"]["archive"].startswith(f"{tmp_path}/b/{dbname}_backup_")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
