"""Edge cases of the shared index builds of the parallel plain loader (bigskies_ops.jobs.parload).

Each case loads a dump (pg_dump's or hand-written) with psql alone (the oracle) and with
:func:`load_plain_parallel`, and compares catalog, schema and rows (tests/fidelity/compare.py,
tests/pgcheck.py) plus catalog facts the fidelity snapshot does not cover (which index a
foreign key depends on).
"""
from __future__ import annotations

import gzip
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bigskies_ops.jobs.parload import index_build_table
from tests.fidelity import compare
from tests.integration.restore.test_parallel_load_edge_cases import _psql_load, _rows, _write, load_or_fail
from tests.integration.restore.test_parload import BIN, _children, _fresh
from tests.pgcheck import db_fingerprint

SRC = "trial_src"

# what the fidelity snapshot does not compare: the index each constraint depends on
# (a foreign key uses the first matching unique index of the referenced table, by OID)
CONINDID_Q = ("SELECT string_agg(conrelid::regclass || '.' || conname || ' -> ' || conindid::regclass, E'\\n' "
              "ORDER BY conrelid::regclass::text, conname) FROM pg_constraint WHERE conindid <> 0 AND oid >= 16384")


def _dump(pg, db: str, out: Path) -> Path:
    sql = subprocess.run([f"{BIN}/pg_dump", "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "bigskies",
                          "-d", db], check=True, capture_output=True).stdout
    out.write_bytes(gzip.compress(sql, 1))
    return out


@pytest.fixture
def src(pg, pg_sql):
    _fresh(pg_sql, SRC)
    yield SRC
    for db in (SRC, SRC + "_ref", SRC + "_par"):
        pg_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', "postgres")


def _par(pg, db, tmp_path, archive, jobs, stats, timeout=120):
    return load_or_fail(pg, db, tmp_path, archive, jobs=jobs, segment_bytes=1 << 16, stats=stats, timeout=timeout)


def _both(pg, pg_sql, tmp_path, archive: Path, *, jobs: int = 2, ref_ok: bool = True):
    """(rc, stderr, stats, differences, psql's result) of loading ``archive`` both ways."""
    ref, par = _fresh(pg_sql, SRC + "_ref"), _fresh(pg_sql, SRC + "_par")
    r = _psql_load(pg, archive, ref)
    if ref_ok:
        assert r.returncode == 0, r.stderr.decode()
    stats: dict = {}
    before = _children()
    rc, _, err, _rows = _par(pg, par, tmp_path, archive, jobs, stats)
    assert _children() <= before, "a psql was left running"
    diffs = copy_differences(pg, pg_sql, par, ref) if rc == 0 and r.returncode == 0 else None
    return rc, err, stats, diffs, r


def copy_differences(pg, pg_sql, db: str, ref: str, ours: str = "parallel", oracle: str = "psql") -> list[str]:
    """How ``db`` differs from the oracle's copy ``ref``: catalog and schema (the fidelity
    snapshot), rows, and the index each constraint depends on."""
    host = str(pg.socket_dir)
    diffs = compare.differences(compare.snapshot(host, pg.port, db), compare.snapshot(host, pg.port, ref))
    if db_fingerprint(pg_sql, db) != db_fingerprint(pg_sql, ref):
        diffs.append("rows differ")
    a, b = pg_sql(CONINDID_Q, db).strip(), pg_sql(CONINDID_Q, ref).strip()
    if a != b:
        diffs.append(f"constraint indexes differ: {ours}\n{a}\n{oracle}\n{b}")
    return diffs


def _until_different(pg, pg_sql, tmp_path, archive: Path, times: int, jobs: int = 2) -> list:
    """Load ``archive`` both ways up to ``times`` times (the sessions race; a difference may
    show only in some loads); stop at the first failure or difference. Returns every
    load's ``(rc, stderr, index_builds, differences)``."""
    seen = []
    for _ in range(times):
        rc, err, stats, diffs, _r = _both(pg, pg_sql, tmp_path, archive, jobs=jobs)
        seen.append((rc, err, stats["index_builds"], diffs))
        if rc or diffs:
            break
    return seen


# ------------------------------------------------------------------ 1. FK on a redundant unique index
REDUNDANT = r"""
CREATE TABLE acct (id int NOT NULL, code text NOT NULL, v text);
INSERT INTO acct SELECT g, 'c' || g, repeat('v', 20) FROM generate_series(1, 20000) g;
ALTER TABLE acct ADD CONSTRAINT acct_pkey PRIMARY KEY (id);
CREATE UNIQUE INDEX acct_id_uidx ON acct (id);
CREATE UNIQUE INDEX acct_code_a ON acct (code);
CREATE UNIQUE INDEX acct_code_b ON acct (code);
CREATE TABLE ledger (acct_id int REFERENCES acct (id), code text REFERENCES acct (code));
INSERT INTO ledger SELECT g, 'c' || g FROM generate_series(1, 100) g;
"""


