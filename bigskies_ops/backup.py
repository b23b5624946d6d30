"""``db.backup``: dump one database into a new archive with its manifest.

Sequence (CONTRACTS.md section 2):

1. take the (host, database) lock; pick a name that never overwrites (``_N``);
2. write the manifest as STARTED;
3. open a REPEATABLE READ, READ ONLY transaction, export its snapshot, read the
   table list and the schema_migrations head in it;
4. run ``pg_dump --snapshot`` and stream its stdout through the compressor and
   sha256 into ``<archive>.partial`` (the dump never sits in memory), while the
   same transaction counts every table's rows exactly, in the dump's snapshot;
5. check pg_dump's exit status, that a plain dump ends with its completion
   trailer, fsync, publish under the final name without replacing anything, and
   write the manifest as DONE (or FAILED with phase and stderr tail; the
   ``.partial`` is removed and nothing appears under the final name).
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

from . import __version__, gz
from .access import PostgresAccess, SqlSession, ident, lit
from .catalog import (PARTIAL_SUFFIX, Backup, archive_name, iso, list_backups, utcnow, write_manifest)
from .errors import BigskiesError, CommandError, StorageError
from .inventory import Host
from .locks import host_lock
from .pgtools import parse_server_version_num, pg_dump_args, plain_tail_complete, parse_plain_header
from .runners import redact_argv, tail
from psycopg import sql as pgsql

CHUNK = 1 << 20  # bytes read from pg_dump per iteration

TABLES_SQL = """
SELECT n.nspname AS schema, c.relname AS name
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""

READABLE_SQL = """
SELECT n.nspname AS schema, c.relname AS name
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND pg_catalog.has_table_privilege(c.oid, 'SELECT')
"""

MIGRATION_HEAD_SQL = """
SELECT to_regclass('public.schema_migrations') IS NOT NULL AS present
"""

COPY_RE = re.compile(rb'^COPY ((?:"(?:[^"]|"")*"|[^".\s(]+)\.(?:"(?:[^"]|"")*"|[^".\s(]+)) ', re.M)
IDENT_RE = re.compile(r'"((?:[^"]|"")*)"|([^".\s(]+)')


def split_qualified(q: str) -> tuple[str, str]:
    """``"My Schema"."T"`` -> ``("My Schema", "T")``; ``public.users`` -> ``("public", "users")``."""
    parts = [m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2)
             for m in IDENT_RE.finditer(q)]
    if len(parts) != 2:
        raise ValueError(q)
    return parts[0], parts[1]


@dataclass
class BackupResult:
    backup: Backup
    manifest: dict
    raw_bytes: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


