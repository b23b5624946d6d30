"""``db.restore``: replace a database from an archive without ever losing the old one.

1. Before anything is touched the archive is checked: it exists, its manifest (if
   any) says DONE and its sha256 matches; without a manifest it is read end to end
   (gzip stream + completion trailer, or ``pg_restore`` of every data block); the
   local tools must be able to read it (a custom archive from a newer pg_dump, or a
   plain dump with ``\\restrict`` lines for an older psql, is refused naming both
   versions); what it needs is there (its roles, its extensions, the rights to swap,
   the server's free space).
2. It is restored into a side database created from template0 with the old
   database's owner, encoding and collation, with stop-on-error; owners and
   privileges as in the source; in parallel only where that cannot change the result.
3. The side database is checked: every table of the manifest is present with its
   recorded row count; schema_migrations is present. The database's own settings,
   role settings and privileges are given back (bigskies_ops.pg.admin).
4. The running coordinators are stopped, connected sessions listed (terminated
   only with ``--terminate-sessions``), and the names are swapped in ONE
   transaction: the old database becomes a pre-restore copy (comment records
   what it is), the side database takes its name. Coordinators start again.

Any failure before step 4 drops the side database; the old database was never
touched. ``--undo`` swaps the newest pre-restore copy back (:func:`bigskies_ops.jobs.swap.undo`).

This module is the flow; its steps live with their concern: the archive checks in
bigskies_ops.archives.integrity, the server's facts in bigskies_ops.pg.admin and
bigskies_ops.pg.loadcheck, the load and its check in bigskies_ops.jobs.sideload (shared
with ``db.verify --restore-test``), the swap and the pre-restore copies in
bigskies_ops.jobs.swap, the databases' names in bigskies_ops.jobs.dbnames.
"""
from __future__ import annotations

import os
import posixpath
import time
from dataclasses import dataclass, field

from bigskies_ops import report
from bigskies_ops.archives.catalog import latest, list_backups, utcnow
from bigskies_ops.archives.integrity import check_archive, gunzip_chunks, scan_archive
from bigskies_ops.archives.locks import host_lock
from bigskies_ops.archives.plainsql import RolePolicy
from bigskies_ops.errors import ArchiveError, BigskiesError, Interrupted, PostgresError, UsageError
from bigskies_ops.hosts.local import LocalRunner
from bigskies_ops.hosts.runners import tail
from bigskies_ops.jobs.coordinators import coordinators_paused, coordinators_preflight
from bigskies_ops.inventory import Host
from bigskies_ops.jobs.dbnames import pre_restore_name, side_db_name, unused_name
from bigskies_ops.jobs.parload import load_plain_parallel
from bigskies_ops.jobs.sideload import (load_archive, report_load_stats, restore_pgoptions, role_policy,
                                        verify_against_manifest)
from bigskies_ops.jobs.swap import (drop_leftover_side_dbs, mark_side_database, prune_pre_restore, refuse_if_sessions,
                                    swap)
from bigskies_ops.pg.access import PostgresAccess, ident, lit, pgsql
from bigskies_ops.pg.admin import apply_properties, check_rights, check_space, create_like, database_properties, db_info, drop_db
from bigskies_ops.pg.loadcheck import check_extensions, explain_load_error
from bigskies_ops.signals import left_behind


@dataclass
class RestoreResult:
    """What :func:`restore` did: the database restored, from which archive, the name the
    replaced database is kept under (None for a new ``target_db``), the coordinators it
    stopped and started again, its duration (seconds), the tables checked against the
    manifest, warnings, and the old pre-restore copies it dropped."""

    database: str
    archive: str
    pre_restore_copy: str | None
    coordinators: list[str]
    seconds: float
    checked_tables: int
    warnings: list[str] = field(default_factory=list)
    dropped_copies: list[str] = field(default_factory=list)


