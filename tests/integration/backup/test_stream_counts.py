"""A plain backup's row counts are its own COPY data lines, on a real PostgreSQL 15.

``db.backup --format plain`` no longer scans every table a second time with
``count(*)``: each table's rows are the data lines of its COPY blocks in pg_dump's
output (pg_dump ran in the exported snapshot), a parent's rows are those of its
partitions or inheritance children, and only tables the stream cannot give are
counted with ``count(*)`` in the still open snapshot transaction. These tests compare
every recorded number with the test's own ``count(*)`` (and with literals), check
that the tables were scanned once (by pg_dump) and not twice, that excluded data
gives None for exactly those tables, that the backups restore with their checks, and
that the ``count(*)`` fallback sees the snapshot, not later writes.
"""
from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path

import pytest

from bigskies_ops import inventory, report
from bigskies_ops.pg.access import PostgresAccess
from bigskies_ops.jobs.destinations import CompressingSink
from bigskies_ops.jobs.dump import keep_session_while_idle
from bigskies_ops.archives.counts import inheritance_tree, plain_manifest_tables, snapshot_facts, stream_row_counts
from tests.conftest import cli

ODD = ("Odd Sch.ema", "ta ble.x\ny")  # a space, a dot and a newline in the names

SETUP = r"""
CREATE TABLE public.tricky (id int PRIMARY KEY, v text);
INSERT INTO public.tricky VALUES
  (1, E'two\nlines'), (2, E'tab\there'), (3, E'back\\slash'), (4, E'before\n\\.\nafter'),
  (5, E'\\.'), (6, E'cr\r\nlf'), (7, NULL), (8, ''), (9, E'\\N'), (10, E'ends in a backslash\\');
CREATE TABLE public.empty_t (id int);
CREATE SCHEMA "Odd Sch.ema";
CREATE TABLE "Odd Sch.ema"."ta ble.x
y" (v text);
INSERT INTO "Odd Sch.ema"."ta ble.x
y" VALUES ('a'), (E'b\nc'), ('\.');
CREATE TABLE public.events (id int, region text) PARTITION BY LIST (region);
CREATE TABLE public.events_eu PARTITION OF public.events FOR VALUES IN ('eu');
CREATE TABLE public.events_asia PARTITION OF public.events FOR VALUES IN ('asia') PARTITION BY RANGE (id);
CREATE TABLE public.events_asia_lo PARTITION OF public.events_asia FOR VALUES FROM (MINVALUE) TO (100);
CREATE TABLE public.events_asia_hi PARTITION OF public.events_asia FOR VALUES FROM (100) TO (MAXVALUE);
CREATE TABLE public.events_other PARTITION OF public.events DEFAULT;
INSERT INTO public.events SELECT g, 'eu' FROM generate_series(1, 7) g;
INSERT INTO public.events SELECT g, 'asia' FROM generate_series(95, 104) g;
INSERT INTO public.events SELECT g, 'us' FROM generate_series(1, 3) g;
CREATE TABLE public.empty_parted (id int) PARTITION BY RANGE (id);
CREATE TABLE public.inh_parent (id int);
CREATE TABLE public.inh_child (extra text) INHERITS (public.inh_parent);
INSERT INTO public.inh_parent VALUES (1), (2);
INSERT INTO public.inh_child VALUES (3, 'x'), (4, 'y'), (5, 'z');
"""

# what SETUP put there, written out (count(*) semantics: a parent includes its descendants)
LITERAL = {("public", "tricky"): 10, ("public", "empty_t"): 0, ODD: 3, ("public", "events"): 20,
           ("public", "events_eu"): 7, ("public", "events_asia"): 10, ("public", "events_asia_lo"): 5,
           ("public", "events_asia_hi"): 5, ("public", "events_other"): 3, ("public", "empty_parted"): 0,
           ("public", "inh_parent"): 5, ("public", "inh_child"): 3}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _tables(pg_sql, db) -> list[tuple[str, str]]:
    """The test's own list of user tables (ordinary and partitioned), as JSON (names may hold newlines)."""
    out = pg_sql("SELECT coalesce(json_agg(json_build_array(n.nspname, c.relname) ORDER BY 1), '[]') "
                 "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                 "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                 "AND n.nspname !~ '^pg_'", db)
    return [tuple(t) for t in json.loads(out)]


