"""The backup engine: one database dumped in its own snapshot into a new archive with its manifest.

Every backup goes through :func:`dump`, whatever the host and wherever the archive
lands; only moving the bytes differs, and that is a :class:`Destination`
(bigskies_ops.jobs.destinations): a file here (a local host), a file on the SSH host
(``db.backup --host <ssh host>``) or a stream to here (``db.pull``).

Sequence (CONTRACTS.md section 2), the same for every destination:

1. under the (host, database) lock (:func:`archive_lock`, which first settles what
   killed runs left), pick a name that never overwrites (``_N``);
2. open a REPEATABLE READ, READ ONLY transaction, export its snapshot, read the
   table list and the schema_migrations head in it (archives.counts.snapshot_facts);
3. write the manifest as STARTED, then check the free space (:func:`check_backup_space`);
4. run ``pg_dump --snapshot`` into the destination; a wait for a lock is reported
   within seconds (bigskies_ops.pg.lockwait) and ends after ``backup.lock_wait_timeout``;
5. check pg_dump's exit status (each stage's, for a pipeline on an SSH host) and that
   the archive is complete, and take every table's exact row count in the dump's
   snapshot: a plain dump whose SQL passes through this process is counted from its
   own COPY data lines (archives.counts.stream_manifest_tables), any other with
   ``count(*)`` in the snapshot while pg_dump runs (archives.counts.RowCounter);
6. with ``backup.roles``, write the cluster's roles beside the archive (archives.roles);
7. publish under the final name without replacing anything, with the DONE manifest
   (or FAILED with phase and stderr tail; the ``.partial`` is removed and nothing
   appears under the final name: archives.manifest).
"""
from __future__ import annotations

import posixpath
import re
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from bigskies_ops import __version__, report
from bigskies_ops.archives.catalog import PARTIAL_SUFFIX, Backup, archive_name, iso, latest, list_backups, utcnow, write_manifest
from bigskies_ops.archives.counts import RowCounter, snapshot_facts, stream_manifest_tables
from bigskies_ops.archives.locks import host_lock
from bigskies_ops.archives.manifest import publish, record_failure, settle_interrupted
from bigskies_ops.archives.roles import dump_roles, write_roles
from bigskies_ops.errors import BigskiesError, PostgresError, StorageError, UsageError
from bigskies_ops.inventory import Host
from bigskies_ops.pg.access import PostgresAccess, SqlSession
from bigskies_ops.pg.lockwait import watching
from bigskies_ops.pg.tools import pg_dump_args
from bigskies_ops.hosts.runners import tail
from bigskies_ops.text import human_bytes


@dataclass
class BackupResult:
    """A published backup: ``backup`` (its archive), its DONE ``manifest``, ``raw_bytes``
    (bytes of SQL or archive that passed through this process, 0 when none did),
    ``seconds`` it took, and ``warnings`` (one line each, e.g. the size alert)."""
    backup: Backup
    manifest: dict
    raw_bytes: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DumpSpec:
    """What to dump: database ``db``, ``fmt`` (``plain``/``custom``), compression
    ``level`` (0-9), manifest ``kind`` and ``label``, pg_dump's ``excl``
    (``--exclude-table-data`` patterns), ``schema_only`` and ``verbose``."""
    db: str
    fmt: str
    level: int
    kind: str = "manual"
    label: str | None = None
    excl: tuple[str, ...] = ()
    schema_only: bool = False
    verbose: bool = False

    @property
    def data_left_out(self) -> bool:
        """Some table's data is not in the archive on purpose: only then does it matter
        which tables have data (a full dump has every table's)."""
        return bool(self.excl or self.schema_only)


@dataclass
class ArchiveFacts:
    """What a destination proved about the finished ``.partial``: its ``sha256`` (hex) and
    ``size`` (bytes), ``raw_bytes`` that passed through this process (None: none did),
    ``data_tables`` (``{(schema, name)}`` whose data is in it; None: every table's) and
    ``extra`` manifest fields (a local custom archive's schema facts)."""
    sha256: str
    size: int
    raw_bytes: int | None = None
    data_tables: set | None = None
    extra: dict = field(default_factory=dict)


