"""Pure argv builders for PostgreSQL's own tools, version parsing and archive headers.

Nothing here runs a process. Tests assert the exact argv (DESIGN.md practice 4).
References: pg_dump(1), pg_restore(1), psql(1) of PostgreSQL 15; the custom
archive header layout is ``src/bin/pg_dump/pg_backup_archiver.c`` (WriteHead/ReadHead).
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
# First minor releases whose psql understands \restrict / \unrestrict (CVE-2025-8714 fix, Aug 2025).
RESTRICT_FIRST = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}
PLAIN_TRAILER = b"-- PostgreSQL database dump complete"
PSQL_BASE = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-psqlrc"]


@dataclass(frozen=True, order=True)
class PgVersion:
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    def understands_restrict(self) -> bool:
        """Whether a psql of this version accepts ``\\restrict`` lines in plain dumps."""
        if self.major >= 18:
            return True
        first = RESTRICT_FIRST.get(self.major)
        return first is not None and self.minor >= first


def parse_tool_version(text: str) -> PgVersion:
    """Parse ``pg_dump (PostgreSQL) 15.18 (Debian ...)`` into ``PgVersion(15, 18)``.

    Raises:
        ValueError: the text carries no PostgreSQL version.
    """
    m = VERSION_RE.search(text)
    if not m:
        raise ValueError(f"no PostgreSQL version in {text.strip()[:120]!r}")
    return PgVersion(int(m.group(1)), int(m.group(2) or 0))


def parse_server_version_num(num: int | str) -> PgVersion:
    """``server_version_num`` (e.g. 150018) to ``PgVersion(15, 18)``."""
    n = int(num)
    return PgVersion(n // 10000, n % 10000)


def conn_args(*, host: str | None, port: int | None, user: str | None) -> list[str]:
    """libpq connection flags shared by every tool. Never carries a password."""
    args: list[str] = []
    if host:
        args += ["-h", host]
    if port:
        args += ["-p", str(port)]
    if user:
        args += ["-U", user]
    return args + ["-w"]  # never prompt: an unattended run must not hang (--no-password)


def pg_dump_args(database: str, *, fmt: str, compress_level: int | None = None,
                 snapshot: str | None = None, exclude_table_data: tuple[str, ...] = (),
                 schema_only: bool = False, verbose: bool = False,
                 lock_wait_timeout: float | None = None) -> list[str]:
    """Arguments (after connection flags) for pg_dump writing the archive to stdout.

    ``fmt`` is ``plain`` (we compress the stream ourselves) or ``custom``
    (``-Fc -Z<level>``: pg_dump compresses, and pg_restore can run in parallel).
    ``snapshot`` makes the dump see exactly the snapshot our row counts used
    (pg_dump ``--snapshot``, exported with ``pg_export_snapshot()``).
    ``lock_wait_timeout`` (seconds) becomes ``--lock-wait-timeout=<ms>``: pg_dump fails
    instead of waiting longer for a table's lock.
    """
    args = ["--format", "p" if fmt == "plain" else "c"]
    if lock_wait_timeout:
        args.append(f"--lock-wait-timeout={max(1, int(round(lock_wait_timeout * 1000)))}")
    if fmt == "custom":
        args += ["--compress", str(6 if compress_level is None else compress_level)]
    if snapshot:
        args += ["--snapshot", snapshot]
    for pat in exclude_table_data:
        args += ["--exclude-table-data", pat]
    if schema_only:
        args.append("--schema-only")
    if verbose:
        args.append("--verbose")
    args += ["--dbname", database]
    return args


def pg_restore_args(database: str, *, jobs: int = 1, no_owner: bool = True, from_file: str | None = None) -> list[str]:
    """Arguments for pg_restore into ``database``: stop at the first error, one transaction
    when serial (all-or-nothing), ``--no-owner --no-acl`` unless owners are kept."""
    args = ["--dbname", database, "--exit-on-error"]
    if jobs > 1:
        args += ["--jobs", str(jobs)]
    else:
        args.append("--single-transaction")
    if no_owner:
        args += ["--no-owner", "--no-acl"]
    if from_file:
        args.append(from_file)
    return args


def psql_args(database: str, *, single_transaction: bool = False, tuples_only: bool = False,
              quiet: bool = True) -> list[str]:
    """psql reading SQL from stdin with ``ON_ERROR_STOP`` (restore and library queries).

    ``quiet=False`` keeps psql's command tags on stdout (``COPY 5000000``: the rows
    the server inserted), which a plain restore uses instead of counting afterwards.
    """
    args = list(PSQL_BASE) if quiet else [a for a in PSQL_BASE if a != "-q"]
    if tuples_only:
        args += ["-A", "-t"]
    if single_transaction:
        args.append("--single-transaction")
    return args + ["--dbname", database]


# ----------------------------------------------------------------- archive headers
@dataclass(frozen=True)
class CustomHeader:
    """What pg_dump wrote at the start of a custom-format archive."""

    archive_version: tuple[int, int, int]
    database: str
    server_version: str
    pg_dump_version: str
    compression: int

    @property
    def archive_version_str(self) -> str:
        return "%d.%d" % self.archive_version[:2]


def parse_custom_header(head: bytes) -> CustomHeader:
    """Decode the header of a custom-format (``-Fc``) archive.

    Args:
        head: the first bytes of the file (4 KiB is plenty).

    Raises:
        ValueError: not a custom archive, or the header is cut short.
    """
    if not head.startswith(b"PGDMP"):
        raise ValueError("not a custom-format archive (no PGDMP magic)")
    pos = 5
    vmaj, vmin, vrev, int_size, off_size, fmt = head[pos:pos + 6]
    pos += 6
    if int_size not in (4, 8):
        raise ValueError("corrupt archive header")

    def read_int():
        nonlocal pos
        if pos + 1 + int_size > len(head):
            raise ValueError("archive header cut short")
        sign = head[pos]
        val = int.from_bytes(head[pos + 1:pos + 1 + int_size], "little")
        pos += 1 + int_size
        return -val if sign else val

    def read_str():
        nonlocal pos
        n = read_int()
        if n < 0:
            return ""
        s = head[pos:pos + n]
        if len(s) < n:
            raise ValueError("archive header cut short")
        pos += n
        return s.decode("utf-8", "replace")

    version = (vmaj, vmin, vrev)
    compression = 0
    if version >= (1, 15, 0):
        compression = head[pos]  # compression algorithm byte (PG 16+)
        pos += 1
    else:
        compression = read_int()
    for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
        read_int()
    dbname = read_str()
    server = read_str()
    dumpver = read_str()
    return CustomHeader(version, dbname, server, dumpver, compression)


def bump_custom_header_minor(data: bytes) -> bytes:
    """Return ``data`` with the archive's minor version byte raised by one (tests only:
    makes an archive "from a newer pg_dump", see ENVIRONMENT.md)."""
    return data[:6] + struct.pack("B", data[6] + 1) + data[7:]


PLAIN_DUMPED_BY_RE = re.compile(rb"^-- Dumped by pg_dump version (\d+)\.(\d+)", re.M)
PLAIN_DUMPED_FROM_RE = re.compile(rb"^-- Dumped from database version (\d+)\.(\d+)", re.M)
RESTRICT_RE = re.compile(rb"^\\restrict ([A-Za-z0-9]+)\s*$", re.M)


@dataclass(frozen=True)
class PlainHeader:
    pg_dump_version: PgVersion | None
    server_version: PgVersion | None
    restrict_key: str | None


def parse_plain_header(head: bytes) -> PlainHeader:
    """Read the versions and the ``\\restrict`` key from the first KiB of a plain dump.

    Raises:
        ValueError: the text does not start like a pg_dump plain dump.
    """
    if b"-- PostgreSQL database dump" not in head[:4096]:
        raise ValueError("not a pg_dump plain-format dump (no '-- PostgreSQL database dump' header)")
    by = PLAIN_DUMPED_BY_RE.search(head)
    fr = PLAIN_DUMPED_FROM_RE.search(head)
    rk = RESTRICT_RE.search(head)
    return PlainHeader(PgVersion(int(by.group(1)), int(by.group(2))) if by else None,
                       PgVersion(int(fr.group(1)), int(fr.group(2))) if fr else None,
                       rk.group(1).decode() if rk else None)


def plain_tail_complete(tail_bytes: bytes, restrict_key: str | None) -> bool:
    """True when a plain dump ends with pg_dump's completion trailer, followed only by
    the ``\\unrestrict`` line matching the file's ``\\restrict`` key (if it had one)."""
    t = tail_bytes.rstrip(b"\n")
    idx = t.rfind(PLAIN_TRAILER)
    if idx < 0:
        return False
    after = t[idx + len(PLAIN_TRAILER):].strip(b"\n-").strip()
    if restrict_key is None:
        return after == b""
    return after == b"\\unrestrict " + restrict_key.encode()
