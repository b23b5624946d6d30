"""PostgresAccess.pooled_session on a real PostgreSQL 15: a group of maintenance-database
queries shares one psql, a failing query raises the very error a psql of its own raises,
the group goes on after it, and no psql of ours is left once the group ends (by pid)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from bigskies_ops import inventory
from bigskies_ops.errors import PostgresError
from bigskies_ops.pg.access import PostgresAccess


def _access(pg, tmp_path) -> PostgresAccess:
    inv = inventory.parse({"hosts": {"dev": {"postgres": {
        "socket_dir": str(pg.socket_dir), "port": pg.port, "database": "bigskies_pool_app", "user": "bigskies",
        "bindir": "/usr/lib/postgresql/15/bin"}, "backup": {"dir": str(tmp_path)}}}}, tmp_path / "inventory.yaml")
    return PostgresAccess(inv.host("dev"))


def _our_psqls() -> set[int]:
    """pids of psql processes whose parent is this test process."""
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if comm == "psql" and int(rest[1]) == os.getpid():
            out.add(int(d.name))
    return out


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# two lines: the error's LINE 2 is the statement's own line, pooled or not
BAD = "SELECT *\n  FROM pg_catalog.no_such_relation"


def test_an_error_in_a_pooled_group_is_the_usual_error_and_the_group_goes_on(pg, tmp_path):
    with _access(pg, tmp_path) as access:
        maint = access.sql("postgres")
        with pytest.raises(PostgresError) as alone:
            maint.query(BAD)
        with access.pooled_session() as pool:
            # a warning on stderr first: it must not end up in the next query's error
            assert maint.value("SELECT pg_catalog.pg_cancel_backend(0)") is False
            backend = maint.value("SELECT\n pg_catalog.pg_backend_pid()")
            assert maint.value("SELECT pg_catalog.pg_backend_pid()") == backend  # one server session
            first = pool.pid
            assert pool._warn  # psql 15 marks each query's stderr
            assert _our_psqls() == {first}
            with pytest.raises(PostgresError) as pooled:
                maint.query(BAD)
            assert (str(pooled.value), pooled.value.stderr, pooled.value.returncode, pooled.value.argv) == (
                str(alone.value), alone.value.stderr, alone.value.returncode, alone.value.argv)
            assert 'relation "pg_catalog.no_such_relation" does not exist' in str(pooled.value)
            assert "WARNING" not in pooled.value.stderr  # the earlier query's is not this one's
            assert _gone(first)
            assert maint.value("SELECT 41 + 1") == 42  # the next query works, on a new session
            assert maint.value("SELECT pg_catalog.pg_backend_pid()") != backend
            # timeout= and another database keep a psql of their own
            assert maint.query("SELECT pg_catalog.pg_backend_pid() AS p", timeout=60)[0]["p"] != \
                maint.value("SELECT pg_catalog.pg_backend_pid()")
            assert access.sql("template1").value("SELECT current_database()") == "template1"
            assert pool.spawned == 2
            last = pool.pid
        assert _gone(last) and _our_psqls() == set()


def test_an_exception_or_ctrl_c_leaves_no_psql_behind(pg, tmp_path):
    with _access(pg, tmp_path) as access:
        maint = access.sql("postgres")
        with pytest.raises(RuntimeError):
            with access.pooled_session() as pool:
                maint.value("SELECT 1")
                pid = pool.pid
                raise RuntimeError("boom")
        assert _gone(pid) and _our_psqls() == set()
        with access.pooled_session() as pool:
            maint.value("SELECT 1")
            # Ctrl-C at the terminal reaches psql too: it exits at its next line; the query
            # is answered all the same (on a psql of its own), and the group goes on
            os.kill(pool.pid, signal.SIGINT)
            assert maint.value("SELECT 2") == 2
            assert maint.value("SELECT 3") == 3
            assert len(_our_psqls()) == 1
        assert _our_psqls() == set()


def test_a_named_database_is_pooled_beside_the_maintenance_database_and_released_by_the_block(pg, tmp_path):
    """A restore checks its side database over one psql (issue 21) while the maintenance
    database has its own; the side database's session ends with its block, so the swap
    that follows can rename it (PostgreSQL refuses while another session is on it)."""
    with _access(pg, tmp_path) as access:
        maint = access.sql("postgres")
        side = access.sql("bigskies_pool_side")
        maint.execute("DROP DATABASE IF EXISTS bigskies_pool_side")
        maint.execute("CREATE DATABASE bigskies_pool_side")
        try:
            with access.pooled_session() as mpool:
                m_backend = maint.value("SELECT pg_catalog.pg_backend_pid()")
                with access.pooled_session("bigskies_pool_side") as spool:
                    with access.pooled_session("bigskies_pool_side") as inner:
                        assert inner is None  # re-entrant: the outer block's session serves
                    s_backend = side.value("SELECT pg_catalog.pg_backend_pid()")
                    assert side.value("SELECT current_database()") == "bigskies_pool_side"
                    assert side.value("SELECT pg_catalog.pg_backend_pid()") == s_backend  # one session each
                    assert maint.value("SELECT pg_catalog.pg_backend_pid()") == m_backend
                    assert _our_psqls() == {mpool.pid, spool.pid} and spool.spawned == 1
                    sp = spool.pid
                assert _gone(sp) and _our_psqls() == {mpool.pid}
                # the side database's session is gone: a rename goes through (it waits for a backend still exiting)
                maint.execute("ALTER DATABASE bigskies_pool_side RENAME TO bigskies_pool_side2")
                maint.execute("ALTER DATABASE bigskies_pool_side2 RENAME TO bigskies_pool_side")
                assert side.value("SELECT 1") == 1  # a psql of its own again
            assert _our_psqls() == set()
        finally:
            maint.execute("DROP DATABASE IF EXISTS bigskies_pool_side WITH (FORCE)")