def _counts(pg_sql, db) -> dict[tuple[str, str], int]:
    """``count(*)`` of every user table, by the test's own psql."""
    tables = _tables(pg_sql, db)
    q = " UNION ALL ".join(f"SELECT {i} || '|' || count(*) FROM {_q(s)}.{_q(n)}" for i, (s, n) in enumerate(tables))
    out = {}
    for line in pg_sql(q, db).splitlines():
        if line.strip():
            i, n = line.split("|")
            out[tables[int(i)]] = int(n)
    return out


def _state(pg_sql, db) -> dict[tuple[str, str], str]:
    """Rows and md5 of the ordered rows of every user table (leaves only: a parent's rows are its leaves')."""
    tables = _tables(pg_sql, db)
    q = " UNION ALL ".join(
        f"SELECT {i} || '|' || count(*) || '|' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') "
        f"FROM ONLY {_q(s)}.{_q(n)} t" for i, (s, n) in enumerate(tables))
    out = {}
    for line in pg_sql(q, db).splitlines():
        if line.strip():
            i, n, md5 = line.split("|")
            out[tables[int(i)]] = f"{n} {md5}"
    return out


def _seq_scans(pg_sql, db) -> dict[tuple[str, str], int]:
    """``seq_scan`` of every ordinary table, once no other client session is connected to ``db``
    (a backend flushes its statistics before it leaves pg_stat_activity)."""
    deadline = time.monotonic() + 20
    while pg_sql("SELECT count(*) FROM pg_stat_activity WHERE datname = '%s' AND backend_type = 'client backend'"
                 % db.replace("'", "''"), "postgres").strip() != "0":
        assert time.monotonic() < deadline, "sessions stayed connected"
        time.sleep(0.05)
    out = pg_sql("SELECT json_agg(json_build_array(s.schemaname, s.relname, s.seq_scan)) "
                 "FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid WHERE c.relkind = 'r'", db)
    return {(s, n): k for s, n, k in json.loads(out)}


