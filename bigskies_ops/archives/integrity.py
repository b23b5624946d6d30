"""What an archive holds and whether it is whole: the format sniffed, the gzip stream
and pg_dump's completion trailer checked, the custom format's table of contents read,
the plain SQL fed through the scanner (:mod:`bigskies_ops.archives.plainsql`)."""
from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
from dataclasses import dataclass, field

from bigskies_ops.archives import gz
from bigskies_ops.archives.catalog import PARTIAL_SUFFIX, read_manifest
from bigskies_ops.archives.plainsql import OwnerAclFilter, StatementFacts
from bigskies_ops.errors import ArchiveError, StorageError
from bigskies_ops.hosts.runners import tail
from bigskies_ops.pg.access import PostgresAccess
from bigskies_ops.pg.tools import PgVersion, parse_custom_header, parse_plain_header, plain_tail_complete

CHUNK = 1 << 20  # bytes per read of an archive

# ------------------------------------------------------------------ archive checks
@dataclass
class ArchiveInfo:
    path: str
    format: str                     # plain (gzipped SQL) | custom (check_archive refuses the rest)
    manifest: dict | None
    dump_version: PgVersion | None
    tool_version: PgVersion | None
    warnings: list[str] = field(default_factory=list)
    #: what :func:`scan_archive` read from the archive's SQL: the roles it names
    #: (None: not known before the load), its DDL facts (custom archives; plain dumps are
    #: judged while they load), the extensions it creates
    roles: set | None = None
    facts: StatementFacts | None = None
    extensions: set | None = None
    #: :func:`check_archive` with ``defer_digest``: the sha256 comparison still running
    #: (:meth:`confirm_digest` waits for it); None: done before check_archive returned
    pending_digest: "PendingDigest | None" = None
    #: (inode, size, mtime in ns) of the file when check_archive began (None: not a local file)
    checked_stat: tuple | None = None

    def confirm_unchanged(self) -> None:
        """Raise ArchiveError if the file at :attr:`path` is no longer the one checked
        (replaced, or written to, since :func:`check_archive` began): what was hashed
        must be what was loaded."""
        if self.checked_stat is None:
            return
        try:
            st = os.stat(self.path)
            now = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError as e:
            raise ArchiveError(f"{self.path}: changed while it was restored ({e.strerror or e}); "
                               f"the restored copy is not swapped in") from e
        if now != self.checked_stat:
            raise ArchiveError(f"{self.path}: changed while it was restored (replaced or written to since it was "
                               f"checked); the restored copy is not swapped in")

    def confirm_digest(self) -> None:
        """Wait for a deferred sha256 comparison (no-op if there is none).

        Raises:
            ArchiveError: the archive's sha256 or size differs from its manifest, or it
                could not be read.
        """
        if self.pending_digest is not None:
            self.pending_digest.result()


#: bytes of an archive's SQL a check keeps: the header, and the completion trailer
HEAD_BYTES, TAIL_BYTES = 65536, 8192


def sniff(runner, path: str) -> bytes:
    with runner.open_read(path) as f:
        return f.read(HEAD_BYTES)


def gzip_full_check(runner, path: str) -> bytes:
    """Decompress the whole file; return the last 8 KiB of the SQL. Raises ArchiveError."""
    tail_b = b""
    with runner.open_read(path) as f:
        for _done, out in gunzip_chunks(f, path=path):
            tail_b = (tail_b + out)[-TAIL_BYTES:]
    return tail_b


def toc_listing(access: PostgresAccess, path: str) -> str:
    """``pg_restore -l`` of a custom archive on the control machine, run where the
    host's tools are (natively with the path, or in the container via stdin).

    Raises:
        ArchiveError: pg_restore cannot read the archive (message names both versions
            when it is from a newer pg_dump).
    """
    return run_pg_restore_on(access, ["--list"], path)


