"""Backups and restores that hold up on real servers (issue 16): settings a role or a
database imposes on our sessions, server encodings, the lock table's size, lock waits.

Each test runs against a real PostgreSQL 15 cluster set up that way. Data is checked
with the test's own psql (tests/pgcheck.py); expected values are literals.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from bigskies_ops.dev.sandbox import Cluster, free_port
from tests.conftest import cli, drop_db_and_copies, native_host, write_inventory
from tests.pgcheck import db_fingerprint, dir_hashes

BIN = "/usr/lib/postgresql/15/bin"


def _no_traceback(r) -> None:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr + r.stdout


def _socket_host(c: Cluster, database: str, bdir: Path, user: str = "bigskies", **backup) -> dict:
    return {"connection": "local",
            "postgres": {"socket_dir": str(c.socket_dir), "port": c.port, "database": database, "user": user,
                         "bindir": BIN},
            "backup": {"dir": str(bdir), **backup}}


def _manifest(archive: str | Path) -> dict:
    return json.loads(Path(str(archive) + ".manifest.json").read_text())


def _rows(m: dict) -> dict[tuple[str, str], int | None]:
    return {(t["schema"], t["name"]): t["rows"] for t in m["tables"]}


# ============================================================== 2. lock slots
# A cluster whose shared lock table is small: max_locks_per_transaction 10 and
# max_connections 10. Measured here: `pg_dump -Fc` alone dumps up to ~300 one-row
# tables (it fails from ~350); the counting transaction of the old code, which locked
# every table on top of pg_dump's locks, made db.backup --format custom fail from 200
# tables ("out of shared memory"; 190 still passed). 250 sits between the two.
LOCK_TABLES = 250


@pytest.fixture(scope="module")
def small_locks(run_root):
    c = Cluster(base=run_root / f"locks-{uuid.uuid4().hex[:6]}", port=free_port())
    c.init().start(settings={"max_locks_per_transaction": "10", "max_connections": "10"})
    try:
        c.psql("-c", "CREATE DATABASE manytables")
        c.psql(database="manytables", input="".join(
            f"CREATE TABLE t{i:04d} (a int); INSERT INTO t{i:04d} VALUES ({i});\n" for i in range(LOCK_TABLES)))
        yield c
    finally:
        c.stop()


@pytest.mark.parametrize("fmt", ["custom", "plain"])
def test_row_counts_need_no_more_lock_slots_than_pg_dump(small_locks, tmp_path, cli_env, fmt):
    c = small_locks
    # pg_dump alone succeeds on this server: the tool must too
    r = subprocess.run([f"{BIN}/pg_dump", "-Fc", "-h", str(c.socket_dir), "-p", str(c.port), "-U", "bigskies",
                        "-f", str(tmp_path / "alone.dump"), "manytables"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    inv = write_inventory(tmp_path / "inv.yaml", {"h": _socket_host(c, "manytables", tmp_path / "b")})
    r = cli("db.backup", "-i", str(inv), "--format", fmt, "--json", env=cli_env)
    _no_traceback(r)
    assert r.returncode == 0, r.stderr
    m = _manifest(json.loads(r.stdout)["path"])
    assert m["status"] == "DONE"
    rows = _rows(m)
    assert len(rows) == LOCK_TABLES
    assert all(n == 1 for n in rows.values()), {k: v for k, v in rows.items() if v != 1}
    # and it restores there (the check after the load counts in bounded transactions too)
    target = f"copy_{fmt}"
    r = cli("db.restore", json.loads(r.stdout)["path"], "-i", str(inv), "--target-db", target, "--yes", env=cli_env)
    _no_traceback(r)
    assert r.returncode == 0, r.stderr
    n = c.psql("-X", "-A", "-t", "-c", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", database=target)
    assert n.strip() == str(LOCK_TABLES)


# ============================================================== 1. settings our sessions set themselves
@pytest.fixture(scope="module")
def slow_role_db(pg):
    """A database with a table whose COPY TO STDOUT takes well over 50 ms, and a role that
    gets ``statement_timeout`` and ``idle_in_transaction_session_timeout`` of 50 ms
    (and a lock_timeout of 1 ms) in it."""
    db = f"bs_slow_{uuid.uuid4().hex[:6]}"
    role = f"r_{uuid.uuid4().hex[:6]}"
    pg.psql("-c", f"CREATE ROLE {role} LOGIN")
    pg.psql("-c", f"CREATE DATABASE {db} OWNER {role}")
    pg.psql(database=db, input=f"SET ROLE {role};\n"
            "CREATE TABLE big (id int, pad text);\n"
            "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 1500000) g;\n"
            "CREATE TABLE small (id int); INSERT INTO small VALUES (1), (2), (3);\n")
    for setting in ("statement_timeout = '50ms'", "idle_in_transaction_session_timeout = '50ms'",
                    "lock_timeout = '1ms'"):
        pg.psql("-c", f"ALTER ROLE {role} IN DATABASE {db} SET {setting}")
    try:
        yield db, role
    finally:
        drop_db_and_copies(pg, db)
        pg.psql("-c", f"DROP ROLE IF EXISTS {role}")


@pytest.mark.parametrize("fmt", ["custom", "plain"])
def test_backup_ignores_a_roles_statement_timeout_like_pg_dump(pg, slow_role_db, tmp_path, cli_env, fmt):
    db, role = slow_role_db
    sock = str(pg.socket_dir)
    # the role's settings are real: pg_dump's own read of big (COPY TO STDOUT) as that role is
    # cancelled (a count(*) of it could finish within 50 ms on a warm, quick machine) ...
    r = subprocess.run([f"{BIN}/psql", "-X", "-h", sock, "-p", str(pg.port), "-U", role, "-d", db, "-c",
                        "COPY big TO STDOUT"], capture_output=True, text=True)
    assert "canceling statement due to statement timeout" in r.stderr, r.stderr + r.stdout
    # ... while pg_dump -Fc as that role succeeds (it sets statement_timeout = 0 itself)
    r = subprocess.run([f"{BIN}/pg_dump", "-Fc", "-h", sock, "-p", str(pg.port), "-U", role,
                        "-f", str(tmp_path / "alone.dump"), db], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    inv = write_inventory(tmp_path / "inv.yaml", {"h": {
        "connection": "local", "postgres": {"socket_dir": sock, "port": pg.port, "database": db, "user": role,
                                            "bindir": BIN},
        "backup": {"dir": str(tmp_path / "b")}}})
    r = cli("db.backup", "-i", str(inv), "--format", fmt, "--json", env=cli_env)
    _no_traceback(r)
    assert r.returncode == 0, r.stderr
    m = _manifest(json.loads(r.stdout)["path"])
    assert _rows(m) == {("public", "big"): 1500000, ("public", "small"): 3}
    r = cli("db.status", "-i", str(inv), "--json", env=cli_env)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ encodings
CRON_LOCALE = {"LC_ALL": "C", "LANG": "C"}  # as under cron: psql's "auto" encoding is then SQL_ASCII


@pytest.fixture(scope="module")
def latin1_db(pg):
    db = f"bs_lat_{uuid.uuid4().hex[:6]}"
    pg.psql("-c", f"CREATE DATABASE {db} ENCODING LATIN1 LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    # (psql without a terminal talks in the database's encoding unless told: say UTF8)
    pg.psql(database=db, input="SET client_encoding = 'UTF8';\n" 'CREATE TABLE "café" (id int, note text);\n'
            "INSERT INTO \"café\" VALUES (1, 'crème'), (2, 'brûlée'), (3, 'naïve');\n"
            'CREATE TABLE plain_t (id int); INSERT INTO plain_t VALUES (7);\n')
    try:
        yield db
    finally:
        drop_db_and_copies(pg, db)


def utf8_sql(pg):
    """The test's own psql, in UTF8 whatever the database's encoding (pgcheck.native_sql
    with PGCLIENTENCODING)."""
    def run(sql: str, database: str) -> str:
        r = subprocess.run([f"{BIN}/psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(pg.socket_dir),
                            "-p", str(pg.port), "-U", "bigskies", "-d", database, "-c", sql],
                           capture_output=True, text=True, encoding="utf-8",
                           env={**os.environ, "PGPASSWORD": "", "PGCLIENTENCODING": "UTF8"})
        assert r.returncode == 0, r.stderr
        return r.stdout
    return run


def _latin1_state(pg_sql, db) -> tuple[str, dict]:
    enc = pg_sql(f"SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = '{db}'", "postgres").strip()
    return enc, db_fingerprint(pg_sql, db)


@pytest.mark.parametrize("fmt", ["plain", "custom"])
def test_latin1_database_names_show_and_restore_correctly(pg, latin1_db, tmp_path, cli_env, fmt):
    db = latin1_db
    pg_sql = utf8_sql(pg)
    assert pg_sql("SELECT relname FROM pg_class WHERE relname LIKE 'caf%'", db).split() == ["café"]
    env = {**cli_env, **CRON_LOCALE}
    inv = write_inventory(tmp_path / "inv.yaml", {"h": native_host(pg, db, tmp_path / "b")})
    r = cli("db.backup", "-i", str(inv), "--format", fmt, "--json", env=env)
    _no_traceback(r)
    assert r.returncode == 0, r.stderr
    archive = json.loads(r.stdout)["path"]
    assert _rows(_manifest(archive)) == {("public", "café"): 3, ("public", "plain_t"): 1}
    r = cli("db.status", "-i", str(inv), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert "café" in [t["name"] for t in json.loads(r.stdout)["tables"]]
    r = cli("db.status", "-i", str(inv), env=env)
    assert r.returncode == 0, r.stderr
    assert "café" in r.stdout, r.stdout
    r = cli("db.list", "-i", str(inv), env=env)
    assert r.returncode == 0 and Path(archive).name in r.stdout, r.stderr + r.stdout
    before = _latin1_state(pg_sql, db)
    assert before[0] == "LATIN1"
    pg_sql('DELETE FROM "café" WHERE id = 1', db)
    r = cli("db.restore", archive, "-i", str(inv), "--yes", env=env)
    _no_traceback(r)
    assert r.returncode == 0, r.stderr + r.stdout
    assert _latin1_state(pg_sql, db) == before
    assert pg_sql('SELECT note FROM "café" ORDER BY id', db).split() == ["crème", "brûlée", "naïve"]


@pytest.fixture(scope="module")
def sql_ascii_db(pg):
    """A SQL_ASCII database holding a table whose name is the LATIN1 bytes of 'café'
    (0xE9 is not UTF-8): the server stores and returns bytes as they are."""
    db = f"bs_asc_{uuid.uuid4().hex[:6]}"
    pg.psql("-c", f"CREATE DATABASE {db} ENCODING SQL_ASCII LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    script = (b'SET client_encoding = SQL_ASCII;\nCREATE TABLE "caf\xe9" (id int, v text);\n'
              b'INSERT INTO "caf\xe9" VALUES (1, \'a\xe9\'), (2, \'b\');\nCREATE TABLE ok (id int);\n'
              b'INSERT INTO ok VALUES (1);\n')
    r = subprocess.run([f"{BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(pg.socket_dir),
                        "-p", str(pg.port), "-U", "bigskies", "-d", db], input=script, capture_output=True)
    assert r.returncode == 0, r.stderr
    try:
        yield db
    finally:
        drop_db_and_copies(pg, db)


def _raw_names(pg, db) -> list[str]:
    """Table names as hex bytes (the test's own psql)."""
    out = subprocess.run([f"{BIN}/psql", "-X", "-A", "-t", "-h", str(pg.socket_dir), "-p", str(pg.port),
                          "-U", "bigskies", "-d", db, "-c",
                          "SELECT encode(textsend(relname::text), 'hex') FROM pg_class "
                          "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY 1"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


@pytest.mark.parametrize("fmt", ["plain", "custom"])
def test_sql_ascii_non_utf8_name_does_not_crash_and_restores_byte_exact(pg, sql_ascii_db, tmp_path, cli_env, fmt):
    db = sql_ascii_db
    inv = write_inventory(tmp_path / "inv.yaml", {"h": native_host(pg, db, tmp_path / "b")})
    names = _raw_names(pg, db)
    assert names == ["636166e9", "6f6b"]  # caf\xe9, ok
    r = cli("db.backup", "-i", str(inv), "--format", fmt, "--json", env=cli_env)
    _no_traceback(r)
    assert r.returncode == 0, r.stderr
    archive = json.loads(r.stdout)["path"]
    json.loads(Path(archive + ".manifest.json").read_text())  # valid JSON
    rows = _rows(_manifest(archive))
    assert rows[("public", "ok")] == 1
    assert rows[("public", "caf\udce9")] == 2  # the byte 0xE9 kept exactly (JSON "\udce9")
    r = cli("db.status", "-i", str(inv), "--json", env=cli_env)
    _no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert sorted(t["name"] for t in json.loads(r.stdout)["tables"]) == ["caf\\xe9", "ok"]  # shown as \xNN
    r = cli("db.status", "-i", str(inv), env=cli_env)
    _no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert "caf\\xe9" in r.stdout, r.stdout
    values = [f"{BIN}/psql", "-X", "-A", "-t", "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "bigskies",
              "-d", db, "-c", b"SELECT encode(textsend(string_agg(t::text, ',' ORDER BY id)), 'hex') FROM \"caf\xe9\" t"]
    before = subprocess.run(values, capture_output=True, check=True).stdout
    r = cli("db.restore", archive, "-i", str(inv), "--yes", env=cli_env)
    _no_traceback(r)
    assert r.returncode == 0, r.stderr + r.stdout
    assert _raw_names(pg, db) == ["636166e9", "6f6b"]
    after = subprocess.run(values, capture_output=True, check=True).stdout
    assert after == before and b"61e9" in after  # the value 'a\xe9' byte for byte


def test_session_setup_sets_what_our_sessions_need():
    from bigskies_ops.pg.access import session_setup
    s = session_setup(1.5)
    for part in ("'statement_timeout', '0'", "'lock_timeout', '1500'", "idle_in_transaction_session_timeout",
                 "'client_encoding', CASE current_setting('server_encoding') WHEN 'SQL_ASCII'", "\\gset"):
        assert part in s, part
    assert "'lock_timeout', '0'" in session_setup(0)


def test_names_with_bytes_that_are_not_utf8_round_trip_and_show_escaped():
    from bigskies_ops.pg.access import decode_out, encode_sql, ident, pgsql, render
    from bigskies_ops.text import printable
    from bigskies_ops.jobs.destinations import as_listed
    name = decode_out(b"caf\xe9")
    assert name == "caf\udce9" and printable(name) == "caf\\xe9" and printable("café") == "café"
    q = render(pgsql.SQL("SELECT count(*) FROM {}").format(ident("public", name)))
    assert encode_sql(q) == b'SELECT count(*) FROM "public"."caf\xe9"'
    assert render(pgsql.SQL("SELECT {}").format(ident("café"))) == 'SELECT "café"'
    assert as_listed("café", "LATIN1") == "caf\ufffd" == as_listed(name, "SQL_ASCII")
    assert as_listed("café", "UTF8") == "café"


# ============================================================== 3. waiting is visible
class LockHolder:
    """A psql session of the test holding ``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE``."""

    def __init__(self, pg, db: str, table: str):
        self.p = subprocess.Popen([f"{BIN}/psql", "-X", "-q", "-A", "-t", "-h", str(pg.socket_dir),
                                   "-p", str(pg.port), "-U", "bigskies", "-d", db],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "PGAPPNAME": "test_locker"})
        self.p.stdin.write(f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT pg_backend_pid();\n")
        self.p.stdin.flush()
        self.pid = int(self.p.stdout.readline().strip())

    def release(self) -> None:
        if self.p.poll() is None:
            self.p.stdin.write("COMMIT;\n\\q\n")
            self.p.stdin.close()
            self.p.wait(10)


def _start_backup(inv, env, *args) -> tuple[subprocess.Popen, list[tuple[float, str]]]:
    return _start_task("db.backup", inv, env, *args)


def _start_task(task, inv, env, *args) -> tuple[subprocess.Popen, list[tuple[float, str]]]:
    import sys
    from tests.conftest import REPO
    p = subprocess.Popen([sys.executable, "-m", "bigskies_ops", task, "-i", str(inv), *args],
                         env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []
    t0 = time.monotonic()

    def read():
        for line in p.stderr:
            lines.append((time.monotonic() - t0, line.rstrip("\n")))
    threading.Thread(target=read, daemon=True).start()
    return p, lines


def _wait_for(lines, text: str, within: float) -> tuple[float, str] | None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for t, line in list(lines):
            if text in line:
                return t, line
        time.sleep(0.1)
    return None


def test_a_backup_waiting_for_a_lock_says_who_holds_it_then_completes(pg, pg_sql, local_inv, dbname, cli_env):
    inv, bdir = local_inv
    holder = LockHolder(pg, dbname, "users")
    try:
        p, lines = _start_backup(inv, cli_env)
        hit = _wait_for(lines, "waiting for a lock", 15)
        assert hit is not None, lines
        t, line = hit
        assert t < 5.0 + 1.5, (t, line)  # said within 5 s of the wait (the CLI's start-up counted in)
        assert "public.users" in line and f"pid {holder.pid}" in line and "test_locker" in line, line
        assert "user bigskies" in line, line
        assert p.poll() is None  # still waiting, not failed
    finally:
        holder.release()
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, lines
    (archive,) = [x for x in bdir.iterdir() if x.name.endswith(".sql.gz")]
    assert _manifest(archive)["status"] == "DONE"


# the lock watcher's session: "pid|application_name" lines
WATCHER_SESSIONS = ("SELECT pid, application_name FROM pg_stat_activity "
                    "WHERE query LIKE '%clock_timestamp() - w.state_change%' AND pid <> pg_backend_pid()")


def _backup_behind_a_lock(pg, dbname, inv, env):
    """A db.backup started behind a :class:`LockHolder` on ``users``, once it says it waits:
    ``(holder, process, stderr lines)``; the caller releases the holder."""
    holder = LockHolder(pg, dbname, "users")
    p, lines = _start_backup(inv, env)
    if _wait_for(lines, "waiting for a lock", 15) is None:
        holder.release()
        p.kill()
        raise AssertionError(lines)
    return holder, p, lines


def test_the_lock_watcher_looks_through_one_session_and_closes_it(pg, pg_sql, local_inv, dbname, cli_env):
    # each look used to be a psql of its own (over SSH: a channel, the login shell, a
    # connection every 1.5 s); now one session answers every look, and it ends with the task
    inv, bdir = local_inv
    holder, p, lines = _backup_behind_a_lock(pg, dbname, inv, cli_env)
    try:
        seen: set[str] = set()
        deadline = time.monotonic() + 4.5  # three looks at least (POLL_S = 1.5)
        while time.monotonic() < deadline:
            seen.update(line for line in pg_sql(WATCHER_SESSIONS, dbname).splitlines() if line)
            time.sleep(0.2)
        assert p.poll() is None, lines
    finally:
        holder.release()
    p.communicate(timeout=120)
    assert p.returncode == 0, lines
    assert len(seen) == 1, seen  # one backend pid answered every look
    (app,) = {line.split("|", 1)[1] for line in seen}
    assert app.startswith("bigskies-ops "), app
    left = pg_sql(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'", "postgres").strip()
    assert left == "0", left


def test_a_watcher_session_ended_mid_wait_is_replaced_without_calling_the_wait_over(pg, pg_sql, local_inv, dbname,
                                                                                     cli_env):
    # the watcher's session ended between two looks (idle_session_timeout, a DBA's
    # pg_terminate_backend): its failure says nothing about the wait, which goes on
    inv, bdir = local_inv
    holder, p, lines = _backup_behind_a_lock(pg, dbname, inv, cli_env)
    try:
        for _ in range(2):
            pids = [ln.split("|")[0] for ln in pg_sql(WATCHER_SESSIONS, dbname).split()]
            assert pids, lines
            pg_sql(f"SELECT pg_terminate_backend({pids[0]})", "postgres")
            time.sleep(2.0)  # a look or more on a new session
        assert p.poll() is None, lines
        assert not [ln for _t, ln in lines if "lock wait over" in ln], lines
        assert pg_sql(WATCHER_SESSIONS, dbname).split(), lines  # looking again, on a new session
    finally:
        holder.release()
    p.communicate(timeout=120)
    assert p.returncode == 0, lines


def test_a_wait_on_a_row_not_a_table_is_reported_too(pg, pg_sql, local_inv, dbname, cli_env):
    # the swap's ALTER DATABASE ... RENAME behind another transaction's ALTER DATABASE of the
    # same database waits for that transaction (locktype transactionid: no relation to name)
    inv, bdir = local_inv
    r = cli("db.backup", "-i", str(inv), env=cli_env, timeout=120)
    assert r.returncode == 0, r.stderr
    holder = subprocess.Popen([f"{BIN}/psql", "-X", "-q", "-A", "-t", "-h", str(pg.socket_dir), "-p", str(pg.port),
                               "-U", "bigskies", "-d", "postgres"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PGAPPNAME": "test_locker"})
    holder.stdin.write(f'BEGIN; ALTER DATABASE "{dbname}" CONNECTION LIMIT 100; SELECT pg_backend_pid();\n')
    holder.stdin.flush()
    holder_pid = int(holder.stdout.readline().strip())
    try:
        p, lines = _start_task("db.restore", inv, cli_env, "latest", "--yes")
        hit = _wait_for(lines, "waiting for a lock on transactionid", 30)
        assert hit is not None, lines
        assert f"pid {holder_pid}" in hit[1] and "test_locker" in hit[1], hit
        assert p.poll() is None, lines
    finally:
        holder.stdin.write("ROLLBACK;\n\\q\n")
        holder.stdin.close()
        holder.wait(10)
    p.communicate(timeout=120)
    assert p.returncode == 0, lines


def test_lock_wait_timeout_ends_the_backup_cleanly(pg, pg_sql, local_inv, dbname, cli_env):
    inv, bdir = local_inv
    before_db = db_fingerprint(pg_sql, dbname)
    bdir.mkdir(parents=True, exist_ok=True)
    holder = LockHolder(pg, dbname, "users")
    try:
        t0 = time.monotonic()
        r = cli("db.backup", "-i", str(inv), "--lock-wait-timeout", "3", env=cli_env, timeout=120)
        took = time.monotonic() - t0
    finally:
        holder.release()
    _no_traceback(r)
    assert r.returncode == 1, r.stderr + r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: gave up after 3 s waiting for a lock on public.users"), r.stderr
    assert f"pid {holder.pid}" in last and "--lock-wait-timeout" in last, last
    assert took < 30, took
    files = sorted(x.name for x in bdir.iterdir() if not x.name.startswith("."))
    (manifest,) = files  # nothing under a final name, no .partial: only the FAILED manifest
    assert manifest.endswith(".sql.gz.manifest.json")
    m = json.loads((bdir / manifest).read_text())
    assert m["status"] == "FAILED" and m["phase"] == "dump", m
    assert db_fingerprint(pg_sql, dbname) == before_db
    # the inventory key does the same
    inv2 = write_inventory(inv.parent / "inv2.yaml", {"dev": native_host(
        pg, dbname, bdir, backup={"lock_wait_timeout": 2})})
    hashes = dir_hashes(bdir)
    holder = LockHolder(pg, dbname, "users")
    try:
        r = cli("db.backup", "-i", str(inv2), "--format", "custom", env=cli_env, timeout=120)
    finally:
        holder.release()
    assert r.returncode == 1 and "gave up after 2 s waiting for a lock on public.users" in r.stderr, r.stderr
    new = set(dir_hashes(bdir)) - set(hashes)
    assert len(new) == 1 and next(iter(new)).endswith(".dump.manifest.json"), new
    assert all(dir_hashes(bdir)[k] == v for k, v in hashes.items())


def test_the_tools_own_sessions_say_when_they_wait_and_take_the_lock_wait_timeout(pg, local_inv, dbname, cli_env):
    """db.status reads schema_migrations through access.Sql, as a restore's checks and swap do."""
    inv, bdir = local_inv
    holder = LockHolder(pg, dbname, "schema_migrations")
    try:
        p, lines = _start_task("db.status", inv, cli_env)
        hit = _wait_for(lines, "waiting for a lock on public.schema_migrations", 15)
        assert hit is not None, lines
        assert hit[0] < 5.0 + 1.5 and f"pid {holder.pid}" in hit[1] and "test_locker" in hit[1], hit
        assert p.poll() is None
    finally:
        holder.release()
    p.communicate(timeout=60)
    assert p.returncode == 0, lines
    # backup.lock_wait_timeout is our sessions' lock_timeout too
    inv2 = write_inventory(inv.parent / "inv-lwt.yaml", {"dev": native_host(
        pg, dbname, bdir, backup={"lock_wait_timeout": 1})})
    holder = LockHolder(pg, dbname, "schema_migrations")
    try:
        t0 = time.monotonic()
        r = cli("db.status", "-i", str(inv2), env=cli_env, timeout=60)
        took = time.monotonic() - t0
    finally:
        holder.release()
    _no_traceback(r)
    assert r.returncode == 1 and "canceling statement due to lock timeout" in r.stderr, r.stderr
    assert took < 20, took


def test_lock_wait_timeout_flag_is_checked(local_inv, cli_env):
    inv, bdir = local_inv
    r = cli("db.backup", "-i", str(inv), "--lock-wait-timeout", "soon", env=cli_env)
    _no_traceback(r)
    assert r.returncode == 2 and "--lock-wait-timeout: expected a number of seconds" in r.stderr, r.stderr
    assert not bdir.exists() or not any(bdir.iterdir())


def test_pg_dump_gets_its_own_lock_wait_timeout_in_milliseconds():
    from bigskies_ops.pg.tools import pg_dump_args
    assert pg_dump_args("d", fmt="plain", lock_wait_timeout=2.5) == [
        "--format", "p", "--lock-wait-timeout=2500", "--dbname", "d"]
    assert "--lock-wait-timeout" not in " ".join(pg_dump_args("d", fmt="plain", lock_wait_timeout=None))


def test_a_lock_wait_is_described_with_the_blocking_session():
    from bigskies_ops.pg.lockwait import describe_wait
    w = {"pid": 7, "wants": "public.users (AccessShareLock)",
         "blockers": [{"pid": 42, "user": "app", "application_name": "psql", "state": "idle in transaction"}]}
    assert describe_wait(w) == ("waiting for a lock on public.users (AccessShareLock), held by pid 42 "
                                "(user app, application_name 'psql', idle in transaction)")


# ============================================================== 4. clocks
def _future_copy(archive: Path, days: int = 200) -> Path:
    """A copy of a real backup dated ``days`` ahead: name and manifest times rewritten
    consistently; the archive's bytes, so its sha256, unchanged."""
    from datetime import datetime, timedelta, timezone
    m = _manifest(archive)
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=days)
    name = f"{m['database']}_backup_{start:%Y%m%d_%H%M%S}.sql.gz"
    new = archive.parent / name
    new.write_bytes(archive.read_bytes())
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    m.update(archive=name, started_at=start.strftime(fmt),
             finished_at=(start + timedelta(seconds=int(m["duration_s"]) + 1)).strftime(fmt))
    Path(str(new) + ".manifest.json").write_text(json.dumps(m, indent=2))
    return new


def test_an_archive_dated_in_the_future_is_marked_and_never_latest(pg, pg_sql, local_inv, dbname, cli_env):
    import hashlib
    inv, bdir = local_inv
    r = cli("db.backup", "-i", str(inv), "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    real = Path(json.loads(r.stdout)["path"])
    future = _future_copy(real)
    assert hashlib.sha256(future.read_bytes()).hexdigest() == _manifest(future)["sha256"]
    # db.list: marked, human and --json
    r = cli("db.list", "-i", str(inv), "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    marks = {b["name"]: b["future"] for b in json.loads(r.stdout)["backups"]}
    assert marks == {future.name: True, real.name: False}
    r = cli("db.list", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr
    row = next(l for l in r.stdout.splitlines() if future.name in l and "FUTURE" in l)
    assert "ahead" in row and "-" not in row.split()[3], row
    assert "dated in the future by this machine's clock" in r.stdout
    # 'latest' is the real one, with a warning naming the future one and how to pick it
    r = cli("db.verify", "latest", "-i", str(inv), "--json", env=cli_env)
    _no_traceback(r)
    assert r.returncode == 0, r.stderr + r.stdout
    assert real.name in r.stdout and future.name not in r.stdout, r.stdout
    assert f"not taken as latest: {future.name}" in r.stderr and str(future) in r.stderr, r.stderr
    target = f"{dbname}_t"
    try:
        r = cli("db.restore", "latest", "-i", str(inv), "--target-db", target, env=cli_env)
        _no_traceback(r)
        assert r.returncode == 0, r.stderr + r.stdout
        assert f"not taken as latest: {future.name}" in r.stderr, r.stderr
        assert real.name in r.stdout and future.name not in r.stdout, r.stdout
    finally:
        pg.psql("-c", f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
    # db.health: the future archive is reported, no negative age, the clock skew is measured
    r = cli("db.health", "-i", str(inv), "--json", env=cli_env)
    _no_traceback(r)
    h = json.loads(r.stdout)["hosts"][0]
    checks = {c["check"]: c for c in h["checks"]}
    assert checks["future"]["state"] == "warning" and checks["future"]["future_archives"] == [future.name]
    assert checks["freshness"]["newest_good"] == real.name and checks["freshness"]["age_s"] >= 0
    assert checks["clock"]["state"] == "ok" and abs(checks["clock"]["skew_s"] or 99) < 5, checks["clock"]
    assert r.returncode == 1  # a warning
    r = cli("db.health", "-i", str(inv), env=cli_env)
    assert future.name in r.stdout and "clock" in r.stdout, r.stdout
    assert " -" not in "".join(l for l in r.stdout.splitlines() if "old" in l), r.stdout


def test_latest_passes_over_an_archive_dated_in_the_future_and_says_so():
    from datetime import timedelta
    from bigskies_ops import report
    from bigskies_ops.archives.catalog import Backup, iso, latest, utcnow
    now = utcnow()

    def b(name, delta):
        return Backup("/b", name, {"status": "DONE", "database": "d", "origin_host": "h",
                                   "started_at": iso(now + delta)}, 10)
    past, soon, ahead = b("p", timedelta(hours=-1)), b("s", timedelta(minutes=2)), b("f", timedelta(days=200))
    said = []
    with report.reporting(said.append):
        assert latest([ahead, soon, past]) is soon  # 2 min ahead: within the slack
    assert len(said) == 1 and "not taken as latest: f is dated" in said[0] and "/b/f" in said[0]
    assert ahead.in_future() and not soon.in_future() and not past.in_future()
    with report.reporting(said.append):
        assert latest([ahead]) is None


# ============================================================== 5. cron credentials
def test_cron_runs_with_only_the_pgpass_file(pg, pg_sql, tmp_path, dbname, cli_env):
    """db.pgpass's file alone carries a restore, a restore test and a scheduled backup in
    an environment as empty as cron's (no password variable, no locale)."""
    import sys
    from tests.conftest import PASSWORD_ENV, REPO
    home = tmp_path / "home"
    home.mkdir()
    passfile = home / "pgpass-dev"
    bdir = tmp_path / "b"
    host = native_host(pg, dbname, bdir)
    setup = write_inventory(tmp_path / "setup.yaml", {"dev": {**host, "postgres": {
        **host["postgres"], "passfile": str(passfile)}}})
    r = cli("db.pgpass", "-i", str(setup), env={**cli_env, "HOME": str(home)})
    assert r.returncode == 0, r.stderr
    cron_inv = write_inventory(tmp_path / "cron.yaml", {"dev": {**host, "postgres": {
        **{k: v for k, v in host["postgres"].items() if k != "password_env"}, "passfile": str(passfile)}}})
    bare = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    assert PASSWORD_ENV not in bare

    def cron(*args):
        return subprocess.run(["env", "-i", *[f"{k}={v}" for k, v in bare.items()], sys.executable, "-m",
                               "bigskies_ops", *args, "-i", str(cron_inv)], cwd=REPO, capture_output=True,
                              text=True, timeout=300)

    r = cron("db.scheduled-run", "--host", "dev", "--log", str(tmp_path / "logs" / "dev.log"))
    _no_traceback(r)
    assert r.returncode == 0, r.stdout + r.stderr
    (archive,) = [p for p in bdir.iterdir() if p.name.endswith(".sql.gz")]
    assert _manifest(archive)["kind"] == "scheduled"
    r = cron("db.verify", "latest", "--restore-test")
    _no_traceback(r)
    assert r.returncode == 0, r.stdout + r.stderr
    before = db_fingerprint(pg_sql, dbname)
    pg_sql("UPDATE users SET email = 'cron-' || id || '@example.org'", dbname)
    r = cron("db.restore", str(archive), "--yes")
    _no_traceback(r)
    assert r.returncode == 0, r.stdout + r.stderr
    assert db_fingerprint(pg_sql, dbname) == before


# ============================================================== 6. roles by default with a compose stack
def test_compose_hosts_save_roles_by_default(tmp_path):
    from bigskies_ops.inventory import load
    base = {"connection": "local", "postgres": {"database": "d"}}
    inv = load(write_inventory(tmp_path / "inv.yaml", {
        "stack": {**base, "compose": {"command": "docker compose"}},
        "stack_off": {**base, "compose": {}, "backup": {"roles": False}},
        "plain": base,
        "plain_on": {**base, "backup": {"roles": True}}}))
    assert {h: inv.host(h).backup.roles for h in ("stack", "stack_off", "plain", "plain_on")} == \
        {"stack": True, "stack_off": False, "plain": False, "plain_on": True}


# ============================================================== 7. restores in the same second
def test_three_restores_of_one_database_in_the_same_second_keep_distinct_copies(pg, pg_sql, tmp_path, dbname,
                                                                                 cli_env):
    """Restores of one database run one at a time (the host lock), but a small one finishes
    within a second: the next one, started in that same second, must not collide with
    the copies the earlier ones made. The copies that earlier restores in the same second
    made are set up here for each second of the next minute (real databases, named as
    restore.pre_restore_name names them), then three restores run back to back."""
    from datetime import datetime, timedelta, timezone
    from bigskies_ops.jobs.dbnames import pre_restore_name
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, tmp_path / "b",
                                                                     backup={"keep_pre_restore": 100})})
    r = cli("db.backup", "-i", str(inv), "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    archive = json.loads(r.stdout)["path"]
    start = datetime.now(timezone.utc)
    squatters = [pre_restore_name(dbname, start + timedelta(seconds=i)) for i in range(60)]
    pg.psql(input="".join(f'CREATE DATABASE "{n}" TEMPLATE template0 STRATEGY FILE_COPY;\n' for n in squatters))
    try:
        before = {l for l in pg_sql("SELECT datname FROM pg_database", "postgres").split()}
        for i in range(3):
            pg_sql(f"UPDATE users SET email = 'round{i}-' || id || '@example.org'", dbname)
            r = cli("db.restore", archive, "-i", str(inv), "--yes", env=cli_env)
            _no_traceback(r)
            assert r.returncode == 0, (i, r.stderr + r.stdout)
        assert datetime.now(timezone.utc) - start < timedelta(seconds=60)
        after = {l for l in pg_sql("SELECT datname FROM pg_database", "postgres").split()}
        assert set(squatters) <= after  # the earlier copies untouched
        assert len(after - before) == 3  # three copies of their own
    finally:
        for n in squatters:
            pg.psql("-c", f'DROP DATABASE IF EXISTS "{n}"')
