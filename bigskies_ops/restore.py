"""``db.restore``: replace a database from an archive without ever losing the old one.

1. Before anything is touched the archive is checked: it exists, its manifest (if
   any) says DONE and its sha256 matches; without a manifest it is read end to end
   (gzip stream + completion trailer, or ``pg_restore`` of every data block); the
   local tools must be able to read it (a custom archive from a newer pg_dump, or a
   plain dump with ``\\restrict`` lines for an older psql, is refused naming both
   versions).
2. It is restored into a side database created from template0 with the old
   database's owner, encoding, collation and settings, with stop-on-error.
3. The side database is checked: every table of the manifest is present with its
   recorded row count; schema_migrations is present.
4. The running coordinators are stopped, connected sessions listed (terminated
   only with ``--terminate-sessions``), and the names are swapped in ONE
   transaction: the old database becomes a pre-restore copy (comment records
   what it is), the side database takes its name. Coordinators start again.

Any failure before step 4 drops the side database; the old database was never
touched. ``--undo`` swaps the newest pre-restore copy back.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import socket
import threading
import time
from dataclasses import dataclass, field


from . import gz
from .access import PostgresAccess, Sql, ident, lit, pgsql
from .backup import COPY_RE, split_qualified
from .catalog import PARTIAL_SUFFIX, iso, latest, list_backups, read_manifest, utcnow
from .compose import coordinators_paused
from .errors import ArchiveError, BigskiesError, Interrupted, PostgresError, SafetyError, StorageError, UsageError
from .inventory import Host
from .locks import host_lock
from .pgtools import (PgVersion, parse_custom_header, parse_plain_header, pg_restore_args, plain_tail_complete,
                      psql_args)
from .runners import tail

CHUNK = 1 << 20
MAX_DBNAME = 63  # NAMEDATALEN - 1 bytes (PostgreSQL docs 4.1.1: longer identifiers are truncated)
PRE_RESTORE_TAG = "bigskies-ops:pre-restore"
SIDE_TAG = "bigskies-ops:restoring"  # a side database being restored (left behind only if the process died)
#: Session settings of the tools loading the side database (libpq PGOPTIONS), from the
#: PostgreSQL 15 docs, 14.4 "Populating a Database": a larger maintenance_work_mem makes
#: CREATE INDEX / ADD PRIMARY KEY sort in memory (the default 64MB spills a 5M-row key
#: to disk); synchronous_commit=off spares one WAL flush per pg_restore item. Neither
#: weakens the result: the swap transaction commits synchronously, and WAL is flushed
#: in order, so every earlier commit of the load is durable before the swap is.
#: (backend_flush_after=2MB was tried and dropped: the loading backends' forced
#: writeback made a 1 GB pg_restore -j 2 about 2.5 s slower on the reference machine.)
RESTORE_PGOPTIONS = "-c maintenance_work_mem=256MB -c synchronous_commit=off"
#: maintenance_work_mem of a loading session, bytes: at least the 256MB above; up to 1GB
#: when the database server's machine has the memory (MemAvailable / (4 x sessions)).
#: Measured on the benchmark's 5M-row primary key (ALTER TABLE ADD PRIMARY KEY): 3.2 s
#: with 256MB (the sort spills to disk), 2.25 s with 1GB; the build is on the critical
#: path of a restore (its table's data is the last to finish). Memory is taken as a sort
#: needs it, so a small database uses no more than before.
MWM_MIN, MWM_MAX = 256 << 20, 1 << 30


def mem_available(runner) -> int | None:
    """MemAvailable of the machine ``runner`` acts on (bytes, from /proc/meminfo; Linux
    docs, proc(5)); None where it cannot be read (another OS, a failed remote read)."""
    try:
        for line in runner.read_bytes("/proc/meminfo").decode("ascii", "replace").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except Exception:  # noqa: BLE001 - an estimate only; the 256MB floor applies
        return None
    return None


def restore_pgoptions(access, sessions: int) -> str:
    """PGOPTIONS of ``sessions`` loading sessions on ``access``'s server: ``RESTORE_PGOPTIONS``
    with maintenance_work_mem sized by :func:`mem_available` (see :data:`MWM_MIN`)."""
    mem = mem_available(access.runner)
    mwm = MWM_MIN if mem is None else max(MWM_MIN, min(MWM_MAX, mem // (4 * max(1, sessions))))
    return RESTORE_PGOPTIONS.replace("maintenance_work_mem=256MB", f"maintenance_work_mem={mwm >> 20}MB")


# ------------------------------------------------------------------ names
def _fit(prefix: str, suffix: str) -> str:
    """``prefix + suffix`` cut to 63 bytes on a character boundary; when cut, a short
    hash of the full prefix keeps names of different databases apart."""
    full = prefix + suffix
    if len(full.encode()) <= MAX_DBNAME:
        return full
    h = hashlib.sha256(prefix.encode()).hexdigest()[:6]
    room = MAX_DBNAME - len(suffix.encode()) - 7
    cut = prefix.encode()[:room].decode("utf-8", "ignore")
    return f"{cut}~{h}{suffix}"


def side_db_name(database: str, when) -> str:
    return _fit(database, "_restoring_" + when.strftime("%Y%m%d%H%M%S"))


def pre_restore_name(database: str, when) -> str:
    return _fit(database, "_pre_" + when.strftime("%Y%m%d%H%M%S"))


# ------------------------------------------------------------------ archive checks
@dataclass
class ArchiveInfo:
    path: str
    format: str                     # plain | custom | plain-sql (uncompressed legacy)
    manifest: dict | None
    dump_version: PgVersion | None
    tool_version: PgVersion | None
    warnings: list[str] = field(default_factory=list)


def _sniff(runner, path: str) -> bytes:
    with runner.open_read(path) as f:
        return f.read(65536)


def _sha256(runner, path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with runner.open_read(path) as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                break
            h.update(b)
            n += len(b)
    return h.hexdigest(), n


def _gzip_full_check(runner, path: str) -> bytes:
    """Decompress the whole file; return the last 8 KiB of the SQL. Raises ArchiveError."""
    tail_b = b""
    with runner.open_read(path) as f:
        for _done, out in _gunzip_chunks(f, path=path):
            tail_b = (tail_b + out)[-8192:]
    return tail_b


def toc_listing(access: PostgresAccess, path: str) -> str:
    """``pg_restore -l`` of a custom archive on the control machine, run where the
    host's tools are (natively with the path, or in the container via stdin).

    Raises:
        ArchiveError: pg_restore cannot read the archive (message names both versions
            when it is from a newer pg_dump).
    """
    r = _run_pg_restore_on(access, ["--list"], path)
    return r


def _run_pg_restore_on(access: PostgresAccess, args: list[str], path: str) -> str:
    if access.host.container or access.host.is_remote:
        res = feed_file(access, "pg_restore", args, path, decompress=False, capture=True)
        rc, out, err = res
    else:
        r = access.run_tool("pg_restore", [*args, path], check=False)
        rc, out, err = r.returncode, r.text, r.stderr
    if rc != 0:
        m = re.search(r"unsupported version \(([\d.]+)\) in file header", err)
        if m:
            raise ArchiveError(f"{path}: archive format {m.group(1)} is from a newer pg_dump than "
                               f"pg_restore {access.tool_version('pg_restore')} can read")
        raise ArchiveError(f"{path}: pg_restore cannot read the archive: {tail(err, 400)}")
    return out


def check_archive(access: PostgresAccess, path: str, *, full: bool | None = None) -> ArchiveInfo:
    """Prove ``path`` is a complete dump the host's tools can restore. Touches no database.

    Args:
        access: the target host's PostgreSQL access (its tools read the archive).
        path: archive on the control machine.
        full: force (True) or skip (False) the end-to-end read; default: only when
            there is no manifest sha256 to compare against.

    Raises:
        ArchiveError: missing, in-progress, FAILED, checksum mismatch, truncated,
            not a dump, or too new for the local tools.
    """
    from .runners import LocalRunner
    lr = LocalRunner()
    if path.endswith(PARTIAL_SUFFIX):
        raise ArchiveError(f"{path}: an in-progress (.partial) file is never restored")
    if not lr.exists(path):
        raise ArchiveError(f"{path}: no such file")
    man = read_manifest(lr, path)
    warnings: list[str] = []
    if man is not None:
        if man.get("status") != "DONE":
            raise ArchiveError(f"{path}: its manifest says {man.get('status')} "
                               f"({man.get('error') or 'backup did not finish'}); refusing to restore it")
        digest, size = _sha256(lr, path)
        if man.get("bytes") is not None and size != man["bytes"]:
            raise ArchiveError(f"{path}: size {size} bytes differs from the manifest's {man['bytes']} "
                               f"(truncated or changed)")
        if man.get("sha256") and digest != man["sha256"]:
            raise ArchiveError(f"{path}: sha256 differs from the manifest (file changed or corrupt)")
    if full is None:
        full = man is None or not man.get("sha256")
    head = _sniff(lr, path)
    if head.startswith(b"\x1f\x8b"):
        fmt = "plain"
        try:
            d = gz.decompressobj()
            sql_head = d.decompress(head)
        except gz.ERRORS as e:
            raise ArchiveError(f"{path}: corrupt gzip data ({e})")
        try:
            ph = parse_plain_header(sql_head)
        except ValueError as e:
            raise ArchiveError(f"{path}: {e}")
        if full:
            t = _gzip_full_check(lr, path)
            if not plain_tail_complete(t, ph.restrict_key):
                extra = " followed by its matching \\unrestrict line" if ph.restrict_key else ""
                raise ArchiveError(f"{path}: truncated dump (no '-- PostgreSQL database dump complete' "
                                   f"trailer{extra})")
        psql_v = access.tool_version("psql")
        if ph.restrict_key and not psql_v.understands_restrict():
            raise ArchiveError(f"{path}: dump from pg_dump {ph.pg_dump_version} has \\restrict lines that "
                               f"psql {psql_v} cannot read; upgrade psql to a release with the fix")
        if ph.pg_dump_version and ph.pg_dump_version.major > psql_v.major:
            warnings.append(f"dump is from pg_dump {ph.pg_dump_version}, newer than psql {psql_v}")
        return ArchiveInfo(path, fmt, man, ph.pg_dump_version, psql_v, warnings)
    if head.startswith(b"PGDMP"):
        try:
            hdr = parse_custom_header(head)
        except ValueError as e:
            raise ArchiveError(f"{path}: {e}")
        pr_v = access.tool_version("pg_restore")
        try:
            _run_pg_restore_on(access, ["--list"], path)
        except ArchiveError as e:
            if "newer pg_dump" in str(e):
                # the rest of a header in an unknown format may not decode: name the version only if sane
                dv = hdr.pg_dump_version if re.fullmatch(r"\d+(\.\d+)*", hdr.pg_dump_version or "") else None
                raise ArchiveError(f"{path}: archive format {hdr.archive_version_str} written by "
                                   f"{'pg_dump ' + dv if dv else 'a newer pg_dump'} is newer than pg_restore "
                                   f"{pr_v} can read; use pg_restore {dv or 'of that release'} or newer") from None
            raise
        if full:
            _run_pg_restore_on(access, ["--file", "/dev/null"], path)
        try:
            dv = PgVersion(*[int(x) for x in hdr.pg_dump_version.split(".")[:2]])
        except ValueError:
            dv = None
        return ArchiveInfo(path, "custom", man, dv, pr_v, warnings)
    if head.lstrip().startswith(b"--") and b"PostgreSQL database dump" in head[:4096]:
        raise ArchiveError(f"{path}: uncompressed plain SQL is not a supported archive; gzip it first")
    raise ArchiveError(f"{path}: not a PostgreSQL dump (neither gzip nor custom archive)")


# ------------------------------------------------------------------ streaming into tools
class OwnerAclFilter:
    """Drop ``ALTER ... OWNER TO`` and ``GRANT``/``REVOKE`` statements from a plain dump
    stream (``--no-owner --no-acl`` semantics for psql), so roles that do not exist
    locally cannot break a restore; and list the tables of the stream's ``COPY ...
    FROM stdin`` statements in order (``copy_tables``; None for a name it cannot parse),
    which :class:`CopyTags` pairs with psql's ``COPY n`` tags, with the data lines of
    each block (``copy_rows``: COPY's text format writes one row per line, newlines in
    values escaped as ``\\n``; PostgreSQL docs, COPY "Text Format"). With ``drop=False``
    nothing is removed; with ``emit=False`` nothing is returned (tracking only).
    :meth:`feed_pieces` returns the output as typed pieces (for the parallel loader,
    bigskies_ops.parload): ``copy`` (a COPY statement with the rest of its line),
    ``data``, ``end`` (the ``\\.`` line), ``set`` (a ``SET``/``set_config`` statement),
    ``meta`` (a backslash meta-command line), ``blank`` (whitespace and comments only)
    and ``sql`` (any other statement).

    Whole statements are judged, never lines: the SQL between COPY blocks is split the
    way psql splits it (psqlscan.l: string literals with doubled quotes, ``E''`` strings
    with backslash escapes, quoted identifiers, dollar-quoted bodies, ``--`` and nested
    ``/* */`` comments; a backslash meta-command such as ``\\restrict`` at a statement
    start runs to the end of its line). COPY data passes through untouched, block-wise,
    up to its ``\\.`` line. So a data row that looks like SQL (``GRANT ...;``), a quoted
    table name holding a newline, or ``$$`` inside a string literal can never put the
    filter out of step and cost a row (found by a break-it trial).
    """

    OWNER_RE = re.compile(rb'\AALTER [A-Z][A-Z ]* .* OWNER TO (?:"(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_$]*);\Z', re.S)
    ACL_RE = re.compile(rb"\A(?:GRANT|REVOKE) .*;\Z", re.S)
    ACL_DEFAULT_RE = re.compile(rb"\AALTER DEFAULT PRIVILEGES .*;\Z", re.S)
    COPY_STMT = re.compile(rb"\ACOPY\s.*\sFROM\s+stdin;\Z", re.S | re.I)
    LEADING = re.compile(rb"(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.S)  # whitespace/comments before a statement
    TOKEN = re.compile(rb"""[Ee]'|'|"|\$(?:[A-Za-z_\x80-\xff][A-Za-z_0-9\x80-\xff]*)?\$|--|/\*|;""")
    NONSPACE = re.compile(rb"\S")
    IDENT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$" + bytes(range(0x80, 0x100)))
    E_STRING = re.compile(rb"\\.|'", re.S)
    COMMENT = re.compile(rb"/\*|\*/")
    #: session settings pg_dump writes (``SET x = v;``, ``SELECT pg_catalog.set_config(..., false);``)
    SET_RE = re.compile(rb"\A(?:SET\s[^;]*;|SELECT pg_catalog\.set_config\('[a-z_]+', '[^']*', false\);)\Z")

    def __init__(self, drop: bool = True, emit: bool = True, count_rows: bool = False):
        self.buf = b""
        self.count_rows = count_rows
        self.in_copy = False
        self.dropped = 0
        self.drop = drop
        self.emit = emit
        self.copy_tables: list[tuple[str, str] | None] = []
        self.copy_rows: list[int] = []
        self.stmt = bytearray()  # the statement being read, with the whitespace/comments before it
        self.mode = "n"  # n(ormal), s(tring), e(scape string), d(ouble-quoted name), $ (dollar body), b(lock comment)
        self.tag = b""
        self.depth = 0
        self.blank = True  # nothing but whitespace/comments in self.stmt so far
        self.copy_next = False  # a COPY ... FROM stdin; just ended: its data starts on the next line
        self._out: list[tuple[str, bytes]] = []

    def feed(self, data: bytes) -> bytes:
        self._feed(data)
        return self._take()

    def flush(self) -> bytes:
        self._flush()
        return self._take()

    def feed_pieces(self, data: bytes) -> list[tuple[str, bytes]]:
        """Like :meth:`feed`, as ``(kind, bytes)`` pieces (kinds: see the class docstring)."""
        self._feed(data)
        return self._take_pieces()

    def flush_pieces(self) -> list[tuple[str, bytes]]:
        self._flush()
        return self._take_pieces()

    def _feed(self, data: bytes) -> None:
        # complete lines only (no token spans a newline); the line left over from the last
        # chunk is completed and scanned on its own, so a 1 MiB chunk is never copied
        start = 0
        if self.buf:
            nl = data.find(b"\n")
            if nl < 0:
                self.buf += data
                return
            head, self.buf = self.buf + data[:nl + 1], b""
            self._scan(head, len(head))
            start = nl + 1
        end = data.rfind(b"\n") + 1
        if end > start:
            self._scan(data, end, start)
        self.buf = data[max(end, start):]

    def _flush(self) -> None:
        rest, self.buf = self.buf, b""
        if rest:
            self._scan(rest, len(rest))
        if self.stmt:
            self._put(bytes(self.stmt), "blank" if self.blank else "sql")
            self.stmt = bytearray()

    def tables_with_data(self) -> set[tuple[str, str]]:
        """End the stream; the tables that had a ``COPY ... FROM stdin`` block (for a
        tracking-only filter: ``emit=False``)."""
        self.flush()
        return {t for t in self.copy_tables if t is not None}

    def _put(self, b, kind: str = "sql") -> None:
        if self.emit and b:
            self._out.append((kind, bytes(b)))

    def _take(self) -> bytes:
        out, self._out = b"".join(b for _, b in self._out), []
        return out

    def _take_pieces(self) -> list[tuple[str, bytes]]:
        out, self._out = self._out, []
        return out

    @staticmethod
    def _terminator(buf: bytes, pos: int, end: int) -> int:
        """Index of the ``\n`` before the first ``\\.\n`` line in ``buf[pos:end]``, or -1.

        Backslashes are rare in COPY text (each one in a value is doubled): a few memchr
        jumps from one to the next are cheaper than searching for the 4-byte pattern,
        which scans at every newline; after 16 backslashes in a chunk the pattern search
        takes over."""
        i = pos
        for _ in range(16):
            k = buf.find(b"\\", i, end)
            if k < 0:
                return -1
            if k > pos and buf[k - 1] == 0x0A and buf.startswith(b".\n", k + 1) and k + 3 <= end:
                return k - 1
            i = k + 2 if k + 1 < end and buf[k + 1] == 0x5C else k + 1  # an escaped backslash is one unit
        return buf.find(b"\n\\.\n", i - 1 if i > pos else pos, end)

    def _line_end(self, buf: bytes, i: int, end: int) -> int:
        nl = buf.find(b"\n", i, end)
        return end if nl < 0 else nl + 1

    def _scan(self, buf: bytes, end: int, pos: int = 0) -> int:
        """Consume ``buf[pos:end]`` (whole lines, or the stream's last bytes); return ``end``."""
        while pos < end:
            if self.in_copy:
                if buf.startswith(b"\\.\n", pos) or (end - pos == 2 and end == len(buf) and buf.startswith(b"\\.", pos)):
                    data_end, stop = pos, min(pos + 3, end)
                else:
                    k = self._terminator(buf, pos, end)
                    stop, data_end = (k + 4, k + 1) if k >= 0 else (-1, end)
                if self.count_rows:
                    self.copy_rows[-1] += buf.count(b"\n", pos, data_end)  # one row per line
                if stop < 0:  # no terminator yet: pass the data through
                    if self.emit:
                        self._put(buf[pos:end], "data")
                    return end
                if self.emit:
                    self._put(buf[pos:data_end], "data")
                    self._put(buf[data_end:stop], "end")
                pos = stop
                self.in_copy = False
                continue
            if self.copy_next:  # the rest of the COPY statement's line, then its data
                nl = self._line_end(buf, pos, end)
                self._put(buf[pos:nl], "copy")
                pos = nl
                self.copy_next = False
                self.in_copy = True
                continue
            mode = self.mode
            if mode == "n":
                if self.blank:
                    m = self.NONSPACE.search(buf, pos, end)
                    if m is None:
                        self.stmt += buf[pos:end]
                        return end
                    if buf[m.start()] == 0x5C:  # backslash: a psql meta-command, to the end of its line
                        nl = self._line_end(buf, m.start(), end)
                        self.stmt += buf[pos:nl]
                        self._put(self.stmt, "meta")
                        self.stmt = bytearray()
                        pos = nl
                        continue
                m = self.TOKEN.search(buf, pos, end)
                if m is None:
                    seg = buf[pos:end]
                    if self.blank and seg.strip():
                        self.blank = False
                    self.stmt += seg
                    return end
                s, e = m.span()
                tok = m.group()
                if self.blank and buf[pos:s].strip():
                    self.blank = False
                if tok == b";":
                    self.stmt += buf[pos:e]
                    pos = e
                    self._statement_end()
                    continue
                if tok == b"--":
                    nl = self._line_end(buf, e, end)
                    self.stmt += buf[pos:nl]
                    pos = nl
                    continue
                if tok == b"/*":
                    self.mode, self.depth = "b", 1
                    self.stmt += buf[pos:e]
                    pos = e
                    continue
                prev = buf[s - 1] if s > pos else (self.stmt[-1] if self.stmt else 0x0A)
                self.blank = False
                if tok[0] == 0x24:  # $
                    if prev in self.IDENT:  # part of a name like a$b$: not a dollar quote
                        self.stmt += buf[pos:s + 1]
                        pos = s + 1
                        continue
                    self.mode, self.tag = "$", tok
                elif tok[0] in b"Ee":
                    self.mode = "s" if prev in self.IDENT else "e"
                elif tok == b"'":
                    self.mode = "s"
                else:
                    self.mode = "d"
                self.stmt += buf[pos:e]
                pos = e
            elif mode in ("s", "d"):
                q = 0x27 if mode == "s" else 0x22
                k = buf.find(bytes([q]), pos, end)
                if k < 0:
                    self.stmt += buf[pos:end]
                    return end
                if k + 1 < end and buf[k + 1] == q:  # doubled: still inside
                    self.stmt += buf[pos:k + 2]
                    pos = k + 2
                    continue
                self.stmt += buf[pos:k + 1]
                pos = k + 1
                self.mode = "n"
            elif mode == "e":
                m = self.E_STRING.search(buf, pos, end)
                if m is None:
                    self.stmt += buf[pos:end]
                    return end
                k = m.end()
                if m.group() == b"'" and not (k < end and buf[k] == 0x27):
                    self.mode = "n"
                elif m.group() == b"'":
                    k += 1  # doubled quote
                self.stmt += buf[pos:k]
                pos = k
            elif mode == "$":
                k = buf.find(self.tag, pos, end)
                if k < 0:
                    self.stmt += buf[pos:end]
                    return end
                self.stmt += buf[pos:k + len(self.tag)]
                pos = k + len(self.tag)
                self.mode = "n"
            else:  # block comment (they nest)
                m = self.COMMENT.search(buf, pos, end)
                if m is None:
                    self.stmt += buf[pos:end]
                    return end
                self.depth += 1 if m.group() == b"/*" else -1
                self.stmt += buf[pos:m.end()]
                pos = m.end()
                if self.depth == 0:
                    self.mode = "n"
        return pos

    def _statement_end(self) -> None:
        stmt = bytes(self.stmt)
        self.stmt = bytearray()
        self.blank = True
        lead = self.LEADING.match(stmt).end()
        core = stmt[lead:]
        if self.COPY_STMT.match(core):
            m = COPY_RE.match(core)
            try:
                self.copy_tables.append(split_qualified(m.group(1).decode("utf-8")) if m else None)
            except (ValueError, UnicodeDecodeError):
                self.copy_tables.append(None)
            self.copy_rows.append(0)
            self.copy_next = True
            self._put(stmt, "copy")
            return
        if self.drop and (self.OWNER_RE.match(core) or self.ACL_RE.match(core) or self.ACL_DEFAULT_RE.match(core)):
            self.dropped += 1
            self._put(stmt[:lead], "blank")
            return
        self._put(stmt, "set" if self.SET_RE.match(core) else "sql")