def resolve_archive(host: Host, spec: str | None, origin: str | None = None, database: str | None = None) -> str:
    """The archive to restore: ``spec`` as a path on the control machine, else a name in
    the host's backup folder (``origin``: its pulled sub-folder), else a backup id (or a
    unique prefix of one, as ``db.list`` shows it); ``latest`` (or None) is the newest
    complete DONE backup of ``database`` (default: the host's).

    Raises:
        ArchiveError: no such file or id; an id matching several backups; a FAILED (or
            unfinished) run, named with its time and error; a name or id that is a
            pulled backup of ``<origin>/`` asked for without ``--origin`` (the message
            names the flag).
    """
    from bigskies_ops.archives.catalog import ID_MIN, ambiguous_message, by_id, find, looks_like_id
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
    if os.path.exists(spec):  # (a folder too: the archive checks say what it is)
        return spec
    cand = posixpath.join(bdir, spec)
    if os.path.exists(cand):
        return cand
    # a name whose run FAILED, an id, or a backup pulled from another host
    try:
        everything = list_backups(lr, host.backup.dir, include_all=True)
    except (OSError, BigskiesError):
        everything = []
    here = [b for b in everything if b.origin_dir == origin]
    hits = find(here, spec) or find(everything, spec)
    if len(hits) > 1:
        raise ArchiveError(ambiguous_message(spec, hits))
    if hits:
        b = hits[0]
        if b.status in ("FAILED", "STARTED"):
            raise ArchiveError(b.failed_message("restore"))
        if b.status == "MISSING":
            raise ArchiveError(f"backup {b.shown_name} is gone: its manifest says DONE but {b.path} is missing; "
                               f"nothing to restore")
        if b.origin_dir != origin and b not in by_id(everything, spec):  # an id names one backup anywhere
            flag = f"--origin {b.origin_dir}" if b.origin_dir else "no --origin"
            raise ArchiveError(f"{spec}: that is {b.shown_name}, a backup "
                               f"{'pulled from ' + b.origin_dir if b.origin_dir else 'of ' + host.name + ' itself'};"
                               f" pass {flag} (or its path: {b.path})")
        return b.path
    why = (f"; ids are the first column of `db.list --host {host.name}` ({ID_MIN} or more hex digits)"
           if spec.isdigit() or looks_like_id(spec) else "")
    raise ArchiveError(f"{spec}: no such file or backup id (looked here and in {bdir}){why}")