def run_pg_restore_on(access: PostgresAccess, args: list[str], path: str) -> str:
    """Stdout of ``pg_restore ARGS`` reading the local archive ``path`` where the host's
    tools are (natively by path; in a container or on an SSH host through stdin).

    Raises:
        ArchiveError: pg_restore failed (naming the versions for an archive too new).
    """
    if access.host.container or access.host.is_remote:
        rc, out, err = feed_file(access, "pg_restore", args, path, decompress=False, capture=True)
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


def check_archive(access: PostgresAccess, path: str, *, full: bool | None = None,
                  defer_digest: bool = False) -> ArchiveInfo:
    """Prove ``path`` is a complete dump the host's tools can restore. Touches no database.

    Args:
        access: the target host's PostgreSQL access (its tools read the archive).
        path: archive on the control machine.
        full: force (True) or skip (False) the end-to-end read; default: only when
            there is no manifest sha256 to compare against.
        defer_digest: compare the file's sha256 with its manifest's on a thread of its
            own and return before it is done: the caller must call
            :meth:`ArchiveInfo.confirm_digest` before it uses what it read (a restore
            does while it creates its side database, before the load: issue 21). The
            manifest's status and the file's size are still checked here.

    Raises:
        ArchiveError: missing, in-progress, FAILED, checksum mismatch, truncated,
            not a dump, or too new for the local tools.
    """
    from bigskies_ops.hosts.local import LocalRunner
    lr = LocalRunner()
    if path.endswith(PARTIAL_SUFFIX):
        raise ArchiveError(f"{path}: an in-progress (.partial) file is never restored")
    if not lr.exists(path):
        raise ArchiveError(f"{path}: no such file")
    try:
        st = os.stat(path)
    except OSError as e:
        raise ArchiveError(f"{path}: cannot be read ({e.strerror or e})") from e
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):  # a folder: its read says so below
        raise ArchiveError(f"{path}: not a regular file (a FIFO, socket or device); an archive is a file")
    pending: list[PendingDigest] = []
    man = check_against_manifest(lr, path, deferred=pending if defer_digest else None)
    if full is None:
        full = man is None or not man.get("sha256")
    try:
        head = sniff(lr, path)
        if head.startswith(b"\x1f\x8b"):
            info = _check_plain(access, lr, path, head, man, full)
        elif head.startswith(b"PGDMP"):
            info = _check_custom(access, path, head, man, full)
        elif head.lstrip().startswith(b"--") and b"PostgreSQL database dump" in head[:4096]:
            raise ArchiveError(f"{path}: uncompressed plain SQL is not a supported archive; gzip it first")
        else:
            raise ArchiveError(f"{path}: not a PostgreSQL dump (neither gzip nor custom archive)")
    except (ArchiveError, OSError):
        if pending:  # a damaged archive: its sha256 is the cause to name, not a symptom read from its header
            pending[0].result()
        raise
    info.pending_digest = pending[0] if pending else None
    info.checked_stat = (st.st_ino, st.st_size, st.st_mtime_ns)
    return info


def check_against_manifest(runner, path: str, *, deferred: list | None = None) -> dict | None:
    """The manifest of ``path`` (None: there is none), after checking that it says DONE
    and that the file's size (bytes) and sha256 are the ones it records.

    Args:
        deferred: a list to which the sha256 comparison is appended as a running
            :class:`PendingDigest` instead of being waited for (None: wait).

    Raises:
        ArchiveError: the manifest says the backup did not finish, or the file differs
            or cannot be read.
    """
    man = read_manifest(runner, path)
    if man is None:
        return None
    if man.get("status") != "DONE":
        raise ArchiveError(f"{path}: its manifest says {man.get('status')} "
                           f"({man.get('error') or 'backup did not finish'}); refusing to restore it")
    if man.get("bytes") is not None and type(man["bytes"]) is not int:
        raise ArchiveError(f"{path}: its manifest's size is not a byte count ({man['bytes']!r}): manifest damaged")
    if deferred is not None:
        try:
            size = runner.size(path)
        except (OSError, StorageError) as e:
            raise ArchiveError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from e
        _compare(path, man, size, None)
        deferred.append(PendingDigest(runner, path, man))
        return man
    try:
        digest, size = runner.sha256(path)
    except StorageError as e:  # unreadable: a failed check of this archive, like any other
        raise ArchiveError(f"{path}: cannot be read ({e})") from e
    _compare(path, man, size, digest)
    return man


