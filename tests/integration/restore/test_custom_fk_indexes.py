"""A custom archive with a foreign key on columns that two unique indexes cover, restored by
db.restore and by PostgreSQL's serial ``pg_restore`` (the oracle), compared on catalog, schema,
rows and the index each constraint depends on (``conindid``, which the fidelity snapshot does
not cover). ``pg_restore --jobs`` ties such a key to whichever candidate index exists when the
key is created; db.restore loads such an archive with one job (bigskies_ops.archives.fkeys).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import cli
from tests.integration.restore.test_parallel_index_edge_cases import REDUNDANT, copy_differences

BIN = "/usr/lib/postgresql/15/bin"
HAZARD = ("Loading with one job: foreign key public.ledger.ledger_acct_id_fkey references public.acct (id), "
          "covered by 2 unique indexes (acct_pkey, acct_id_uidx): pg_restore --jobs may tie it to another one")


def _backup_custom(inv, env) -> Path:
    r = cli("db.backup", "-i", str(inv), "--format", "custom", "--json", env=env)
    assert r.returncode == 0, r.stderr
    return Path(json.loads(r.stdout)["path"])


def _serial_copy(pg, pg_sql, archive: Path, db: str) -> None:
    pg_sql(f'DROP DATABASE IF EXISTS "{db}"', "postgres")
    pg_sql(f'CREATE DATABASE "{db}"', "postgres")
    subprocess.run([f"{BIN}/pg_restore", "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "bigskies",
                    "-d", db, "--exit-on-error", "--single-transaction", str(archive)], check=True,
                   capture_output=True)


def test_fk_with_two_candidate_indexes_restores_as_serial_pg_restore(local_inv, cli_env, pg, pg_sql, dbname):
    inv, _bdir = local_inv
    pg_sql(REDUNDANT, dbname)
    archive = _backup_custom(inv, cli_env)
    m = json.loads(Path(str(archive) + ".manifest.json").read_text())
    assert m["parallel_hazards_version"] == 2 and len(m["parallel_hazards"]) == 2, m["parallel_hazards"]
    ref = dbname + "_serial"
    try:
        _serial_copy(pg, pg_sql, archive, ref)
        pg_sql("DROP TABLE ledger", dbname)   # the restore must bring it back
        r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=cli_env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert HAZARD in r.stdout + r.stderr, r.stdout + r.stderr
        assert copy_differences(pg, pg_sql, dbname, ref, "db.restore", "pg_restore") == []
    finally:
        pg_sql(f'DROP DATABASE IF EXISTS "{ref}"', "postgres")


def test_a_manifest_from_older_rules_is_read_again(local_inv, cli_env, pg, pg_sql, dbname):
    """A backup made before the foreign-key rule recorded no such hazard: its schema is read
    again at restore time instead of trusting the manifest."""
    inv, _bdir = local_inv
    pg_sql(REDUNDANT, dbname)
    archive = _backup_custom(inv, cli_env)
    mpath = Path(str(archive) + ".manifest.json")
    m = json.loads(mpath.read_text())
    m.pop("parallel_hazards_version")
    m["parallel_hazards"] = []
    mpath.write_text(json.dumps(m))
    r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert HAZARD in r.stdout + r.stderr, r.stdout + r.stderr


def test_one_candidate_index_keeps_the_parallel_load(local_inv, cli_env, pg_sql, dbname):
    """The sample data's foreign keys each have one candidate index: no hazard, two jobs."""
    inv, _bdir = local_inv
    assert pg_sql("SELECT count(*) FROM pg_constraint WHERE contype = 'f'", dbname).strip() != "0"
    archive = _backup_custom(inv, cli_env)
    assert json.loads(Path(str(archive) + ".manifest.json").read_text())["parallel_hazards"] == []
    r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 0 and "Loading with one job" not in r.stdout + r.stderr, r.stdout + r.stderr
