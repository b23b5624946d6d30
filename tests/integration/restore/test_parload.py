"""The parallel plain-dump loader (bigskies_ops.jobs.parload) on a real PostgreSQL 15.

Several psql sessions read the same ``.sql.gz``; COPY data is cut into segments that
whichever session gets there first loads. These tests use tiny segments so every
table is cut many times, compare every row of every table (and sequences and large
objects) with the source by the test's own queries, and check the ordering rules:
SQL before COPY data, indexes/constraints after all of it, and a dump that opens a
transaction loaded by the first session alone.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest

from bigskies_ops import inventory
from bigskies_ops.pg.access import PostgresAccess
from bigskies_ops.errors import ArchiveError
from bigskies_ops.jobs.parload import load_plain_parallel
from bigskies_ops.jobs.sideload import RESTORE_PGOPTIONS
from tests.conftest import cli
from tests.pgcheck import db_fingerprint

BIN = "/usr/lib/postgresql/15/bin"

TRICKY = r"""
CREATE TABLE tricky (id int PRIMARY KEY, txt text, n numeric);
INSERT INTO tricky SELECT i, CASE i % 5
    WHEN 0 THEN E'line one\nline two\n\\.\nafter a terminator look-alike'
    WHEN 1 THEN E'tab\there, backslash \\ and CR\r'
    WHEN 2 THEN 'GRANT ALL ON tricky TO nobody;'
    WHEN 3 THEN 'COPY public.tricky (id) FROM stdin;'
    ELSE repeat('x', 300) || ' ünïcødé' END, i * 1.5
