"""Edge cases of the parallel plain-dump loader (bigskies_ops.jobs.parload).

Each case writes a small hand-crafted plain dump (a pg_dump header, then SQL), loads
it with :func:`load_plain_parallel` and, as the oracle, with psql alone (what
``--jobs 1`` and any DBA would do), and compares every table, sequence and large
object by the test's own queries (tests/pgcheck.py). The parallel loader must either
give psql's result or fail loudly; never a different database with exit 0, and never
hang.
"""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigskies_ops.jobs.parload import load_plain_parallel
from bigskies_ops.jobs.sideload import RESTORE_PGOPTIONS
from tests.conftest import REPO, cli
from tests.pgcheck import db_fingerprint
from tests.integration.restore.test_parload import BIN, _access, _children, _fresh

HEAD = ("--\n-- PostgreSQL database dump\n--\n\n-- Dumped from database version 15.8\n"
        "-- Dumped by pg_dump version 15.8\n\nSET statement_timeout = 0;\nSET client_encoding = 'UTF8';\n"
        "SELECT pg_catalog.set_config('search_path', '', false);\nSET check_function_bodies = false;\n\n")
TAIL = "\n--\n-- PostgreSQL database dump complete\n--\n\n"


def _rows(table: str, cols: str, n: int, fmt=lambda i: f"{i}\tv{i}") -> str:
    return f"COPY {table} {cols} FROM stdin;\n" + "".join(fmt(i) + "\n" for i in range(n)) + "\\.\n"


def _write(tmp_path: Path, name: str, body, encoding: str = "utf-8") -> Path:
    raw = body if isinstance(body, bytes) else (HEAD + body + TAIL).encode(encoding)
    p = tmp_path / name
    p.write_bytes(gzip.compress(raw, 1))
    return p


def _psql_load(pg, archive: Path, db: str) -> subprocess.CompletedProcess:
    """The oracle: psql alone reads the dump (ON_ERROR_STOP, like the serial restore)."""
    return subprocess.run([f"{BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(pg.socket_dir),
                           "-p", str(pg.port), "-U", "bigskies", "-d", db],
                          input=gzip.decompress(archive.read_bytes()), capture_output=True, timeout=120)


def _compare(pg, pg_sql, dbname, tmp_path, archive: Path, *, jobs: int = 2, segment_bytes: int = 64,
             timeout: float = 60):
    """Load ``archive`` both ways; return (parallel rc, err, rows, parallel fp, psql fp)."""
    ref, par = _fresh(pg_sql, dbname + "_ref"), _fresh(pg_sql, dbname + "_par")
    r = _psql_load(pg, archive, ref)
    assert r.returncode == 0, r.stderr.decode()  # the trial dump itself is valid for psql
    rc, _, err, rows = load_or_fail(pg, par, tmp_path, archive, jobs=jobs, segment_bytes=segment_bytes,
                                    timeout=timeout)
    return rc, err, rows, (db_fingerprint(pg_sql, par) if rc == 0 else None), db_fingerprint(pg_sql, ref)


def load_or_fail(pg, db: str, tmp_path, archive: Path, *, jobs: int, segment_bytes: int, stats: dict | None = None,
                 timeout: float = 60):
    """:func:`load_plain_parallel` of ``archive`` into ``db`` in a thread; the test fails if
    it is still running after ``timeout`` seconds (a hang). Returns its result."""
    import threading
    out: dict = {}

    def go():
        try:
            with _access(pg, db, tmp_path) as access:
                out["res"] = load_plain_parallel(access, str(archive), db, jobs=jobs, pgoptions=RESTORE_PGOPTIONS,
                                                 segment_bytes=segment_bytes, stats=stats)
        except BaseException as e:  # noqa: BLE001
            out["err"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"load_plain_parallel still running after {timeout}s: hung")
    if "err" in out:
        raise out["err"]
    return out["res"]


@pytest.fixture
def cleanup(pg_sql, dbname):
    yield
    for suffix in ("_ref", "_par"):
        pg_sql(f'DROP DATABASE IF EXISTS "{dbname}{suffix}" WITH (FORCE)', "postgres")