def test_fk_depends_on_the_same_unique_index_as_with_psql(pg, pg_sql, src, tmp_path):
    pg_sql(REDUNDANT, src)
    archive = _dump(pg, src, tmp_path / "red.sql.gz")
    seen = _until_different(pg, pg_sql, tmp_path, archive, 8)
    assert all(rc == 0 and not d for rc, _e, _s, d in seen), seen


# the same without a primary key: the run starts with the two unique indexes
REDUNDANT_NO_PK = r"""
CREATE TABLE acct (id int NOT NULL, code text NOT NULL, v text);
INSERT INTO acct SELECT g, 'c' || g, repeat('v', 20) FROM generate_series(1, 20000) g;
CREATE UNIQUE INDEX acct_code_a ON acct (code);
CREATE UNIQUE INDEX acct_code_b ON acct (code);
CREATE TABLE ledger (code text REFERENCES acct (code));
INSERT INTO ledger SELECT 'c' || g FROM generate_series(1, 100) g;
"""


@pytest.mark.parametrize("jobs", [2, 3])
def test_fk_on_one_of_two_unique_indexes_without_pk(pg, pg_sql, src, tmp_path, jobs):
    pg_sql(REDUNDANT_NO_PK, src)
    archive = _dump(pg, src, tmp_path / "red2.sql.gz")
    # a difference means: dropping the "redundant" second index works on psql's copy and not on
    # ours (DROP INDEX ... CASCADE would drop the foreign key with it)
    seen = _until_different(pg, pg_sql, tmp_path, archive, 12, jobs=jobs)
    assert all(rc == 0 and not d for rc, _e, _s, d in seen), seen


# ------------------------------------------------------------------ 2. a real-world-like schema by pg_dump
REALWORLD = r"""
CREATE SCHEMA app;
CREATE FUNCTION app.norm(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT lower(trim(t)) $$;
CREATE FUNCTION app.bucket(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN i % 97; END $$;
CREATE TABLE app.users (id bigint GENERATED ALWAYS AS IDENTITY, email text NOT NULL, name text COLLATE "C",
    created timestamptz NOT NULL DEFAULT '2024-01-01', tags text[], doc tsvector, geo point, active bool,
    org int, nick text);
INSERT INTO app.users (email, name, tags, doc, geo, active, org, nick)
SELECT 'U' || g || '@x.org ', 'name ' || g, ARRAY['t' || g % 13, 'u' || g % 7], to_tsvector('simple', 'w' || g % 101),
       point(g % 100, g % 37), g % 3 = 0, g % 50, CASE WHEN g <= 50 THEN NULL ELSE 'n' || g END
FROM generate_series(1, 60000) g;
ALTER TABLE app.users ADD CONSTRAINT users_pkey PRIMARY KEY (id) WITH (fillfactor = 70);
ALTER TABLE app.users ADD CONSTRAINT users_email_key UNIQUE (email) INCLUDE (name);
CREATE UNIQUE INDEX users_email_norm ON app.users (app.norm(email));
CREATE INDEX users_bucket ON app.users (app.bucket(org)) WHERE active;
CREATE INDEX users_name_pattern ON app.users (name text_pattern_ops);
CREATE INDEX users_name_c ON app.users (name COLLATE "POSIX" DESC NULLS LAST);
CREATE INDEX users_tags ON app.users USING gin (tags);
CREATE INDEX users_doc ON app.users USING gin (doc);
CREATE INDEX users_geo ON app.users USING gist (geo);
CREATE INDEX users_created_brin ON app.users USING brin (created) WITH (pages_per_range = 16);
CREATE INDEX users_org_hash ON app.users USING hash (org);
CREATE UNIQUE INDEX users_nick_nnd ON app.users (nick, org) NULLS NOT DISTINCT;
CREATE TABLE app.rooms (id int PRIMARY KEY, during tstzrange, room int, code text);
INSERT INTO app.rooms SELECT g, tstzrange('2024-01-01'::timestamptz + g * interval '1 hour',
       '2024-01-01'::timestamptz + g * interval '1 hour' + interval '30 min'), g % 10, 'r' || g
FROM generate_series(1, 5000) g;
CREATE EXTENSION IF NOT EXISTS btree_gist;
ALTER TABLE app.rooms ADD CONSTRAINT rooms_no_overlap EXCLUDE USING gist (room WITH =, during WITH &&);
ALTER TABLE app.rooms ADD CONSTRAINT rooms_code_key UNIQUE (code) DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE app.rooms ADD CONSTRAINT rooms_code_imm UNIQUE (code, room);
CREATE TABLE app.bookings (id serial PRIMARY KEY, user_id bigint REFERENCES app.users, room_code text, room int,
    FOREIGN KEY (room_code, room) REFERENCES app.rooms (code, room));
INSERT INTO app.bookings (user_id, room_code, room) SELECT g, 'r' || g, g % 10 FROM generate_series(1, 4000) g;
CREATE INDEX bookings_user ON app.bookings (user_id);
ALTER TABLE app.bookings CLUSTER ON bookings_user;
CREATE UNIQUE INDEX bookings_ri ON app.bookings (id, room);
ALTER TABLE app.bookings ALTER COLUMN room SET NOT NULL;
ALTER TABLE app.bookings REPLICA IDENTITY USING INDEX bookings_ri;
COMMENT ON INDEX app.users_tags IS 'tags; gin';
COMMENT ON CONSTRAINT rooms_no_overlap ON app.rooms IS 'no double booking';
ALTER INDEX app.users_email_norm ALTER COLUMN 1 SET STATISTICS 321;
ALTER INDEX app.users_geo SET (fillfactor = 60);
CREATE STATISTICS app.users_st (dependencies) ON org, active FROM app.users;
CREATE MATERIALIZED VIEW app.org_counts AS SELECT org, count(*) AS n FROM app.users GROUP BY org;
CREATE UNIQUE INDEX org_counts_org ON app.org_counts (org);
CREATE INDEX org_counts_n ON app.org_counts (n);
CREATE TABLE app."we ird; ""tab.le" ("a col" int PRIMARY KEY, "b;c" text);
INSERT INTO app."we ird; ""tab.le" SELECT g, 'x' || g FROM generate_series(1, 500) g;
CREATE INDEX "idx; with ""quotes"" and .dots" ON app."we ird; ""tab.le" ("b;c");
CREATE UNIQUE INDEX "Upper Idx" ON app."we ird; ""tab.le" (upper("b;c"));
CREATE TABLE app.logged (id int, v text);
INSERT INTO app.logged SELECT g, 'v' FROM generate_series(1, 3000) g;
CREATE UNIQUE INDEX logged_id ON app.logged (id);
CREATE INDEX logged_v ON app.logged (v) WHERE (v <> ';');
"""