FROM generate_series(1, 3000) i;
CREATE TABLE "we ird.na""me" (k text);
INSERT INTO "we ird.na""me" SELECT 'k' || g FROM generate_series(1, 700) g;
CREATE TABLE empty_one (id int);
CREATE TABLE parted (id int, part int) PARTITION BY LIST (part);
CREATE TABLE parted_a PARTITION OF parted FOR VALUES IN (1);
CREATE TABLE parted_b PARTITION OF parted FOR VALUES IN (2);
INSERT INTO parted SELECT g, 1 + g % 2 FROM generate_series(1, 2500) g;
CREATE SEQUENCE tick;
SELECT setval('tick', 4242);
CREATE TABLE child (id int PRIMARY KEY, tricky_id int REFERENCES tricky(id));
INSERT INTO child SELECT g, g FROM generate_series(1, 1500) g;
CREATE INDEX tricky_txt ON tricky (txt);
SELECT lo_from_bytea(0, convert_to(repeat('large object ', 500), 'UTF8'));
"""


@pytest.fixture()
def source(pg, pg_sql, dbname):
    """A database with awkward data, and its plain dump (gzip) written by pg_dump."""
    pg_sql(TRICKY, dbname)
    return dbname


def _dump(pg, db: str, out: Path) -> Path:
    sql = subprocess.run([f"{BIN}/pg_dump", "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "bigskies",
                          "--no-owner", "-d", db], check=True, capture_output=True).stdout
    out.write_bytes(gzip.compress(sql, 1))
    return out


def _access(pg, db: str, tmp_path):
    inv = inventory.parse({"hosts": {"dev": {"postgres": {
        "socket_dir": str(pg.socket_dir), "port": pg.port, "database": db, "user": "bigskies",
        "bindir": BIN}, "backup": {"dir": str(tmp_path / "b")}}}}, tmp_path / "inventory.yaml")
    return PostgresAccess(inv.host("dev"))


def _fresh(pg_sql, name: str) -> str:
    pg_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', "postgres")
    pg_sql(f'CREATE DATABASE "{name}" TEMPLATE template0', "postgres")
    return name


def _children() -> set[int]:
    me = str(os.getpid())
    out = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "stat").read_text().split(") ")[1].split()[1] == me:
                    out.add(int(p.name))
            except (OSError, IndexError):
                pass
    return out


def test_three_sessions_with_tiny_segments_restore_every_row(pg, pg_sql, source, tmp_path):
    archive = _dump(pg, source, tmp_path / "src.sql.gz")
    target = _fresh(pg_sql, source + "_par")
    stats: dict = {}
    try:
        with _access(pg, target, tmp_path) as access:
            rc, _, err, rows = load_plain_parallel(access, str(archive), target, jobs=3,
                                                   pgoptions=RESTORE_PGOPTIONS, segment_bytes=4096, stats=stats)
        assert rc == 0, err
        assert db_fingerprint(pg_sql, target) == db_fingerprint(pg_sql, source)
        # every session loaded segments: the work was really shared
        assert len(stats["segments"]) == 3 and all(n > 0 for n in stats["segments"]), stats
        assert sum(stats["segments"]) > 100  # tricky alone is ~1 MB of text in 4 KiB segments
        # the server's COPY tags, summed per table, are the source's counts
        for (schema, name), n in rows.items():
            qn = '"' + name.replace('"', '""') + '"'
            assert n == int(pg_sql(f"SELECT count(*) FROM {schema}.{qn}", source)), name
        assert rows[("public", "tricky")] == 3000 and rows[("public", "empty_one")] == 0
        assert rows[("public", 'we ird.na"me')] == 700
        # post-data ran after the data: the foreign key and the index exist and hold
        assert pg_sql("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'child'::regclass",
                      target).strip() == "1"
        assert pg_sql("SELECT to_regclass('public.tricky_txt') IS NOT NULL", target).strip() == "t"
    finally:
        pg_sql(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)', "postgres")


def test_a_dump_that_opens_a_transaction_is_loaded_by_the_leader_alone(pg, pg_sql, dbname, tmp_path):
    # hand-written SQL after a pg_dump header: the table exists only inside the transaction,
    # so a second session could not see it
    body = ("--\n-- PostgreSQL database dump\n--\n\nSET client_encoding = 'UTF8';\n"
            "BEGIN;\nCREATE TABLE in_txn (id int, v text);\nCOPY public.in_txn (id, v) FROM stdin;\n" +
            "".join(f"{i}\tvalue {i}\n" for i in range(5000)) + "\\.\nCOMMIT;\n")
    archive = tmp_path / "txn.sql.gz"
    archive.write_bytes(gzip.compress(body.encode(), 1))
    target = _fresh(pg_sql, dbname + "_txn")
    stats: dict = {}
    try:
        with _access(pg, target, tmp_path) as access:
            rc, _, err, rows = load_plain_parallel(access, str(archive), target, jobs=2,
                                                   segment_bytes=1024, stats=stats)
        assert rc == 0, err
        assert pg_sql("SELECT count(*), sum(id) FROM in_txn", target).strip() == f"5000|{sum(range(5000))}"
        assert stats["segments"][1] == 0 and stats["segments"][0] > 10, stats
        assert rows == {("public", "in_txn"): 5000}
    finally:
        pg_sql(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)', "postgres")


def test_a_bad_row_fails_the_load_with_the_servers_message_and_stops_every_session(pg, pg_sql, source, tmp_path):
    archive = _dump(pg, source, tmp_path / "src.sql.gz")
    sql = gzip.decompress(archive.read_bytes())
    head, sep, rest = sql.partition(b"COPY public.child (id, tricky_id) FROM stdin;\n")
    assert sep
    bad = tmp_path / "bad.sql.gz"
    bad.write_bytes(gzip.compress(head + sep + b"not-a-number\t1\n" + rest, 1))
    target = _fresh(pg_sql, source + "_bad")
    before = _children()
    try:
        with _access(pg, target, tmp_path) as access:
            rc, _, err, rows = load_plain_parallel(access, str(bad), target, jobs=2,
                                                   segment_bytes=4096)
        assert rc != 0 and rows is None
        assert 'invalid input syntax for type integer: "not-a-number"' in err
        assert _children() <= before  # no psql left running
    finally:
        pg_sql(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)', "postgres")


def test_a_truncated_archive_raises_and_leaves_no_session(pg, pg_sql, source, tmp_path):
    archive = _dump(pg, source, tmp_path / "src.sql.gz")
    cut = tmp_path / "cut.sql.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    target = _fresh(pg_sql, source + "_cut")
    before = _children()
    try:
        with _access(pg, target, tmp_path) as access:
            with pytest.raises(ArchiveError, match="truncated gzip"):
                load_plain_parallel(access, str(cut), target, jobs=2, segment_bytes=4096)
        assert _children() <= before
    finally:
        pg_sql(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)', "postgres")


def test_db_restore_of_a_plain_backup_in_parallel_and_a_bad_row_keeps_the_old_database(
        local_inv, cli_env, pg_sql, dbname):
    inv, bdir = local_inv
    pg_sql(TRICKY, dbname)
    r = cli("db.backup", "-i", str(inv), "--format", "plain", "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    archive = Path(json.loads(r.stdout)["path"])
    want = db_fingerprint(pg_sql, dbname)
    pg_sql("DELETE FROM tricky WHERE id > 2000", dbname)
    r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert db_fingerprint(pg_sql, dbname) == want
    # the same archive with one bad row: exit 1, the server's message, old database intact
    sql = gzip.decompress(archive.read_bytes())
    head, sep, rest = sql.partition(b"COPY public.child (id, tricky_id) FROM stdin;\n")
    bad = archive.with_name(archive.name.replace(".sql.gz", "_9.sql.gz"))
    bad.write_bytes(gzip.compress(head + sep + b"x\t1\n" + rest, 1))
    m = json.loads(Path(str(archive) + ".manifest.json").read_text())
    import hashlib
    m.update(archive=bad.name, sha256=hashlib.sha256(bad.read_bytes()).hexdigest(), bytes=bad.stat().st_size)
    Path(str(bad) + ".manifest.json").write_text(json.dumps(m))
    r = cli("db.restore", str(bad), "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'invalid input syntax for type integer: "x"' in r.stderr
    assert db_fingerprint(pg_sql, dbname) == want
    leftovers = [d for d in pg_sql("SELECT datname FROM pg_database", "postgres").split() if "_restoring_" in d]
    assert leftovers == []


def test_a_dump_that_ends_inside_copy_data_is_refused_not_half_loaded(pg, pg_sql, source, tmp_path):
    # psql would end the COPY at end of input and commit the rows so far: a truncated dump
    # (e.g. a pull whose pg_dump died) must fail instead
    archive = _dump(pg, source, tmp_path / "src.sql.gz")
    sql = gzip.decompress(archive.read_bytes())
    start = sql.index(b"COPY public.tricky ")
    cut = tmp_path / "cut_in_copy.sql.gz"
    cut.write_bytes(gzip.compress(sql[: sql.index(b"\n", start + 5000) + 1], 1))  # a complete gzip stream
    target = _fresh(pg_sql, source + "_cic")
    try:
        with _access(pg, target, tmp_path) as access:
            with pytest.raises(ArchiveError, match="ends inside the COPY data"):
                load_plain_parallel(access, str(cut), target, jobs=2, segment_bytes=1024)
    finally:
        pg_sql(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)', "postgres")
