"""Pure unit tests (table-driven): argv builders, names, headers, filters, inventory rules.

Each sits next to a real integration test elsewhere; none replaces one.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from bigskies_ops.archives import catalog
from bigskies_ops import inventory
from bigskies_ops.pg import tools as pgtools
from bigskies_ops.errors import InventoryError
from bigskies_ops.archives import gz
from bigskies_ops.errors import ArchiveError
from bigskies_ops.archives.plainsql import CopyTags, OwnerAclFilter, RolePolicy
from bigskies_ops.jobs.dbnames import pre_restore_name, side_db_name
from bigskies_ops.archives.integrity import gunzip_chunks

from bigskies_ops.archives.plainsql import split_qualified
from bigskies_ops.pg.access import pgpass_escape
from bigskies_ops.hosts.runners import redact_argv

#: every role missing: the statements naming one are skipped (db.restore --skip-missing-roles)
SKIP_ALL = RolePolicy(frozenset(), skip_missing=True)


def test_pg_dump_args_plain_and_custom():
    assert pgtools.pg_dump_args("bigskies", fmt="plain", snapshot="0003-1") == [
        "--format", "p", "--snapshot", "0003-1", "--dbname", "bigskies"]
    assert pgtools.pg_dump_args("My DB", fmt="custom", compress_level=1, exclude_table_data=("audit*",),
                                schema_only=True) == [
        "--format", "c", "--compress", "1", "--exclude-table-data", "audit*", "--schema-only", "--dbname", "My DB"]


def test_pg_restore_args_serial_is_one_transaction_parallel_is_not():
    assert pgtools.pg_restore_args("x", jobs=1) == ["--dbname", "x", "--exit-on-error", "--single-transaction",
                                                    "--no-owner", "--no-acl"]
    assert pgtools.pg_restore_args("x", jobs=2, no_owner=False, from_file="/b/a.dump") == [
        "--dbname", "x", "--exit-on-error", "--jobs", "2", "/b/a.dump"]


def test_conn_args_never_prompt_and_carry_no_password():
    assert pgtools.conn_args(host="127.0.0.1", port=5432, user="bigskies") == [
        "-h", "127.0.0.1", "-p", "5432", "-U", "bigskies", "-w"]


@pytest.mark.parametrize("text,expected", [
    ("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", (15, 18)),
    ("psql (PostgreSQL) 16.4", (16, 4)),
    ("pg_restore (PostgreSQL) 17beta1", (17, 0)),
])
def test_parse_tool_version(text, expected):
    v = pgtools.parse_tool_version(text)
    assert (v.major, v.minor) == expected


@pytest.mark.parametrize("version,ok", [((15, 13), False), ((15, 14), True), ((16, 9), False), ((16, 10), True),
                                        ((14, 19), True), ((12, 22), False), ((18, 0), True)])
def test_psql_restrict_support_by_minor_release(version, ok):
    assert pgtools.PgVersion(*version).understands_restrict() is ok


def test_plain_tail_complete_needs_trailer_and_matching_unrestrict():
    body = b"...\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict AbC123\n\n"
    assert pgtools.plain_tail_complete(body, "AbC123")
    assert not pgtools.plain_tail_complete(body, "Other9")
    assert not pgtools.plain_tail_complete(body[:-20], "AbC123")
    assert pgtools.plain_tail_complete(b"--\n-- PostgreSQL database dump complete\n--\n\n", None)
    assert not pgtools.plain_tail_complete(b"COPY x FROM stdin;\n1\n", None)


def test_custom_header_bump_is_detected():
    # a minimal header as pg_dump 15 writes it: magic, 1.14.0, intsize 4, offsize 8, format 1 (custom)
    def i(n):
        return bytes([0]) + n.to_bytes(4, "little")

    def s(t):
        return i(len(t)) + t.encode()
    head = b"PGDMP" + bytes([1, 14, 0, 4, 8, 1]) + i(6) + b"".join(i(x) for x in (1, 2, 3, 4, 5, 126, 0)) \
        + s("bigskies") + s("15.18") + s("15.18")
    h = pgtools.parse_custom_header(head)
    assert (h.archive_version, h.database, h.pg_dump_version, h.compression) == ((1, 14, 0), "bigskies", "15.18", 6)
    assert pgtools.parse_custom_header(pgtools.bump_custom_header_minor(head)).archive_version_str == "1.15"
    with pytest.raises(ValueError):
        pgtools.parse_custom_header(b"not a dump")


@pytest.mark.parametrize("name,encoded", [
    ("bigskies", "bigskies"), ("BigSkies", "%42ig%53kies"), ("big skies", "big%20skies"),
    ("big-skies", "big-skies"), ("bïg", "b%C3%AFg"), ("a.b/c", "a%2Eb%2Fc"),
])
def test_database_names_are_encoded_reversibly_in_archive_names(name, encoded):
    assert catalog.encode_dbname(name) == encoded
    assert catalog.decode_dbname(encoded) == name
    when = datetime(2026, 11, 29, 8, 52, 0, tzinfo=timezone.utc)
    arch = catalog.archive_name(name, when, "plain", n=2)
    assert arch == f"{encoded}_backup_20261129_085200_2.sql.gz"
    p = catalog.parse_archive_name(arch)
    assert (p.database, p.n, p.ext) == (name, 2, "sql.gz")


def test_guide_era_names_parse_as_legacy_candidates():
    p = catalog.parse_archive_name("bigskies_backup_20260116_224500.sql.gz")
    assert p.database == "bigskies" and p.stamp.hour == 22
    assert catalog.parse_archive_name("bigskies_backup_20260116_224500.sql.gz.partial") is None
    assert catalog.parse_archive_name("notes.txt") is None


def test_side_and_pre_restore_names_fit_63_bytes_and_stay_distinct():
    when = datetime(2026, 11, 29, 8, 52, 0, tzinfo=timezone.utc)
    long_a = "a" * 60
    long_b = "a" * 59 + "b"
    names = {pre_restore_name(long_a, when), pre_restore_name(long_b, when), side_db_name(long_a, when)}
    assert len(names) == 3
    assert all(len(n.encode()) <= 63 for n in names)
    assert pre_restore_name("bigskies", when) == "bigskies_pre_20261129085200"
    uni = pre_restore_name("ü" * 40, when)  # 80 bytes of name: cut on a character boundary
    assert len(uni.encode()) <= 63 and uni.encode().decode() == uni


def test_owner_acl_filter_keeps_copy_data_and_function_bodies():
    dump = (b"CREATE TABLE public.t (x text);\n"
            b"ALTER TABLE public.t OWNER TO someone;\n"
            b"CREATE FUNCTION public.f() RETURNS void AS $$\n"
            b"GRANT SELECT ON t TO x;\n"
            b"$$ LANGUAGE sql;\n"
            b"COPY public.t (x) FROM stdin;\n"
            b"GRANT ALL ON t TO y;\n"
            b"ALTER TABLE public.t OWNER TO z;\n"
            b"\\.\n"
            b"GRANT SELECT ON TABLE public.t TO reporting;\n"
            b"REVOKE ALL ON SCHEMA public FROM PUBLIC;\n")
    f = OwnerAclFilter(SKIP_ALL)
    out = b"".join(f.feed(dump[i:i + 7]) for i in range(0, len(dump), 7)) + f.flush()
    # whole statements are dropped; the newline before a dropped one stays (a blank line);
    # a REVOKE from PUBLIC names no role and is never dropped (no privilege is widened)
    assert _lines(out) == _lines(b"CREATE TABLE public.t (x text);\n"
                   b"CREATE FUNCTION public.f() RETURNS void AS $$\n"
                   b"GRANT SELECT ON t TO x;\n"
                   b"$$ LANGUAGE sql;\n"
                   b"COPY public.t (x) FROM stdin;\n"
                   b"GRANT ALL ON t TO y;\n"
                   b"ALTER TABLE public.t OWNER TO z;\n"
                   b"\\.\n"
                   b"REVOKE ALL ON SCHEMA public FROM PUBLIC;\n")
    assert f.skipped == {"someone": 1, "reporting": 1}
    assert f.roles == {"someone", "reporting"}


def _lines(b: bytes) -> list[bytes]:
    return [line for line in b.split(b"\n") if line]


COPY_DUMP = (b"SET x = 1;\nCOPY public.t (x) FROM stdin;\na\nb\n\\.\nCREATE FUNCTION f() AS $$\n"
             b"COPY public.z (x) FROM stdin;\n$$;\n"
             b'COPY "Odd"."we""ird" (x) FROM stdin;\n\\.\nGRANT ALL ON t TO y;\n'
             b"COPY public.t (x) FROM stdin;\nc\n\\.\n")


@pytest.mark.parametrize("step", range(1, 40))
def test_owner_acl_filter_lists_copy_tables_whatever_the_chunking(step):
    # a chunk that starts with the "\." terminator once kept the filter in COPY mode for the rest
    f = OwnerAclFilter(SKIP_ALL)
    out = b"".join(f.feed(COPY_DUMP[i:i + step]) for i in range(0, len(COPY_DUMP), step)) + f.flush()
    assert _lines(out) == _lines(COPY_DUMP.replace(b"GRANT ALL ON t TO y;\n", b""))
    assert f.copy_tables == [("public", "t"), ("Odd", 'we"ird'), ("public", "t")]
    assert not f.in_copy and f.skipped == {"y": 1}
    keep = OwnerAclFilter()
    assert keep.feed(COPY_DUMP) + keep.flush() == COPY_DUMP and len(keep.copy_tables) == 3


# Found by a break-it trial: each once put the filter out of step, so COPY data was read
# as SQL and data rows that look like GRANT/REVOKE/OWNER statements were silently dropped.
TRICKY = [
    (b'CREATE TABLE public."audit\nlog" (v text);\n'
     b'COPY public."audit\nlog" (v) FROM stdin;\n'
     b"GRANT ALL ON public.accounts TO alice;\nREVOKE ALL ON public.accounts FROM bob;\n"
     b"ALTER TABLE public.accounts OWNER TO carol;\n\\.\n"
     b"GRANT SELECT ON public.x TO r;\n", [("public", "audit\nlog")], 3),
    (b"CREATE TABLE public.b (v text);\nCOMMENT ON TABLE public.b IS 'prices in $$';\n"
     b"COPY public.b (v) FROM stdin;\nclosing $$ here\nGRANT SELECT ON public.b TO PUBLIC;\n\\.\n"
     b"ALTER TABLE public.b OWNER TO z;\n", [("public", "b")], 2),
    (b"COMMENT ON TABLE public.c IS E'it\\'s -- not a comment; $$';\n"
     b'CREATE TABLE "we\'ird$$" (v text);\n/* a /* nested */ comment; $$ */\n'
     b"-- GRANT ALL ON x TO y; in a comment\n\\restrict abc\n"
     b"COPY public.c (v) FROM stdin;\nREVOKE ALL ON t FROM u;\n\\.\n"
     b"CREATE FUNCTION f() RETURNS int AS $f$ SELECT 1; $f$ LANGUAGE sql;\n"
     b"ALTER FUNCTION public.f() OWNER TO \"some one\";\n", [("public", "c")], 1),
]


@pytest.mark.parametrize("case", range(len(TRICKY)))
@pytest.mark.parametrize("step", [1, 2, 5, 13, 64, 100000])
def test_owner_acl_filter_never_drops_copy_data(case, step):
    dump, tables, rows = TRICKY[case]
    f = OwnerAclFilter(SKIP_ALL)
    out = b"".join(f.feed(dump[i:i + step]) for i in range(0, len(dump), step)) + f.flush()
    assert f.copy_tables == tables
    copy_at = out.index(b"FROM stdin;\n") + len(b"FROM stdin;\n")
    block = out[copy_at:out.index(b"\n\\.\n", copy_at) + 1]
    assert block == dump[dump.index(b"FROM stdin;\n") + 12:dump.index(b"\n\\.\n") + 1]
    assert block.count(b"\n") == rows
    assert sum(f.skipped.values()) == 1


def test_copy_tags_pair_with_copy_statements():
    psql_out = (b"SET\nCOPY 2\n set_config \n------------\n \n(1 row)\n\nCREATE FUNCTION\nCOPY 0\nCOPY 1\n"
                b" COPY 7\n")  # a result value (leading space) is never a tag
    t = CopyTags()
    for i in range(0, len(psql_out), 3):
        t.feed(psql_out[i:i + 3])
    assert t.rows == [2, 0, 1]
    tables = [("public", "t"), ("Odd", 'we"ird'), ("public", "t")]
    assert t.by_table(tables) == {("public", "t"): 3, ("Odd", 'we"ird'): 0}
    assert t.by_table(tables[:2]) is None  # not one to one: everything is counted instead
    assert t.by_table([("public", "t"), None, ("public", "t")]) is None


def test_gz_round_trip_is_plain_gzip(tmp_path):
    import gzip
    data = b"COPY public.t (x) FROM stdin;\n" + b"row\tvalue\n" * 50000
    for level in (0, 1, 3, 6):
        c = gz.compressobj(level)
        blob = c.compress(data) + c.flush()
        assert gzip.decompress(blob) == data  # what `gunzip -c FILE | psql` reads
        d = gz.decompressobj()
        assert d.decompress(blob) + d.flush() == data and d.eof
    with pytest.raises(gz.ERRORS):
        gz.decompressobj().decompress(b"\x1f\x8b\x08\x00" + b"garbage" * 10)


@pytest.mark.parametrize("q,expected", [
    ("public.users", ("public", "users")),
    ('"My Schema"."We ""ird"', ("My Schema", 'We "ird')),
    ('public."Ünï"', ("public", "Ünï")),
])
def test_split_qualified_names_from_copy_lines(q, expected):
    assert split_qualified(q) == expected


def test_pgpass_escaping_and_argv_redaction():
    assert pgpass_escape("a:b\\c") == "a\\:b\\\\c"
    assert redact_argv(["psql", "postgresql://u:topsecret@h/db", "password=hunter2"]) == [
        "psql", "postgresql://u:****@h/db", "password=****"]


# ---------------------------------------------------------------- inventory rules
def _inv(doc, tmp_path=Path("/tmp/x")):
    return inventory.parse(doc, tmp_path / "inventory.yaml")


def test_precedence_defaults_then_group_vars_then_host():
    inv = _inv({"defaults": {"backup": {"format": "custom", "compress_level": 3}, "protected": False},
                "groups": {"prod": {"hosts": ["a"], "vars": {"backup": {"compress_level": 5}, "protected": True}}},
                "hosts": {"a": {"backup": {"keep_pre_restore": 9}}, "b": {}}})
    a, b = inv.hosts["a"], inv.hosts["b"]
    assert (a.backup.format, a.backup.compress_level, a.backup.keep_pre_restore, a.protected) == ("custom", 5, 9, True)
    assert (b.backup.format, b.backup.compress_level, b.backup.keep_pre_restore, b.protected) == ("custom", 3, 2, False)


@pytest.mark.parametrize("doc,message", [
    ({"hosts": {"dev": {"postgres": {"prot": 1}}}}, "hosts.dev.postgres.prot: unknown key (did you mean 'port'?)"),
    ({"hosts": {"prod": {"connection": "ssh", "project_dir": "/srv", "ssh": {"host": "h", "port": "22x"}}}},
     "hosts.prod.ssh.port: expected an integer"),
    ({"hosts": {"dev": {"postgres": {"password": "hunter2"}}}}, "hosts.dev.postgres.password: literal secrets"),
    ({"hosts": {"dev": {"postgres": {"password_env": "hunter2 !"}}}}, "expected the NAME of an environment variable"),
    ({"hosts": {"dev": {"backup": {"format": "tar"}}}}, "hosts.dev.backup.format: expected one of plain, custom"),
    ({"hosts": {"dev": {}}, "groups": {"g": ["nope"]}}, "groups.g: unknown host 'nope'"),
    ({"hosts": {"dev": {}}, "groups": {"dev": ["dev"]}}, "hosts and groups share one namespace"),
    ({"hosts": {"all": {}}}, "'all' is reserved"),
    ({"hosts": {"p": {"connection": "ssh", "ssh": {"host": "h"}}}}, "hosts.p.project_dir: required"),
    ({"hosts": {"d": {"coordinators": ["bootstrap"]}}}, "hosts.d.coordinators: coordinators are compose services"),
    ({"hostz": {}}, "hostz: unknown top-level key (did you mean 'hosts'?)"),
])
def test_inventory_faults_name_the_path(doc, message):
    with pytest.raises(InventoryError) as e:
        _inv(doc)
    assert message in str(e.value)
    assert e.value.exit_code == 2


def test_host_selection_rules():
    inv = _inv({"groups": {"prod": ["a", "b"]}, "hosts": {"a": {}, "b": {}, "c": {}}})
    assert [h.name for h in inv.resolve("prod")] == ["a", "b"]
    assert [h.name for h in inv.resolve("c,prod")] == ["c", "a", "b"]
    assert [h.name for h in inv.resolve("all")] == ["a", "b", "c"]
    with pytest.raises(InventoryError, match="several hosts .* pass --host"):
        inv.resolve(None)
    with pytest.raises(InventoryError, match="unknown host or group 'prd' \\(did you mean 'prod'\\?\\)"):
        inv.resolve("prd")
    one = _inv({"defaults": {"host": "b"}, "hosts": {"a": {}, "b": {}}})
    assert one.host(None).name == "b"


def test_relative_paths_resolve_against_inventory_folder_or_project_dir(tmp_path):
    inv = _inv({"hosts": {"dev": {"backup": {"dir": "bk"}, "ssh": {"key_filename": "keys/id"}},
                          "prod": {"connection": "ssh", "project_dir": "/srv/bs", "ssh": {"host": "p"},
                                   "backup": {"dir": "bk"}}}}, tmp_path)
    assert inv.hosts["dev"].backup.dir == str(tmp_path / "bk")
    assert inv.hosts["dev"].ssh.key_filename == str(tmp_path / "keys/id")
    assert inv.hosts["prod"].backup.dir == "/srv/bs/bk"


@pytest.mark.parametrize("tail,ok", [(b"", True), (b"\0" * 5000, True), (b"garbage", False),
                                     (b"\0\0\0junk", False), (b"\x1f", False)])
def test_gunzip_reads_like_gnu_gunzip(tail, ok):
    import gzip
    a, b = b"SELECT 1;\n" * 30000, b"SELECT 2;\n" * 10
    blob = gzip.compress(a) + gzip.compress(b) + tail  # two members, then what follows
    if ok:
        for chunk in (CHUNK_SMALL, 1 << 20):
            got = b"".join(o for _d, o in gunzip_chunks(_Chunked(blob, chunk), max_out=4096, path="f"))
            assert got == a + b
    else:
        with pytest.raises(ArchiveError, match="trailing garbage|truncated"):
            list(gunzip_chunks(_Chunked(blob, 7), path="f"))
    with pytest.raises(ArchiveError, match="truncated"):
        list(gunzip_chunks(_Chunked(gzip.compress(a)[:-9], 1000), path="f"))


CHUNK_SMALL = 3


class _Chunked:
    """A file whose read() returns at most ``n`` bytes (member boundaries fall anywhere)."""

    def __init__(self, data: bytes, n: int):
        self.data, self.n, self.pos = data, n, 0

    def read(self, size: int = -1) -> bytes:
        out = self.data[self.pos:self.pos + min(self.n, size if size > 0 else self.n)]
        self.pos += len(out)
        return out


def test_copy_terminator_search_agrees_with_the_plain_pattern_search():
    """OwnerAclFilter._terminator jumps from backslash to backslash (fast: they are rare in
    COPY text) and falls back to the 4-byte pattern; both must find the same line."""
    import random
    from bigskies_ops.archives.plainsql import OwnerAclFilter
    rnd = random.Random(7)
    pieces = [b"plain row\t1", b"a\\\\.b", b"\\\\.", b"\\N", b"x\\\\", b"\\.", b"tab\\there", b"\\\\\\\\.", b""]
    for trial in range(3000):
        lines = [rnd.choice(pieces) + (b"" if rnd.random() < 0.5 else rnd.choice(pieces))
                 for _ in range(rnd.randint(0, 40))]
        buf = b"\n".join(lines) + b"\n"
        pos = rnd.choice([0] + [i + 1 for i, c in enumerate(buf) if c == 0x0A][:5])
        end = rnd.choice([len(buf), max(pos, len(buf) - rnd.randint(0, 6))])
        want = buf.find(b"\n\\.\n", pos, end)
        assert OwnerAclFilter._terminator(buf, pos, end) == want, (trial, buf, pos, end)


def test_restore_sessions_keep_the_servers_maintenance_work_mem():
    """The loading sessions set synchronous_commit=off and nothing else: no
    maintenance_work_mem of ours (it cost 1.4-2.1 s of a 6 s restore where first touches
    of memory are dear, and server memory the DBA did not give); one constant, the same for
    any number of sessions and any server, nothing read from the server's machine."""
    from bigskies_ops.jobs.sideload import RESTORE_PGOPTIONS
    assert RESTORE_PGOPTIONS == "-c synchronous_commit=off"