class CopyTags:
    """Collect the ``COPY n`` command tags psql prints (not quiet) while restoring a plain
    dump: the server's own count of the rows each ``COPY ... FROM stdin`` inserted.

    Only command tags start a line with ``COPY ``: psql's aligned query results start
    with a space or a border, so a result value can never be taken for a tag.
    """

    TAG = re.compile(rb"^COPY (\d+)$", re.M)

    def __init__(self):
        self.rows: list[int] = []
        self._carry = b""

    def feed(self, data: bytes) -> None:
        buf = self._carry + data
        nl = buf.rfind(b"\n")
        if nl < 0:
            self._carry = buf[-4096:]
            return
        self.rows.extend(int(m.group(1)) for m in self.TAG.finditer(buf, 0, nl))
        self._carry = buf[nl + 1:][-4096:]

    def by_table(self, tables: list[tuple[str, str] | None]) -> dict[tuple[str, str], int] | None:
        """Rows per table (summed over its COPY statements), or None when the tags and the
        statements do not pair up one to one (then every table is counted instead)."""
        if len(tables) != len(self.rows) or None in tables:
            return None
        out: dict[tuple[str, str], int] = {}
        for t, n in zip(tables, self.rows):
            out[t] = out.get(t, 0) + n
        return out


def _raw_chunks(f):
    done = 0
    while True:
        b = f.read(CHUNK)
        if not b:
            return
        done += len(b)
        yield done, b