class Destination:
    """Where the dump's bytes go; the engine (:func:`dump`) calls, in this order:
    :meth:`prepare` (pg_dump's argv, recorded), :meth:`start` (pg_dump running, the file
    open), :meth:`transfer` (every byte moved), :meth:`check_exit` (exit statuses) and
    :meth:`check_archive` (complete, hashed). ``writer`` is the runner of the machine
    that holds the archive, ``bdir`` the folder there; ``proc`` the running pg_dump (or
    pipeline), ``sink`` the object that saw the dump's SQL pass (None: the SQL never
    crossed this process, rows are then counted with ``count(*)``)."""

    #: ``pulled`` destinations record where and how the archive was pulled
    mode = "local"
    #: how a lock wait of this dump is reported (bigskies_ops.pg.lockwait)
    what = "backup"

    def __init__(self, access: PostgresAccess, writer, bdir: str):
        self.access, self.writer, self.bdir = access, writer, bdir
        self.proc = None
        self.sink = None

    def compressor(self, spec: DumpSpec) -> tuple[str, int]:  # pragma: no cover - interface
        """The manifest's ``compressor`` text and ``compress_level``."""
        raise NotImplementedError

    def manifest_fields(self) -> dict:
        return {}

    def counts_from_stream(self, spec: DumpSpec) -> bool:
        """Rows are counted from the SQL as it passes (:attr:`sink`), not with ``count(*)``."""
        return False

    def progress_measure(self, spec: DumpSpec) -> str:
        """What the first number given to ``progress`` counts: ``"raw"`` (bytes of the dump
        stream) or ``"archive"`` (archive bytes): the estimate of the total must be the same."""
        return "archive"

    def stop_if_cancelled(self) -> None:
        """Raise if whoever follows this dump has given up before it started (a pull whose
        restore could not create its side database: bigskies_ops.jobs.handoff.GrowingFile.cancel);
        nothing else can cancel it."""

    def prepare(self, spec: DumpSpec, args: list[str], partial: str, manifest: dict) -> None:
        raise NotImplementedError  # pragma: no cover - interface

    def start(self, spec: DumpSpec, partial: str, manifest: dict) -> None:
        raise NotImplementedError  # pragma: no cover - interface

    def transfer(self, partial: str, manifest: dict, progress) -> None:
        raise NotImplementedError  # pragma: no cover - interface

    def check_exit(self, spec: DumpSpec, manifest: dict) -> str:
        """Raise for a failed stage; return pg_dump's stderr (its messages)."""
        raise NotImplementedError  # pragma: no cover - interface

    def check_archive(self, spec: DumpSpec, partial: str, tables: list[dict], manifest: dict,
                      progress) -> ArchiveFacts:
        raise NotImplementedError  # pragma: no cover - interface


def check_format(fmt: str | None, host: Host) -> str:
    """``fmt`` or ``host.backup.format``. Raises UsageError (exit 2) unless plain or custom."""
    fmt = fmt or host.backup.format
    if fmt not in ("plain", "custom"):
        raise UsageError(f"--format: expected plain or custom, got {fmt!r}")
    return fmt


def pick_name(runner, bdir: str, db: str, fmt: str, when) -> str:
    """A new archive name for ``db`` started at ``when`` (UTC datetime) in ``bdir`` on
    ``runner``'s machine: ``_N`` is added until neither the archive, its manifest nor its
    ``.partial`` exists (a backup never overwrites one)."""
    names = set(runner.listdir(bdir))
    n = 0
    while True:
        name = archive_name(db, when, fmt, n)
        if not ({name, name + ".manifest.json", name + PARTIAL_SUFFIX} & names):
            return name
        n += 1


def keep_session_while_idle(session: SqlSession, manifest: dict) -> None:
    """``SET LOCAL idle_in_transaction_session_timeout = 0`` (PostgreSQL >= 9.6): the
    snapshot session idles while pg_dump runs and must still be there to count afterwards
    (and to keep the exported snapshot importable by the counting sessions)."""
    major, _, minor = manifest.get("server_version", "0.0").partition(".")
    if int(major) >= 10 or (int(major) == 9 and int(minor or 0) >= 600):
        session.execute("SET LOCAL idle_in_transaction_session_timeout = 0")


