"""Restore fidelity through ``db.pull --from prod --to dev --restore``.

prod is PostgreSQL in a podman container reached over the test sshd (as in
tests/integration/pull/test_pull.py); dev is the native test cluster. For a subset of the corpus the
pulled archive (plain, prod's default format) restored on dev must equal PostgreSQL's
own serial load of that same archive, and dev's database-level facts must be prod's
at the time of the pull.
"""
from __future__ import annotations

import uuid

import pytest

from tests.conftest import write_inventory, native_host
from tests.fidelity.compare import snapshot
from tests.fidelity.harness import (ROLES_SQL, Case, Outcome, cli, cli_env, create_db, drop_db_like,
                                    oracle_load, psql)
from tests.infra.podman import PG_BINDIR
from tests.remote_helpers import PROD_PW, PROD_PW_ENV, prod_host

PULL_CASES = ["generated_reads_table_sorting_before", "large_objects", "part_hash_enum", "privileges",
              "quoted_identifiers", "role_in_database_settings"]


def _prod_psql(pc, database: str, script: str, **variables: str) -> str:
    argv = [f"{PG_BINDIR}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "/var/run/postgresql",
            "-U", "bigskies", "-d", database]
    for k, v in variables.items():
        argv += ["-v", f"{k}={v}"]
    r = pc.exec(*argv, input=script.encode(), check=False)
    assert r.returncode == 0, f"test psql in prod failed on {database}: {r.stderr.decode()[-2000:]}"
    return r.stdout.decode()


@pytest.fixture(scope="module")
def pull_world(pg, ssh_server, pg_container, tmp_path_factory):
    class W:
        pass
    w = W()
    w.pg, w.pc, w.srv = pg, pg_container, ssh_server
    w.root = tmp_path_factory.mktemp("fidelity_pull")
    w.env = {**cli_env(), PROD_PW_ENV: PROD_PW}
    w.prod_dbs, w.dev_dbs = [], []
    _prod_psql(pg_container, "postgres", ROLES_SQL)
    psql(pg, "postgres", ROLES_SQL)
    yield w
    for name in w.prod_dbs:
        _prod_psql(pg_container, "postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    for name in w.dev_dbs:
        drop_db_like(pg, name)


@pytest.mark.parametrize("case", PULL_CASES)
def test_a_pulled_and_restored_database_equals_postgresqls_own_serial_load_of_the_pulled_archive(pull_world, case):
    w = pull_world
    c = Case.load(case)
    tag = uuid.uuid4().hex[:8]
    prod_db, dev_db = f"fp_{tag}", f"fd_{tag}"
    w.prod_dbs.append(prod_db)
    w.dev_dbs.append(dev_db)
    _prod_psql(w.pc, "postgres", f'CREATE DATABASE "{prod_db}" TEMPLATE template0 OWNER fid_dbowner')
    _prod_psql(w.pc, prod_db, c.setup, dbname=prod_db)
    at_pull = snapshot("", 0, prod_db, schema=False, run=lambda script: _prod_psql(w.pc, prod_db, script))
    create_db(w.pg, dev_db, "fid_dbowner")
    psql(w.pg, dev_db, "CREATE TABLE dev_only AS SELECT generate_series(1, 10) AS x")  # dev's earlier state
    proj = w.root / tag
    proj.mkdir()
    dev_bdir = w.root / f"dev-backups-{tag}"
    inv = write_inventory(w.root / f"inventory-{tag}.yaml",
                          {"prod": prod_host(w.srv, w.pc, proj, prod_db),
                           "dev": native_host(w.pg, dev_db, dev_bdir, backup={"keep_pre_restore": 1})},
                          defaults={"host": "dev"}, groups={"production": ["prod"]})
    r = cli("db.pull", "-i", str(inv), "--from", "prod", "--to", "dev", "--restore", "--yes", env=w.env)
    pulled = sorted((dev_bdir / "prod").glob("*.sql.gz"))
    assert len(pulled) == 1, f"one plain archive pulled expected, got {pulled}: {r.stdout}{r.stderr}"
    sock, port = str(w.pg.socket_dir), w.pg.port
    tool = snapshot(sock, port, dev_db) if r.returncode == 0 else None
    oracle_load(w.pg, pulled[0], f"{dev_db}_oracle", "fid_dbowner")
    oracle = snapshot(sock, port, f"{dev_db}_oracle")
    problems = Outcome(r, tool, oracle, at_pull["database"]).problems()
    assert not problems, f"{case} (db.pull --restore): dev's restored database differs:\n" + "\n".join(problems)