@pytest.mark.parametrize("jobs", [2, 3])
def test_real_world_schema_with_a_tablespace(pg, pg_sql, src, tmp_path, jobs):
    ts_dir = Path(pg.base).parent / f"ts_trial_{jobs}"
    ts_dir.mkdir(exist_ok=True)
    subprocess.run(["chown", "postgres:postgres", str(ts_dir)], check=True)
    pg_sql("DROP TABLESPACE IF EXISTS trial_ts", "postgres")
    pg_sql(f"CREATE TABLESPACE trial_ts LOCATION '{ts_dir}'", "postgres")
    try:
        pg_sql(REALWORLD + """
            CREATE INDEX users_active_ts ON app.users (active, org) TABLESPACE trial_ts;
            ALTER TABLE app.logged ADD CONSTRAINT logged_pk PRIMARY KEY (id) USING INDEX TABLESPACE trial_ts;
            CREATE INDEX logged_v_ts ON app.logged (upper(v)) WITH (fillfactor = 50) TABLESPACE trial_ts;
            """, src)
        archive = _dump(pg, src, tmp_path / "rw.sql.gz")
        assert b"SET default_tablespace = trial_ts;" in gzip.decompress(archive.read_bytes())
        rc, err, stats, diffs, _r = _both(pg, pg_sql, tmp_path, archive, jobs=jobs)
        assert rc == 0, err
        assert diffs == []
        assert sum(stats["index_builds"]) > 10 and all(n > 0 for n in stats["index_builds"]), stats
        q = ("SELECT string_agg(c.relname || '@' || coalesce(t.spcname, '-'), ',' ORDER BY c.relname) FROM pg_class c "
             "LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE c.relkind = 'i' "
             "AND c.relnamespace = 'app'::regnamespace")
        assert pg_sql(q, SRC + "_par") == pg_sql(q, SRC + "_ref")
        assert "logged_pk@trial_ts" in pg_sql(q, SRC + "_par")
    finally:
        for db in (SRC, SRC + "_ref", SRC + "_par"):
            pg_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', "postgres")
        pg_sql("DROP TABLESPACE IF EXISTS trial_ts", "postgres")