def migration_head(session_or_sql) -> dict | None:
    """The newest row of ``schema_migrations`` (version, name) or None when absent."""
    if not session_or_sql.query(MIGRATION_HEAD_SQL)[0]["present"]:
        return None
    cols = {r["column_name"] for r in session_or_sql.query(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name = 'schema_migrations'")}
    name_col = "name" if "name" in cols else None
    rows = session_or_sql.query(
        "SELECT version::text AS version" + (", name" if name_col else ", NULL::text AS name")
        + " FROM public.schema_migrations ORDER BY version DESC LIMIT 1")
    if not rows:
        return {"version": None, "name": None, "count": 0}
    cnt = session_or_sql.query("SELECT count(*) AS n FROM public.schema_migrations")[0]["n"]
    return {"version": rows[0]["version"], "name": rows[0]["name"], "count": cnt}


def count_rows_sql(tables: list[dict]) -> pgsql.Composable:
    """One query counting every table exactly: ``SELECT 0 AS i, count(*) FROM s.t UNION ALL ...``."""
    parts = [pgsql.SQL("SELECT {} AS i, count(*) AS n FROM {}").format(lit(i), ident(t["schema"], t["name"]))
             for i, t in enumerate(tables)]
    return pgsql.SQL(" UNION ALL ").join(parts)


class _Sink:
    """Compress (plain: gzip container, ISA-L or zlib level N: bigskies_ops.gz) + sha256 + write, chunk by chunk.

    For plain dumps it keeps the first 64 KiB (the header) and the last 8 KiB (the
    completion trailer) of the SQL, and with ``track_copy`` notes which tables have a
    ``COPY ... FROM stdin`` block (pg_dump's own ``--exclude-table-data`` semantics),
    with the same statement lexer as the restore (restore.OwnerAclFilter), so a data
    row or a function body that looks like a COPY statement is never taken for one.
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
            from .restore import OwnerAclFilter
            self._copy = OwnerAclFilter(drop=False, emit=False)

    @property
    def copy_tables(self) -> set[tuple[str, str]] | None:
        """Tables with a COPY block (None when not tracked: every table has its data)."""
        return None if self._copy is None else self._copy.tables_with_data()

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


def snapshot_facts(session: SqlSession, access: PostgresAccess, manifest: dict) -> tuple[str, list[dict]]:
    """In ``session`` (not yet in a transaction): open the REPEATABLE READ, READ ONLY
    transaction whose snapshot pg_dump shares (``pg_dump --snapshot``, PostgreSQL docs
    9.27.5 "Snapshot Synchronization Functions"), and record in ``manifest`` what
    describes it: server and pg_dump versions, snapshot id, schema_migrations head.

    Returns:
        ``(snapshot_id, tables)``: the tables (``TABLES_SQL`` rows) seen by the snapshot.
    """
    session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    snap = session.query("SELECT pg_export_snapshot() AS s, current_setting('server_version_num') AS v")[0]
    manifest["server_version"] = str(parse_server_version_num(snap["v"]))
    manifest["snapshot"] = snap["s"]
    tables = session.query(TABLES_SQL)
    manifest["schema_migrations_head"] = migration_head(session)
    manifest["pg_dump_version"] = str(access.tool_version("pg_dump"))
    return snap["s"], tables


class RowCounter:
    """Count every table's rows exactly in the snapshot's own transaction, on a thread,
    while pg_dump runs (so the counts describe the very snapshot that was dumped).

    Only tables the user may read are counted: a failing count would abort the
    transaction and invalidate the snapshot under pg_dump, hiding pg_dump's real error.
    """

    def __init__(self, session: SqlSession, tables: list[dict], schema_only: bool):
        self.session, self.tables, self.schema_only = session, tables, schema_only
        self.counts: dict[int, int] = {}
        self._err: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "RowCounter":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            if self.tables and not self.schema_only:
                can = {(r["schema"], r["name"]) for r in self.session.query(READABLE_SQL)}
                idx = [i for i, t in enumerate(self.tables) if (t["schema"], t["name"]) in can]
                if idx:
                    for r in self.session.query(count_rows_sql([self.tables[i] for i in idx])):
                        self.counts[idx[r["i"]]] = r["n"]
        except BaseException as e:  # reported after the dump, by result()
            self._err.append(e)

    def result(self, manifest: dict) -> dict[int, int]:
        """Wait for the counts: ``{table index: rows}``. Raises the counting error (with
        ``manifest["phase"] = "count"``)."""
        self._thread.join()
        if self._err:
            manifest["phase"] = "count"
            raise self._err[0]
        return self.counts

    def manifest_tables(self, data_tables: set | None) -> list[dict]:
        """The manifest's ``tables``: rows None for a table whose data is not in the archive."""
        return [{"schema": t["schema"], "name": t["name"],
                 "rows": (self.counts.get(i) if (data_tables is None or (t["schema"], t["name"]) in data_tables)
                          else None)}
                for i, t in enumerate(self.tables)]


def record_failure(e: BaseException, manifest: dict, t0: float, writer, final: str, partial: str,
                   proc, session, notify, *, record: bool = True) -> None:
    """After a failed dump: stop pg_dump and the snapshot session, remove the ``.partial``,
    write the manifest as FAILED (when ``record``; a failure to write it is a warning),
    then re-raise ``e`` as the project's error (OSError -> StorageError)."""
    if proc is not None:
        proc.kill()
    if session is not None:
        try:
            session.proc.kill()
        except Exception:
            pass
    try:
        writer.remove(partial)
    except BigskiesError:
        pass
    manifest.update({"status": "FAILED", "error": str(e) or type(e).__name__,
                     "finished_at": iso(utcnow()), "duration_s": round(time.monotonic() - t0, 3)})
    if isinstance(e, CommandError) and e.stderr and "stderr_tail" not in manifest:
        manifest["stderr_tail"] = e.stderr
    try:
        if record:
            write_manifest(writer, final, manifest)
    except BigskiesError as e2:
        notify(f"warning: could not record the FAILED manifest: {e2}")
    if isinstance(e, (KeyboardInterrupt, BigskiesError)):
        raise e
    if isinstance(e, OSError):
        raise StorageError(f"backup failed: {e}") from e
    raise e


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


def _custom_data_tables(access: PostgresAccess, path: str, tables: list[dict]) -> set[tuple[str, str]] | None:
    """Tables that have a TABLE DATA entry in a custom archive's TOC (``pg_restore -l``)."""
    from .restore import toc_listing
    try:
        text = toc_listing(access, path)
    except BigskiesError:
        return None
    return {(t["schema"], t["name"]) for t in tables if f" TABLE DATA {t['schema']} {t['name']} " in text}


def backup(host: Host, *, fmt: str | None = None, label: str | None = None, kind: str = "manual",
           exclude_table_data: tuple[str, ...] = (), schema_only: bool = False, database: str | None = None,
           progress=None, notify=print, task: str = "db.backup", verbose: bool = False) -> BackupResult:
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

    Returns:
        :class:`BackupResult` with the published archive and its DONE manifest.

    Raises:
        PostgresError: unreachable server, bad credentials, pg_dump failure (manifest FAILED).
        StorageError: the backup folder cannot be written (full disk; manifest FAILED).
        LockBusyError: another task holds the (host, database) lock.
    """
    if host.is_remote:
        from .ssh import remote_backup  # implemented by the SSH layer
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
            res = _backup_locked(access, host, bdir, db, fmt, level, label, kind, tuple(exclude_table_data),
                                 schema_only, progress, notify, verbose=verbose)
        _size_alert(host, res, notify, runner)
        return res


def _size_alert(host: Host, res: BackupResult, notify, runner=None) -> None:
    """Warn (and post to the ``alerts.webhook_env`` webhook) when the new archive's size is more
    than ``alerts.size_change_pct`` away from the median of the recent ones (health.py).
    Never fails the backup: a problem here is itself only a warning."""
    from .health import size_alert_after_backup
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
    try:
        session = access.sql(db).session()
        snapshot, tables = snapshot_facts(session, access, manifest)
        args = pg_dump_args(db, fmt=fmt, compress_level=level, snapshot=snapshot,
                            exclude_table_data=excl, schema_only=schema_only, verbose=verbose)
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
        try:
            f = runner.open_write(partial)  # created with our mode (0640) before pg_dump may open it
        except OSError as e:
            raise StorageError(f"cannot write {partial}: {e.strerror}") from e
        if direct:
            f.close()
            f = open(os.devnull, "wb")
        proc = access.popen_tool("pg_dump", args)
        counter = RowCounter(session, tables, schema_only).start()
        # which tables have data only matters when some data is left out on purpose;
        # otherwise every table's count is recorded and checked at restore
        sink = _Sink(f, fmt, level, track_copy=bool(excl or schema_only))
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
            from .restore import _sha256
            digest, size = _sha256(runner, partial)
            if progress:
                progress(size, size)
        else:
            digest, size = sink.sha.hexdigest(), sink.out_bytes
        counter.result(manifest)
        session.close()
        session = None
        manifest["phase"] = "finalize"
        if fmt == "plain":
            try:
                header = parse_plain_header(sink.head)
            except ValueError as e:
                raise StorageError(f"pg_dump output is not a plain dump: {e}") from e
            if not plain_tail_complete(sink.tail, header.restrict_key):
                raise StorageError("pg_dump exited 0 but the dump lacks its completion trailer")
            data_tables = sink.copy_tables
        else:
            data_tables = _custom_data_tables(access, partial, tables)
        manifest["tables"] = counter.manifest_tables(data_tables)
        roles_data = None
        if host.backup.roles:  # backup.roles: true -> <archive>.roles.sql beside it (bigskies_ops.roles)
            from .roles import dump_roles
            manifest["phase"] = "roles"
            roles_data = dump_roles(access)
        if not runner.link_noreplace(partial, final):
            raise StorageError(f"{final} appeared while we were writing; refusing to overwrite it")
        if roles_data is not None:
            from .roles import write_roles
            write_roles(runner, final, roles_data, manifest)
        finished = utcnow()
        manifest.update({
            "status": "DONE", "phase": None, "sha256": digest, "bytes": size,
            "raw_bytes": sink.raw_bytes if fmt == "plain" else None,
            "finished_at": iso(finished), "duration_s": round(time.monotonic() - t0, 3),
            "stderr_tail": tail(proc.stderr_text()) or None,
        })
        write_manifest(runner, final, manifest)
        return BackupResult(Backup(bdir, name, manifest, size), manifest, sink.raw_bytes,
                            time.monotonic() - t0)
    except BaseException as e:
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