# ------------------------------------------------------------------ session state changed by plain SQL
def test_lowercase_set_search_path_is_seen_by_every_session(pg, pg_sql, dbname, tmp_path, cleanup):
    # SET_RE only knows pg_dump's upper-case spelling: a hand-written "set search_path" ran in
    # the leader alone, so the other session loaded its segments of the unqualified COPY into a.t
    body = ("CREATE SCHEMA a; CREATE SCHEMA b;\nCREATE TABLE a.t (id int, v text);\n"
            "CREATE TABLE b.t (id int, v text);\nSET search_path = a;\nset search_path = b;\n" +
            _rows("t", "(id, v)", 400))
    rc, err, rows, par, ref = _compare(pg, pg_sql, dbname, tmp_path, _write(tmp_path, "lc.sql.gz", body))
    assert rc == 0, err
    assert par == ref


def test_reset_and_unrecognised_set_config_are_seen_by_every_session(pg, pg_sql, dbname, tmp_path, cleanup):
    body = ("CREATE SCHEMA a; CREATE TABLE a.t (id int, v text); CREATE TABLE public.t (id int, v text);\n"
            "SET search_path = a;\nRESET search_path;\n" + _rows("t", "(id, v)", 300) +
            "SELECT set_config('search_path', 'a', false);\n" + _rows("t", "(id, v)", 300))
    rc, err, rows, par, ref = _compare(pg, pg_sql, dbname, tmp_path, _write(tmp_path, "reset.sql.gz", body))
    assert rc == 0, err
    assert par == ref


def test_lowercase_set_client_encoding_latin1(pg, pg_sql, dbname, tmp_path, cleanup):
    # bytes C3 A9 are valid UTF-8 ("é") and valid LATIN1 ("Ã©"): a session that missed the
    # encoding change stores different text without any error
    body = ("CREATE TABLE public.enc (id int, v text);\nset client_encoding = 'LATIN1';\n" +
            _rows("public.enc", "(id, v)", 400, lambda i: f"{i}\tcaf\u00c3\u00a9 {i}"))
    rc, err, rows, par, ref = _compare(pg, pg_sql, dbname, tmp_path,
                                       _write(tmp_path, "enc.sql.gz", body, encoding="latin-1"))
    assert rc == 0, err
    assert par == ref


def test_upper_case_latin1_dump_with_non_ascii_data(pg, pg_sql, dbname, tmp_path, cleanup):
    body = ("SET client_encoding = 'LATIN1';\nCREATE TABLE public.enc (id int, v text);\n" +
            _rows("public.enc", "(id, v)", 500, lambda i: f"{i}\tna\u00efve \u00e9t\u00e9 \u00ff{i}"))
    rc, err, rows, par, ref = _compare(pg, pg_sql, dbname, tmp_path,
                                       _write(tmp_path, "enc1.sql.gz", body, encoding="latin-1"))
    assert rc == 0, err
    assert par == ref and rows == {("public", "enc"): 500}


# ------------------------------------------------------------------ psql meta-commands
def test_include_meta_command_runs_once_not_once_per_session(pg, pg_sql, dbname, tmp_path, cleanup):
    inc = tmp_path / "inc.sql"
    inc.write_text("INSERT INTO public.log VALUES (1);\n")
    body = ("CREATE TABLE public.log (n int);\n" + _rows("public.log", "(n)", 50, str) +
            f"\\i {inc}\n")
    rc, err, rows, par, ref = _compare(pg, pg_sql, dbname, tmp_path, _write(tmp_path, "inc.sql.gz", body))
    assert rc == 0, err
    assert par == ref


def test_output_redirect_meta_command_does_not_hang(pg, pg_sql, dbname, tmp_path, cleanup):
    # \o sends query results (the loader's sync SELECTs too) to a file: the loader waited forever
    body = ("\\o /dev/null\nCREATE TABLE public.a (id int);\n" + _rows("public.a", "(id)", 200, str) +
            "CREATE INDEX a_id ON public.a (id);\n")
    rc, err, rows, par, ref = _compare(pg, pg_sql, dbname, tmp_path, _write(tmp_path, "o.sql.gz", body),
                                       timeout=30)
    assert rc == 0, err
    assert par == ref