# ------------------------------------------------------------------ 3. partitions and inheritance
PARTS = r"""
CREATE TABLE parted (id int NOT NULL, part int NOT NULL, v text) PARTITION BY LIST (part);
CREATE TABLE parted_a PARTITION OF parted FOR VALUES IN (1);
CREATE TABLE parted_b (id int NOT NULL, part int NOT NULL, v text);
ALTER TABLE parted ATTACH PARTITION parted_b FOR VALUES IN (2);
CREATE TABLE parted_c PARTITION OF parted FOR VALUES IN (3) PARTITION BY RANGE (id);
CREATE TABLE parted_c1 PARTITION OF parted_c FOR VALUES FROM (0) TO (100000);
INSERT INTO parted SELECT g, 1 + g % 3, 'v' || g FROM generate_series(1, 9000) g;
CREATE INDEX parted_b_v_own ON parted_b (v);          -- made before the parent's: adopted
CREATE INDEX parted_v ON parted (v);
CREATE INDEX parted_a_v2 ON parted_a (v);             -- made after: a second index
ALTER TABLE parted ADD CONSTRAINT parted_pkey PRIMARY KEY (id, part);
CREATE UNIQUE INDEX parted_a_id ON parted_a (id);
CREATE TABLE base (id int NOT NULL, v text);
CREATE TABLE kid (extra int) INHERITS (base);
INSERT INTO base SELECT g, 'b' FROM generate_series(1, 3000) g;
INSERT INTO kid SELECT g, 'k', g FROM generate_series(1, 3000) g;
ALTER TABLE base ADD CONSTRAINT base_pkey PRIMARY KEY (id);
ALTER TABLE kid ADD CONSTRAINT kid_pkey PRIMARY KEY (id);
CREATE INDEX base_v ON base (v);
CREATE INDEX kid_v ON kid (v);
CREATE TABLE plain_t (id int PRIMARY KEY, v text);
INSERT INTO plain_t SELECT g, 'v' FROM generate_series(1, 2000) g;
CREATE INDEX plain_t_v ON plain_t (v);
"""


@pytest.mark.parametrize("jobs", [2, 3])
def test_partitions_and_inheritance_by_pg_dump(pg, pg_sql, src, tmp_path, jobs):
    pg_sql(PARTS, src)
    archive = _dump(pg, src, tmp_path / "parts.sql.gz")
    rc, err, stats, diffs, _r = _both(pg, pg_sql, tmp_path, archive, jobs=jobs)
    assert rc == 0, err
    assert diffs == []
    assert stats["index_builds"] == [0] * jobs, stats


def test_inheritance_only_is_equal(pg, pg_sql, src, tmp_path):
    pg_sql(PARTS.split("CREATE TABLE base")[0].split("CREATE TABLE parted ")[0] +
           "CREATE TABLE base" + PARTS.split("CREATE TABLE base")[1], src)
    archive = _dump(pg, src, tmp_path / "inh.sql.gz")
    rc, err, stats, diffs, _r = _both(pg, pg_sql, tmp_path, archive)
    assert rc == 0, err
    assert diffs == []


# a hand-written dump: a partitioned table whose keywords are split by a comment
# (psql reads "PARTITION /**/ BY" as PARTITION BY)
HIDDEN_PARTS = (
    "CREATE TABLE public.p (id int, part int, v text) PARTITION /* list */ BY LIST (part);\n"
    "CREATE TABLE public.p1 PARTITION -- the first\n OF public.p FOR VALUES IN (1);\n"
    "COPY public.p (id, part, v) FROM stdin;\n" + "".join(f"{i}\t1\tv{i}\n" for i in range(3000)) + "\\.\n"
    "CREATE TABLE public.p2 PARTITION/**/OF public.p FOR VALUES IN (2);\n"
    "COPY public.p2 (id, part, v) FROM stdin;\n" + "".join(f"{i}\t2\tw{i}\n" for i in range(300000)) + "\\.\n"
    "ALTER TABLE ONLY public.p2 ADD CONSTRAINT p2_pk PRIMARY KEY (id);\n"
    "CREATE INDEX p_v ON public.p USING btree (v);\n"
    "CREATE INDEX p1_v ON public.p1 USING btree (v);\n"
    "CREATE INDEX p1_id ON public.p1 USING btree (id);\n")


@pytest.mark.parametrize("jobs", [2, 3])
def test_partition_keywords_split_by_a_comment(pg, pg_sql, src, tmp_path, jobs):
    seen = _until_different(pg, pg_sql, tmp_path, _write(tmp_path, "hp.sql.gz", HIDDEN_PARTS), 6, jobs=jobs)
    assert all(rc == 0 and not d for rc, _e, _s, d in seen), seen