def _compare(path: str, man: dict, size: int, digest: str | None) -> None:
    """Raise ArchiveError if ``size`` (bytes) or ``digest`` (sha256 hex; None: not known
    yet) differs from the manifest ``man``'s."""
    if man.get("bytes") is not None and size != man["bytes"]:
        raise ArchiveError(f"{path}: size {size} bytes differs from the manifest's {man['bytes']} "
                           f"(truncated or changed)")
    if digest is not None and man.get("sha256") and digest != man["sha256"]:
        raise ArchiveError(f"{path}: sha256 differs from the manifest (file changed or corrupt)")


class PendingDigest:
    """The sha256 of an archive computed on a daemon thread (hashlib releases the GIL),
    compared with its manifest by :meth:`result`."""

    def __init__(self, runner, path: str, man: dict):
        self.path, self.man = path, man
        self._out: tuple | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(runner,), daemon=True, name="archive-sha256")
        self._thread.start()

    def _run(self, runner) -> None:
        try:
            self._out = runner.sha256(self.path)
        except BaseException as e:  # noqa: BLE001 - handed to the caller by result()
            self._error = e

    def result(self) -> None:
        """Wait for the digest. Raises ArchiveError: it differs, or the file could not be read."""
        self._thread.join()
        if isinstance(self._error, StorageError):
            raise ArchiveError(f"{self.path}: cannot be read ({self._error})") from self._error
        if self._error is not None:
            raise self._error
        digest, size = self._out
        _compare(self.path, self.man, size, digest)


def _check_plain(access: PostgresAccess, lr, path: str, head: bytes, man: dict | None, full: bool) -> ArchiveInfo:
    """A gzipped plain dump: its header read, with ``full`` the whole stream and pg_dump's
    completion trailer, and the host's psql able to read its ``\\restrict`` lines."""
    try:
        sql_head = gz.decompressobj().decompress(head)
    except gz.ERRORS as e:
        raise ArchiveError(f"{path}: corrupt gzip data ({e})")
    try:
        ph = parse_plain_header(sql_head)
    except ValueError as e:
        raise ArchiveError(f"{path}: {e}")
    return plain_verdict(access, path, path, ph, man, gzip_full_check(lr, path) if full else None)


def plain_verdict(access: PostgresAccess, path: str, where: str, ph, man: dict | None,
                  sql_tail: bytes | None) -> ArchiveInfo:
    """The end of a plain dump's check, wherever its bytes were read (here, or on an SSH host
    by db.verify): pg_dump's completion trailer in ``sql_tail`` (the SQL's last bytes; None:
    not read), and the host's psql able to read the dump's ``\\restrict`` lines.

    Args:
        path: the archive's path; ``where``: how messages name it.
        ph: the dump's parsed header (:func:`bigskies_ops.pg.tools.parse_plain_header`).

    Raises:
        ArchiveError: truncated dump, or a psql that cannot read it.
    """
    if sql_tail is not None and not plain_tail_complete(sql_tail, ph.restrict_key):
        extra = " followed by its matching \\unrestrict line" if ph.restrict_key else ""
        raise ArchiveError(f"{where}: truncated dump (no '-- PostgreSQL database dump complete' "
                           f"trailer{extra})")
    psql_v = access.tool_version("psql")
    if ph.restrict_key and not psql_v.understands_restrict():
        raise ArchiveError(f"{where}: dump from pg_dump {ph.pg_dump_version} has \\restrict lines that "
                           f"psql {psql_v} cannot read; upgrade psql to a release with the fix")
    warnings = []
    if ph.pg_dump_version and ph.pg_dump_version.major > psql_v.major:
        warnings.append(f"dump is from pg_dump {ph.pg_dump_version}, newer than psql {psql_v}")
    return ArchiveInfo(path, "plain", man, ph.pg_dump_version, psql_v, warnings)