def _gunzip_chunks(f, max_out: int = 4 * CHUNK, path: str = "archive", raw=None):
    """Decompress a (possibly multi-member) gzip file, yielding (compressed bytes read,
    at most ``max_out`` bytes of output) so memory stays bounded whatever the ratio.

    What follows the last member is judged as GNU gunzip does: zero bytes (padding, e.g.
    from a tape or a block device) are ignored; anything else is an error.

    ``raw``: an iterator of ``(bytes read, bytes)`` to read instead of ``f`` (a file
    still being written: :meth:`bigskies_ops.parload.GrowingFile.raw_chunks`).

    Raises:
        ArchiveError: corrupt data, trailing garbage, or a truncated last member.
    """
    d = gz.decompressobj()
    done = 0
    padding = False
    for done, b in (raw if raw is not None else _raw_chunks(f)):
        data = b
        while data:
            if padding:
                if data.strip(b"\0"):
                    raise ArchiveError(f"{path}: trailing garbage after the gzip data")
                break
            try:
                out = d.decompress(data, max_out)
            except gz.ERRORS as e:
                raise ArchiveError(f"{path}: corrupt gzip data ({e})") from None
            if out:
                yield done, out
            if d.unconsumed_tail:
                data = d.unconsumed_tail
            elif d.eof and d.unused_data:
                data = d.unused_data
                if not data.strip(b"\0"):
                    padding = True
                elif not b"\x1f\x8b".startswith(data[:2]):
                    raise ArchiveError(f"{path}: trailing garbage after the gzip data")
                else:
                    d = gz.decompressobj()  # the next member of a concatenated file
            else:
                data = b""
    if not padding:
        try:
            rest = d.flush()
        except gz.ERRORS as e:
            raise ArchiveError(f"{path}: corrupt gzip data ({e})") from None
        if rest:
            yield done, rest
        if not d.eof:
            raise ArchiveError(f"{path}: truncated gzip file (unexpected end of data)")


