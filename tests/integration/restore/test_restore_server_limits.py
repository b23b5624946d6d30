"""A restore on servers set up the way real ones are (issue 16), each refused before
anything is created, with a message that says what to do: a role that may not swap the
database in, a server without room for the side database, background workers and
sessions this role cannot see (restores within one second: tests/integration/pg/test_servers.py). Checks use the test's own psql (tests/pgcheck.py)."""
from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from bigskies_ops.dev.sandbox import Cluster, free_port
from tests.conftest import cli, native_host, write_inventory
from tests.pgcheck import db_fingerprint, dir_hashes

PSQL = "/usr/lib/postgresql/15/bin/psql"


def _dbs(pg_sql) -> set[str]:
    return {l for l in pg_sql("SELECT datname FROM pg_database", "postgres").splitlines() if l}


def _socket_inventory(tmp_path, c: Cluster, database: str, user: str = "bigskies", name: str = "i.yaml"):
    """A local host ``dev`` reaching cluster ``c`` over its unix socket (trust) as ``user``."""
    return write_inventory(tmp_path / name, {"dev": {
        "connection": "local", "backup": {"dir": str(tmp_path / "b")},
        "postgres": {"host": str(c.socket_dir), "port": c.port, "database": database, "user": user,
                     "bindir": "/usr/lib/postgresql/15/bin"}}})