def new_manifest(host: Host, dest: Destination, spec: DumpSpec, name: str, started) -> dict:
    """The STARTED manifest of archive ``name`` (CONTRACTS.md section 2), one definition for
    every destination; ``started`` is a UTC datetime."""
    compressor, level = dest.compressor(spec)
    m = {
        "schema_version": 1, "tool": f"bigskies-ops {__version__}", "status": "STARTED", "phase": "connect",
        "kind": spec.kind, "label": spec.label, "origin_host": host.name, "control_host": socket.gethostname(),
        "database": spec.db, "archive": name, "format": spec.fmt, "compressor": compressor, "compress_level": level,
        "access_mode": host.access_mode, "container": host.container.name if host.container else None,
        "started_at": iso(started), "finished_at": None, "duration_s": None,
        "excluded_table_data": list(spec.excl), "schema_only": spec.schema_only,
        "verifications": [], "offsite": [], "pulled_from": None, "pulled_at": None,
    }
    if host.backup.lock_wait_timeout:
        m["lock_wait_timeout_s"] = host.backup.lock_wait_timeout
    m.update(dest.manifest_fields())
    return m


def compression_text(manifest: dict) -> str:
    """How an archive was compressed, for the ``Compressed:`` line: the manifest's
    ``compressor``, with ``level N`` added only when that text does not already name the
    level (``gzip (zlib level 1)`` and ``gzip -1 (on prod)`` do; ``pg_dump custom (zlib)``
    does not)."""
    comp, level = manifest.get("compressor") or "?", manifest.get("compress_level")
    if level is None or re.search(rf"(?:level |-){level}\b", comp):
        return comp
    return f"{comp}, level {level}"


def same_kind(backups: list[Backup], spec: DumpSpec) -> list[Backup]:
    """The backups of ``backups`` made like ``spec`` would be: its format, and the same data
    left out (``--schema-only``, ``--exclude-table-data``): the only ones whose size says
    what this dump's will be."""
    def like(b: Backup) -> bool:
        m = b.manifest or {}
        return (b.format == spec.fmt and bool(m.get("schema_only")) == spec.schema_only
                and sorted(m.get("excluded_table_data") or []) == sorted(spec.excl))
    return [b for b in backups if like(b)]


def dump_estimate(last: dict | None, last_size: int | None, database_bytes: int | None,
                  measure: str) -> tuple[int | None, str]:
    """What a dump's progress bytes will run to, estimated (the bar says so).

    Args:
        last: the manifest of the newest DONE backup of the same kind (:func:`same_kind`), or None.
        last_size: that archive's size on disk, bytes.
        database_bytes: ``pg_database_size`` of the database now, bytes (or None).
        measure: what the progress counts: ``"raw"`` (bytes of the dump stream through
            this process: a plain dump here) or ``"archive"`` (archive bytes written).

    Returns:
        ``(bytes or None, basis)``: the last backup's ``raw_bytes`` / size, else the
        database's size (an upper bound for the SQL, far above a compressed archive: the
        bar then ends early, never sits full), else None (no total).
    """
    if last is not None:
        n = last.get("raw_bytes") if measure == "raw" else (last_size or last.get("bytes"))
        if n:
            return int(n), "last backup"
    if database_bytes:
        return int(database_bytes), "database size"
    return None, ""


def backup_space_need(writer, bdir: str, db: str, fmt: str, origin: str | None,
                      database_bytes: int | None, backups: list[Backup] | None = None
                      ) -> tuple[int | None, str, object]:
    """The free space a backup of ``db`` in ``fmt`` needs in ``bdir`` (read-only; the one
    estimate behind :func:`check_backup_space` and ``db.backup --check``): the newest DONE
    backup of ``db`` in that format plus 20%, or for a first backup the database's size
    (``database_bytes``, an upper bound: compression only shrinks it). ``backups``: the
    backup folder's listing when the caller has read it already (read here otherwise).

    Returns:
        ``(bytes needed or None when nothing is known, the basis in words, that newest
        backup or None)``.
    """
    with report.reporting(None):  # a future-dated archive passed over is told by the task that lists
        listing = list_backups(writer, bdir) if backups is None else backups
        last = latest([b for b in listing if b.format == fmt], database=db, origin_host=origin)
    if last is not None and last.size:
        return int(last.size * 1.2), f"the last {fmt} backup ({human_bytes(last.size)}) plus 20%", last
    if database_bytes:
        return int(database_bytes), "the database's size (first backup in this format)", None
    return None, "no earlier backup in this format and the database's size unknown", None