def feed_file(access: PostgresAccess, tool: str, args: list[str], path: str, *, decompress: bool,
              capture: bool = False, line_filter=None, progress=None, pgoptions: str | None = None,
              stdout_sink=None):
    """Stream a local file into ``tool``'s stdin on the host (optionally gunzipping and
    filtering on the way). Returns ``(returncode, stdout_text, stderr_text)``.

    The file is read in 1 MiB chunks; nothing is held in memory whole. ``pgoptions``:
    session settings for the tool (:meth:`PostgresAccess.run_tool`); ``stdout_sink``:
    called with each chunk of the tool's stdout as it arrives.
    """
    from .runners import LocalRunner
    proc = access.popen_tool(tool, args, stdin=True, pgoptions=pgoptions)
    out_chunks: list[bytes] = []

    def drain():
        for chunk in iter(lambda: proc.stdout.read(65536), b""):
            if capture:
                out_chunks.append(chunk)
            if stdout_sink is not None:
                stdout_sink(chunk)
    t = threading.Thread(target=drain, daemon=True)
    t.start()
    sent = 0
    broken = False
    try:
        with LocalRunner().open_read(path) as f:
            for raw_done, b in (_gunzip_chunks(f, path=path) if decompress else _raw_chunks(f)):
                sent = raw_done
                if line_filter is not None:
                    b = line_filter.feed(b)
                try:
                    proc.stdin.write(b)
                except (BrokenPipeError, OSError):
                    broken = True
                    break
                if progress:
                    progress(sent)
            if not broken and line_filter is not None:
                try:
                    proc.stdin.write(line_filter.flush())
                except (BrokenPipeError, OSError):
                    broken = True
        try:
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
    except BaseException:
        proc.kill()
        raise
    rc = proc.wait()
    t.join(10)
    return rc, b"".join(out_chunks).decode("utf-8", "replace"), proc.stderr_text()