def _backup(inv, env) -> str:
    r = cli("db.backup", "-i", str(inv), "--json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["path"]


@pytest.mark.parametrize("createdb", [True, False])
def test_a_role_that_cannot_swap_the_database_in_is_refused_before_loading(tmp_path, pg, pg_sql, dbname, cli_env,
                                                                          createdb):
    role = f"fid_r_{uuid.uuid4().hex[:6]}"
    pg_sql(f"CREATE ROLE {role} LOGIN {'CREATEDB' if createdb else ''}; "
           f"GRANT CONNECT ON DATABASE {dbname} TO {role}", "postgres")
    bdir = tmp_path / "b"
    owner_inv = write_inventory(tmp_path / "o.yaml", {"dev": native_host(pg, dbname, bdir)})
    archive = _backup(owner_inv, cli_env)
    inv = write_inventory(tmp_path / "r.yaml", {"dev": native_host(
        pg, dbname, bdir, postgres={"host": str(pg.socket_dir), "user": role, "password_env": None})})
    before, files, dbs = db_fingerprint(pg_sql, dbname), dir_hashes(bdir), _dbs(pg_sql)
    r = cli("db.restore", archive, "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    if createdb:
        assert "does not own database" in r.stderr and "'bigskies'" in r.stderr
    else:
        assert "CREATEDB" in r.stderr
    assert "Nothing was changed" in r.stderr
    assert db_fingerprint(pg_sql, dbname) == before and dir_hashes(bdir) == files and _dbs(pg_sql) == dbs


@pytest.fixture
def small_disk_cluster(run_root):
    """A cluster whose data directory is on a 128 MB tmpfs (root mounts it; unmounted after).
    ``wal_level=minimal``: the setup's CREATE TABLE AS writes no WAL, so filling the disk
    does not depend on when a checkpoint recycles it."""
    mnt = run_root / f"small-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(mnt)], check=True)
    c = Cluster(base=mnt / "pg", port=free_port())
    try:
        c.init().start(settings={"max_wal_size": "32MB", "min_wal_size": "32MB", "wal_level": "minimal",
                                 "max_wal_senders": "0"})
        yield c
    finally:
        try:
            c.stop()
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_restore_onto_a_server_without_room_for_the_side_database_is_refused(tmp_path, small_disk_cluster,
                                                                              cli_env):
    c = small_disk_cluster
    c.psql("-c", "CREATE DATABASE big")
    c.psql("-c", "CREATE TABLE t AS SELECT g AS id, repeat(md5(g::text), 8) AS v FROM generate_series(1, 130000) g",
           database="big")
    bdir = tmp_path / "b"
    inv = _socket_inventory(tmp_path, c, "big")
    archive = _backup(inv, cli_env)

    def run(sql):
        return subprocess.run([PSQL, "-X", "-A", "-t", "-h", str(c.socket_dir), "-p", str(c.port), "-U", "bigskies",
                               "-d", "postgres", "-c", sql], capture_output=True, text=True, check=True).stdout.strip()
    before = run("SELECT md5(string_agg(datname, ',' ORDER BY datname)) FROM pg_database")
    files = dir_hashes(bdir)
    r = cli("db.restore", archive, "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert "free" in r.stderr and "--skip-space-check" in r.stderr and "MiB" in r.stderr
    assert run("SELECT md5(string_agg(datname, ',' ORDER BY datname)) FROM pg_database") == before
    assert run("SELECT 1") == "1"  # the server is up
    assert dir_hashes(bdir) == files


def _slow_autovacuum(run_root):
    c = Cluster(base=run_root / f"autovac-{uuid.uuid4().hex[:8]}", port=free_port())
    c.init().start(settings={"autovacuum_naptime": "1", "autovacuum_vacuum_cost_delay": "100",
                             "autovacuum_vacuum_cost_limit": "1", "autovacuum_vacuum_threshold": "0",
                             "autovacuum_vacuum_scale_factor": "0"})
    return c


@pytest.fixture(scope="module")
def slow_autovacuum_cluster(run_root):
    """A cluster whose autovacuum starts within a second and works very slowly, so a worker
    is reliably on a database while a restore or an undo swaps it."""
    c = _slow_autovacuum(run_root)
    yield c
    c.stop()


@pytest.fixture
def own_slow_autovacuum_cluster(run_root):
    """The same, for one test only: the module's cluster has its (three) workers busy for
    minutes on the large databases earlier tests left, so none may be free for a new one."""
    c = _slow_autovacuum(run_root)
    yield c
    c.stop()


def test_undo_by_a_non_superuser_owner_is_not_blocked_by_autovacuum(tmp_path, slow_autovacuum_cluster, cli_env):
    c = slow_autovacuum_cluster
    c.psql("-c", "CREATE ROLE fid_owner LOGIN CREATEDB")
    c.psql("-c", "CREATE DATABASE app OWNER fid_owner")
    c.psql("-c", "SET ROLE fid_owner; CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 200000) g",
           database="app")
    inv = _socket_inventory(tmp_path, c, "app", "fid_owner")
    archive = _backup(inv, cli_env)
    r = cli("db.restore", archive, "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 0, r.stderr

    def q(sql):
        return subprocess.run([PSQL, "-X", "-A", "-t", "-h", str(c.socket_dir), "-p", str(c.port), "-U", "bigskies",
                               "-d", "postgres", "-c", sql], capture_output=True, text=True, check=True).stdout.strip()
    c.psql("-c", "DELETE FROM t WHERE id % 2 = 0", database="app")  # dead rows: autovacuum comes
    import time
    deadline = time.monotonic() + 90
    while q("SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND backend_type = 'autovacuum worker'") == "0":
        assert time.monotonic() < deadline, "autovacuum never started on app"
        time.sleep(0.5)
    r = cli("db.restore", "-i", str(inv), "--undo", "--yes", "--terminate-sessions", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert q("SELECT count(*) FROM pg_database WHERE datname = 'app'") == "1"
    assert c.psql("-X", "-A", "-t", "-c", "SELECT count(*) FROM t", database="app").strip() == "200000"


def test_a_session_this_role_cannot_see_still_stops_the_swap_and_nothing_changes(tmp_path, slow_autovacuum_cluster,
                                                                                  cli_env):
    c = slow_autovacuum_cluster
    c.psql("-c", "CREATE ROLE fid_owner2 LOGIN CREATEDB; CREATE ROLE fid_other LOGIN")
    c.psql("-c", "CREATE DATABASE app2 OWNER fid_owner2")
    c.psql("-c", "SET ROLE fid_owner2; CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g",
           database="app2")
    inv = _socket_inventory(tmp_path, c, "app2", "fid_owner2")
    archive = _backup(inv, cli_env)
    other = subprocess.Popen([PSQL, "-X", "-h", str(c.socket_dir), "-p", str(c.port), "-U", "fid_other", "-d", "app2",
                              "-c", "SELECT pg_sleep(120)"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def dbs():
            return c.psql("-X", "-A", "-t", "-c", "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database")
        import time
        deadline = time.monotonic() + 20
        while "1" != c.psql("-X", "-A", "-t", "-c", "SELECT count(*) FROM pg_stat_activity WHERE usename = "
                            "'fid_other'").strip():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        before = dbs()
        r = cli("db.restore", archive, "-i", str(inv), "--yes", env=cli_env)
        assert r.returncode == 3, r.stderr
        assert "Traceback" not in r.stderr
        assert "other session(s) still connected to 'app2'" in r.stderr and "Nothing was changed" in r.stderr
        assert dbs() == before
        assert other.poll() is None  # the other role's session was left alone
    finally:
        other.kill()
        other.wait()


def test_ctrl_c_while_autovacuum_works_on_the_side_database_still_drops_it(tmp_path, own_slow_autovacuum_cluster,
                                                                           cli_env):
    import signal
    import sys
    import time

    from tests.conftest import REPO
    c = own_slow_autovacuum_cluster
    c.psql("-c", "CREATE ROLE fid_owner3 LOGIN CREATEDB")
    c.psql("-c", "CREATE DATABASE app3 OWNER fid_owner3")
    # t loads (and commits) first; w's one row then holds the load for up to 200 s (its CHECK
    # sleeps in the side database only), time for autovacuum to come to the side database and start on t; the test
    # interrupts as soon as it sees the worker, so it does not wait that long
    c.psql("-c", "SET ROLE fid_owner3; CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v "
           "FROM generate_series(1, 300000) g; CREATE TABLE w AS SELECT 1 AS id; "
           "ALTER TABLE w ADD CONSTRAINT slow CHECK ((pg_sleep(CASE WHEN current_database() LIKE '%restoring%' "
           "THEN 200 ELSE 0 END))::text IS NOT NULL)", database="app3")
    inv = _socket_inventory(tmp_path, c, "app3", "fid_owner3")
    archive = _backup(inv, cli_env)

    def q(sql):
        return c.psql("-X", "-A", "-t", "-c", sql).strip()
    before = q("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database")
    # Ctrl-C at a terminal: SIGINT must not be ignored, as it is for a background job of a
    # non-interactive shell (`make test &`), which the tool would rightly keep ignoring
    proc = subprocess.Popen([sys.executable, "-m", "bigskies_ops", "db.restore", archive, "-i", str(inv), "--yes"],
                            env=cli_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while q("SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 'app3_restoring_%' "
            "AND backend_type = 'autovacuum worker'") == "0":
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "autovacuum never came to the side database"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "cleanup done" in err
    assert q("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database") == before


def test_a_noinherit_member_of_the_owner_and_a_database_it_may_not_connect_to(tmp_path, slow_autovacuum_cluster,
                                                                               cli_env):
    """A NOINHERIT member of the owner's role has not the owner's rights: refused before the
    load (it failed at the swap and left a side database it could not drop). Another database
    with CONNECT revoked from PUBLIC does not stop the owner's restore (pre-restore copies
    were sized with pg_database_size on every database)."""
    c = slow_autovacuum_cluster
    c.psql("-c", "CREATE ROLE fid_own5 LOGIN CREATEDB; CREATE ROLE fid_mem5 LOGIN CREATEDB NOINHERIT; "
           "GRANT fid_own5 TO fid_mem5")
    c.psql("-c", "CREATE DATABASE app5 OWNER fid_own5")
    c.psql("-c", "CREATE DATABASE closed5")
    c.psql("-c", "REVOKE CONNECT ON DATABASE closed5 FROM PUBLIC")
    c.psql("-c", "SET ROLE fid_own5; CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g", database="app5")
    inv = _socket_inventory(tmp_path, c, "app5", "fid_own5")
    archive = _backup(inv, cli_env)

    def dbs():
        return c.psql("-X", "-A", "-t", "-c", "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database")
    before = dbs()
    member = _socket_inventory(tmp_path, c, "app5", "fid_mem5", name="m.yaml")
    r = cli("db.restore", archive, "-i", str(member), "--yes", env=cli_env)
    assert r.returncode == 3, r.stderr
    assert "does not own database" in r.stderr and "Traceback" not in r.stderr
    assert dbs() == before
    r = cli("db.restore", archive, "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 0, r.stderr


def test_another_roles_session_refuses_a_non_superusers_restore_before_loading(tmp_path, pg, pg_sql, cli_env):
    """A role without pg_read_all_stats cannot see another role's session on its database:
    --check says it cannot tell, and the real run asks the server (a rename rolled back)
    and refuses before it creates the side database, as the swap would after the load."""
    role, db = f"fid_o_{uuid.uuid4().hex[:6]}", f"fid_app_{uuid.uuid4().hex[:6]}"
    pg_sql(f"CREATE ROLE {role} LOGIN CREATEDB", "postgres")
    pg_sql(f"CREATE DATABASE {db} OWNER {role}", "postgres")
    pg_sql(f"SET ROLE {role}; CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 20000) g", db)
    inv = _socket_inventory(tmp_path, pg, db, role)
    archive = _backup(inv, cli_env)
    held = subprocess.Popen([PSQL, "-X", "-q", "-A", "-t", "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "bigskies",
                             "-d", db], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        held.stdin.write("SELECT 'ready';\n")
        held.stdin.flush()
        assert held.stdout.readline().strip() == "ready"
        before, dbs = db_fingerprint(pg_sql, db), _dbs(pg_sql)
        r = cli("db.restore", archive, "-i", str(inv), "--check", env=cli_env)
        assert "Traceback" not in r.stderr + r.stdout
        assert "1 process(es) on" in r.stdout + r.stderr and "cannot identify" in r.stdout + r.stderr, r.stdout
        r = cli("db.restore", archive, "-i", str(inv), "--yes", env=cli_env)
        assert r.returncode == 3, r.stderr + r.stdout
        assert "Traceback" not in r.stderr
        assert "1 other session(s) still connected" in r.stderr and "pg_read_all_stats" in r.stderr, r.stderr
        assert "Restoring into side database" not in r.stderr + r.stdout  # refused before the load
        assert db_fingerprint(pg_sql, db) == before and _dbs(pg_sql) == dbs
    finally:
        held.stdin.close()
        held.wait(10)
    r = cli("db.restore", archive, "-i", str(inv), "--yes", env=cli_env)  # the session is gone: restored
    assert r.returncode == 0, r.stderr
    pg_sql(f"DROP DATABASE {db} WITH (FORCE)", "postgres")
    for name in _dbs(pg_sql):
        if name.startswith(db):
            pg_sql(f'DROP DATABASE "{name}" WITH (FORCE)', "postgres")
    pg_sql(f"DROP ROLE {role}", "postgres")
