"""Index builds shared between the sessions of the parallel plain loader (bigskies_ops.jobs.parload).

A run of statements that each build one index of one table (pg_dump's PRIMARY KEY /
UNIQUE / EXCLUDE constraints and CREATE INDEX) is shared statement by statement, each
table's builds one after another in file order, as ``pg_restore --jobs`` shares index builds. The oracle is psql alone reading the same
dump: the whole catalog and schema (tests/fidelity/compare.py), every row, sequence and
large object (tests/pgcheck.py) and the index each constraint uses must be equal,
including what depends on the indexes (foreign keys, CLUSTER ON, REPLICA IDENTITY,
comments, per-column statistics targets). The loads and the comparison are those of
tests/integration/restore/test_parallel_index_edge_cases.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from bigskies_ops.jobs.parload import index_build_table
from tests.fidelity import compare
from tests.integration.restore.test_parallel_index_edge_cases import SRC, _both, _dump, src  # noqa: F401 (fixture)
from tests.integration.restore.test_parallel_load_edge_cases import _compare, _rows, _write

# many indexes of every kind pg_dump writes, and the statements that use them; the first
# table is large enough that its primary key keeps one session busy while the other
# builds the rest
INDEXED = r"""
CREATE TABLE big (id int, k text, payload text);
INSERT INTO big SELECT g, 'k' || (g % 5000), repeat('p', 40) FROM generate_series(1, 300000) g;
ALTER TABLE big ADD CONSTRAINT aaa_big_pkey PRIMARY KEY (id);
CREATE INDEX big_k ON big (k);
CREATE INDEX big_lower_k ON big (lower(k)) WHERE id % 2 = 0;
CREATE INDEX big_k_hash ON big USING hash (k);
CREATE TABLE small (id int PRIMARY KEY, code text NOT NULL, big_id int, tags text[], r int4range);
INSERT INTO small SELECT g, 'c' || g, g, ARRAY['t' || (g % 7)], int4range(g * 10, g * 10 + 5)
FROM generate_series(1, 3000) g;
ALTER TABLE small ADD CONSTRAINT small_code_key UNIQUE (code);
ALTER TABLE small ADD CONSTRAINT small_r_excl EXCLUDE USING gist (r WITH &&);
CREATE UNIQUE INDEX small_code_upper ON small (upper(code));
CREATE INDEX small_tags ON small USING gin (tags);
ALTER TABLE small ADD CONSTRAINT small_big_fk FOREIGN KEY (big_id) REFERENCES big (id);
CREATE TABLE other (code text REFERENCES small (code), note text);
INSERT INTO other SELECT 'c' || g, 'n' FROM generate_series(1, 500) g;
CREATE INDEX other_note ON other (note);
ALTER TABLE small CLUSTER ON small_code_key;
ALTER TABLE small REPLICA IDENTITY USING INDEX small_code_key;
ALTER INDEX big_lower_k ALTER COLUMN 1 SET STATISTICS 500;
COMMENT ON INDEX big_k IS 'the k index';
CREATE SEQUENCE tick;
SELECT setval('tick', 77);
"""

PARTITIONED = r"""
CREATE TABLE parted (id int, part int, v text) PARTITION BY LIST (part);
CREATE TABLE parted_a PARTITION OF parted FOR VALUES IN (1);
CREATE TABLE parted_b PARTITION OF parted FOR VALUES IN (2);
INSERT INTO parted SELECT g, 1 + g % 2, 'v' || g FROM generate_series(1, 4000) g;
CREATE INDEX parted_v ON parted (v);
ALTER TABLE parted ADD CONSTRAINT parted_pkey PRIMARY KEY (id, part);
CREATE TABLE plain_t (id int PRIMARY KEY, v text);
INSERT INTO plain_t SELECT g, 'v' FROM generate_series(1, 2000) g;
CREATE INDEX plain_t_v ON plain_t (v);
"""


def _load_both(pg, pg_sql, tmp_path: Path, jobs: int = 2) -> dict:
    """Dump :data:`SRC`, load the dump with psql alone and with the loader; both must give
    the same database. Returns the loader's stats."""
    rc, err, stats, diffs, _r = _both(pg, pg_sql, tmp_path, _dump(pg, SRC, tmp_path / "ix.sql.gz"), jobs=jobs)
    assert rc == 0, err
    assert diffs == [], diffs
    return stats