def _backup(inv, env, *flags) -> tuple[Path, dict]:
    r = cli("db.backup", "-i", str(inv), "--format", "plain", "--json", *flags, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    archive = Path(json.loads(r.stdout)["path"])
    return archive, json.loads(Path(str(archive) + ".manifest.json").read_text())


def _rows(manifest) -> dict[tuple[str, str], int | None]:
    rows = {(t["schema"], t["name"]): t["rows"] for t in manifest["tables"]}
    assert len(rows) == len(manifest["tables"])  # no table twice
    return rows


def _host(pg, db, tmp_path, user="bigskies"):
    inv = inventory.parse({"hosts": {"dev": {"postgres": {
        "socket_dir": str(pg.socket_dir), "port": pg.port, "database": db, "user": user,
        "bindir": "/usr/lib/postgresql/15/bin"}, "backup": {"dir": str(tmp_path)}}}}, tmp_path / "inventory.yaml")
    return inv.host("dev")


# ------------------------------------------------------------------ through the CLI
def test_plain_manifest_rows_are_exact_and_pg_dump_is_the_only_scan(local_inv, cli_env, pg_sql, dbname):
    inv, _ = local_inv
    pg_sql(SETUP, dbname)
    want = _counts(pg_sql, dbname)
    assert {k: want[k] for k in LITERAL} == LITERAL  # the test's own count agrees with what SETUP wrote
    assert want[("public", "users")] > 1000
    scans_before = _seq_scans(pg_sql, dbname)

    archive, m = _backup(inv, cli_env)

    assert m["status"] == "DONE"
    assert _rows(m) == want  # every table, the same set of tables, each number exact
    # pg_dump's COPY read each table once; a count(*) would have read it a second time
    scans = _seq_scans(pg_sql, dbname)
    delta = {k: scans[k] - scans_before.get(k, 0) for k in scans if k != ("public", "schema_migrations")}
    assert delta and set(delta.values()) == {1}, delta


def test_excluded_data_gives_rows_none_for_exactly_those_tables(local_inv, cli_env, pg_sql, dbname):
    inv, _ = local_inv
    pg_sql(SETUP, dbname)
    want = _counts(pg_sql, dbname)

    _, m = _backup(inv, cli_env, "--exclude-table-data", "public.tricky")
    assert m["excluded_table_data"] == ["public.tricky"]
    assert _rows(m) == {**want, ("public", "tricky"): None}

    # one leaf's data left out: it and its ancestors have no complete data in the archive
    _, m = _backup(inv, cli_env, "--exclude-table-data", "public.events_asia_hi")
    assert _rows(m) == {**want, ("public", "events_asia_hi"): None, ("public", "events_asia"): None,
                        ("public", "events"): None}

    _, m = _backup(inv, cli_env, "--schema-only")
    assert set(_rows(m)) == set(want) and set(_rows(m).values()) == {None}


def test_stream_counted_backups_restore_with_their_checks(local_inv, cli_env, pg_sql, dbname):
    inv, _ = local_inv
    pg_sql(SETUP, dbname)
    before = _state(pg_sql, dbname)
    full, _ = _backup(inv, cli_env)
    partial, pm = _backup(inv, cli_env, "--exclude-table-data", "public.tricky")
    assert _rows(pm)[("public", "events")] == 20  # a parent with all its leaves' data is checked

    pg_sql("DELETE FROM public.events WHERE region = 'asia'; DELETE FROM public.tricky WHERE id > 5;"
           "INSERT INTO public.inh_child VALUES (6, 'new'); TRUNCATE public.users CASCADE", dbname)
    assert _state(pg_sql, dbname) != before
    r = cli("db.restore", str(full), "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _state(pg_sql, dbname) == before

    target = dbname + "_x"
    r = cli("db.restore", str(partial), "-i", str(inv), "--target-db", target, "--yes", env=cli_env)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        got = _state(pg_sql, target)
        assert got[("public", "tricky")].startswith("0 ")
        assert {k: v for k, v in got.items() if k != ("public", "tricky")} == \
            {k: v for k, v in before.items() if k != ("public", "tricky")}
    finally:
        pg_sql(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)', "postgres")

    # the restore really compares the parent's recorded rows: one too many fails it
    mpath = Path(str(full) + ".manifest.json")
    m = json.loads(mpath.read_text())
    for t in m["tables"]:
        if (t["schema"], t["name"]) == ("public", "events"):
            t["rows"] += 1
    mpath.write_text(json.dumps(m))
    r = cli("db.restore", str(full), "-i", str(inv), "--target-db", target, "--yes", env=cli_env)
    try:
        assert r.returncode == 1, r.stdout + r.stderr
        assert "public.events has 20 rows, manifest says 21" in r.stderr
    finally:
        pg_sql(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)', "postgres")


# ------------------------------------------------------------------ the count(*) fallback, in the snapshot
def test_tables_without_a_stream_count_are_counted_in_the_dumps_snapshot(pg, pg_sql, dbname, tmp_path):
    pg_sql(SETUP, dbname)
    want = _counts(pg_sql, dbname)
    notes: list[str] = []
    with PostgresAccess(_host(pg, dbname, tmp_path)) as access:
        session = access.sql(dbname).session()
        try:
            _, tables = snapshot_facts(session, access, {})
            # written after the snapshot (as coordinators keep writing during a dump) ...
            pg_sql("INSERT INTO public.tricky VALUES (11, 'late'); DELETE FROM public.events_eu;"
                   "INSERT INTO public.inh_child VALUES (9, 'late'); DELETE FROM public.user_roles", dbname)
            # ... and a TRUNCATE, which an older snapshot cannot see past (it is not MVCC-safe)
            pg_sql("TRUNCATE public.events_other", dbname)
            # users has a stream count; one COPY name could not be read: every other table is counted
            with report.reporting(notes.append):
                got = plain_manifest_tables(session, tables, [("public", "users"), None], [123456, 3],
                                            all_data=True, schema_only=False)
                # with data excluded, a table without a block may be excluded or the undecodable one: not claimed
                partial = plain_manifest_tables(session, tables, [("public", "users"), None], [123456, 3],
                                                all_data=False, schema_only=False)
        finally:
            session.close()
    assert {(t["schema"], t["name"]): t["rows"] for t in partial} == \
        {**{k: None for k in want}, ("public", "users"): 123456, ("public", "empty_parted"): 0}  # no partitions
    assert len(notes) == 2 and "could not be decoded" in notes.pop()
    rows = {(t["schema"], t["name"]): t["rows"] for t in got}
    # the stream's own number is taken as is; the rest are the snapshot's counts, except the
    # truncated partition and its ancestors, which are left unrecorded rather than wrong
    assert rows == {**want, ("public", "users"): 123456, ("public", "events_other"): None,
                    ("public", "events"): None}
    now = _counts(pg_sql, dbname)
    assert (now[("public", "tricky")], now[("public", "events")], now[("public", "user_roles")]) == (11, 10, 0)
    assert want[("public", "user_roles")] > 0
    assert len(notes) == 1 and "truncated or rewritten" in notes[0] and "public.events_other" in notes[0]


def test_the_snapshot_session_survives_an_idle_timeout_while_pg_dump_runs(pg, pg_sql, dbname, tmp_path):
    pg_sql(f'ALTER DATABASE "{dbname}" SET idle_in_transaction_session_timeout = 300', "postgres")
    with PostgresAccess(_host(pg, dbname, tmp_path)) as access:
        session = access.sql(dbname).session()
        try:
            m: dict = {}
            _, tables = snapshot_facts(session, access, m)
            keep_session_while_idle(session, m)
            time.sleep(1.0)  # idle in the transaction, as while pg_dump runs
            got = plain_manifest_tables(session, tables, [], [], all_data=True, schema_only=False)
        finally:
            session.close()
    assert {(t["schema"], t["name"]): t["rows"] for t in got} == _counts(pg_sql, dbname)


def test_the_fallback_leaves_tables_the_user_cannot_read_unrecorded(pg, pg_sql, dbname, tmp_path):
    pg_sql(SETUP, dbname)
    want = _counts(pg_sql, dbname)
    role = f"bs_reader_{uuid.uuid4().hex[:8]}"
    pg_sql(f"CREATE ROLE {role} LOGIN", "postgres")
    try:
        # no SELECT on tricky; no USAGE on the odd schema (its table's own grant does not help)
        pg_sql(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}; REVOKE SELECT ON public.tricky FROM {role};'
               f'GRANT SELECT ON "Odd Sch.ema"."ta ble.x\ny" TO {role}', dbname)
        with PostgresAccess(_host(pg, dbname, tmp_path, user=role)) as access:
            session = access.sql(dbname).session()
            try:
                _, tables = snapshot_facts(session, access, {})
                got = plain_manifest_tables(session, tables, [], [], all_data=True, schema_only=False)
            finally:
                session.close()
        assert {(t["schema"], t["name"]): t["rows"] for t in got} == {**want, ("public", "tricky"): None, ODD: None}
    finally:
        pg_sql(f"DROP OWNED BY {role}", dbname)
        pg_sql(f"DROP ROLE {role}", "postgres")


# ------------------------------------------------------------------ pure functions
def _t(*names, kind="r"):
    return [{"schema": "s", "name": n, "kind": kind} for n in names]


def test_stream_row_counts_sums_blocks_and_maps_by_schema_and_name():
    tables = _t("a", "b", "empty")
    sc = stream_row_counts(tables, [("s", "a"), ("s", "b"), ("x", "a"), ("s", "a"), ("s", "empty")],
                           [3, 4, 100, 2, 0], {}, all_data=True)
    assert sc.rows == [5, 4, 0] and sc.recount == [] and sc.unknown == []


def test_stream_row_counts_parents_get_their_descendants_rows():
    tables = _t("parted", kind="p") + _t("leaf1", "leaf2") + _t("sub", kind="p") + _t("leaf3", "inh", "kid")
    tree = inheritance_tree([
        {"schema": "s", "name": "parted", "child_schema": "s", "child_name": c, "child_kind": k}
        for c, k in (("leaf1", "r"), ("sub", "p"), ("leaf2", "r"), ("leaf3", "r"))
    ] + [{"schema": "s", "name": "sub", "child_schema": "s", "child_name": "leaf3", "child_kind": "r"},
         {"schema": "s", "name": "inh", "child_schema": "s", "child_name": "kid", "child_kind": "r"}])
    blocks = [("s", "leaf1"), ("s", "leaf2"), ("s", "leaf3"), ("s", "inh"), ("s", "kid")]
    sc = stream_row_counts(tables, blocks, [1, 2, 4, 10, 20], tree, all_data=True)
    assert sc.rows == [7, 1, 2, 4, 4, 30, 20]
    # a partitioned table with no partitions has 0 rows; with --schema-only nothing is known
    assert stream_row_counts(_t("p", kind="p"), [], [], {}, all_data=False).rows == [0]
    assert stream_row_counts(tables, blocks, [1, 2, 4, 10, 20], tree, all_data=False, schema_only=True).rows == \
        [None] * 7


def test_stream_row_counts_never_guesses():
    tables = _t("parted", kind="p") + _t("leaf1", "leaf2")
    tree = {("s", "parted"): [(("s", "leaf1"), "r"), (("s", "leaf2"), "r")]}
    # leaf2's COPY name could not be read: with all data dumped, it and its parent are counted
    sc = stream_row_counts(tables, [("s", "leaf1"), None], [1, 2], tree, all_data=True)
    assert sc.rows == [None, 1, None] and sc.recount == [0, 2] and sc.unknown == []
    # with data excluded, a table without a block is excluded; so is its parent's complete data
    sc = stream_row_counts(tables, [("s", "leaf1")], [1], tree, all_data=False)
    assert sc.rows == [None, 1, None] and sc.recount == [] and sc.unknown == []
    # ... unless an unreadable COPY name could be that table's: then neither is claimed
    sc = stream_row_counts(tables, [("s", "leaf1"), None], [1, 2], tree, all_data=False)
    assert sc.rows == [None, 1, None] and sc.recount == [] and sc.unknown == [0, 2]
    # a foreign partition's rows are never in a dump: its parent is counted with count(*)
    tree = {("s", "parted"): [(("s", "leaf1"), "r"), (("s", "remote"), "f")]}
    sc = stream_row_counts(tables[:2], [("s", "leaf1")], [1], tree, all_data=True)
    assert sc.rows == [None, 1] and sc.recount == [0]
    with pytest.raises(ValueError):
        stream_row_counts(tables, [("s", "leaf1")], [1, 2], {}, all_data=True)


@pytest.mark.parametrize("step", [1, 7, 64, 1 << 20])
def test_sink_counts_copy_lines_whatever_the_chunking(step):
    sql = (b"SET x = 1;\nCOPY public.t (id, v) FROM stdin;\n1\ttwo\\nlines\n2\t\\\\.\n3\t\\N\n\\.\n\n"
           b"CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n"
           b'COPY "Odd Sch.ema"."ta ble.x\ny" (v) FROM stdin;\n\\.\n'
           b"COPY public.t (id, v) FROM stdin;\n4\tx\n\\.\n")
    sink = CompressingSink(io.BytesIO(), "plain", 1, track_copy=True)
    for i in range(0, len(sql), step):
        sink.write(sql[i:i + step])
    sink.finish()
    assert sink.copy_blocks() == ([("public", "t"), ODD, ("public", "t")], [3, 0, 1])
    with pytest.raises(ValueError):
        CompressingSink(io.BytesIO(), "plain", 1).copy_blocks()


# ------------------------------------------------------------------ a streamed pull over SSH
def test_streamed_plain_pull_counts_from_the_stream_and_restores_with_its_checks(tmp_path, pg, pg_sql, dbname,
                                                                                   ssh_server, cli_env):
    """``db.pull --from prod`` (streamed, plain): the manifest's rows are the COPY lines that
    arrived, prod's tables are scanned once (by pg_dump), and ``--restore`` checks them."""
    from tests.conftest import PASSWORD_ENV, native_host, write_inventory
    from tests.remote_helpers import ssh_block
    pg_sql(SETUP, dbname)
    want = _counts(pg_sql, dbname)
    dev_db = dbname + "_dev"
    pg_sql(f'CREATE DATABASE "{dev_db}"', "postgres")
    try:
        inv = write_inventory(tmp_path / "inv.yaml", {
            "prodn": {"connection": "ssh", "project_dir": str(tmp_path / "proj"), "ssh": ssh_block(ssh_server),
                      "postgres": {"host": "127.0.0.1", "port": pg.port, "database": dbname, "user": "bigskies",
                                   "password_env": PASSWORD_ENV, "bindir": "/usr/lib/postgresql/15/bin"},
                      "backup": {"format": "plain"}},
            "dev": native_host(pg, dev_db, tmp_path / "dev-backups")})
        scans_before = _seq_scans(pg_sql, dbname)
        r = cli("db.pull", "-i", str(inv), "--from", "prodn", "--to", "dev", "--restore", "--yes", env=cli_env)
        assert r.returncode == 0, r.stdout + r.stderr
        [mpath] = (tmp_path / "dev-backups" / "prodn").glob("*.sql.gz.manifest.json")
        m = json.loads(mpath.read_text())
        assert m["status"] == "DONE" and m["pull_mode"] == "stream"
        assert _rows(m) == want
        scans = _seq_scans(pg_sql, dbname)
        delta = {k: scans[k] - scans_before.get(k, 0) for k in scans if k != ("public", "schema_migrations")}
        assert delta and set(delta.values()) == {1}, delta  # pg_dump's COPY only, no count(*)
        assert _counts(pg_sql, dev_db) == want
    finally:
        pg_sql(f'DROP DATABASE IF EXISTS "{dev_db}" WITH (FORCE)', "postgres")