class _TTY(__import__("io").StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("tty", [False, True])
def test_human_lines_are_printed_as_is(monkeypatch, tty):
    """A file or host name is never read as rich markup or an :emoji: code (a name such as
    ``x:smile:[b]y.sql.gz`` used to come out with an emoji and without ``[b]``)."""
    import io
    import sys
    from bigskies_ops import output
    o, e = (_TTY(), _TTY()) if tty else (io.StringIO(), io.StringIO())
    monkeypatch.setattr(sys, "stdout", o)
    monkeypatch.setattr(sys, "stderr", e)
    output.say("backup x:smile:[b]y.sql.gz written")
    output.note("warning: [red]z:thumbs_up:")
    assert o.getvalue() == "backup x:smile:[b]y.sql.gz written\n"
    assert e.getvalue() == "warning: [red]z:thumbs_up:\n"


def test_flusher_syncs_a_growing_file_and_not_a_stalled_one(tmp_path):
    """pull._Flusher: the data of a file that grows reaches the disk while it grows (a real
    fdatasync on a real file, counted); a file that stops growing (a stalled transfer)
    is not flushed again every period."""
    import os
    import time
    from bigskies_ops.jobs.pull import _Flusher
    path = tmp_path / "growing.partial"
    path.write_bytes(b"")
    fl = _Flusher(str(path), period=0.01)
    synced_sizes = []
    real = fl._sync

    def counted(fd):
        real(fd)
        synced_sizes.append(os.fstat(fd).st_size)
    fl._sync = counted
    fl.start()

    def synced(size):  # waits for the flusher, however busy the machine is (nothing is timed)
        end = time.monotonic() + 30
        while size not in synced_sizes and time.monotonic() < end:
            time.sleep(0.005)
        return size in synced_sizes
    try:
        with open(path, "ab") as f:
            for i in range(1, 6):
                f.write(b"x" * 65536)
                f.flush()
                assert synced(i * 65536), synced_sizes  # each growth reaches the disk while it grows
        grown = len(synced_sizes)
        time.sleep(0.3)  # 30 periods without growth
        stalled = len(synced_sizes) - grown
    finally:
        fl.done.set()
        fl.join(5)
    assert synced_sizes[-1] == 5 * 65536
    assert stalled == 0


@pytest.mark.parametrize("stderr, reason", [
    ('psql: error: connection to server at "127.0.0.1", port 55431 failed: Connection refused\n'
     '\tIs the server running on that host and accepting TCP/IP connections?', "Connection refused"),
    ('pg_dump: error: connection to server on socket "/tmp/s/.s.PGSQL.55431" failed: No such file or directory\n'
     '\tIs the server running locally and accepting connections on that socket?', "No such file or directory"),
    ('psql: error: connection to server at "10.0.0.1", port 55431 failed: timeout expired\n', "timeout expired"),
])
def test_unreachable_postgres_keeps_libpqs_reason(stderr, reason):
    """A new-user trial saw "unreachable" without libpq's reason (refused, no socket, timeout)."""
    from types import SimpleNamespace as NS
    from bigskies_ops.pg.access import classify_pg_error
    host = NS(name="prod", container=None, postgres=NS(host="127.0.0.1", socket_dir=None, port=55431, user="u",
                                                       password_env=None, database="d"))
    assert classify_pg_error(stderr, host) == f"PostgreSQL on prod is unreachable at 127.0.0.1:55431 ({reason})"


def test_a_short_flag_means_one_thing_in_every_task():
    """Short flags come from one table (docs/cli.md "Flags"); every other flag, among them
    --force-protected and --confirm, is typed in full; ``db.psql -c`` is SQL as in psql (a
    new-user trial found -f meaning --format, --file, --from or --failed, -j --json or
    --jobs, and ``db.list -h`` failing instead of printing help)."""
    from bigskies_ops.cli import ns
    table = {"H": "host", "i": "inventory", "y": "yes", "C": "check", "j": "jobs", "F": "format",
             "c": "command", "f": "follow"}
    seen = 0
    for name in ns.task_names:
        for arg in ns[name].get_arguments(ignore_unknown_help=True):
            long, *short = arg.names
            assert short == ([k for k, v in table.items() if v == long.replace("-", "_")] or []), (name, arg.names)
            if arg.attr_name in ("force_protected", "confirm"):
                seen += 1
            assert "h" not in short  # -h is --help everywhere
    assert seen >= 8
    psql_args = {a.name: a.names for a in ns["db.psql"].get_arguments(ignore_unknown_help=True)}
    assert psql_args["command"] == ("command", "c")
    exec_args = {a.name: a.names for a in ns["db.exec"].get_arguments(ignore_unknown_help=True)}
    assert exec_args["sql"] == ("sql",) and exec_args["file"] == ("file",)


def test_pid_alive_says_a_zombie_is_gone():
    """A child that ended but was not reaped yet holds no lock (bigskies_ops.archives.locks)."""
    import os
    import subprocess
    import time
    from bigskies_ops.hosts.runners import pid_alive
    p = subprocess.Popen(["sleep", "0.1"])
    try:
        deadline = time.monotonic() + 10
        while pid_alive(p.pid):
            assert time.monotonic() < deadline, "a zombie still counts as running"
            time.sleep(0.05)
    finally:
        p.wait()
    assert not pid_alive(p.pid) and pid_alive(os.getpid())
