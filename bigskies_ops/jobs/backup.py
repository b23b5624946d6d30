"""``db.backup``: dump one database into a new archive with its manifest.

Sequence (CONTRACTS.md section 2):

1. take the (host, database) lock; pick a name that never overwrites (``_N``);
2. write the manifest as STARTED;
3. open a REPEATABLE READ, READ ONLY transaction, export its snapshot, read the
   table list and the schema_migrations head in it;
4. run ``pg_dump --snapshot`` and stream its stdout through the compressor and
   sha256 into ``<archive>.partial`` (the dump never sits in memory);
5. check pg_dump's exit status, that a plain dump ends with its completion
   trailer, and take every table's exact row count in the dump's snapshot: a plain
   dump's counts are its own COPY data lines (:func:`stream_row_counts`; the few
   tables the stream cannot give are counted with ``count(*)`` in the still open
   snapshot transaction), a custom dump's come from ``count(*)`` run in the same
   transaction while pg_dump runs (:class:`RowCounter`);
6. fsync, publish under the final name without replacing anything, and write the
   manifest as DONE (or FAILED with phase and stderr tail; the ``.partial`` is
   removed and nothing appears under the final name).
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import queue
import re
import socket
import threading
import time
from dataclasses import dataclass, field

from bigskies_ops import __version__
from bigskies_ops.archives import gz
from bigskies_ops.pg.access import PostgresAccess, SqlSession
from bigskies_ops.archives.plainsql import PY_CODECS
from bigskies_ops.archives.manifest import publish, record_failure, settle_interrupted
from bigskies_ops.archives.counts import RowCounter, snapshot_facts, stream_manifest_tables
from bigskies_ops.archives.catalog import PARTIAL_SUFFIX, Backup, archive_name, iso, latest, list_backups, utcnow, write_manifest
from bigskies_ops.text import human_bytes
from bigskies_ops.errors import BigskiesError, PostgresError, StorageError
from bigskies_ops.inventory import Host
from bigskies_ops.archives.locks import host_lock
from bigskies_ops.pg.lockwait import watching
from bigskies_ops.pg.tools import pg_dump_args, plain_tail_complete, parse_plain_header
from bigskies_ops.hosts.runners import redact_argv, tail

CHUNK = 1 << 20  # bytes read from pg_dump per iteration


@dataclass
class BackupResult:
    backup: Backup
    manifest: dict
    raw_bytes: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


class _Sink:
    """Compress (plain: gzip container, ISA-L or zlib level N: bigskies_ops.archives.gz) + sha256 + write, chunk by chunk.

    For plain dumps it keeps the first 64 KiB (the header) and the last 8 KiB (the
    completion trailer) of the SQL, and with ``track_copy`` reads the SQL with the
    same statement lexer as the restore (restore.OwnerAclFilter, tracking only): which
    tables have a ``COPY ... FROM stdin`` block (pg_dump's own ``--exclude-table-data``
    semantics) and how many data lines each block holds (:meth:`copy_blocks`), so a
    data row or a function body that looks like a COPY statement is never taken for one.
    """

    def __init__(self, f, fmt: str, level: int, track_copy: bool = False):
        self.f = f
        self.sha = hashlib.sha256()
        self.out_bytes = 0
        self.raw_bytes = 0
        self.comp = gz.compressobj(level) if fmt == "plain" else None
        self.head = b""
        self.tail = b""
        self._copy = None
        if track_copy and fmt == "plain":
            from bigskies_ops.archives.plainsql import OwnerAclFilter
            self._copy = OwnerAclFilter(emit=False, count_rows=True)

    def copy_blocks(self) -> tuple[list[tuple[str, str] | None], list[int]]:
        """End the stream; the ``COPY ... FROM stdin`` blocks in stream order: their tables
        (``(schema, name)``, None for a name the lexer could not read) and their data lines
        (one row per line in COPY's text format). Raises ValueError when not tracked."""
        if self._copy is None:
            raise ValueError("COPY blocks are tracked only for plain dumps with track_copy")
        self._copy.flush()  # the last bytes
        return list(self._copy.copy_tables), list(self._copy.copy_rows)

    def named_roles(self) -> tuple[set[str], set[str]]:
        """The roles the dump's statements name (owners, grantees, ...) and the extensions
        it creates (after :meth:`copy_blocks`)."""
        return set(self._copy.roles), set(self._copy.facts.extensions)

    def _emit(self, data: bytes):
        if data:
            self.sha.update(data)
            self.f.write(data)
            self.out_bytes += len(data)

    def write(self, chunk: bytes):
        self.raw_bytes += len(chunk)
        if self.comp is not None:
            if len(self.head) < 65536:
                self.head += chunk[:65536 - len(self.head)]
            if self._copy is not None:
                self._copy.feed(chunk)
            self.tail = (self.tail + chunk[-8192:])[-8192:]
            self._emit(self.comp.compress(chunk))
        else:
            self._emit(chunk)

    def finish(self):
        if self.comp is not None:
            self._emit(self.comp.flush())


    #                                                    whether pg_dump dumped their data


def _keep_session_while_idle(session: SqlSession, manifest: dict) -> None:
    """``SET LOCAL idle_in_transaction_session_timeout = 0`` (PostgreSQL >= 9.6): the
    snapshot session idles while pg_dump runs and must still be there to count afterwards."""
    major, _, minor = manifest.get("server_version", "0.0").partition(".")
    if int(major) >= 10 or (int(major) == 9 and int(minor or 0) >= 600):
        session.execute("SET LOCAL idle_in_transaction_session_timeout = 0")


def _pump(stream, q: "queue.Queue") -> None:
    """Reader thread: move pg_dump's stdout into a bounded queue so pg_dump never waits
    while we compress (zlib and pipe reads release the GIL: the two overlap)."""
    try:
        while True:
            b = stream.read(CHUNK)
            q.put(b)
            if not b:
                return
    except BaseException as e:  # delivered to the consumer
        q.put(e)


def as_listed(name: str, server_encoding: str | None) -> str:
    """``name`` as it reads in ``pg_restore -l`` output decoded as UTF-8 with replacement:
    pg_dump writes names in the database's encoding (a LATIN1 ``café`` is the byte 0xE9,
    shown as U+FFFD), so the comparison goes through the same loss."""
    codec = PY_CODECS.get((server_encoding or "UTF8").upper(), "utf-8")
    try:
        raw = name.encode(codec, "surrogateescape")
    except (UnicodeEncodeError, LookupError):
        return name
    return raw.decode("utf-8", "replace")


def _custom_data_tables(access: PostgresAccess, path: str, tables: list[dict],
                        server_encoding: str | None = None) -> set[tuple[str, str]] | None:
    """Tables that have a TABLE DATA entry in a custom archive's TOC (``pg_restore -l``)."""
    from bigskies_ops.archives.integrity import toc_listing
    try:
        text = toc_listing(access, path)
    except BigskiesError:
        return None
    return {(t["schema"], t["name"]) for t in tables
            if f" TABLE DATA {as_listed(t['schema'], server_encoding)} {as_listed(t['name'], server_encoding)} "
            in text}


def backup(host: Host, *, fmt: str | None = None, label: str | None = None, kind: str = "manual",
           exclude_table_data: tuple[str, ...] = (), schema_only: bool = False, database: str | None = None,
           progress=None, notify=print, task: str = "db.backup", verbose: bool = False,
           lock_wait_timeout: float | None = None) -> BackupResult:
    """Back up one database of ``host`` into its ``backup.dir``.

    Args:
        host: inventory host (local; SSH hosts stream through the same code).
        fmt: ``plain`` (``.sql.gz``) or ``custom`` (``.dump``); default ``host.backup.format``.
        label: free text stored in the manifest.
        kind: manifest kind (``manual``, ``scheduled``, ``pre-restore``, ...).
        exclude_table_data: pg_dump ``--exclude-table-data`` patterns.
        schema_only: pg_dump ``--schema-only``.
        database: override ``postgres.database``.
        progress: optional callable ``(raw_bytes_read, bytes_written)`` called per chunk.
        notify: callable for one-line messages (stale lock removed, warnings).
        verbose: pg_dump ``--verbose`` (its messages go to stderr and the manifest's
            stderr_tail, never into the archive).
        lock_wait_timeout: seconds the dump may wait for a lock (pg_dump
            ``--lock-wait-timeout``, and our sessions' ``lock_timeout``); default
            ``host.backup.lock_wait_timeout``, None waits. A wait is reported (``notify``)
            within a few seconds, naming the blocking session (:mod:`bigskies_ops.pg.lockwait`).

    Returns:
        :class:`BackupResult` with the published archive and its DONE manifest.

    Raises:
        PostgresError: unreachable server, bad credentials, pg_dump failure (manifest FAILED).
        StorageError: the backup folder cannot be written (full disk; manifest FAILED).
        LockBusyError: another task holds the (host, database) lock.
    """
    if lock_wait_timeout is not None:
        host = with_lock_wait_timeout(host, lock_wait_timeout)
    if host.is_remote:
        from bigskies_ops.jobs.pull import remote_backup
        res = remote_backup(host, fmt=fmt, label=label, kind=kind, exclude_table_data=exclude_table_data,
                            schema_only=schema_only, database=database, progress=progress, notify=notify, task=task,
                            **({"verbose": True} if verbose else {}))
        _size_alert(host, res, notify)
        return res
    fmt = fmt or host.backup.format
    if fmt not in ("plain", "custom"):
        raise BigskiesError(f"--format: expected plain or custom, got {fmt!r}", exit_code=2)
    db = database or host.postgres.database
    level = host.backup.compress_level
    with PostgresAccess(host) as access:
        runner = access.runner
        bdir = host.backup.dir
        runner.makedirs(bdir)
        with host_lock(runner, bdir, host.name, db, task, notify=notify):
            settle_interrupted(runner, bdir, db, notify)
            res = _backup_locked(access, host, bdir, db, fmt, level, label, kind, tuple(exclude_table_data),
                                 schema_only, progress, notify, verbose=verbose)
        _size_alert(host, res, notify, runner)
        return res


def without_space_check(host: Host, skip: bool) -> Host:
    """``host`` with ``backup.space_check`` off when ``skip`` (``--skip-space-check``)."""
    from dataclasses import replace
    return replace(host, backup=replace(host.backup, space_check=False)) if skip else host


def check_backup_space(writer, host: Host, bdir: str, db: str, fmt: str, manifest: dict) -> None:
    """Fail before pg_dump starts when ``bdir`` (on ``writer``'s machine) has less free
    space than the backup will take: the newest DONE backup of ``db`` in that format plus
    20%, or for a first backup the database's size (``manifest["database_bytes"]``, an
    upper bound: compression only shrinks it). Off with ``backup.space_check: false`` or
    ``--skip-space-check``; nothing is checked where free space cannot be read.

    Raises:
        StorageError: too little space (the manifest's phase is ``space``), naming both
            figures and the override.
    """
    if not host.backup.space_check:
        return
    last = latest([b for b in list_backups(writer, bdir) if b.format == fmt], database=db,
                  origin_host=manifest.get("origin_host"), notify=lambda _msg: None)
    if last is not None and last.size:
        need, basis = int(last.size * 1.2), f"the last {fmt} backup ({human_bytes(last.size)}) plus 20%"
    elif manifest.get("database_bytes"):
        need, basis = int(manifest["database_bytes"]), "the database's size (first backup in this format)"
    else:
        return
    free = writer.free_bytes(bdir)
    if free is not None and free < need:
        manifest["phase"] = "space"
        raise StorageError(f"not enough free space for the backup in {bdir}: {human_bytes(free)} free, about "
                           f"{human_bytes(need)} needed ({basis}); free space there, or pass --skip-space-check "
                           f"(backup.space_check: false) if you know it fits")


def with_lock_wait_timeout(host: Host, seconds: float | None) -> Host:
    """``host`` with ``backup.lock_wait_timeout`` set to ``seconds`` (a task's
    ``--lock-wait-timeout`` overrides the inventory's)."""
    from dataclasses import replace
    if seconds is None:
        return host
    if seconds < 0:
        raise BigskiesError(f"--lock-wait-timeout: expected seconds >= 0, got {seconds:g}", exit_code=2)
    return replace(host, backup=replace(host.backup, lock_wait_timeout=float(seconds) or None))


LOCK_TIMEOUT_RE = re.compile(r"canceling statement due to (?:lock|statement) timeout|could not obtain lock")


def lock_timeout_error(e: BaseException, host: Host, watcher) -> BigskiesError | None:
    """A clearer error for a dump that gave up waiting for a lock after
    ``backup.lock_wait_timeout`` seconds, naming what it waited for (None: ``e`` is
    something else). pg_dump --lock-wait-timeout reports the cancelled LOCK TABLE as a
    statement timeout; our own sessions' as a lock timeout."""
    limit = host.backup.lock_wait_timeout
    text = f"{e} {getattr(e, 'stderr', '') or ''}"
    if not limit or not LOCK_TIMEOUT_RE.search(text):
        return None
    m = re.search(r"LOCK TABLE (\S+) IN", text)
    seen = watcher.blocker_text() if watcher is not None else ""
    what = seen or (f"a lock on {m.group(1)}" if m else "a lock")
    err = PostgresError(f"gave up after {limit:g} s waiting for {what.removeprefix('waiting for ')} "
                        f"(--lock-wait-timeout {limit:g}); nothing was published. Run again when the "
                        f"blocking session has finished, or raise --lock-wait-timeout",
                        argv=getattr(e, "argv", None), returncode=getattr(e, "returncode", None),
                        stderr=getattr(e, "stderr", "") or "")
    return err


def _size_alert(host: Host, res: BackupResult, notify, runner=None) -> None:
    """Warn (and post to the ``alerts.webhook_env`` webhook) when the new archive's size is more
    than ``alerts.size_change_pct`` away from the median of the recent ones (health.py).
    Never fails the backup: a problem here is itself only a warning."""
    from bigskies_ops.jobs.health import size_alert_after_backup
    try:
        w = size_alert_after_backup(host, res.backup, notify=notify, runner=runner)
    except Exception as e:  # noqa: BLE001 - an alert must never turn a good backup into a failure
        notify(f"warning: size check skipped: {e}")
        return
    if w:
        res.warnings.append(w)


def _pick_name(runner, bdir: str, db: str, fmt: str, when) -> str:
    names = set(runner.listdir(bdir))
    n = 0
    while True:
        name = archive_name(db, when, fmt, n)
        if not ({name, name + ".manifest.json", name + PARTIAL_SUFFIX} & names):
            return name
        n += 1


def _backup_locked(access, host, bdir, db, fmt, level, label, kind, excl, schema_only, progress, notify,
                   verbose=False):
    runner = access.runner
    started = utcnow()
    t0 = time.monotonic()
    name = _pick_name(runner, bdir, db, fmt, started)
    final = posixpath.join(bdir, name)
    partial = final + PARTIAL_SUFFIX
    manifest = {
        "schema_version": 1, "tool": f"bigskies-ops {__version__}", "status": "STARTED", "phase": "connect",
        "kind": kind, "label": label, "origin_host": host.name, "control_host": socket.gethostname(),
        "database": db, "archive": name, "format": fmt,
        "compressor": gz.codec_name(level) if fmt == "plain" else "pg_dump custom (zlib)",
        "compress_level": level, "access_mode": host.access_mode,
        "container": host.container.name if host.container else None,
        "started_at": iso(started), "finished_at": None, "duration_s": None,
        "excluded_table_data": list(excl), "schema_only": schema_only,
        "verifications": [], "offsite": [], "pulled_from": None, "pulled_at": None,
    }
    session: SqlSession | None = None
    proc = None
    recorded = False  # STARTED manifest written (only once connected: s.7 "nothing harmed")
    wait_s = host.backup.lock_wait_timeout
    if wait_s:
        manifest["lock_wait_timeout_s"] = wait_s
    watch = watching(access, db, what="backup", timeout_s=wait_s, notify=notify)
    watcher = watch.__enter__()
    try:
        session = access.sql(db).session()
        snapshot, tables = snapshot_facts(session, access, manifest)
        args = pg_dump_args(db, fmt=fmt, compress_level=level, snapshot=snapshot,
                            exclude_table_data=excl, schema_only=schema_only, verbose=verbose,
                            lock_wait_timeout=wait_s)
        # A local custom archive is written by pg_dump itself: a seekable file gets the data
        # offsets in its TOC (pg_restore --jobs and -L then seek instead of scanning), and
        # pg_dump fsyncs it (pg_dump docs, --no-sync). Streams (container, SSH) go through _Sink.
        direct = fmt == "custom" and not access.host.container and not access.host.is_remote
        if direct:
            args = [*args, "--file", partial]
        argv = access.tool_argv("pg_dump", args)
        manifest["argv"] = redact_argv(argv)
        manifest["phase"] = "dump"
        write_manifest(runner, final, manifest)  # STARTED, before pg_dump starts
        recorded = True
        check_backup_space(runner, host, bdir, db, fmt, manifest)
        try:
            f = runner.open_write(partial)  # created with our mode (0640) before pg_dump may open it
        except OSError as e:
            raise StorageError(f"cannot write {partial}: {e.strerror}") from e
        if direct:
            f.close()
            f = open(os.devnull, "wb")
        if fmt == "plain":  # counted from the dump's own COPY data afterwards, in this transaction
            _keep_session_while_idle(session, manifest)
        proc = access.popen_tool("pg_dump", args)
        counter = RowCounter(session, tables, schema_only, notify).start() if fmt != "plain" else None
        sink = _Sink(f, fmt, level, track_copy=fmt == "plain")
        q: queue.Queue = queue.Queue(maxsize=16)
        threading.Thread(target=_pump, args=(proc.stdout, q), daemon=True).start()
        try:
            with f:
                while True:
                    chunk = q.get()
                    if isinstance(chunk, BaseException):
                        raise chunk
                    if not chunk:
                        break
                    sink.write(chunk)
                    if progress:
                        progress(sink.raw_bytes, sink.out_bytes)
                sink.finish()
                f.flush()
                if not direct:
                    _fsync(f)
        except OSError as e:
            manifest["phase"] = "write"
            proc.kill()
            raise StorageError(f"writing {partial} failed: {e.strerror or e}"
                               f"{' (file system full)' if getattr(e, 'errno', 0) == 28 else ''}") from e
        rc = proc.wait()
        if rc != 0:
            manifest["stderr_tail"] = tail(proc.stderr_text())
            err = access.error_for(proc.argv, rc, proc.stderr_text(), "pg_dump")
            if direct and "No space left on device" in proc.stderr_text():
                manifest["phase"] = "write"
                raise StorageError(f"writing {partial} failed: {tail(proc.stderr_text(), 300)} "
                                   f"(file system full)") from err
            raise err
        if direct:  # one read of the fresh file, from the page cache
            from bigskies_ops.archives.hashing import sha256_file
            digest, size = sha256_file(runner, partial)
            if progress:
                progress(size, size)
        else:
            digest, size = sink.sha.hexdigest(), sink.out_bytes
        if fmt == "plain":
            manifest["phase"] = "finalize"
            try:
                header = parse_plain_header(sink.head)
            except ValueError as e:
                raise StorageError(f"pg_dump output is not a plain dump: {e}") from e
            if not plain_tail_complete(sink.tail, header.restrict_key):
                raise StorageError("pg_dump exited 0 but the dump lacks its completion trailer")
            manifest["tables"] = stream_manifest_tables(session, sink, tables, excl=excl,
                                                        schema_only=schema_only, manifest=manifest, notify=notify)
            session.close()
            session = None
            manifest["phase"] = "finalize"
        else:
            counter.result(manifest)
            session.close()
            session = None
            manifest["phase"] = "finalize"
            manifest["tables"] = counter.manifest_tables(_custom_data_tables(access, partial, tables,
                                                                             manifest.get("server_encoding")))
            if direct:  # written here with offsets: its schema reads fast (restore.scan_archive)
                from bigskies_ops.archives.integrity import custom_schema_facts
                manifest.update(custom_schema_facts(access, partial))
        roles_data = None
        if host.backup.roles:  # backup.roles: true -> <archive>.roles.sql beside it (bigskies_ops.archives.roles)
            from bigskies_ops.archives.roles import dump_roles
            manifest["phase"] = "roles"
            roles_data = dump_roles(access)
        if roles_data is not None:
            from bigskies_ops.archives.roles import write_roles
            write_roles(runner, final, roles_data, manifest)
        finished = utcnow()
        manifest.update({
            "status": "DONE", "phase": None, "sha256": digest, "bytes": size,
            "raw_bytes": sink.raw_bytes if fmt == "plain" else None,
            "finished_at": iso(finished), "duration_s": round(time.monotonic() - t0, 3),
            "stderr_tail": tail(proc.stderr_text()) or None,
        })
        watch.__exit__(None, None, None)
        publish(runner, partial, final, manifest)
        return BackupResult(Backup(bdir, name, manifest, size), manifest, sink.raw_bytes,
                            time.monotonic() - t0)
    except BaseException as e:
        watch.__exit__(None, None, None)
        e = lock_timeout_error(e, host, watcher) or e
        # could not even connect (no STARTED manifest yet): leave the backup folder as it was
        record_failure(e, manifest, t0, runner, final, partial, proc, session, notify, record=recorded)


def _fsync(f) -> None:
    import os
    try:
        os.fsync(f.fileno())
    except (OSError, AttributeError, ValueError):
        pass


def recent_backups(host: Host, runner, n: int = 5) -> list[Backup]:
    return list_backups(runner, host.backup.dir)[:n]