def check_backup_space(writer, host: Host, bdir: str, db: str, fmt: str, manifest: dict,
                       backups: list[Backup] | None = None) -> None:
    """Fail before pg_dump starts when ``bdir`` (on ``writer``'s machine) has less free
    space than the backup will take (:func:`backup_space_need`). Off with
    ``backup.space_check: false`` or ``--skip-space-check``; nothing is checked where free
    space cannot be read.

    Raises:
        StorageError: too little space (the manifest's phase is ``space``), naming both
            figures and the override.
    """
    if not host.backup.space_check:
        return
    need, basis, _last = backup_space_need(writer, bdir, db, fmt, manifest.get("origin_host"),
                                           manifest.get("database_bytes"), backups)
    if need is None:
        return
    free = writer.free_bytes(bdir)
    if free is not None and free < need:
        manifest["phase"] = "space"
        raise StorageError(space_refusal(bdir, free, need, basis))


def space_refusal(bdir: str, free: int, need: int, basis: str) -> str:
    """The message of a backup refused for space (also what ``--check`` says it would refuse)."""
    return (f"not enough free space for the backup in {bdir}: {human_bytes(free)} free, about "
            f"{human_bytes(need)} needed ({basis}); free space there, or pass --skip-space-check "
            f"(backup.space_check: false) if you know it fits")


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
    return PostgresError(f"gave up after {limit:g} s waiting for {what.removeprefix('waiting for ')} "
                         f"(--lock-wait-timeout {limit:g}); nothing was published. Run again when the "
                         f"blocking session has finished, or raise --lock-wait-timeout",
                         argv=getattr(e, "argv", None), returncode=getattr(e, "returncode", None),
                         stderr=getattr(e, "stderr", "") or "")


def size_alert(host: Host, res: BackupResult, runner=None) -> None:
    """Warn (and post to the ``alerts.webhook_env`` webhook) when the new archive's size is more
    than ``alerts.size_change_pct`` away from the median of the recent ones in its folder
    (jobs.health; ``runner``: of the machine that holds it, None opens one to ``host``).
    Never fails the backup: a problem here is itself only a warning (``res.warnings``)."""
    from bigskies_ops.jobs.health import size_alert_after_backup
    try:
        w = size_alert_after_backup(host, res.backup, runner=runner)
    except Exception as e:  # noqa: BLE001 - an alert must never turn a good backup into a failure
        report.note(f"warning: size check skipped: {e}")
        return
    if w:
        res.warnings.append(w)


@contextmanager
def host_access(host: Host, runner=None):
    """``with host_access(host) as access``: PostgreSQL of ``host`` reached where it
    runs (an SSH host over one SSH connection, which reports its host key notices);
    closed on exit. ``runner``: the SSH host's :class:`~bigskies_ops.hosts.ssh.SSHRunner`
    to use (the caller's: it is not closed here)."""
    if not host.is_remote or runner is not None:
        with PostgresAccess(host, runner) as access:
            yield access
        return
    from bigskies_ops.hosts.ssh import SSHRunner
    with SSHRunner(host) as runner, PostgresAccess(host, runner) as access:
        yield access


def database_locale(host: Host, database: str | None = None) -> dict | None:
    """The encoding and locale of ``host``'s ``database`` (default: its own), read where
    it runs (a :data:`bigskies_ops.pg.admin.DATABASE_LOCALE_SQL` row), for a database made
    before its archive's manifest exists (``db.pull --restore`` onto a new database). None,
    with a note, when it cannot be read: the run that needs the host reports that itself."""
    from bigskies_ops.pg.admin import DATABASE_LOCALE_SQL
    try:
        with host_access(host) as access:
            rows = access.sql(database or host.postgres.database).query(DATABASE_LOCALE_SQL)
    except BigskiesError as e:
        report.note(f"note: the encoding and locale of {host.name}'s database could not be read ({e}); "
                    f"the new database gets the server's defaults")
        return None
    return rows[0] if rows else None


