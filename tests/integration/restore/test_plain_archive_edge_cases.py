"""Plain archives whose text looks like something else, each on a real PostgreSQL 15
through the CLI:

* a plain restore must not drop data rows that look like GRANT/REVOKE/OWNER statements
  when a quoted table name held a newline, or a string literal held ``$$``;
* ``--exclude-table-data`` once recorded rows for an excluded table when another
  table's data held a line that looks like its COPY statement;
* a gzip file padded with zero bytes (which GNU gunzip accepts) crashed restore;
* a full disk left an empty lock file that blocked every later run.
Data are checked with the test's own psql, against literals.
"""
from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

from tests.conftest import cli

ROWS = ["user alice logged in", "GRANT ALL ON public.accounts TO alice;", "REVOKE ALL ON public.accounts FROM bob;",
        "ALTER TABLE public.accounts OWNER TO carol;", "user bob logged out"]


def _rows(pg_sql, db, table) -> list[str]:
    return sorted(l for l in pg_sql(f"SELECT v FROM {table}", db).splitlines())


def _setup_tricky(pg_sql, db):
    values = ", ".join("(%s)" % ("'" + r.replace("'", "''") + "'") for r in ROWS)
    pg_sql('CREATE TABLE public."audit\nlog" (v text); CREATE TABLE public.b_notes (v text);'
           "COMMENT ON TABLE public.b_notes IS 'prices in $$';"
           f'INSERT INTO public."audit\nlog" VALUES {values};'
           "INSERT INTO public.b_notes VALUES ('closing $$ here'), ('GRANT SELECT ON public.b_notes TO PUBLIC;');", db)


def test_plain_restore_keeps_rows_that_look_like_sql(local_inv, cli_env, pg_sql, dbname):
    inv, bdir = local_inv
    _setup_tricky(pg_sql, dbname)
    r = cli("db.backup", "-i", str(inv), "--format", "plain", "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    archive = Path(json.loads(r.stdout)["path"])
    m = json.loads(Path(str(archive) + ".manifest.json").read_text())
    rows = {t["name"]: t["rows"] for t in m["tables"]}
    assert rows["audit\nlog"] == 5 and rows["b_notes"] == 2  # recorded, so the restore checks them
    target = dbname + "_r"
    r = cli("db.restore", str(archive), "-i", str(inv), "--target-db", target, "--yes", env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        assert _rows(pg_sql, target, 'public."audit\nlog"') == sorted(ROWS)
        assert _rows(pg_sql, target, "public.b_notes") == sorted(["closing $$ here",
                                                                  "GRANT SELECT ON public.b_notes TO PUBLIC;"])
    finally:
        pg_sql(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)', "postgres")


def test_legacy_pg_dump_gzip_with_dollars_in_a_literal_and_zero_padding(pg, local_inv, cli_env, pg_sql, dbname):
    inv, bdir = local_inv
    _setup_tricky(pg_sql, dbname)
    bdir.mkdir(exist_ok=True)
    dump = subprocess.run(["/usr/lib/postgresql/15/bin/pg_dump", "-h", str(pg.socket_dir), "-p", str(pg.port),
                           "-U", "bigskies", dbname], capture_output=True, check=True).stdout
    legacy = bdir / f"{dbname}_backup_20250101_000000.sql.gz"  # the guide's `pg_dump | gzip`, no manifest
    legacy.write_bytes(gzip.compress(dump) + b"\0" * 1024)  # zero padding: GNU gunzip ignores it
    target = dbname + "_l"
    r = cli("db.restore", str(legacy), "-i", str(inv), "--target-db", target, "--yes", env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    # nothing to count against: said so, not "0 tables checked"
    assert "(no manifest (legacy archive): row counts not checked)" in r.stdout, r.stdout
    try:
        assert _rows(pg_sql, target, 'public."audit\nlog"') == sorted(ROWS)
        assert len(_rows(pg_sql, target, "public.b_notes")) == 2
    finally:
        pg_sql(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)', "postgres")
    garbage = bdir / f"{dbname}_backup_20250101_000001.sql.gz"
    garbage.write_bytes(gzip.compress(dump) + b"not gzip")
    r = cli("db.restore", str(garbage), "-i", str(inv), "--target-db", target + "x", "--yes", env=cli_env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "trailing garbage after the gzip data" in r.stderr
    assert target + "x" not in pg_sql("SELECT datname FROM pg_database", "postgres").split()


def test_exclude_table_data_ignores_a_data_row_that_looks_like_copy(local_inv, cli_env, pg_sql, dbname):
    inv, bdir = local_inv
    pg_sql("CREATE TABLE public.logs (id int, msg text); INSERT INTO public.logs SELECT g, 'log' "
           "FROM generate_series(1, 50) g; CREATE TABLE public.notes (v text);"
           "INSERT INTO public.notes VALUES ('COPY public.logs (id, msg) FROM stdin;')", dbname)
    r = cli("db.backup", "-i", str(inv), "--format", "plain", "--exclude-table-data", "public.logs", "--json",
            env=cli_env)
    assert r.returncode == 0, r.stderr
    archive = Path(json.loads(r.stdout)["path"])
    rows = {t["name"]: t["rows"] for t in json.loads(Path(str(archive) + ".manifest.json").read_text())["tables"]}
    assert rows["logs"] is None and rows["notes"] == 1
    target = dbname + "_x"
    r = cli("db.restore", str(archive), "-i", str(inv), "--target-db", target, "--yes", env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        assert pg_sql("SELECT count(*) FROM public.logs", target).strip() == "0"
        assert _rows(pg_sql, target, "public.notes") == ["COPY public.logs (id, msg) FROM stdin;"]
    finally:
        pg_sql(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)', "postgres")


def test_an_empty_lock_file_left_by_a_crash_does_not_block_forever(local_inv, cli_env, pg_sql, dbname):
    inv, bdir = local_inv
    bdir.mkdir(exist_ok=True)
    (bdir / f".lock-{dbname}").write_bytes(b"")  # what a full disk used to leave behind
    r = cli("db.backup", "-i", str(inv), "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "removed unreadable lock file" in r.stderr
    assert not (bdir / f".lock-{dbname}").exists()