# ------------------------------------------------------------------ 4. hand-written order and spelling
HAND = (
    "CREATE TABLE public.t (id int NOT NULL, k text NOT NULL, n int);\n"
    'CREATE TABLE public."odd; ""name"".x" ("a b" int NOT NULL, "c;d" text);\n'
    "CREATE FUNCTION public.f_sql(i int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT i % 7 $$;\n"
    "CREATE FUNCTION public.f_pl(t text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN upper(t); END $$;\n"
    "COPY public.t (id, k, n) FROM stdin;\n" + "".join(f"{i}\tk{i}\t{i % 10}\n" for i in range(20000)) + "\\.\n"
    'COPY public."odd; ""name"".x" ("a b", "c;d") FROM stdin;\n' + "".join(f"{i}\tc{i}\n" for i in range(3000)) +
    "\\.\n"
    "alter table only public.t add constraint t_pkey primary key (id);\n"
    "create index t_k on public.t using btree (k); -- a trailing comment; with a semicolon\n"
    "/* a ; comment */ CREATE INDEX t_fsql ON public.t (public.f_sql(n));\n"
    "CREATE INDEX t_fpl ON public.t (public.f_pl(k)) WHERE n > 2;\n"
    'CREATE UNIQUE INDEX "odd; ""idx""" ON public."odd; ""name"".x" ("c;d");\n'
    'ALTER TABLE ONLY public."odd; ""name"".x" ADD CONSTRAINT "odd pk" PRIMARY KEY ("a b");\n'
    "CREATE UNIQUE INDEX t_k_u ON public.t (k);\n"
    "ALTER TABLE ONLY public.t ADD CONSTRAINT t_k_key UNIQUE USING INDEX t_k_u;\n"   # needs the run's index
    "ALTER TABLE public.t CLUSTER ON t_k;\n"
    "CREATE TABLE public.r (k text REFERENCES public.t (k));\n"
    "CREATE INDEX t_n ON public.t (n);\n"
    "ALTER TABLE ONLY public.t REPLICA IDENTITY USING INDEX t_k_key;\n")


@pytest.mark.parametrize("jobs", [2, 3])
def test_hand_written_index_runs(pg, pg_sql, src, tmp_path, jobs):
    rc, err, stats, diffs, _r = _both(pg, pg_sql, tmp_path, _write(tmp_path, "hand.sql.gz", HAND), jobs=jobs)
    assert rc == 0, err
    assert diffs == [], diffs
    assert sum(stats["index_builds"]) >= 5, stats


# ------------------------------------------------------------------ 5. leader-only session state the index statements resolve through
HIDDEN_STATE = (
    "CREATE SCHEMA a;\nCREATE SCHEMA b;\n"
    "CREATE TABLE a.t (id int NOT NULL, v text);\nCREATE TABLE b.t (id int NOT NULL, v text);\n"
    "CREATE FUNCTION public.use_b() RETURNS text LANGUAGE sql AS "
    "$$ SELECT pg_catalog.set_config('search_path', 'b, public', false) $$;\n"
    "SET search_path = a, public;\n"
    "COPY a.t (id, v) FROM stdin;\n" + "".join(f"{i}\tv{i}\n" for i in range(2000)) + "\\.\n"
    "COPY b.t (id, v) FROM stdin;\n" + "".join(f"{i}\tv{i}\n" for i in range(2000)) + "\\.\n"
    "SELECT public.use_b();\n"
    "CREATE INDEX t_id ON t (id);\nCREATE INDEX t_v ON t (v);\nCREATE INDEX t_iv ON t (id, v);\n"
    "CREATE INDEX t_vi ON t (v, id);\n")


def test_search_path_set_by_a_function_of_the_dump(pg, pg_sql, src, tmp_path):
    rc, err, stats, diffs, _r = _both(pg, pg_sql, tmp_path, _write(tmp_path, "hs.sql.gz", HIDDEN_STATE))
    assert rc == 0, err
    assert diffs == [], (stats, diffs)


PG_TEMP = (
    "CREATE TABLE public.t (id int NOT NULL, v text);\n"
    "SET search_path = public;\n"
    "COPY public.t (id, v) FROM stdin;\n" + "".join(f"{i}\tv{i}\n" for i in range(2000)) + "\\.\n"
    "CREATE TABLE pg_temp.t (id int, v text);\n"     # a temporary table without TEMP: shadows public.t
    "CREATE INDEX t_id ON t (id);\nCREATE INDEX t_v ON t (v);\nCREATE INDEX t_iv ON t (id, v);\n"
    "CREATE INDEX t_vi ON t (v, id);\n")


def test_a_temporary_table_made_without_the_temp_keyword(pg, pg_sql, src, tmp_path):
    rc, err, stats, diffs, _r = _both(pg, pg_sql, tmp_path, _write(tmp_path, "tmp.sql.gz", PG_TEMP))
    assert rc == 0, err
    assert diffs == [], (stats, diffs)