# ------------------------------------------------------------------ COPY variants the lexer does not split
def test_csv_copy_with_rows_spanning_lines(pg, pg_sql, dbname, tmp_path, cleanup):
    body = ("CREATE TABLE public.c (id int, v text);\nCOPY public.c (id, v) FROM stdin WITH (FORMAT csv);\n" +
            "".join(f'{i},"line one {i}\nline two; it\'s"\n' for i in range(200)) + "\\.\n" +
            _rows("public.d", "(id)", 0, str).replace("COPY public.d (id)", "CREATE TABLE public.d (id int);\nCOPY public.d (id)"))
    rc, err, rows, par, ref = _compare(pg, pg_sql, dbname, tmp_path, _write(tmp_path, "csv.sql.gz", body))
    assert rc == 0, err
    assert par == ref


def test_text_copy_with_options_and_a_null_first_column(pg, pg_sql, dbname, tmp_path, cleanup):
    # not pg_dump's "FROM stdin;" form: the lexer reads the data as SQL, and a line starting
    # with \N looked like a meta-command that was sent to every session
    body = ("CREATE TABLE public.n (a int, b text);\nCOPY public.n (a, b) FROM stdin WITH (FORMAT text);\n" +
            "".join(f"\\N\tb{i}\n" for i in range(100)) + "\\.\n" +
            "CREATE TABLE public.m (id int);\n" + _rows("public.m", "(id)", 300, str))
    rc, err, rows, par, ref = _compare(pg, pg_sql, dbname, tmp_path, _write(tmp_path, "opt.sql.gz", body))
    assert rc == 0, err
    assert par == ref


# ------------------------------------------------------------------ SET before the SQL it depends on
def test_set_default_table_access_method_created_by_the_dump(pg, pg_sql, dbname, tmp_path, cleanup):
    # pg_dump writes "SET default_table_access_method = x;" before a table of access method x;
    # a second session ran that SET as soon as it read it, before the leader had created x
    body = ("SELECT pg_sleep(1);\nCREATE ACCESS METHOD myheap TYPE TABLE HANDLER heap_tableam_handler;\n" +
            "".join(f"CREATE TABLE public.f{k} (id int);\n" for k in range(40)) +
            "SET default_table_access_method = myheap;\nCREATE TABLE public.h (id int, v text);\n"
            "SET default_table_access_method = heap;\n" + _rows("public.h", "(id, v)", 500))
    rc, err, rows, par, ref = _compare(pg, pg_sql, dbname, tmp_path, _write(tmp_path, "am.sql.gz", body))
    assert rc == 0, err
    assert par == ref


# ------------------------------------------------------------------ structure that must keep working
def test_same_table_twice_quoted_columns_sql_between_runs_and_long_lines(pg, pg_sql, dbname, tmp_path, cleanup):
    long = "x" * 5000
    body = ('CREATE TABLE public."Mixed ""Case"" t" ("Id" int, "we ird col" text);\n'
            'CREATE SEQUENCE public.s;\n' +
            _rows('public."Mixed ""Case"" t"', '("Id", "we ird col")', 300) +
            _rows('public."Mixed ""Case"" t"', '("Id", "we ird col")', 7, lambda i: f"{1000 + i}\t{long}{i}") +
            "SELECT pg_catalog.setval('public.s', 77, true);\n"
            "ALTER TABLE public.\"Mixed \"\"Case\"\" t\" DISABLE TRIGGER ALL;\n"
            "DO $$ BEGIN CREATE TABLE public.later (id int); END $$;\n" +
            _rows("public.later", "(id)", 250, str) +
            _rows('public."Mixed ""Case"" t"', '("Id", "we ird col")', 100, lambda i: f"{2000 + i}\tz{i}") +
            "CREATE UNIQUE INDEX mixed_id ON public.\"Mixed \"\"Case\"\" t\" (\"Id\");\n")
    rc, err, rows, par, ref = _compare(pg, pg_sql, dbname, tmp_path, _write(tmp_path, "mix.sql.gz", body),
                                       segment_bytes=700)
    assert rc == 0, err
    assert par == ref
    assert rows == {("public", 'Mixed "Case" t'): 407, ("public", "later"): 250}