def _check_custom(access: PostgresAccess, path: str, head: bytes, man: dict | None, full: bool) -> ArchiveInfo:
    """A custom archive: its header and table of contents read by the host's pg_restore
    (naming both versions when the archive is newer), with ``full`` every data block."""
    try:
        hdr = parse_custom_header(head)
    except ValueError as e:
        raise ArchiveError(f"{path}: {e}")
    pr_v = access.tool_version("pg_restore")
    try:
        run_pg_restore_on(access, ["--list"], path)
    except ArchiveError as e:
        if "newer pg_dump" in str(e):
            # the rest of a header in an unknown format may not decode: name the version only if sane
            dv = hdr.pg_dump_version if re.fullmatch(r"\d+(\.\d+)*", hdr.pg_dump_version or "") else None
            raise ArchiveError(f"{path}: archive format {hdr.archive_version_str} written by "
                               f"{'pg_dump ' + dv if dv else 'a newer pg_dump'} is newer than pg_restore "
                               f"{pr_v} can read; use pg_restore {dv or 'of that release'} or newer") from None
        raise
    if full:
        run_pg_restore_on(access, ["--file", "/dev/null"], path)
    try:
        dv = PgVersion(*[int(x) for x in hdr.pg_dump_version.split(".")[:2]])
    except ValueError:
        dv = None
    return ArchiveInfo(path, "custom", man, dv, pr_v, [])


# ------------------------------------------------------------------ streaming into tools
def raw_chunks(f):
    done = 0
    while True:
        b = f.read(CHUNK)
        if not b:
            return
        done += len(b)
        yield done, b


def gunzip_chunks(f, max_out: int = 4 * CHUNK, path: str = "archive", raw=None):
    """Decompress a (possibly multi-member) gzip file, yielding (compressed bytes read,
    at most ``max_out`` bytes of output) so memory stays bounded whatever the ratio.

    What follows the last member is judged as GNU gunzip does: zero bytes (padding, e.g.
    from a tape or a block device) are ignored; anything else is an error.

    ``raw``: an iterator of ``(bytes read, bytes)`` to read instead of ``f`` (a file
    still being written: :meth:`bigskies_ops.jobs.handoff.GrowingFile.raw_chunks`).

    Raises:
        ArchiveError: corrupt data, trailing garbage, or a truncated last member.
    """
    d = gz.decompressobj()
    done = 0
    padding = False
    for done, b in (raw if raw is not None else raw_chunks(f)):
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
              stdout_sink=None, source=None):
    """Stream a local file into ``tool``'s stdin on the host (optionally gunzipping and
    filtering on the way). Returns ``(returncode, stdout_text, stderr_text)``.

    The file is read in 1 MiB chunks; nothing is held in memory whole. ``pgoptions``:
    session settings for the tool (:meth:`PostgresAccess.run_tool`); ``stdout_sink``:
    called with each chunk of the tool's stdout as it arrives; ``source``: an iterator of
    ``(bytes read, bytes)`` to send instead of the file (``path`` then names it in messages).
    """
    from bigskies_ops.hosts.local import LocalRunner
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
        with (LocalRunner().open_read(path) if source is None else contextlib.nullcontext()) as f:
            for raw_done, b in (source if source is not None else
                                gunzip_chunks(f, path=path) if decompress else raw_chunks(f)):
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