# ------------------------------------------------------------------ 6. failures
def _dup_dump(tmp_path: Path, pos: int, big: int = 200000) -> Path:
    idx = [f"CREATE INDEX t_i{i} ON public.t USING btree (k, id) WHERE id % 5 = {i};\n" for i in range(5)]
    idx.insert(pos, "CREATE UNIQUE INDEX d_u ON public.d USING btree (k);\n")
    body = ("CREATE TABLE public.t (id int NOT NULL, k text);\nCREATE TABLE public.d (k text);\n"
            "COPY public.t (id, k) FROM stdin;\n" + "".join(f"{i}\tk{i % 977}\n" for i in range(big)) + "\\.\n"
            "COPY public.d (k) FROM stdin;\n" + "".join(f"x{i}\n" for i in range(500)) + "x7\n\\.\n"
            "ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n" + "".join(idx) +
            "CREATE TABLE public.after_run (id int);\n")
    return _write(tmp_path, f"dup{pos}.sql.gz", body)


@pytest.mark.parametrize("jobs,pos", [(2, 0), (2, 2), (2, 5), (3, 0), (3, 3)])
def test_a_unique_index_over_duplicates_in_a_run_fails_loudly(pg, pg_sql, src, tmp_path, jobs, pos):
    archive = _dup_dump(tmp_path, pos)
    ref = _fresh(pg_sql, SRC + "_ref")
    r = _psql_load(pg, archive, ref)
    assert r.returncode == 3 and b"could not create unique index" in r.stderr
    par = _fresh(pg_sql, SRC + "_par")
    before = _children()
    stats: dict = {}
    rc, _, err, rows = _par(pg, par, tmp_path, archive, jobs, stats, timeout=60)  # fails the test if it hangs
    assert rc != 0 and rows is None
    assert 'could not create unique index "d_u"' in err and 'Key (k)=(x7) is duplicated' in err, err
    assert _children() <= before
    # nothing after the run ran
    assert pg_sql("SELECT to_regclass('public.after_run') IS NULL", par).strip() == "t"