# ------------------------------------------------------------------ database facts
def db_info(sql: Sql, name: str) -> dict | None:
    rows = sql.query(pgsql.SQL(
        "SELECT d.oid::int AS oid, pg_catalog.pg_get_userbyid(d.datdba) AS owner, "
        "pg_catalog.pg_encoding_to_char(d.encoding) AS encoding, d.datcollate AS collate, d.datctype AS ctype, "
        "d.datlocprovider::text AS provider, d.daticulocale AS icu_locale, "
        "pg_catalog.shobj_description(d.oid, 'pg_database') AS comment, "
        "(SELECT array_agg(c) FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c "
        " WHERE s.setdatabase = d.oid AND s.setrole = 0) AS settings "
        "FROM pg_catalog.pg_database d WHERE d.datname = {}").format(lit(name)))
    return rows[0] if rows else None


def sessions_on(sql: Sql, name: str) -> list[dict]:
    return sql.query(pgsql.SQL(
        "SELECT pid, usename AS user, application_name AS application, client_addr::text AS client, state, "
        "to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS since "
        "FROM pg_catalog.pg_stat_activity WHERE datname = {} AND pid <> pg_catalog.pg_backend_pid() "
        # autovacuum workers are cancelled by the server itself on RENAME/DROP (CountOtherDBBackends)
        "AND backend_type IS DISTINCT FROM 'autovacuum worker' "
        "ORDER BY pid").format(lit(name)))


def create_like(sql: Sql, new: str, like: dict | None, notify=print) -> None:
    """CREATE DATABASE ``new`` from template0 with ``like``'s owner, encoding, collation
    and per-database settings (so the restored copy behaves like the old one)."""
    parts = [pgsql.SQL("CREATE DATABASE {} TEMPLATE template0").format(ident(new))]
    if like:
        can_own = sql.value(pgsql.SQL(
            "SELECT pg_catalog.pg_has_role(current_user, {}, 'MEMBER') "
            "OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)").format(lit(like["owner"])))
        if can_own:
            parts.append(pgsql.SQL("OWNER {}").format(ident(like["owner"])))
        else:
            notify(f"note: cannot make {like['owner']!r} the owner (not a member of that role); "
                   f"the restored database is owned by the restoring user")
        parts.append(pgsql.SQL("ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            lit(like["encoding"]), lit(like["collate"]), lit(like["ctype"])))
        if like.get("provider") == "i" and like.get("icu_locale"):
            parts.append(pgsql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(lit(like["icu_locale"])))
    sql.execute(pgsql.SQL(" ").join(parts))
    for setting in (like or {}).get("settings") or []:
        k, _, v = setting.partition("=")
        sql.execute(pgsql.SQL("ALTER DATABASE {} SET {} TO {}").format(ident(new), ident(k), lit(v)))


def drop_db(sql: Sql, name: str) -> None:
    sql.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident(name)))


