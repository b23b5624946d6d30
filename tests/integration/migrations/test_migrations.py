"""Schema migrations against a real PostgreSQL 15: apply, refuse, adopt, resume, serialise.

Databases come from the BIG SKIES template (migrations 1-5 applied by
schema.bootstrap_sql, the bootstrap coordinator's way). Every check of the
database goes through the test's own psql (tests/pgcheck.py), and expected
checksums are computed here from the file bytes, never taken from product output.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from bigskies_ops.jobs.migration_apply import LOCK_CLASSID, LOCK_OBJID
from bigskies_ops.jobs.migration_files import plan, split_statements
from tests.conftest import REPO, cli, native_host, write_inventory
from tests.pgcheck import db_fingerprint, dir_hashes

SQL_DIR = REPO / "configs" / "sql"


# ----------------------------------------------------------------------------- pure
def test_split_statements_respects_quotes_comments_dollar_bodies_and_begin_atomic():
    text = ("-- head\n"
            "CREATE TABLE a (x text DEFAULT 'a;b');\n"
            "\n"
            "/* c; */ CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;\n"
            "CREATE FUNCTION g() RETURNS int LANGUAGE sql\n"
            "BEGIN ATOMIC\n"
            "  SELECT CASE WHEN true THEN 1 ELSE 2 END;\n"
            "END;\n"
            "SELECT E'it\\'s;', \"we;ird\"\n"
            "  FROM t;\n"
            "SELECT 1")
    st = split_statements(text)
    assert [(s.number, s.start_line, s.end_line) for s in st] == [(1, 2, 2), (2, 4, 4), (3, 5, 8), (4, 9, 10),
                                                                  (5, 11, 11)]
    assert st[2].text.endswith("END;") and st[3].text.startswith("SELECT E'it")


def test_plan_sorts_files_into_applied_pending_changed_and_unknown():
    from bigskies_ops.jobs.migration_files import MigrationFile
    f = [MigrationFile(v, f"m{v}", f"00{v}_m{v}.sql", "", "", f"c{v}", f"r{v}", True) for v in (1, 2, 3, 4)]
    rows = {1: {"checksum": "c1"}, 2: {"checksum": "r2"}, 3: {"checksum": "zz"}, 9: {"version": 9}}
    p = plan(f, rows)
    assert [x.version for x, _ in p.applied] == [1, 2]          # raw-bytes checksum counts as unchanged
    assert [x.version for x, _ in p.changed] == [3]
    assert [x.version for x in p.pending] == [4]
    assert p.unknown == [{"version": 9}]
    assert [x.version for x in plan(f, {}, to=2).pending] == [1, 2]


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def mig(tmp_path, pg, dbname, cli_env):
    """(inventory, migrations folder, backup dir) for host ``dev`` on a BIG SKIES copy."""
    folder = tmp_path / "sql"
    shutil.copytree(SQL_DIR, folder)
    bdir = tmp_path / "backups"
    inv = write_inventory(tmp_path / "inventory.yaml",
                          {"dev": native_host(pg, dbname, bdir, migrations={"dir": str(folder)})})
    return inv, folder, bdir


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rows(pg_sql, db) -> list[list[str]]:
    out = pg_sql("SELECT version, name, checksum, applied_at IS NOT NULL, duration_ms IS NOT NULL "
                 "FROM schema_migrations ORDER BY version", db)
    return [line.split("|") for line in out.splitlines() if line]


def run(*args, env, inv, timeout=120):
    return cli(*args, "-i", str(inv), env=env, timeout=timeout)


NEW_006 = ("-- 006_nicknames: users get an optional nickname\n"
           "ALTER TABLE users ADD COLUMN nickname text;\n"
           "CREATE INDEX users_nickname_idx ON users (nickname);\n")


# ----------------------------------------------------------------------------- the happy path
def test_bootstrapped_database_is_up_to_date_and_listed(mig, pg_sql, dbname, cli_env):
    inv, folder, bdir = mig
    r = run("db.migrate", env=cli_env, inv=inv)
    assert r.returncode == 0, r.stderr
    assert "ok: [dev] up to date (head 5)" in r.stdout
    assert dir_hashes(bdir) == {}                       # nothing to apply: no backup
    r = run("db.migrations", "--json", env=cli_env, inv=inv)
    data = json.loads(r.stdout)
    assert [(m["version"], m["state"]) for m in data["migrations"]] == [(v, "applied") for v in range(1, 6)]
    assert data["counts"] == {"applied": 5, "pending": 0, "changed": 0, "unknown": 0}
    human = run("db.migrations", env=cli_env, inv=inv).stdout
    assert "003_coordinator_config.sql" in human and "5 applied, 0 pending" in human


def test_new_migration_is_checked_backed_up_applied_once_with_its_row(mig, pg_sql, dbname, cli_env):
    inv, folder, bdir = mig
    (folder / "006_nicknames.sql").write_text(NEW_006)
    (folder / "007_more.sql").write_text("CREATE TABLE telescopes (id int PRIMARY KEY);\n")
    before = db_fingerprint(pg_sql, dbname)

    r = run("db.migrate", "--check", env=cli_env, inv=inv)
    assert r.returncode == 0, r.stderr
    assert "would apply 006_nicknames.sql" in r.stdout and "would apply 007_more.sql" in r.stdout
    assert "nothing is changed" in r.stdout and "would take a pre-migrate backup" in r.stdout
    # the common dry-run document (docs/cli.md "Dry runs"): its facts inside plan
    doc = json.loads(run("db.migrate", "--check", "--json", env=cli_env, inv=inv).stdout)
    assert doc["task"] == "db.migrate" and doc["check"] is True and doc["result"] == "changed"
    assert doc["would_change"] is True and doc["plan"]["refusals"] == [] and doc["plan"]["backup"] is True
    assert [m["file"] for m in doc["plan"]["pending"]] == ["006_nicknames.sql", "007_more.sql"]
    r = run("db.migrate", "--fail-if-pending", env=cli_env, inv=inv)
    assert r.returncode == 1 and "2 migration(s) pending" in r.stderr
    assert db_fingerprint(pg_sql, dbname) == before and dir_hashes(bdir) == {}

    r = run("db.migrate", "--to", "6", env=cli_env, inv=inv)
    assert r.returncode == 0, r.stderr
    assert "changed: [dev] applied 1 migration(s), head 6" in r.stdout
    backups = [p for p in os.listdir(bdir) if p.endswith(".sql.gz")]
    assert len(backups) == 1 and f"pre-migrate backup: {bdir / backups[0]}" in r.stdout
    man = json.loads((bdir / (backups[0] + ".manifest.json")).read_text())
    assert man["kind"] == "pre-migrate" and man["status"] == "DONE"
    assert man["schema_migrations_head"]["version"] == "5"
    got = rows(pg_sql, dbname)
    assert got[-1] == ["6", "nicknames", sha(NEW_006.encode()), "t", "t"]
    assert pg_sql("SELECT count(*) FROM pg_indexes WHERE indexname = 'users_nickname_idx'", dbname).strip() == "1"

    r = run("db.migrate", "--json", env=cli_env, inv=inv)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["result"] == "changed" and [a["version"] for a in out["applied"]] == [7] and out["head"] == 7
    r = run("db.migrate", env=cli_env, inv=inv)
    assert "ok: [dev] up to date (head 7)" in r.stdout
    assert len([p for p in os.listdir(bdir) if p.endswith(".sql.gz")]) == 2


def test_crlf_only_difference_is_not_an_edit(mig, pg_sql, dbname, cli_env):
    inv, folder, _ = mig
    p = folder / "002_users.sql"
    p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n"))
    r = run("db.migrate", env=cli_env, inv=inv)
    assert r.returncode == 0 and "up to date" in r.stdout, r.stderr


# ----------------------------------------------------------------------------- bad input
BAD_006 = ("-- 006_broken\n"
           "CREATE TABLE first_one (id int);\n"
           "\n"
           "SELECT 1\n"
           "  FROMM users;\n"
           "CREATE TABLE last_one (id int);\n")


def test_syntax_error_in_the_middle_leaves_no_trace_and_names_file_and_line(mig, pg_sql, dbname, cli_env):
    inv, folder, bdir = mig
    (folder / "006_broken.sql").write_text(BAD_006)
    before, files_before = db_fingerprint(pg_sql, dbname), dir_hashes(bdir)
    r = run("db.migrate", "--no-backup", env=cli_env, inv=inv)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{folder / '006_broken.sql'}:5" in r.stderr and 'syntax error at or near "users"' in r.stderr
    assert "nothing of it was applied" in r.stderr
    assert db_fingerprint(pg_sql, dbname) == before and dir_hashes(bdir) == files_before
    assert pg_sql("SELECT to_regclass('first_one') IS NULL", dbname).strip() == "t"
    assert [r_[0] for r_ in rows(pg_sql, dbname)] == ["1", "2", "3", "4", "5"]


def test_files_commit_one_by_one_and_own_transaction_control_is_refused(mig, pg_sql, dbname, cli_env):
    inv, folder, bdir = mig
    (folder / "006_nicknames.sql").write_text(NEW_006)
    (folder / "007_sneaky.sql").write_text("CREATE TABLE t7 (id int);\nCOMMIT;\nCREATE TABLE t7b (id int);\n")
    before = db_fingerprint(pg_sql, dbname)
    r = run("db.migrate", env=cli_env, inv=inv)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{folder / '007_sneaky.sql'}:2: transaction control (COMMIT) is not allowed" in r.stderr
    assert db_fingerprint(pg_sql, dbname) == before and dir_hashes(bdir) == {}
    (folder / "007_sneaky.sql").write_text("CREATE TABLE t7 (id int);\nINSERT INTO t7 VALUES ('x');\n")
    r = run("db.migrate", "--no-backup", env=cli_env, inv=inv)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{folder / '007_sneaky.sql'}:2: ERROR:  invalid input syntax for type integer" in r.stderr
    assert "(applied before it: 006_nicknames.sql)" in r.stderr
    assert [x[0] for x in rows(pg_sql, dbname)][-1] == "6"
    assert pg_sql("SELECT to_regclass('t7') IS NULL", dbname).strip() == "t"


@pytest.mark.parametrize("name,expect", [("007_skipped.sql", "gap in migration versions"),
                                         ("0005_again.sql", "duplicate migration version 5")])
def test_gap_or_duplicate_versions_are_refused_before_anything(mig, pg_sql, dbname, cli_env, name, expect):
    inv, folder, bdir = mig
    (folder / name).write_text("CREATE TABLE never_made (id int);\n")
    before = db_fingerprint(pg_sql, dbname)
    for task in ("db.migrate", "db.migrations"):
        r = run(task, env=cli_env, inv=inv)
        assert r.returncode == 2, r.stdout + r.stderr
        assert expect in r.stderr and name in r.stderr
    assert db_fingerprint(pg_sql, dbname) == before and dir_hashes(bdir) == {}


def test_edited_applied_file_is_refused_with_file_name_and_both_checksums(mig, pg_sql, dbname, cli_env):
    inv, folder, bdir = mig
    (folder / "006_nicknames.sql").write_text(NEW_006)
    p = folder / "003_coordinator_config.sql"
    original = p.read_bytes()
    p.write_bytes(original + b"\n-- an innocent-looking edit\n")
    before = db_fingerprint(pg_sql, dbname)
    r = run("db.migrate", env=cli_env, inv=inv)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "003_coordinator_config.sql was changed after it was applied" in r.stderr
    assert sha(p.read_bytes()) in r.stderr and sha(original) in r.stderr
    assert db_fingerprint(pg_sql, dbname) == before and dir_hashes(bdir) == {}   # not even a backup
    st = json.loads(run("db.migrations", "--json", env=cli_env, inv=inv).stdout)
    assert {m["version"]: m["state"] for m in st["migrations"]}[3] == "changed"
    r = run("db.migrate", "--check", env=cli_env, inv=inv)          # a dry run exits 0 and says so
    assert r.returncode == 0 and "the real run would REFUSE: refused: 003_coordinator_config.sql was changed" in r.stdout
    assert "ok (check)" in r.stdout and "would change nothing" in r.stdout
    doc = json.loads(run("db.migrate", "--check", "--json", env=cli_env, inv=inv).stdout)
    assert doc["result"] == "ok" and doc["would_change"] is False
    assert "003_coordinator_config.sql was changed" in doc["plan"]["refusals"][0]


NOTX_006 = ("-- 006_concurrent_indexes: built without locking writers out\n"
            "-- bigskies:no-transaction\n"
            "CREATE INDEX CONCURRENTLY users_created_at_idx ON users (created_at);\n"
            "CREATE UNIQUE INDEX CONCURRENTLY users_active_uq\n"
            "    ON users (is_active);\n"
            "CREATE INDEX CONCURRENTLY users_updated_at_idx ON users (updated_at);\n")


def test_non_transactional_failure_reports_progress_and_invalid_index_then_resumes(mig, pg_sql, dbname, cli_env):
    inv, folder, _ = mig
    f = folder / "006_concurrent_indexes.sql"
    f.write_text(NOTX_006)
    r = run("db.migrate", "--no-backup", env=cli_env, inv=inv)
    assert r.returncode == 1, r.stdout + r.stderr
    err = r.stderr
    assert "failed at statement 2 of 3" in err and f"{f}:4" in err and "could not create unique index" in err
    assert "Applied statements: 1 (line 3)" in err and "Not applied: 2 (line 4), 3 (line 6)" in err
    assert "INVALID index(es) left behind: public.users_active_uq" in err
    idx = pg_sql("SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes "
                 "WHERE indexname IN ('users_created_at_idx', 'users_active_uq', 'users_updated_at_idx')", dbname)
    assert idx.strip() == "users_active_uq,users_created_at_idx"
    assert "6" not in [x[0] for x in rows(pg_sql, dbname)]
    st = json.loads(run("db.migrations", "--json", env=cli_env, inv=inv).stdout)
    m6 = [m for m in st["migrations"] if m["version"] == 6][0]
    assert m6["state"] == "pending" and m6["statements_applied"] == [1]

    # fix statement 2, drop the INVALID index, rerun: statement 1 is NOT run again (it would fail: exists)
    pg_sql("DROP INDEX users_active_uq", dbname)
    f.write_text(NOTX_006.replace("CREATE UNIQUE INDEX", "CREATE INDEX"))
    r = run("db.migrate", "--no-backup", env=cli_env, inv=inv)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming 006_concurrent_indexes.sql at statement 2 of 3" in r.stderr
    assert rows(pg_sql, dbname)[-1][:2] == ["6", "concurrent_indexes"]
    assert pg_sql("SELECT count(*) FROM pg_indexes WHERE indexname IN "
                  "('users_created_at_idx', 'users_active_uq', 'users_updated_at_idx')", dbname).strip() == "3"
    assert pg_sql("SELECT count(*) FROM schema_migrations_progress", dbname).strip() == "0"


# ----------------------------------------------------------------------------- concurrency
def test_two_concurrent_runners_one_applies_the_other_waits_then_is_up_to_date(mig, pg_sql, dbname, cli_env):
    inv, folder, _ = mig
    (folder / "006_slow.sql").write_text("CREATE TABLE slow_one (id int);\nSELECT pg_sleep(3);\n")
    argv = [sys.executable, "-m", "bigskies_ops", "db.migrate", "--no-backup", "-i", str(inv)]
    first = subprocess.Popen(argv, env=cli_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the first runner holds the lock and is inside its migration (pg_sleep) ...
        deadline = time.monotonic() + 30
        while pg_sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                     "AND query LIKE '%pg_sleep(3)%' AND pid <> pg_backend_pid()", dbname).strip() == "0":
            assert time.monotonic() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.1)
        held = pg_sql(f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                      f"AND classid = {LOCK_CLASSID} AND objid = {LOCK_OBJID}", dbname).strip()
        assert held == "1"
        # ... when the second one starts
        second = subprocess.run(argv, env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=120)
        out1, err1 = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0 and second.returncode == 0, (err1, second.stderr)
    assert "changed: [dev] applied 1 migration(s), head 6" in out1
    assert "waiting for the migration lock" in second.stderr and "held by pid" in second.stderr
    assert "ok: [dev] up to date (head 6) (waited" in second.stdout
    assert [r_[0] for r_ in rows(pg_sql, dbname)].count("6") == 1


def test_lock_wait_times_out_with_the_holder_named(mig, pg_sql, dbname, cli_env, pg):
    inv, folder, _ = mig
    (folder / "006_nicknames.sql").write_text(NEW_006)
    holder = subprocess.Popen(["/usr/lib/postgresql/15/bin/psql", "-X", "-q", "-h", str(pg.socket_dir), "-p",
                               str(pg.port), "-U", "bigskies", "-d", dbname],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        holder.stdin.write(f"SET application_name = 'bootstrap-coordinator';\n"
                           f"SELECT pg_advisory_lock({(LOCK_CLASSID << 32) | LOCK_OBJID});\n")
        holder.stdin.flush()
        deadline = time.monotonic() + 20
        while pg_sql(f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = {LOCK_OBJID}",
                     dbname).strip() == "0":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        before = db_fingerprint(pg_sql, dbname)
        r = run("db.migrate", "--no-backup", "--lock-timeout", "1", env=cli_env, inv=inv)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "timed out after 1 s waiting for the migration lock" in r.stderr
        assert "(bootstrap-coordinator)" in r.stderr and "nothing was applied" in r.stderr
        assert db_fingerprint(pg_sql, dbname) == before
    finally:
        holder.stdin.close()
        holder.wait(10)


# ----------------------------------------------------------------------------- adoption
def test_existing_tables_without_schema_migrations_are_refused_then_adopted_with_baseline(mig, pg_sql, dbname,
                                                                                          cli_env):
    inv, folder, bdir = mig
    pg_sql("DROP TABLE schema_migrations", dbname)
    (folder / "006_nicknames.sql").write_text(NEW_006)
    before = db_fingerprint(pg_sql, dbname)
    r = run("db.migrate", env=cli_env, inv=inv)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "no schema_migrations table" in r.stderr and "public.users" in r.stderr and "--baseline" in r.stderr
    assert db_fingerprint(pg_sql, dbname) == before and dir_hashes(bdir) == {}
    r = run("db.migrate", "--baseline", "5", "--no-backup", env=cli_env, inv=inv)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "recorded 5 migration(s) as applied without running them" in r.stderr
    got = rows(pg_sql, dbname)
    assert [x[0] for x in got] == ["1", "2", "3", "4", "5", "6"]
    assert got[2][2] == sha((folder / "003_coordinator_config.sql").read_bytes())
    assert [x[4] for x in got] == ["f"] * 5 + ["t"]      # baselined rows have no duration


def test_foreign_schema_migrations_table_is_refused_and_baseline_keeps_its_rows(mig, pg_sql, dbname, cli_env):
    inv, folder, _ = mig
    pg_sql("DROP TABLE schema_migrations; CREATE TABLE schema_migrations (version bigint PRIMARY KEY, "
           "dirty boolean NOT NULL); INSERT INTO schema_migrations VALUES (1, false), (2, false);", dbname)
    r = run("db.migrate", env=cli_env, inv=inv)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "missing column(s): name, checksum, applied_at, duration_ms" in r.stderr
    assert "unexpected column(s): dirty boolean" in r.stderr and "found: version bigint, dirty boolean" in r.stderr
    before = db_fingerprint(pg_sql, dbname)
    r = run("db.migrate", "--baseline", "5", "--no-backup", env=cli_env, inv=inv)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "column(s) dirty are NOT NULL without a default" in r.stderr and "nothing was changed" in r.stderr
    assert db_fingerprint(pg_sql, dbname) == before
    pg_sql("ALTER TABLE schema_migrations ALTER COLUMN dirty SET DEFAULT false", dbname)
    r = run("db.migrate", "--baseline", "5", "--no-backup", env=cli_env, inv=inv)
    assert r.returncode == 0, r.stdout + r.stderr
    out = pg_sql("SELECT version, dirty, coalesce(name, '-') FROM schema_migrations ORDER BY 1", dbname)
    assert out.split() == ["1|f|-", "2|f|-", "3|f|coordinator_config", "4|f|coordinator_config_history",
                           "5|f|observations"]
    r = run("db.migrate", env=cli_env, inv=inv)
    assert r.returncode == 0 and "up to date (head 5)" in r.stdout, r.stderr


# ----------------------------------------------------------------------------- restore
def test_restore_reports_pending_migrations_or_a_dump_ahead_and_migrate_applies(mig, pg_sql, dbname, cli_env):
    inv, folder, bdir = mig
    assert run("db.backup", env=cli_env, inv=inv).returncode == 0          # head 5
    (folder / "006_nicknames.sql").write_text(NEW_006)
    r = run("db.restore", "latest", "--yes", env=cli_env, inv=inv)
    assert r.returncode == 0, r.stderr
    assert "restored head is 5; 1 pending: 006_nicknames.sql" in r.stdout
    r = run("db.restore", "latest", "--yes", "--migrate", env=cli_env, inv=inv)
    assert r.returncode == 0, r.stderr
    assert "applied 006_nicknames.sql after the restore (head 6)" in r.stdout
    assert [x[0] for x in rows(pg_sql, dbname)][-1] == "6"
    # a dump made with 006 applied, restored by code that lacks 006
    assert run("db.backup", env=cli_env, inv=inv).returncode == 0
    (folder / "006_nicknames.sql").unlink()
    r = run("db.restore", "latest", "--yes", "--json", env=cli_env, inv=inv)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)["migrations"]
    assert m["ahead"] == ["6 nicknames"] and "the dump is ahead of the code" in m["message"]


# ----------------------------------------------------------------------------- safety
def test_protected_host_needs_confirmation_and_refuses_no_backup(mig, pg, pg_sql, dbname, cli_env, tmp_path):
    inv, folder, bdir = mig
    (folder / "006_nicknames.sql").write_text(NEW_006)
    inv = write_inventory(tmp_path / "prot.yaml", {"dev": native_host(pg, dbname, bdir, protected=True,
                                                                      migrations={"dir": str(folder)})})
    before = db_fingerprint(pg_sql, dbname)
    r = run("db.migrate", env=cli_env, inv=inv)
    assert r.returncode == 3 and f"--force-protected --confirm {dbname}" in r.stderr
    r = run("db.migrate", "--no-backup", "--force-protected", "--confirm", dbname, env=cli_env, inv=inv)
    assert r.returncode == 3 and "--no-backup is not allowed" in r.stderr
    r = run("db.migrate", "--check", env=cli_env, inv=inv)
    assert r.returncode == 0 and "the real run would REFUSE: refused: dev is protected" in r.stdout
    doc = json.loads(run("db.migrate", "--check", "--json", env=cli_env, inv=inv).stdout)
    assert doc["result"] == "ok" and any(f"--force-protected --confirm {dbname}" in x for x in doc["plan"]["refusals"])
    doc = json.loads(run("db.migrate", "--check", "--json", "--no-backup", "--force-protected", "--confirm", dbname,
                         env=cli_env, inv=inv).stdout)
    assert doc["result"] == "ok" and ["--no-backup is not allowed" in x for x in doc["plan"]["refusals"]] == [True]
    doc = json.loads(run("db.migrate", "--check", "--json", "--force-protected", "--confirm", dbname,
                         env=cli_env, inv=inv).stdout)
    assert doc["plan"]["refusals"] == [] and doc["result"] == ("changed" if doc["plan"]["pending"] else "ok")
    # a group holding the protected host: refused as a whole (exit 3, docs/safety.md), not
    # "selects 2 hosts" (exit 2); its --check exits 0 naming the refusal
    ginv = write_inventory(tmp_path / "group.yaml", {
        "dev": native_host(pg, dbname, bdir, protected=True, migrations={"dir": str(folder)}),
        "other": native_host(pg, dbname, tmp_path / "other", migrations={"dir": str(folder)})},
        groups={"both": ["dev", "other"]})
    r = run("db.migrate", "--host", "both", "--force-protected", "--confirm", dbname, env=cli_env, inv=ginv)
    assert r.returncode == 3 and "group 'both' containing protected host(s) dev" in r.stderr, r.stderr
    r = run("db.migrate", "--host", "both", "--check", env=cli_env, inv=ginv)
    assert r.returncode == 0 and "the real run would REFUSE: refused: migrate on group 'both'" in r.stdout, r.stderr
    doc = json.loads(run("db.migrate", "--host", "both", "--check", "--json", env=cli_env, inv=ginv).stdout)
    assert doc["result"] == "ok" and doc["plan"]["hosts"] == ["dev", "other"] and len(doc["plan"]["refusals"]) == 1
    assert db_fingerprint(pg_sql, dbname) == before and dir_hashes(bdir) == {}
    r = run("db.migrate", "--force-protected", "--confirm", dbname, env=cli_env, inv=inv)
    assert r.returncode == 0, r.stderr
    assert "pre-migrate backup:" in r.stdout and "head 6" in r.stdout


def test_unset_password_variable_is_named(mig, pg_sql, dbname, cli_env):
    inv, folder, bdir = mig
    (folder / "006_nicknames.sql").write_text(NEW_006)
    env = {k: v for k, v in cli_env.items() if k != "BIGSKIES_TEST_PGPASSWORD"}
    before = db_fingerprint(pg_sql, dbname)
    for task in ("db.migrate", "db.migrations", "db.pgpass"):
        r = run(task, env=env, inv=inv)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "environment variable BIGSKIES_TEST_PGPASSWORD is not set" in r.stderr
    assert db_fingerprint(pg_sql, dbname) == before and dir_hashes(bdir) == {}