@contextmanager
def archive_lock(writer, bdir: str, origin: str, db: str, task: str, *, what: str = "backup",
                 orphans: bool = False):
    """Hold the (``origin``, ``db``) lock in ``bdir`` on ``writer``'s machine (created if
    missing) and settle what killed runs left there (archives.manifest.settle_interrupted).

    Raises:
        LockBusyError: another task holds the lock.
    """
    writer.makedirs(bdir)
    with host_lock(writer, bdir, origin, db, task):
        settle_interrupted(writer, bdir, db, what, orphans=orphans)
        yield


def read_ahead(fn, *args) -> None:
    """Call ``fn(*args)`` on a daemon thread and drop its error: a read ahead of a cached
    value (e.g. :meth:`PostgresAccess.tool_version`), whose real caller waits for it and
    raises the error itself when it reads again. Returns None at once."""
    threading.Thread(target=report.carried(_quietly), args=(fn, *args), daemon=True, name="read-ahead").start()


def _quietly(fn, *args) -> None:
    """``fn(*args)``, its error dropped (:func:`read_ahead`)."""
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - raised by the real caller's own read
        pass


def dump(dest: Destination, spec: DumpSpec, *, progress=None) -> BackupResult:
    """Dump ``spec.db`` of ``dest.access.host`` into ``dest`` (the caller holds
    :func:`archive_lock`) and publish it with its DONE manifest (module docstring).

    Args:
        dest: where the bytes go (bigskies_ops.jobs.destinations).
        spec: what to dump.
        progress: optional callable ``(bytes_read, bytes_written)`` called as data moves.

    Returns:
        :class:`BackupResult` with the published archive and its DONE manifest.

    Raises:
        PostgresError: unreachable server, bad credentials, pg_dump failure, a lock wait
            over ``backup.lock_wait_timeout`` (manifest FAILED once it was STARTED).
        StorageError: the archive cannot be written, is incomplete, or there is too little
            space (manifest FAILED).
        CommandError / SSHError / StallError: a failed stage, a lost connection, a stall.
    """
    return _Run(dest, spec, progress).run()