@pytest.mark.parametrize("jobs", ["2", "3"])
def test_db_restore_with_a_failing_shared_index_keeps_the_old_database(local_inv, cli_env, pg, pg_sql, dbname,
                                                                         jobs):
    import hashlib
    import json
    from tests.conftest import cli
    inv, _bdir = local_inv
    pg_sql("CREATE TABLE trial_x (id int PRIMARY KEY, k text);"
           "INSERT INTO trial_x SELECT g, 'k' || (g % 100) FROM generate_series(1, 5000) g;"
           "CREATE INDEX trial_x_k ON trial_x (k);", dbname)
    r = cli("db.backup", "-i", str(inv), "--format", "plain", "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    archive = Path(json.loads(r.stdout)["path"])
    r = cli("db.restore", str(archive), "-i", str(inv), "--yes", "--jobs", jobs, env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    want = db_fingerprint(pg_sql, dbname)
    sql = gzip.decompress(archive.read_bytes())
    stmt = b"CREATE INDEX trial_x_k ON public.trial_x"
    assert stmt in sql
    i = sql.index(stmt)
    # it sits inside a run of index statements
    assert sql.rfind(b"CREATE INDEX", 0, i) > sql.rfind(b"FOREIGN KEY", 0, i), "not in a run"
    assert index_build_table(stmt.replace(b"CREATE", b"CREATE UNIQUE") + b" USING btree (k);") is not None
    bad = archive.with_name(archive.name.replace(".sql.gz", "_9.sql.gz"))
    bad.write_bytes(gzip.compress(sql.replace(stmt, b"CREATE UNIQUE INDEX trial_x_k ON public.trial_x"), 1))
    m = json.loads(Path(str(archive) + ".manifest.json").read_text())
    m.update(archive=bad.name, sha256=hashlib.sha256(bad.read_bytes()).hexdigest(), bytes=bad.stat().st_size)
    Path(str(bad) + ".manifest.json").write_text(json.dumps(m))
    before = _children()
    r = cli("db.restore", str(bad), "-i", str(inv), "--yes", "--jobs", jobs, env=cli_env, timeout=180)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'could not create unique index "trial_x_k"' in r.stderr, r.stderr
    assert db_fingerprint(pg_sql, dbname) == want
    assert pg_sql("SELECT to_regclass('public.trial_x_k') IS NOT NULL", dbname).strip() == "t"
    leftovers = [d for d in pg_sql("SELECT datname FROM pg_database", "postgres").split() if "_restoring_" in d]
    assert leftovers == []
    assert _children() <= before


# ------------------------------------------------------------------ 7. more
def test_session_authorization_between_shared_index_statements(pg, pg_sql, src, tmp_path):
    for r in ("trial_alice", "trial_bob"):  # superusers: the restore runs as them
        pg_sql(f"DO $$ BEGIN CREATE ROLE {r} SUPERUSER; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
               "postgres")
    pg_sql("SET ROLE trial_alice; CREATE TABLE ta (id int PRIMARY KEY, v text);"
           "INSERT INTO ta SELECT g, 'v' || g FROM generate_series(1, 20000) g; CREATE INDEX ta_v ON ta (v);"
           "RESET ROLE; SET ROLE trial_bob; CREATE TABLE tb (id int PRIMARY KEY, v text);"
           "INSERT INTO tb SELECT g, 'v' || g FROM generate_series(1, 20000) g; CREATE INDEX tb_v ON tb (v);"
           "RESET ROLE;", src)
    sql = subprocess.run([f"{BIN}/pg_dump", "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "bigskies",
                          "--use-set-session-authorization", "-d", src], check=True, capture_output=True).stdout
    assert sql.count(b"SET SESSION AUTHORIZATION") > 4
    archive = tmp_path / "ssa.sql.gz"
    archive.write_bytes(gzip.compress(sql, 1))
    rc, err, stats, diffs, _r = _both(pg, pg_sql, tmp_path, archive)
    assert rc == 0, err
    assert diffs == [], diffs
    assert all(n > 0 for n in stats["index_builds"]), stats
    for db in (SRC, SRC + "_ref", SRC + "_par"):
        pg_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', "postgres")
    pg_sql("DROP ROLE trial_alice; DROP ROLE trial_bob", "postgres")


MULTI = (
    "CREATE TABLE public.t (id int NOT NULL, k text);\n"
    "COPY public.t (id, k) FROM stdin;\n" + "".join(f"{i}\tk{i}\n" for i in range(50000)) + "\\.\n"
    "ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id), ADD COLUMN z int DEFAULT 1;\n"
    "CREATE INDEX t_z ON public.t USING btree (z);\n")


def test_alter_table_with_a_second_subcommand_in_a_run(pg, pg_sql, src, tmp_path):
    assert index_build_table(MULTI.splitlines()[-2].encode()) is None  # two subcommands: file order
    rc, err, stats, diffs, _r = _both(pg, pg_sql, tmp_path, _write(tmp_path, "multi.sql.gz", MULTI))
    assert rc == 0, err
    assert diffs == [], diffs




# blocks an index build on advisory lock k (the test holds it): a build that waits until released
HOLD_FN = ("CREATE SCHEMA blk; CREATE FUNCTION blk.hold(v integer, k integer) RETURNS integer LANGUAGE plpgsql "
           "IMMUTABLE AS $$BEGIN PERFORM pg_catalog.pg_advisory_xact_lock_shared(k); RETURN v; END$$;")


class HeldLoad:
    """The parallel load of a hand-written dump whose builds calling ``blk.hold(x, k)``
    wait while the test holds advisory lock k on the target database (a session of its
    own): the test sees and steers which session builds what, and when. The same dump
    loaded by psql alone is the oracle (:meth:`finish`)."""

    def __init__(self, pg, pg_sql, tmp_path, body: str, jobs: int, locks: tuple[int, ...]):
        import psycopg
        self.pg, self.pg_sql, self.tmp_path, self.jobs = pg, pg_sql, tmp_path, jobs
        self.archive = _write(tmp_path, "held.sql.gz", body)
        self.ref, self.par = _fresh(pg_sql, SRC + "_ref"), _fresh(pg_sql, SRC + "_par")
        for db in (self.ref, self.par):
            pg_sql(HOLD_FN, db)
        r = _psql_load(pg, self.archive, self.ref)
        assert r.returncode == 0, r.stderr.decode()
        self.conn = psycopg.connect(host=str(pg.socket_dir), port=pg.port, user="bigskies", dbname=self.par,
                                    autocommit=True)
        for k in locks:
            self.conn.execute("SELECT pg_advisory_lock(%s)", (k,))
        self.stats: dict = {}
        self.out: dict = {}
        self.before = _children()
        self.thread = threading.Thread(target=self._load, daemon=True)
        self.thread.start()

    def _load(self) -> None:
        try:
            self.out["res"] = load_or_fail(self.pg, self.par, self.tmp_path, self.archive, jobs=self.jobs,
                                           segment_bytes=1 << 16, stats=self.stats)
        except BaseException as e:  # noqa: BLE001 - reported by until() and finish()
            self.out["err"] = e

    def ask(self, q: str):
        return self.conn.execute(q).fetchone()[0]

    def exists(self, name: str) -> bool:
        return self.ask(f"SELECT to_regclass('public.{name}') IS NOT NULL")

    def until(self, q: str, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.ask(q):
            if not self.thread.is_alive():
                raise AssertionError(f"{what}: the load ended first: {self.out}")
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    def waiting(self, n: int) -> None:
        """Until ``n`` loading sessions wait for one of the test's advisory locks."""
        self.until("SELECT count(*) = %d FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                   "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())" % n,
                   f"{n} session(s) wait in a held build")

    def release(self, k: int) -> None:
        self.conn.execute("SELECT pg_advisory_unlock(%s)", (k,))

    def finish(self) -> list:
        """Release every lock, wait for the load; returns its index builds per session
        after checking it ended well, left no psql running and equals psql's load."""
        self.conn.execute("SELECT pg_advisory_unlock_all()")
        self.thread.join(90)
        assert not self.thread.is_alive(), "the load hangs"
        assert "err" not in self.out, self.out["err"]
        rc, _, err, _rows_loaded = self.out["res"]
        assert rc == 0, err
        assert _children() <= self.before, "a psql was left running"
        assert copy_differences(self.pg, self.pg_sql, self.par, self.ref) == []
        # each table's indexes by OID: in psql's order (across tables the order may differ)
        order = ("SELECT string_agg(i.indrelid::regclass || ':' || i.indexrelid::regclass, ',' "
                 "ORDER BY i.indrelid::regclass::text, i.indexrelid) FROM pg_index i JOIN pg_class c "
                 "ON c.oid = i.indrelid WHERE c.relnamespace = 'public'::regnamespace")
        assert self.pg_sql(order, self.par) == self.pg_sql(order, self.ref)
        return self.stats["index_builds"]

    def close(self) -> None:
        self.conn.close()  # its locks go with it: a held build completes
        self.thread.join(90)
        for db in (self.ref, self.par):
            self.pg_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', "postgres")


def _tables(*names: str) -> str:
    one = lambda i: str(i)  # noqa: E731
    return ("".join(f"CREATE TABLE public.{t} (id integer NOT NULL);\n" for t in names) + "\n"
            + "".join(_rows(f"public.{t}", "(id)", 50, one) for t in names) + "\n")


def test_a_tables_next_build_does_not_wait_behind_another_tables_build(pg, pg_sql, tmp_path):
    """A table's later index build is taken by whichever session is free once the build
    before it has completed: it does not wait behind a long build of another table in the
    session that built the first one (issue 21: the benchmark's observations indexes
    waited 0.19 s behind the 5M-row primary key that way while the other session idled).

    Session A waits in r's build; session B builds q's primary key, then waits in p's
    build. Once r's is let go, A must build q's second index while B still waits: with a
    session owning all of a table's builds, it waited for B. The result equals psql's."""
    load = HeldLoad(pg, pg_sql, tmp_path, _tables("q", "r", "p")
                    + "CREATE INDEX r_held ON public.r USING btree (blk.hold(id, 1));\n\n"
                    "ALTER TABLE ONLY public.q\n    ADD CONSTRAINT q_pkey PRIMARY KEY (id);\n\n"
                    "CREATE INDEX p_held ON public.p USING btree (blk.hold(id, 2));\n\n"
                    "CREATE INDEX q_id_desc ON public.q USING btree (id DESC);\n", jobs=2, locks=(1, 2))
    try:
        load.waiting(2)
        assert load.exists("q_pkey"), "q's primary key was built before p's"
        load.release(1)  # r's build completes; p's still waits
        load.until("SELECT to_regclass('public.q_id_desc') IS NOT NULL",
                   "q's second index waited behind p's build in the session that built q's first", timeout=20)
        assert not load.exists("p_held")
        assert load.finish() == [2, 2]  # one session: r_held, q_id_desc; the other: q_pkey, p_held
    finally:
        load.close()


@pytest.mark.parametrize("jobs", [2, 3])
def test_a_tables_next_build_waits_for_the_one_before(pg, pg_sql, tmp_path, jobs):
    """The other half of the rule: a table's next build never starts before the one before
    it has completed (its OID, and so the index a foreign key picks, stay psql's). While
    q's first build waits, the other sessions pass q's second (building s's primary key
    after it proves they did) and leave it to the session holding q's first, which builds
    it once let go; the load neither hangs nor builds anything twice."""
    load = HeldLoad(pg, pg_sql, tmp_path, _tables("q", "s")
                    + "CREATE UNIQUE INDEX q_held ON public.q USING btree (blk.hold(id, 1));\n\n"
                    "CREATE UNIQUE INDEX q_id ON public.q USING btree (id);\n\n"
                    "ALTER TABLE ONLY public.s\n    ADD CONSTRAINT s_pkey PRIMARY KEY (id);\n", jobs=jobs, locks=(1,))
    try:
        load.waiting(1)
        load.until("SELECT to_regclass('public.s_pkey') IS NOT NULL", "another session built s's primary key")
        assert not load.exists("q_id"), "q's second index was built while its first was still being built"
        assert sorted(load.finish()) == [0] * (jobs - 2) + [1, 2]  # q_held and q_id in one session, s_pkey in another
    finally:
        load.close()