def test_data_that_looks_like_the_sync_reply_or_a_copy_tag(pg, pg_sql, dbname, tmp_path, cleanup):
    body = ("CREATE TABLE public.t (id int, v text);\n" +
            _rows("public.t", "(id, v)", 300, lambda i: f"{i}\tbigskies-sync-0000000000000000-{i}") +
            "SELECT 'COPY 99999' AS x;\nSELECT E'a\\nCOPY 5\\nb' AS y;\n" +
            _rows("public.t", "(id, v)", 30, lambda i: f"{1000 + i}\tCOPY {i}"))
    rc, err, rows, par, ref = _compare(pg, pg_sql, dbname, tmp_path, _write(tmp_path, "tok.sql.gz", body))
    assert rc == 0, err
    assert par == ref and rows == {("public", "t"): 330}


def test_a_statement_failing_only_in_a_second_session_fails_the_load(pg, pg_sql, dbname, tmp_path, cleanup):
    # the second session's segment hits a check constraint added by the SQL before the run
    body = ("CREATE TABLE public.t (id int CHECK (id < 350));\n" + _rows("public.t", "(id)", 400, str))
    archive = _write(tmp_path, "chk.sql.gz", body)
    par = _fresh(pg_sql, dbname + "_par")
    before = _children()
    with _access(pg, par, tmp_path) as access:
        rc, _, err, rows = load_plain_parallel(access, str(archive), par, jobs=2,
                                               segment_bytes=64)
    assert rc != 0 and rows is None
    assert "violates check constraint" in err
    assert _children() <= before