class _Run:
    """One run of :func:`dump`: its state (manifest, snapshot session) across the phases."""

    def __init__(self, dest: Destination, spec: DumpSpec, progress):
        self.dest, self.spec, self.progress = dest, spec, progress
        self.access, self.host = dest.access, dest.access.host
        self.started, self.t0 = utcnow(), time.monotonic()
        self.name = pick_name(dest.writer, dest.bdir, spec.db, spec.fmt, self.started)
        self.final = posixpath.join(dest.bdir, self.name)
        self.partial = self.final + PARTIAL_SUFFIX
        self.manifest = new_manifest(self.host, dest, spec, self.name, self.started)
        self.session: SqlSession | None = None
        self.tables: list[dict] = []
        self.counter: RowCounter | None = None
        self.recorded = False  # STARTED manifest written (only once connected: s.7 "nothing harmed")

    def run(self) -> BackupResult:
        watch = watching(self.access, self.spec.db, what=self.dest.what, timeout_s=self.host.backup.lock_wait_timeout)
        watcher = watch.__enter__()
        try:
            self._begin()
            stderr = self._dump()
            facts = self._finish()
            if self.host.backup.roles:  # backup.roles: true -> <archive>.roles.sql beside it
                self.manifest["phase"] = "roles"
                report.step("writing the roles file")
                write_roles(self.dest.writer, self.final, dump_roles(self.access), self.manifest)
            self._done(facts, stderr)
            watch.__exit__(None, None, None)
            report.step("writing the manifest")
            publish(self.dest.writer, self.partial, self.final, self.manifest)
            return BackupResult(Backup(self.dest.bdir, self.name, self.manifest, facts.size), self.manifest,
                                facts.raw_bytes or 0, time.monotonic() - self.t0)
        except BaseException as e:
            watch.__exit__(None, None, None)
            e = lock_timeout_error(e, self.host, watcher) or e
            record_failure(e, self.manifest, self.t0, self.dest.writer, self.final, self.partial, self.dest.proc,
                           self.session, record=self.recorded)

    def _begin(self) -> None:
        """Snapshot and its facts, pg_dump's argv, the STARTED manifest, the space check."""
        spec, m = self.spec, self.manifest
        self.dest.stop_if_cancelled()  # no session on the host for a restore that has already failed
        self.session = self.access.sql(spec.db).session()
        # `pg_dump --version` (on an SSH host a channel and the login shell) runs beside the
        # snapshot's queries; snapshot_facts' own call waits for it (PostgresAccess.tool_version),
        # and reads it again, raising its error, if this read failed
        read_ahead(self.access.tool_version, "pg_dump")
        snapshot, self.tables = snapshot_facts(self.session, self.access, m)
        args = pg_dump_args(spec.db, fmt=spec.fmt, compress_level=spec.level, snapshot=snapshot,
                            exclude_table_data=spec.excl, schema_only=spec.schema_only, verbose=spec.verbose,
                            lock_wait_timeout=self.host.backup.lock_wait_timeout)
        self.dest.prepare(spec, args, self.partial, m)
        m["phase"] = "dump"
        write_manifest(self.dest.writer, self.final, m)  # STARTED, before pg_dump starts
        self.recorded = True
        backups = (list_backups(self.dest.writer, self.dest.bdir)
                   if self.host.backup.space_check or self.progress is not None else None)
        check_backup_space(self.dest.writer, self.host, self.dest.bdir, spec.db, spec.fmt, m, backups)
        if self.progress is not None:
            with report.reporting(None):  # (a future-dated archive is told by the space check's listing)
                last = latest(same_kind(backups, spec), database=spec.db, origin_host=m.get("origin_host"))
            n, basis = dump_estimate(last.manifest if last else None, last.size if last else None,
                                     m.get("database_bytes"), self.dest.progress_measure(spec))
            report.total(self.progress, n, estimate=True, basis=basis)

    def _dump(self) -> str:
        """pg_dump runs into the destination; rows are counted meanwhile unless the stream
        gives them. Returns pg_dump's stderr."""
        keep_session_while_idle(self.session, self.manifest)
        self.dest.start(self.spec, self.partial, self.manifest)
        if not self.dest.counts_from_stream(self.spec):
            self.counter = RowCounter(self.session, self.tables, self.spec.schema_only).start()
        self.dest.transfer(self.partial, self.manifest, self.progress)
        return self.dest.check_exit(self.spec, self.manifest)

    def _finish(self) -> ArchiveFacts:
        """The archive proved complete, and every table's rows in the manifest."""
        spec, m = self.spec, self.manifest
        m["phase"] = "finalize"
        report.step("checking the archive")
        facts = self.dest.check_archive(spec, self.partial, self.tables, m, self.progress)
        report.step("counting rows")
        if self.counter is None:  # a plain dump counted from its own COPY data, in the snapshot's transaction
            m["tables"] = stream_manifest_tables(self.session, self.dest.sink, self.tables, excl=spec.excl,
                                                 schema_only=spec.schema_only, manifest=m)
        else:
            self.counter.result(m)
            m["tables"] = self.counter.manifest_tables(facts.data_tables)
        self.session.close()
        self.session = None
        m["phase"] = "finalize"
        m.update(facts.extra)
        return facts

    def _done(self, facts: ArchiveFacts, stderr: str) -> None:
        finished = utcnow()
        self.manifest.update({
            "status": "DONE", "phase": None, "sha256": facts.sha256, "bytes": facts.size,
            "raw_bytes": facts.raw_bytes if self.spec.fmt == "plain" else None,
            "finished_at": iso(finished), "duration_s": round(time.monotonic() - self.t0, 3),
            "stderr_tail": tail(stderr) or None,
        })
        if self.dest.mode == "stream":
            self.manifest["pulled_at"] = iso(finished)