# ------------------------------------------------------------------ what the archive needs
def scan_archive(access: PostgresAccess, info: ArchiveInfo) -> ArchiveInfo:
    """Fill ``info.roles``, ``info.facts`` and ``info.extensions`` from the archive's SQL.

    The backup records them in the manifest (``roles``, ``extensions``, and for a custom
    archive ``parallel_hazards``): a plain dump while it streams through the same
    scanner, a custom archive written here with :func:`custom_schema_facts`. Without
    them (an older backup or older rules, a custom archive written on an SSH host or in a container)
    a custom archive's schema is read here (``pg_restore --schema-only``: no data is
    read when the TOC has offsets) and a plain dump end to end. Returns ``info``.
    Raises ArchiveError when pg_restore cannot read it.
    """
    man = info.manifest or {}
    if "roles" in man and "extensions" in man and (info.format == "plain" or (
            "parallel_hazards" in man and _hazards_version(man) >= StatementFacts.RULES)):
        info.roles, info.extensions = set(man["roles"]), set(man["extensions"])
        if info.format == "custom":
            info.facts = StatementFacts()
            info.facts.post_hazards = list(man["parallel_hazards"])
        return info
    if info.format == "custom":
        facts = custom_schema_facts(access, info.path)
        info.roles, info.extensions = set(facts["roles"]), set(facts["extensions"])
        info.facts = StatementFacts()
        info.facts.post_hazards = list(facts["parallel_hazards"])
        return info
    flt = OwnerAclFilter(emit=False)
    with open(info.path, "rb") as f:
        for _done, b in gunzip_chunks(f, path=info.path):
            flt.feed(b)
    flt.flush()
    info.roles, info.facts, info.extensions = set(flt.roles), flt.facts, set(flt.facts.extensions)
    return info


def _hazards_version(man: dict) -> int:
    """The rules' edition a manifest's ``parallel_hazards`` were found with (1 when not
    recorded or not a whole number: read again)."""
    v = man.get("parallel_hazards_version")
    return v if isinstance(v, int) and not isinstance(v, bool) else 1


def custom_schema_facts(access: PostgresAccess, path: str) -> dict:
    """What a custom archive's schema (``pg_restore --schema-only --file -``, run where
    the host's tools are) tells a restore: ``roles`` it names, ``extensions`` it
    creates, ``parallel_hazards`` (:class:`StatementFacts`: why a parallel
    ``pg_restore --jobs`` could give another result than a serial one) and
    ``parallel_hazards_version`` (:attr:`StatementFacts.RULES`). Recorded in
    the manifest of a custom backup; read again for an archive without them."""
    flt = OwnerAclFilter(emit=False)
    for _done, b in pg_restore_script(access, path, ["--schema-only"]):
        flt.feed(b)
    flt.flush()
    return {"roles": sorted(flt.roles), "extensions": sorted(flt.facts.extensions),
            "parallel_hazards": flt.facts.load_hazards + flt.facts.post_hazards,
            "parallel_hazards_version": StatementFacts.RULES}


def pg_restore_script(access: PostgresAccess, path: str, args: list[str]):
    """``(bytes, SQL bytes)`` chunks of ``pg_restore ARGS --file -`` of the local archive
    ``path``, run where the host's tools are (the archive fed over stdin to a container
    or an SSH host). Raises ArchiveError when pg_restore fails."""
    local = not access.host.container and not access.host.is_remote
    proc = access.popen_tool("pg_restore", [*args, "--file", "-", *([path] if local else [])], stdin=not local)
    feeder = None
    if not local:
        def feed():
            try:
                with open(path, "rb") as f:
                    for _d, b in raw_chunks(f):
                        proc.stdin.write(b)
                proc.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
    done = 0
    try:
        for b in iter(lambda: proc.stdout.read(CHUNK), b""):
            done += len(b)
            yield done, b
    except BaseException:
        proc.kill()
        raise
    rc = proc.wait()
    if feeder is not None:
        feeder.join(10)
    if rc != 0:
        raise ArchiveError(f"{path}: pg_restore cannot read the archive: {tail(proc.stderr_text(), 400)}")