def table_counts(sql: Sql, tables: list[dict], known: dict | None = None) -> dict[tuple[str, str], int | None]:
    """Exact row counts of ``tables`` in ``sql``'s database; None for a missing table.

    Args:
        known: rows already known per ``(schema, name)`` (from COPY tags of the load);
            used for present tables without inheritance children (``count(*)`` of a
            parent includes its children's rows, a COPY tag does not); the rest are counted.
    """
    rows = sql.query(
        "SELECT n.nspname AS schema, c.relname AS name, "
        "EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhparent = c.oid) AS parent "
        "FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p')")
    present = {(r["schema"], r["name"]) for r in rows}
    parents = {(r["schema"], r["name"]) for r in rows if r["parent"]}
    out: dict[tuple[str, str], int | None] = {(t["schema"], t["name"]): None for t in tables}
    want = []
    for t in tables:
        key = (t["schema"], t["name"])
        if key not in present:
            continue
        if known is not None and key in known and key not in parents:
            out[key] = known[key]
            continue
        want.append(t)
    if want:
        from .backup import count_rows_sql
        for r in sql.query(count_rows_sql(want)):
            t = want[r["i"]]
            out[(t["schema"], t["name"])] = r["n"]
    return out


# ------------------------------------------------------------------ the job
@dataclass
class RestoreResult:
    database: str
    archive: str
    pre_restore_copy: str | None
    coordinators: list[str]
    seconds: float
    checked_tables: int
    warnings: list[str] = field(default_factory=list)
    dropped_copies: list[str] = field(default_factory=list)


def resolve_archive(host: Host, spec: str | None, origin: str | None = None, database: str | None = None) -> str:
    """``latest`` or a path (relative to the host's backup dir if not found as given)."""
    from .runners import LocalRunner
    lr = LocalRunner()
    bdir = host.backup.dir if origin is None else posixpath.join(host.backup.dir, origin)
    db = database or host.postgres.database
    if spec in (None, "", "latest"):
        backups = list_backups(lr, host.backup.dir, origin=origin) if origin else list_backups(lr, bdir)
        b = latest(backups, database=db, origin_host=origin or host.name, complete_only=True)
        if b is None:
            raise ArchiveError(f"no complete DONE backup of {db!r} from {origin or host.name} in {bdir} "
                               f"(schema-only and partial-data backups are restored only when named)")
        return b.path
    import os
    if os.path.exists(spec):
        return spec
    cand = posixpath.join(bdir, spec)
    if os.path.exists(cand):
        return cand
    raise ArchiveError(f"{spec}: no such file (looked here and in {bdir})")


def restore(host: Host, archive: str, *, target_db: str | None = None, terminate_sessions: bool = False,
            keep_owners: bool = False, jobs: int | None = None, notify=print, progress=None,
            confirmed: bool = True, task: str = "db.restore", roles: bool = False,
            follow: "FollowedArchive | None" = None) -> RestoreResult:
    """Restore ``archive`` into ``host``'s database (or into a new ``target_db``).

    The caller has already applied the safety policy and the confirmation.

    Args:
        archive: path of the archive on the control machine.
        target_db: restore into this NEW database and leave the original alone.
        terminate_sessions: terminate sessions still connected at swap time; without
            it, connected sessions stop the restore before anything changes.
        keep_owners: keep ``OWNER``/``GRANT`` statements (fails if their roles are missing).
        jobs: pg_restore parallel jobs (custom archives restored natively; default 2).
        roles: first create the roles of ``<archive>.roles.sql`` missing on the cluster
            (existing roles are never altered; bigskies_ops.roles); implies ``keep_owners``.
        follow: load a plain archive WHILE it is being written (``db.pull --restore``):
            ``archive`` is ignored; the load follows ``follow.growing`` and the archive
            checks (size, sha256, manifest, versions) run on ``follow.result()``'s finished
            file after the load and before the swap. :class:`FollowedArchive`.

    Returns:
        :class:`RestoreResult`.

    Raises:
        ArchiveError: the archive failed a check (nothing touched).
        PostgresError: the restore into the side database failed (side database dropped,
            old database untouched), or the swap was refused by the server.
        SafetyError: sessions still connected and ``terminate_sessions`` not given.
        LockBusyError: another task holds the (host, database) lock.
    """
    t0 = time.monotonic()
    db = host.postgres.database
    with PostgresAccess(host) as access:
        info = check_archive(access, archive) if follow is None else follow
        for w in getattr(info, "warnings", ()):
            notify(f"warning: {w}")
        maint = access.sql(host.postgres.maintenance_db)
        if target_db is not None and db_info(maint, target_db) is not None:
            raise UsageError(f"--target-db {target_db!r} already exists on {host.name}; choose a new name")
        if target_db is None and host.coordinators:  # unknown coordinator names: exit 2 before any change
            from .compose import coordinators_preflight
            coordinators_preflight(access.runner, host)
        if roles and follow is None:
            from .roles import create_missing_roles
            create_missing_roles(access, info.path, notify)
            keep_owners = True
        with host_lock(access.runner, host.backup.dir, host.name, target_db or db, task, notify=notify):
            return _restore_locked(access, host, info, db, target_db, terminate_sessions, keep_owners, jobs,
                                   notify, progress, t0)


def _restore_locked(access, host, info, db, target_db, terminate, keep_owners, jobs, notify, progress, t0):
    maint = access.sql(host.postgres.maintenance_db)
    now = utcnow()
    old = db_info(maint, db)
    _drop_leftover_side_dbs(maint, target_db or db, notify)
    if old is not None and target_db is None and not terminate and not host.coordinators:
        _refuse_if_sessions(maint, db)  # fail fast, before a long restore (checked again at the swap)
    side = side_db_name(target_db or db, now)
    notify(f"Restoring into side database {side!r} (the current database is not touched yet)")
    create_like(maint, side, old, notify)
    swapped = False
    try:
        maint.execute(pgsql.SQL("COMMENT ON DATABASE {} IS {}").format(ident(side), lit(json.dumps(
            {"tag": SIDE_TAG, "of": target_db or db, "pid": os.getpid(), "host": socket.gethostname(),
             "at": iso(now)}))))
        if isinstance(info, FollowedArchive):
            info, (rc, err, copied) = _load_followed(access, info, side, keep_owners, jobs, notify)
        else:
            rc, out, err, copied = _load(access, info, side, keep_owners, jobs, progress)
        if rc != 0:
            raise PostgresError(f"restore into the side database failed (exit {rc}): {tail(err, 800)}",
                                returncode=rc, stderr=tail(err))
        checked = _verify_side(access.sql(side), info, notify, copied)
        if target_db is not None:
            maint.execute(pgsql.SQL("ALTER DATABASE {0} RENAME TO {1}; COMMENT ON DATABASE {1} IS NULL").format(
                ident(side), ident(target_db)))
            swapped = True
            return RestoreResult(target_db, info.path, None, [], time.monotonic() - t0, checked)
        if old is None:
            maint.execute(pgsql.SQL("ALTER DATABASE {0} RENAME TO {1}; COMMENT ON DATABASE {1} IS NULL").format(
                ident(side), ident(db)))
            swapped = True
            return RestoreResult(db, info.path, None, [], time.monotonic() - t0, checked)
        pre = pre_restore_name(db, now)
        with coordinators_paused(access.runner, host, notify) as stopped:
            _swap(maint, db, side, pre, terminate, info.path, notify)
            swapped = True
        dropped = prune_pre_restore(maint, db, host.backup.keep_pre_restore, notify)
        return RestoreResult(db, info.path, pre, stopped, time.monotonic() - t0, checked,
                             dropped_copies=dropped)
    finally:
        if not swapped:
            try:
                drop_db(maint, side)
            except BigskiesError as e:
                notify(f"warning: could not drop side database {side!r}: {e}")