def restore(host: Host, archive: str, *, target_db: str | None = None, terminate_sessions: bool = False,
            jobs: int | None = None, progress=None, confirmed: bool = True,
            task: str = "db.restore", roles: bool = False, skip_missing_roles: bool = False,
            skip_space_check: bool = False, follow: "FollowedArchive | None" = None) -> RestoreResult:
    """Restore ``archive`` into ``host``'s database (or into a new ``target_db``).

    The caller has already applied the safety policy and the confirmation.

    Args:
        archive: path of the archive on the control machine.
        target_db: restore into this NEW database and leave the original alone.
        terminate_sessions: terminate sessions still connected at swap time; without
            it, connected sessions stop the restore before anything changes.
        jobs: parallel sessions (local hosts; default 2), used only where they cannot
            change the result (:func:`bigskies_ops.jobs.sideload.load_archive`).
        roles: first create the roles of ``<archive>.roles.sql`` missing on the cluster
            (existing roles are never altered; bigskies_ops.archives.roles).
        skip_missing_roles: objects of roles missing here are owned by the restoring
            user, and the statements naming those roles skipped (:func:`bigskies_ops.jobs.sideload.role_policy`);
            without it (and without ``roles``) such an archive is refused before
            anything is created.
        skip_space_check: do not refuse for too little free space on the server
            (:func:`bigskies_ops.pg.admin.check_space`).
        follow: load a plain archive WHILE it is being written (``db.pull --restore``):
            ``archive`` is ignored; the load follows ``follow.growing`` and the archive
            checks (size, sha256, manifest, versions) run on ``follow.result()``'s finished
            file after the load and before the swap. :class:`FollowedArchive`.

    Returns:
        :class:`RestoreResult`.

    Raises:
        ArchiveError: the archive failed a check, or needs an extension this server
            lacks (nothing touched).
        SafetyError: the archive names roles missing here (nothing touched; exit 3).
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
            report.note(f"warning: {w}")
        maint = access.sql(host.postgres.maintenance_db)
        if target_db is not None and db_info(maint, target_db) is not None:
            raise UsageError(f"--target-db {target_db!r} already exists on {host.name}; choose a new name")
        if target_db is None and host.coordinators:  # unknown coordinator names: exit 2 before any change
            coordinators_preflight(access.runner, host)
        if follow is None:
            scan_archive(access, info)
            check_extensions(maint, info.extensions, info.path, host.name)
            if not skip_space_check:
                check_space(access, maint, info)
        policy = role_policy(access, maint, info, create_roles=roles and follow is None,
                             skip_missing=skip_missing_roles)
        with host_lock(access.runner, host.backup.dir, host.name, target_db or db, task):
            return _restore_locked(access, host, info, db, target_db, terminate_sessions, policy, jobs, progress, t0)


def _restore_locked(access, host, info, db, target_db, terminate, policy, jobs, progress, t0):
    """Steps 2-4 of the module docstring, under the (host, database) lock; the side
    database is dropped unless it was swapped in (or renamed to ``target_db``)."""
    maint = access.sql(host.postgres.maintenance_db)
    now = utcnow()
    old = db_info(maint, db)
    drop_leftover_side_dbs(maint, target_db or db)
    if old is not None and target_db is None and not terminate and not host.coordinators:
        refuse_if_sessions(maint, db)  # fail fast, before a long restore (checked again at the swap)
    check_rights(maint, db if target_db is None else None, old)
    side = unused_name(maint, side_db_name, target_db or db, now)
    report.note(f"Restoring into side database {side!r} (the current database is not touched yet)")
    create_like(maint, side, old)
    swapped = False
    try:
        mark_side_database(maint, side, target_db or db, now)
        if isinstance(info, FollowedArchive):
            info, (rc, err, copied) = _load_followed(access, info, side, policy, jobs)
        else:
            rc, out, err, copied = load_archive(access, info, side, policy, jobs, progress)
        if rc != 0:
            why = explain_load_error(err)
            raise PostgresError(f"restore into the side database failed (exit {rc}): "
                                f"{why + '. ' if why else ''}{tail(err, 800)}", returncode=rc, stderr=tail(err))
        checked = verify_against_manifest(access.sql(side), info, copied)
        # the database's own settings, privileges and comment (not in a plain pg_dump): the
        # backup's, or for an archive without them the current database's
        props = (info.manifest or {}).get("database_properties") or (database_properties(maint, db) if old else None)
        warnings = (apply_properties(maint, side, props, policy.existing if policy is not None else None)
                    if props else [])
        comment = lit((props or {}).get("comment"))
        if target_db is not None or old is None:
            name = target_db or db
            maint.execute(pgsql.SQL("ALTER DATABASE {0} RENAME TO {1}; COMMENT ON DATABASE {1} IS {2}").format(
                ident(side), ident(name), comment))
            swapped = True
            return RestoreResult(name, info.path, None, [], time.monotonic() - t0, checked, warnings=warnings)
        pre = unused_name(maint, pre_restore_name, db, now)
        with coordinators_paused(access.runner, host) as stopped:
            swap(maint, db, side, pre, terminate, info.path, comment=comment)
            swapped = True
        # housekeeping: the restore is done whatever happens here
        dropped = prune_pre_restore(maint, db, host.backup.keep_pre_restore, warnings=warnings)
        return RestoreResult(db, info.path, pre, stopped, time.monotonic() - t0, checked,
                             warnings=warnings, dropped_copies=dropped)
    finally:
        if not swapped:
            try:
                drop_db(maint, side)
            except BigskiesError as e:
                cmd = f"psql -d {maint.database} -c 'DROP DATABASE {ident(side).as_string()} WITH (FORCE)'"
                left_behind(f"side database {side!r} is left behind ({str(e).splitlines()[0][:200]}); drop it "
                            f"with: {cmd}")
                report.note(f"warning: could not drop side database {side!r}: {e}; drop it with: {cmd}")


@dataclass
class FollowedArchive:
    """A plain archive restored while it is written (``db.pull --restore``).

    Attributes:
        growing: the file being written (:class:`bigskies_ops.jobs.parload.GrowingFile`).
        start: called once the side database is ready (the writer starts then, so a
            refusal - lock busy, sessions connected - costs no transfer).
        result: waits for the writer; returns the finished archive's path or raises
            the writer's error.
    """

    growing: object
    start: object
    result: object


def _load_followed(access, fa: FollowedArchive, side: str, policy: RolePolicy | None, jobs: int | None):
    """Load ``fa`` into ``side`` as it arrives, then check the finished archive.

    Returns ``(ArchiveInfo of the finished archive, (rc, stderr, rows))``. Raises the
    writer's error (after stopping the load), or ArchiveError."""
    growing = fa.growing
    n = max(1, jobs if jobs is not None else 2)
    opts = restore_pgoptions(access, n)
    fa.start()
    stats: dict = {}
    try:
        rc, _, err, rows = load_plain_parallel(
            access, "(pull in progress)", side, jobs=n, policy=policy, pgoptions=opts, stats=stats,
            open_chunks=lambda: gunzip_chunks(None, path=growing.path or "pull", raw=growing.raw_chunks()))
        report_load_stats(stats.get("serial_because"), stats.get("skipped"))
    except (KeyboardInterrupt, Interrupted):
        growing.cancel()  # the pull stops too (its .partial is removed, manifest FAILED)
        raise
    except BaseException:
        fa.result()  # a failed pull is the cause: its error first; else the pull is kept, and ours raised
        raise
    path = fa.result()  # the pull finished: DONE manifest, sha256 computed while receiving
    info = check_archive(access, path)  # the file on disk: size, sha256 against the manifest, versions
    for w in info.warnings:
        report.note(f"warning: {w}")
    if info.format != "plain":
        raise ArchiveError(f"{path}: expected a plain archive to follow, got {info.format}")
    return info, (rc, err, rows)