# ------------------------------------------------------------------ interrupting db.restore
def _big_plain_backup(local_inv, cli_env, pg_sql, dbname) -> Path:
    inv, _ = local_inv
    pg_sql("CREATE TABLE bulk (id int, v text); INSERT INTO bulk SELECT g, md5(g::text) || repeat('y', 60) "
           "FROM generate_series(1, 60000) g; CREATE INDEX bulk_v ON bulk (v)", dbname)
    r = cli("db.backup", "-i", str(inv), "--format", "plain", "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    return Path(json.loads(r.stdout)["path"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_parallel_restore_keeps_old_db_drops_side_and_leaves_no_psql(
        local_inv, cli_env, pg_sql, dbname, sig):
    inv, _ = local_inv
    archive = _big_plain_backup(local_inv, cli_env, pg_sql, dbname)
    pg_sql("DELETE FROM bulk WHERE id % 3 = 0", dbname)
    want = db_fingerprint(pg_sql, dbname)
    # SIGINT as a terminal sends it: a background job of a non-interactive shell (nohup make
    # test &) starts with SIGINT ignored, and the tool keeps an ignored SIGINT ignored
    p = subprocess.Popen([sys.executable, "-m", "bigskies_ops", "db.restore", str(archive), "-i", str(inv), "--yes"],
                         env=cli_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    loading = False
    while time.monotonic() < deadline and p.poll() is None:
        n = pg_sql("SELECT count(*) FROM pg_stat_activity WHERE datname LIKE '%restoring%' "
                   "AND query ILIKE 'COPY%'", "postgres").strip()
        if n not in ("", "0"):
            loading = True
            break
        time.sleep(0.05)
    assert loading, "the restore never reached its COPY data"
    kids = [int(x) for x in subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()]
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode != 0, out + err
    time.sleep(0.5)
    assert [k for k in kids if os.path.exists(f"/proc/{k}") and "zombie" not in
            Path(f"/proc/{k}/status").read_text().lower()] == [], "psql left running"
    assert db_fingerprint(pg_sql, dbname) == want
    dbs = pg_sql("SELECT datname FROM pg_database", "postgres").split()
    assert [d for d in dbs if d.startswith(dbname) and d != dbname] == [], dbs


def _loading_psqls(p: subprocess.Popen, at_least: int, timeout: float = 60) -> list[int]:
    """Pids of the restore ``p``'s loading sessions (psql on its side database; not its
    pooled session on the maintenance database, nor its one-shot DDL there), once
    ``at_least`` run, or what runs when ``p`` ends or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    kids: list[int] = []
    while time.monotonic() < deadline and p.poll() is None:
        kids = [k for k in (int(x) for x in subprocess.run(["pgrep", "-P", str(p.pid), "psql"], capture_output=True,
                                                            text=True).stdout.split())
                if b"_restoring_" in _cmdline(k)]
        if len(kids) >= at_least:
            break
        time.sleep(0.02)
    return kids


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_psql_killed_mid_load_fails_the_restore_and_keeps_the_old_db(local_inv, cli_env, pg_sql, dbname):
    inv, _ = local_inv
    archive = _big_plain_backup(local_inv, cli_env, pg_sql, dbname)
    pg_sql("DELETE FROM bulk WHERE id % 3 = 0", dbname)
    want = db_fingerprint(pg_sql, dbname)
    p = subprocess.Popen([sys.executable, "-m", "bigskies_ops", "db.restore", str(archive), "-i", str(inv), "--yes"],
                         env=cli_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kids = _loading_psqls(p, 2)
    assert len(kids) >= 2, "no parallel psql sessions seen"
    os.kill(max(kids), signal.SIGKILL)  # the second session
    out, err = p.communicate(timeout=120)
    assert p.returncode != 0, out + err
    assert "killed by signal" in err or "exit" in err, err
    assert db_fingerprint(pg_sql, dbname) == want
    dbs = pg_sql("SELECT datname FROM pg_database", "postgres").split()
    assert [d for d in dbs if d.startswith(dbname) and d != dbname] == [], dbs


def test_a_restore_killed_mid_load_leaves_a_labelled_side_db_that_the_next_restore_drops(
        local_inv, cli_env, pg_sql, dbname):
    """The side database carries its label from its CREATE on (the same psql runs both:
    bigskies_ops.pg.admin.create_like's ``then``): a restore killed outright (SIGKILL: no
    cleanup of its own) leaves a side database that names it, and the next restore of the
    database drops it as left by an interrupted restore, then restores."""
    inv, _ = local_inv
    archive = _big_plain_backup(local_inv, cli_env, pg_sql, dbname)
    pg_sql("DELETE FROM bulk WHERE id % 3 = 0", dbname)
    p = subprocess.Popen([sys.executable, "-m", "bigskies_ops", "db.restore", str(archive), "-i", str(inv), "--yes"],
                         env=cli_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    label_q = (f"SELECT datname || ' ' || shobj_description(oid, 'pg_database') FROM pg_database "
               f"WHERE datname LIKE '{dbname}_restoring_%'")
    kids = _loading_psqls(p, 1)
    assert kids, "no loading session seen"
    side, label = pg_sql(label_q, "postgres").strip().split(" ", 1)
    for pid in [p.pid, *kids]:  # the restore and its loading psqls, at once: nothing of ours cleans up
        os.kill(pid, signal.SIGKILL)
    p.communicate(timeout=30)
    tag = json.loads(label)
    assert tag["tag"] == "bigskies-ops:restoring" and tag["of"] == dbname and tag["pid"] == p.pid, tag
    assert side in pg_sql("SELECT datname FROM pg_database", "postgres").split()
    want = db_fingerprint(pg_sql, dbname)  # the killed restore changed nothing but its side database
    r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert f"Dropped {side!r}, left by an interrupted restore (pid {p.pid}" in r.stdout + r.stderr, r.stdout + r.stderr
    dbs = pg_sql("SELECT datname FROM pg_database", "postgres").split()
    assert side not in dbs and not [d for d in dbs if "_restoring_" in d], dbs
    assert db_fingerprint(pg_sql, dbname) != want  # restored: the deleted rows are back
    assert pg_sql("SELECT count(*) FROM bulk", dbname).strip() == "60000"