@dataclass
class FollowedArchive:
    """A plain archive restored while it is written (``db.pull --restore``).

    Attributes:
        growing: the file being written (:class:`bigskies_ops.parload.GrowingFile`).
        start: called once the side database is ready (the writer starts then, so a
            refusal - lock busy, sessions connected - costs no transfer).
        result: waits for the writer; returns the finished archive's path or raises
            the writer's error.
    """

    growing: object
    start: object
    result: object


def _load_followed(access, fa: FollowedArchive, side: str, keep_owners: bool, jobs: int | None, notify):
    """Load ``fa`` into ``side`` as it arrives, then check the finished archive.

    Returns ``(ArchiveInfo of the finished archive, (rc, stderr, rows))``. Raises the
    writer's error (after stopping the load), or ArchiveError."""
    from .parload import load_plain_parallel
    growing = fa.growing
    n = max(1, jobs if jobs is not None else 2)
    opts = restore_pgoptions(access, n)
    fa.start()
    try:
        rc, _, err, rows = load_plain_parallel(
            access, "(pull in progress)", side, jobs=n, keep_owners=keep_owners, pgoptions=opts,
            open_chunks=lambda: _gunzip_chunks(None, path=growing.path or "pull", raw=growing.raw_chunks()))
    except (KeyboardInterrupt, Interrupted):
        growing.cancel()  # the pull stops too (its .partial is removed, manifest FAILED)
        raise
    except BaseException:
        fa.result()  # a failed pull is the cause: its error first; else the pull is kept, and ours raised
        raise
    path = fa.result()  # the pull finished: DONE manifest, sha256 computed while receiving
    info = check_archive(access, path)  # the file on disk: size, sha256 against the manifest, versions
    for w in info.warnings:
        notify(f"warning: {w}")
    if info.format != "plain":
        raise ArchiveError(f"{path}: expected a plain archive to follow, got {info.format}")
    return info, (rc, err, rows)


def _load(access, info: ArchiveInfo, side: str, keep_owners: bool, jobs: int | None, progress):
    """Load the archive into ``side``. Returns ``(returncode, stdout, stderr, copied)``;
    ``copied`` maps tables to the rows the server reported for the load (psql's ``COPY n``
    tags for plain dumps, :func:`inserted_rows` for custom archives), or None."""
    native_local = not access.host.container and not access.host.is_remote
    j = jobs if jobs is not None else 2  # local hosts only; remote ones load with one session
    parallel = j > 1 and (native_local or (info.format == "plain" and not access.host.is_remote))
    opts = restore_pgoptions(access, j if parallel else 1)
    if info.format == "plain" and not access.host.is_remote and j > 1:
        from .parload import load_plain_parallel
        return load_plain_parallel(access, info.path, side, jobs=j, keep_owners=keep_owners,
                                   pgoptions=opts, progress=progress)
    if info.format == "plain":
        flt = OwnerAclFilter(drop=not keep_owners)
        tags = CopyTags()
        rc, out, err = feed_file(access, "psql", psql_args(side, single_transaction=True, quiet=False), info.path,
                                 decompress=True, line_filter=flt, progress=progress, pgoptions=opts,
                                 stdout_sink=tags.feed)
        return rc, out, err, (tags.by_table(flt.copy_tables) if rc == 0 else None)
    if native_local:
        r = access.run_tool("pg_restore", pg_restore_args(side, jobs=j, no_owner=not keep_owners,
                                                          from_file=info.path), check=False,
                            pgoptions=opts)
        return r.returncode, r.text, r.stderr, (inserted_rows(access.sql(side)) if r.returncode == 0 else None)
    rc, out, err = feed_file(access, "pg_restore", pg_restore_args(side, jobs=1, no_owner=not keep_owners),
                             info.path, decompress=False, progress=progress, pgoptions=opts)
    return rc, out, err, (inserted_rows(access.sql(side)) if rc == 0 else None)


def inserted_rows(sql: Sql, wait: float = 10.0) -> dict[tuple[str, str], int] | None:
    """Rows the load inserted per table of ``sql``'s (fresh side) database, from the
    server's cumulative statistics (``pg_stat_user_tables.n_tup_ins``), or None when
    they cannot be trusted (``track_counts`` off, loading sessions still there after
    ``wait`` seconds). Tables with any update or delete are left out.

    A backend flushes its counters when it exits (PostgreSQL 15 docs, 28.2 "The
    Cumulative Statistics System"), so this waits until the loading sessions are gone.
    The caller uses these numbers only where they equal the manifest's count and
    counts every other table with ``count(*)``: a stale or missing counter can cost
    a scan, never a false pass.
    """
    deadline = time.monotonic() + wait
    while sql.value("SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_catalog.pg_backend_pid() AND backend_type = 'client backend'"):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    rows = sql.query("SELECT current_setting('track_counts') AS track_counts, schemaname AS schema, relname AS name, "
                     "n_tup_ins AS ins, n_tup_upd + n_tup_del AS changed FROM pg_catalog.pg_stat_user_tables")
    if not rows or rows[0]["track_counts"] != "on":
        return None
    return {(r["schema"], r["name"]): r["ins"] for r in rows if r["changed"] == 0}