def test_index_builds_are_shared_and_give_psqls_database(pg, pg_sql, src, tmp_path):
    pg_sql(INDEXED, src)
    stats = _load_both(pg, pg_sql, tmp_path)
    # both sessions built indexes: the shared runs really ran side by side
    assert len(stats["index_builds"]) == 2 and all(n > 0 for n in stats["index_builds"]), stats
    # every index pg_dump wrote as a constraint or CREATE INDEX (10 in all) was built once
    assert sum(stats["index_builds"]) == 10, stats
    schema = compare.schema_dump(str(pg.socket_dir), pg.port, SRC + "_par")
    for needle in ("CLUSTER ON small_code_key", "REPLICA IDENTITY USING INDEX small_code_key",
                   "SET STATISTICS 500", "COMMENT ON INDEX public.big_k", "FOREIGN KEY (big_id)"):
        assert needle in schema, needle


def test_a_dump_with_partitions_builds_its_indexes_in_file_order(pg, pg_sql, src, tmp_path):
    pg_sql(PARTITIONED, src)
    stats = _load_both(pg, pg_sql, tmp_path)
    assert stats["index_builds"] == [0, 0], stats  # the leader ran them as SQL, in file order


# hand-written: an event trigger created before the indexes logs every build in the order
# the server ran them; psql alone runs them in file order, and so must the loader
EVENT_LOGGED = r"""
CREATE TABLE public.build_log (n serial, tag text, what text);
CREATE FUNCTION public.log_build() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.build_log (tag, what)
  SELECT command_tag, object_identity FROM pg_catalog.pg_event_trigger_ddl_commands();
END $$;
CREATE EVENT TRIGGER log_builds ON ddl_command_end WHEN TAG IN ('CREATE INDEX', 'ALTER TABLE')
  EXECUTE FUNCTION public.log_build();
CREATE TABLE public.a (id int, v text);
CREATE TABLE public.b (id int, v text);
""" + _rows("public.a", "(id, v)", 20000) + _rows("public.b", "(id, v)", 300) + r"""
ALTER TABLE ONLY public.a ADD CONSTRAINT a_pkey PRIMARY KEY (id);
CREATE INDEX a_v ON public.a USING btree (v);
ALTER TABLE ONLY public.b ADD CONSTRAINT b_pkey PRIMARY KEY (id);
CREATE INDEX b_v ON public.b USING btree (v);
CREATE INDEX b_v2 ON public.b USING btree (v, id);
"""


def test_a_dump_with_an_event_trigger_builds_its_indexes_in_file_order(pg, pg_sql, dbname, tmp_path):
    try:
        rc, err, _rows_loaded, par, ref = _compare(pg, pg_sql, dbname, tmp_path,
                                                   _write(tmp_path, "evt.sql.gz", EVENT_LOGGED))
        assert rc == 0, err
        assert par == ref  # build_log's rows (n, tag, object) in psql's order
        assert int(ref["tables"]["public.build_log"].split()[0]) >= 5
    finally:
        for suffix in ("_ref", "_par"):
            pg_sql(f'DROP DATABASE IF EXISTS "{dbname}{suffix}" WITH (FORCE)', "postgres")


def test_one_session_builds_in_file_order(pg, pg_sql, src, tmp_path):
    pg_sql(INDEXED, src)
    stats = _load_both(pg, pg_sql, tmp_path, jobs=1)
    assert stats["index_builds"] == [0], stats


@pytest.mark.parametrize("sql, shared", [
    (b"ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n", True),
    (b"--\n-- Name: t_k; Type: INDEX\n--\n\nCREATE INDEX t_k ON public.t USING btree (k);\n", True),
    (b"CREATE UNIQUE INDEX t_u ON public.t USING btree (lower(k)) WHERE (id > 0);", True),
    (b"ALTER TABLE ONLY public.t ADD CONSTRAINT t_x EXCLUDE USING gist (r WITH &&);", True),
    (b"CREATE INDEX t_k ON ONLY public.parted USING btree (k);", False),  # a partitioned parent
    (b"CREATE INDEX CONCURRENTLY t_k ON public.t (k);", False),
    (b"ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY USING INDEX t_i;", False),
    (b"ALTER TABLE ONLY public.t ADD CONSTRAINT t_fk FOREIGN KEY (a) REFERENCES public.u(a);", False),
    (b"ALTER TABLE public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);", False),  # no ONLY: may recurse
    (b"CREATE INDEX t_k ON public.t (k); SELECT 1;", False),  # not one statement
    (b"CREATE INDEX t_k ON t USING btree (k);", False),  # not schema-qualified: search_path decides
    (b"CREATE INDEX t_k ON pg_temp.t USING btree (k);", False),  # a temporary table: one session's
    (b"ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id), ADD COLUMN z int;", False),
    (b"CREATE INDEX t_k ON public.t USING btree (k) WHERE (k <> ';');", False),  # a ; inside: left alone
    (b"ALTER TABLE public.t CLUSTER ON t_k;", False),
])
def test_which_statements_are_shared(sql, shared):
    assert (index_build_table(sql) is not None) is shared