def _verify_side(sql: Sql, info: ArchiveInfo, notify, copied: dict | None = None) -> int:
    """Every table of the manifest present with its recorded row count; schema_migrations present.

    ``copied``: rows per table reported by the server for the load itself (psql's COPY
    tags for plain dumps, :func:`inserted_rows` for pg_restore). A table whose
    reported rows equal the manifest's is not scanned again (a ``count(*)`` of a fresh
    table also rewrites every page to set hint bits); every other table is counted."""
    man = info.manifest or {}
    tables = man.get("tables") or []
    if tables:
        expected = {(t["schema"], t["name"]): t.get("rows") for t in tables}
        trusted = {k: v for k, v in (copied or {}).items() if expected.get(k) is not None and v == expected[k]}
        counts = table_counts(sql, tables, known=trusted)
        bad = []
        for t in tables:
            got = counts[(t["schema"], t["name"])]
            if got is None:
                bad.append(f"{t['schema']}.{t['name']} missing")
            elif t.get("rows") is not None and got != t["rows"]:
                bad.append(f"{t['schema']}.{t['name']} has {got} rows, manifest says {t['rows']}")
        if bad:
            raise PostgresError("restored copy does not match the manifest: " + "; ".join(bad[:10]))
    has_sm = sql.value("SELECT to_regclass('public.schema_migrations') IS NOT NULL")
    if man.get("schema_migrations_head") and not has_sm:
        raise PostgresError("restored copy has no schema_migrations table, but the backup recorded one")
    if not has_sm:
        notify("warning: the restored database has no schema_migrations table")
    return len(tables)


def _refuse_if_sessions(maint: Sql, db: str) -> None:
    sess = sessions_on(maint, db)
    if sess:
        listing = "; ".join(f"pid {s['pid']} {s['user']}@{s['client'] or 'local'} {s['application'] or ''}".strip()
                            for s in sess)
        raise SafetyError(f"{len(sess)} session(s) still connected to {db!r}: {listing}. Nothing was "
                          f"changed; stop them or pass --terminate-sessions")


def _drop_leftover_side_dbs(maint: Sql, db: str, notify) -> None:
    """Drop side databases of ``db`` left by a restore whose process died (same control host,
    pid gone). We hold the (host, database) lock, so no live restore owns them."""
    for r in _tagged(maint, SIDE_TAG, db):
        c = r["tag"]
        if c.get("host") == socket.gethostname() and isinstance(c.get("pid"), int) and not _pid_alive(c["pid"]):
            drop_db(maint, r["name"])
            notify(f"Dropped {r['name']!r}, left by an interrupted restore (pid {c['pid']}, {c.get('at')})")


def _pid_alive(pid: int) -> bool:
    from .runners import pid_alive
    return pid_alive(pid)


def _tagged(maint: Sql, tag: str, db: str) -> list[dict]:
    rows = maint.query(
        "SELECT d.datname AS name, pg_catalog.shobj_description(d.oid, 'pg_database') AS comment, "
        "pg_catalog.pg_database_size(d.oid) AS bytes FROM pg_catalog.pg_database d")
    out = []
    for r in rows:
        try:
            c = json.loads(r["comment"] or "")
        except ValueError:
            continue
        if isinstance(c, dict) and c.get("tag") == tag and c.get("of") == db:
            out.append({"name": r["name"], "tag": c, "bytes": r["bytes"]})
    return out


def _swap(maint: Sql, db: str, side: str, pre: str, terminate: bool, archive: str, notify) -> None:
    sess = sessions_on(maint, db)
    if sess:
        listing = "; ".join(f"pid {s['pid']} {s['user']}@{s['client'] or 'local'} {s['application'] or ''}".strip()
                            for s in sess)
        if not terminate:
            raise SafetyError(f"{len(sess)} session(s) still connected to {db!r}: {listing}. Nothing was "
                              f"changed; stop them or pass --terminate-sessions")
        notify(f"Terminating {len(sess)} session(s) on {db!r}: {listing}")
        maint.execute(pgsql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(ident(db)))
        maint.query(pgsql.SQL("SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
                              "WHERE datname = {} AND pid <> pg_catalog.pg_backend_pid()").format(lit(db)))
        deadline = time.monotonic() + 15
        while sessions_on(maint, db) and time.monotonic() < deadline:
            time.sleep(0.2)
    comment = json.dumps({"tag": PRE_RESTORE_TAG, "of": db, "at": iso(utcnow()), "replaced_by": archive})
    try:
        maint.execute(pgsql.SQL(
            "BEGIN; ALTER DATABASE {old} RENAME TO {pre}; ALTER DATABASE {side} RENAME TO {old}; "
            "COMMENT ON DATABASE {pre} IS {c}; COMMENT ON DATABASE {old} IS NULL; COMMIT;").format(
            old=ident(db), pre=ident(pre), side=ident(side), c=lit(comment)))
    finally:
        if terminate:
            for name in (db, pre):
                try:
                    maint.execute(pgsql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident(name)))
                except BigskiesError:
                    pass
    notify(f"Swapped: {db!r} is the restored copy; the previous database is kept as {pre!r}")


def pre_restore_copies(maint: Sql, db: str) -> list[dict]:
    """Pre-restore copies of ``db``, newest first (found by their comment, not their name)."""
    out = [{"name": r["name"], "of": db, "at": r["tag"].get("at"), "replaced_by": r["tag"].get("replaced_by"),
            "bytes": r["bytes"]} for r in _tagged(maint, PRE_RESTORE_TAG, db)]
    out.sort(key=lambda r: r["at"] or "", reverse=True)
    return out


def prune_pre_restore(maint: Sql, db: str, keep: int, notify=print) -> list[str]:
    dropped = []
    for c in pre_restore_copies(maint, db)[keep:]:
        drop_db(maint, c["name"])
        notify(f"Dropped old pre-restore copy {c['name']!r} (keep_pre_restore = {keep})")
        dropped.append(c["name"])
    return dropped


def undo(host: Host, *, terminate_sessions: bool = False, notify=print, task: str = "db.restore --undo") -> dict:
    """Swap the newest pre-restore copy back in; the current database becomes a
    pre-restore copy itself (so the undo can be undone).

    Raises:
        StorageError: there is no pre-restore copy.
    """
    db = host.postgres.database
    with PostgresAccess(host) as access:
        maint = access.sql(host.postgres.maintenance_db)
        with host_lock(access.runner, host.backup.dir, host.name, db, task, notify=notify):
            copies = pre_restore_copies(maint, db)
            if not copies:
                raise StorageError(f"no pre-restore copy of {db!r} on {host.name}")
            src = copies[0]["name"]
            now = utcnow()
            pre = pre_restore_name(db, now)
            with coordinators_paused(access.runner, host, notify) as stopped:
                _swap(maint, db, src, pre, terminate_sessions, f"undo: {src}", notify)
            maint.execute(pgsql.SQL("COMMENT ON DATABASE {} IS NULL").format(ident(db)))
            return {"database": db, "restored_from": src, "previous_kept_as": pre, "coordinators": stopped}
