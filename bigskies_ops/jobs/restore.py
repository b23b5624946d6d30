"""``db.restore``: replace a database from an archive without ever losing the old one.

1. Before anything is touched the archive is checked: it exists, its manifest (if
   any) says DONE and its size matches; its sha256 is compared with the manifest's
   while the other checks run and the side database is created, and must match
   before anything is loaded into it (a mismatch drops the side database, as any
   failure before step 4 does); without a manifest it is read end to end
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
   what it is), the side database takes its name. Coordinators start again. The
   pre-restore copies beyond ``backup.keep_pre_restore`` are dropped by a process of
   its own, off the restore's critical path (bigskies_ops.jobs.background_drop).

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
from bigskies_ops.archives.catalog import MANIFEST_SUFFIX, iso, latest, list_backups, read_manifest, utcnow
from bigskies_ops.archives.integrity import ArchiveInfo, check_archive, scan_archive
from bigskies_ops.archives.locks import host_lock
from bigskies_ops.archives.plainsql import RolePolicy
from bigskies_ops.errors import ArchiveError, BigskiesError, Interrupted, PostgresError, SafetyError, UsageError
from bigskies_ops.hosts.local import LocalRunner
from bigskies_ops.hosts.runners import tail
from bigskies_ops.jobs.coordinators import coordinators_paused, coordinators_preflight, running_coordinators
from bigskies_ops.inventory import Host
from bigskies_ops.jobs import notify
from bigskies_ops.jobs.background_drop import drop_copies_later
from bigskies_ops.jobs.background_drop import report_previous as report_previous_drop
from bigskies_ops.jobs.dbnames import database_names, pre_restore_name, side_db_name, unused_name
from bigskies_ops.jobs.followed import FollowedArchive, load_followed
from bigskies_ops.jobs.sideload import (load_archive, missing_roles, missing_roles_refusal, role_policy,
                                        verify_against_manifest)
from bigskies_ops.jobs.swap import (beyond_keep, drop_leftover_side_dbs, leftover_side_dbs, side_database_label,
                                    pre_restore_copies, prune_pre_restore, refuse_unseen_sessions, renamed_away,
                                    sessions_refusal, swap, unseen_processes)
from bigskies_ops.pg.access import PostgresAccess, ident, lit, pgsql, preload_psycopg
from bigskies_ops.pg.admin import (SIZE_UNKNOWN, apply_properties, check_rights, check_space, create_new,
                                   database_properties, db_info, drop_db, locale_differs, restore_space, sessions_on)
from bigskies_ops.pg.loadcheck import check_extensions, explain_load_error
from bigskies_ops.signals import deferred, left_behind


@dataclass
class RestoreResult:
    """What :func:`restore` did: the database restored, from which archive, the name the
    replaced database is kept under (None for a new ``target_db``), the coordinators it
    stopped and started again, its duration (seconds), the tables checked against the
    manifest, warnings, and the old pre-restore copies it dropped, or is dropping in the
    background (:mod:`bigskies_ops.jobs.background_drop`)."""

    database: str
    archive: str
    pre_restore_copy: str | None
    coordinators: list[str]
    seconds: float
    checked_tables: int
    warnings: list[str] = field(default_factory=list)
    dropped_copies: list[str] = field(default_factory=list)
    dropping_copies: list[str] = field(default_factory=list)
    has_manifest: bool = True

    @property
    def checked_text(self) -> str:
        """What the row-count check covered, for the result line: ``12 tables checked
        against the manifest``, or that a legacy archive had no counts to check."""
        if not self.has_manifest:
            return "no manifest (legacy archive): row counts not checked"
        return f"{self.checked_tables} tables checked against the manifest"


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
    from bigskies_ops.archives.catalog import id_hint, named_backup
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
    b = named_backup(everything, spec, origin, host.name)
    if b is not None:
        b.require_archive("restore")
        return b.path
    raise ArchiveError(f"{spec}: no such file or backup id (looked here and in {bdir}){id_hint(spec, host.name)}")


@dataclass
class RestorePlan:
    """What a restore of ``host`` would do, computed by :func:`plan_restore` before anything
    changes (the real run executes it; ``--check`` reports it). Sizes in bytes.

    Attributes:
        database: the database replaced, or created (``target_db``).
        archive: ``{"path", "bytes", "format", "manifest"}`` (manifest: its status, or None
            when the archive has none); ``{"path": None, "pending": ...}`` for an archive that
            is not here yet (``db.pull --restore``).
        checks: the read-only checks the real run does first, in order: ``{"check", "ok", "detail"}``.
        side_db, pre_restore_copy: the names the run would create / keep the old database under.
        sessions: connected to ``database`` now (pg_stat_activity), ended only with
            ``terminate_sessions``.
        coordinators: running now, so stopped around the swap and started again.
        drop: databases that would be dropped: leftover side databases of dead restores and
            pre-restore copies beyond ``backup.keep_pre_restore`` (``{"name", "bytes", "why"}``).
        space: :func:`bigskies_ops.pg.admin.restore_space` (None: skipped).
        roles_created, missing_roles: roles ``--roles`` would create; roles still missing.
        refusals: what the real run would refuse (one message each); empty: it would run.
    """

    host: str
    database: str
    target_db: str | None
    terminate_sessions: bool = False
    archive: dict = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)
    side_db: str | None = None
    pre_restore_copy: str | None = None
    sessions: list[dict] = field(default_factory=list)
    coordinators: list[str] = field(default_factory=list)
    drop: list[dict] = field(default_factory=list)
    space: dict | None = None
    roles_created: list[str] = field(default_factory=list)
    missing_roles: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # for the real run, not reported
    info: object = field(default=None, repr=False)
    policy: RolePolicy | None = field(default=None, repr=False)
    old: dict | None = field(default=None, repr=False)  # db_info of ``database`` (None: absent)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in (
            "database", "target_db", "archive", "checks", "side_db", "pre_restore_copy", "sessions",
            "terminate_sessions", "coordinators", "drop", "space", "roles_created", "missing_roles",
            "refusals", "warnings")}


def plan_restore(access: PostgresAccess, host: Host, archive: str | None, *, target_db: str | None = None,
                 terminate_sessions: bool = False, roles: bool = False, skip_missing_roles: bool = False,
                 skip_space_check: bool = False, follow: "FollowedArchive | None" = None,
                 dry_run: bool = False, expected_bytes: int | None = None) -> RestorePlan:
    """Step 1 of the module docstring: every read-only check of a restore, and the plan.

    The real run (:func:`restore`) calls this first and executes the plan; ``db.restore
    --check`` (``dry_run``) reports it. Nothing is changed in either mode, except that the
    real run with ``roles`` creates the backup's missing roles here (as before the load).

    Args:
        archive: path on the control machine; None: not here yet (``follow``, or a
            ``db.pull --restore --check`` whose archive would be pulled first, with its
            ``expected_bytes`` of database for the space check).
        dry_run: record each refusal in ``plan.refusals`` and go on (exit 0 for
            ``--check``), and compute the names and drops the run would make; otherwise
            raise the first refusal, as the real run does.

    Its queries share one psql session (:meth:`PostgresAccess.pooled_session`).

    Raises (not ``dry_run``): as :func:`restore` before anything is touched:
        ArchiveError, UsageError (``target_db`` exists; unknown coordinator), SafetyError
        (missing roles, too little space, sessions, rights).
    """
    plan = RestorePlan(host.name, target_db or host.postgres.database, target_db, terminate_sessions)
    with access.pooled_session():
        try:
            return _plan_restore(plan, access, host, archive, target_db=target_db, roles=roles,
                                 skip_missing_roles=skip_missing_roles, skip_space_check=skip_space_check,
                                 follow=follow, dry_run=dry_run, expected_bytes=expected_bytes)
        except (ArchiveError, SafetyError, UsageError):
            # a damaged archive is said first, whatever else would be refused (as when the
            # sha256 was read before the other checks): its header, table of contents and
            # the other refusals could otherwise name a symptom of the damage
            if isinstance(plan.info, ArchiveInfo):
                plan.info.confirm_digest()
            raise


def _plan_restore(plan: RestorePlan, access: PostgresAccess, host: Host, archive: str | None, *, target_db, roles,
                  skip_missing_roles, skip_space_check, follow, dry_run, expected_bytes) -> RestorePlan:
    """:func:`plan_restore` within its pooled session, filling ``plan``."""
    db = host.postgres.database
    terminate_sessions = plan.terminate_sessions
    maint = access.sql(host.postgres.maintenance_db)
    check = _Checker(plan, dry_run)
    info = _plan_archive(plan, check, access, archive, follow, expected_bytes, dry_run)
    plan.info = info if isinstance(info, ArchiveInfo) else None
    if target_db is not None:
        check(f"--target-db {target_db!r} does not exist yet", _target_free, maint, target_db, host)
    if target_db is None and host.coordinators:  # unknown coordinator names: exit 2 before any change
        if dry_run:
            plan.coordinators = check("coordinators are services of the compose project",
                                      lambda: running_coordinators(access.runner, host)[1]) or []
        else:
            coordinators_preflight(access.runner, host)
    if follow is None and info is not None:
        if check("archive's SQL scanned (roles, extensions)", scan_archive, access, info):
            check("extensions the archive creates are available", check_extensions, maint, info.extensions,
                  info.path, host.name)
    if follow is None and (info is not None or expected_bytes is not None):
        if skip_space_check:
            plan.checks.append({"check": "free space on the server", "ok": True, "detail": "skipped (--skip-space-check)"})
        else:
            basis = info if info is not None else _Expected(expected_bytes)
            plan.space = check("free space on the server", check_space, access, maint, basis)
            if plan.space in (None, True):
                plan.space = restore_space(access, maint, basis.manifest.get("database_bytes"))
            if isinstance(plan.space, dict) and plan.space.get("needed") is None and plan.checks[-1]["ok"]:
                plan.checks[-1]["detail"] = f"not checked: {SIZE_UNKNOWN}"
    if info is not None:
        if roles and follow is None:
            made = check("roles file beside the archive (--roles)", _roles_to_create, access, info.path)
            plan.roles_created = made if isinstance(made, list) else []
        if dry_run:
            plan.missing_roles = missing_roles(maint, info, created=plan.roles_created)
            check("roles the archive names exist here", _refuse_roles, plan.missing_roles, host.name,
                  skip_missing_roles)
        else:
            if roles and follow is None:
                info.confirm_digest()  # --roles creates roles in the cluster: only from an archive known whole
            plan.policy = role_policy(access, maint, info, create_roles=roles and follow is None,
                                      skip_missing=skip_missing_roles)
            plan.missing_roles = sorted((_needed(info) or set()) - plan.policy.existing)
    old = db_info(maint, db)
    probe_unseen = False
    if old is not None and target_db is None and (dry_run or not (terminate_sessions or host.coordinators)):
        plan.sessions = sessions_on(maint, db)
        if not terminate_sessions and not host.coordinators:  # fail fast (checked again at the swap)
            probe_unseen = bool(check("no sessions connected (else --terminate-sessions)", _refuse_sessions, db,
                                      plan.sessions))
    rights = check("rights to create the side database and swap it in", check_rights, maint,
                   db if target_db is None else None, old)
    if probe_unseen and rights:  # the probe renames: only a role that may rename asks the server
        _unseen_sessions(plan, check, maint, db, dry_run)
    plan.info, plan.old = info, old
    if dry_run:
        _plan_names(plan, maint, host, old)
    return plan


class _Checker:
    """Runs one check of :func:`plan_restore`: a refusal is raised (real run) or recorded
    in the plan (``dry_run``), and every check is listed in ``plan.checks``."""

    def __init__(self, plan: RestorePlan, dry_run: bool):
        self.plan, self.dry_run = plan, dry_run

    def __call__(self, what: str, fn, *a, **kw):
        try:
            r = fn(*a, **kw)
        except (ArchiveError, SafetyError, UsageError) as e:
            self.plan.checks.append({"check": what, "ok": False, "detail": str(e)})
            if not self.dry_run:
                raise
            self.plan.refusals.append(str(e))
            return None
        self.plan.checks.append({"check": what, "ok": True, "detail": None})
        return r if r is not None else True


def _plan_archive(plan: RestorePlan, check: _Checker, access, archive, follow, expected_bytes, dry_run):
    """The archive's facts and checks (:func:`check_archive`); returns its ArchiveInfo,
    ``follow``, or None (not here yet, or refused in a dry run)."""
    if follow is not None:
        plan.archive = {"path": None, "pending": "loaded into the side database while it arrives; checked against "
                                                 "its manifest once complete"}
        return follow
    if archive is None:
        plan.archive = {"path": None, "pending": "once the pull is complete: checked, then loaded from the file",
                        "database_bytes": expected_bytes}
        return None
    plan.archive = _archive_facts(archive)
    # the real run compares the sha256 while it goes on (confirmed before the load, in
    # _restore_locked): the read of the whole archive no longer delays the other checks
    # and the side database's CREATE (issue 21); a dry run waits for it here
    what = ("manifest DONE, size and sha256" if os.path.lexists(archive + MANIFEST_SUFFIX)
            else "no manifest: read to its end")  # check_archive reads a manifest-less archive whole
    info = check(f"archive ({what}; readable by this host's tools)",
                 check_archive, access, archive, defer_digest=not dry_run)
    for w in getattr(info, "warnings", ()) or ():
        plan.warnings.append(w)
        if not dry_run:
            report.note(f"warning: {w}")
    return info if info is not True else None


def _plan_names(plan: RestorePlan, maint, host: Host, old: dict | None) -> None:
    """The names the run would create and the databases it would drop (dry run: the real
    run computes them under the lock, with the same functions)."""
    db, now = host.postgres.database, utcnow()
    plan.drop = [{"name": r["name"], "bytes": r["bytes"], "why": "left by an interrupted restore"}
                 for r in leftover_side_dbs(maint, plan.database)]
    taken = database_names(maint)  # read once for both names, as the real run does
    plan.side_db = unused_name(maint, side_db_name, plan.database, now, taken)
    if old is not None and plan.target_db is None:
        plan.pre_restore_copy = unused_name(maint, pre_restore_name, db, now, taken | {plan.side_db})
        copies = [{"name": plan.pre_restore_copy, "at": iso(now), "bytes": None}] + pre_restore_copies(maint, db)
        keep = host.backup.keep_pre_restore
        plan.drop += [{"name": c["name"], "bytes": c["bytes"], "at": c.get("at"),
                       "why": f"pre-restore copy beyond keep_pre_restore = {keep}"}
                      for c in beyond_keep(copies, keep)]


class _Expected:
    """The space check's view of an archive not here yet: the database size to expect."""

    def __init__(self, database_bytes: int | None):
        self.manifest = {"database_bytes": database_bytes}


def _archive_facts(path: str) -> dict:
    """Path, size, format (by name) and manifest status of ``path`` (read-only)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        size = None
    try:
        man = read_manifest(LocalRunner(), path) if size is not None else None
    except BigskiesError:
        man = {"status": "unreadable"}
    fmt = "custom" if path.endswith(".dump") else "plain" if path.endswith(".sql.gz") else None
    return {"path": path, "bytes": size, "format": (man or {}).get("format") or fmt,
            "manifest": (man or {}).get("status"), "database_bytes": (man or {}).get("database_bytes")}


def _target_free(maint, target_db: str, host: Host) -> None:
    if db_info(maint, target_db) is not None:
        raise UsageError(f"--target-db {target_db!r} already exists on {host.name}; choose a new name")


def _roles_to_create(access, path: str) -> list[str]:
    from bigskies_ops.archives.roles import roles_to_create
    return roles_to_create(access, path)[1]


def _refuse_roles(missing: list[str], host: str, skip: bool) -> None:
    msg = missing_roles_refusal(missing, host, skip)
    if msg:
        raise SafetyError(msg)


def _refuse_sessions(db: str, sess: list[dict]) -> None:
    if sess:
        raise SafetyError(sessions_refusal(db, sess)[1])


def _unseen_sessions(plan: RestorePlan, check: "_Checker", maint, db: str, dry_run: bool) -> None:
    """Processes on ``db`` this role cannot identify (another role's sessions, or autovacuum):
    a dry run warns (its probe would end autovacuum workers); a real run asks the server
    (swap.refuse_unseen_sessions) and refuses before loading."""
    n = unseen_processes(maint, db)
    if not n:
        return
    if dry_run:
        plan.warnings.append(f"{n} process(es) on {db!r} that this role cannot identify (sessions of other roles, "
                             f"or autovacuum): the swap refuses if one is a session (a member of pg_read_all_stats "
                             f"sees them)")
        return
    check("no sessions of other roles connected", refuse_unseen_sessions, maint, db)


def _create_side(maint, side: str, old: dict | None, info, of: str, now, new_name: bool) -> str | None:
    """Create the side database ``side`` of ``of`` like ``old`` (:func:`db_info`; None: the
    server's defaults), with the archive's encoding and locale when it will take a
    ``new_name`` (a new database, or --target-db's), and label it. Returns
    :func:`bigskies_ops.pg.admin.create_new`'s warning.

    A signal waits for the CREATE and the label: psql stopped mid-CREATE, the server could
    finish it after our DROP and leave a database nothing recognises; a second signal
    does not wait.

    A :class:`FollowedArchive`'s writer (the pull) starts first: the restore's refusals
    (lock, sessions, roles, space) are behind us, so the dump runs beside the CREATE
    (~0.2 s of scenario 4 on the benchmark); a CREATE that fails cancels it (nothing kept)."""
    if isinstance(info, FollowedArchive):
        info.start()
    try:
        with deferred(insist=True):
            warning = create_new(maint, side, _archive_locale(info) if new_name else None, like=old,
                                 then=side_database_label(side, of, now))
    except BaseException as e:
        if isinstance(info, FollowedArchive):
            info.growing.cancel(None if isinstance(e, (KeyboardInterrupt, Interrupted)) else
                                f"the restore following this pull could not create its side database {side!r}")
        raise
    return warning


def _load_and_check(access, maint, info, side: str, policy, jobs, progress, new_db: bool):
    """Load ``info`` (an ArchiveInfo, or a :class:`FollowedArchive` as it arrives) into
    ``side``, then check its rows against the manifest (:func:`verify_against_manifest`).

    Returns:
        ``(ArchiveInfo of the archive loaded, tables checked, warning or None)``: the
        warning when ``new_db`` and a streamed pull's database lacks the source's locale.

    Raises:
        PostgresError: the load failed (its error explained), or rows differ.
    """
    # the queries on the side database after the load (the rows the load inserted, the
    # checks) share one psql, started at the first of them (~15-50 ms per psql start spared
    # six times); the block ends, and its session with it, before any swap renames it
    with access.pooled_session(side):
        warning = None
        if isinstance(info, FollowedArchive):
            info, (rc, err, copied) = load_followed(access, info, side, policy, jobs)
            if new_db:
                warning = locale_differs(maint, side, _archive_locale(info))
        else:
            rc, _out, err, copied = load_archive(access, info, side, policy, jobs, progress)
        if rc != 0:
            tool = "pg_restore" if info.format == "custom" else "psql"
            status = f"{tool} killed by signal {-rc}" if rc < 0 else f"{tool} exit status {rc}"  # not ours (exit codes)
            why = explain_load_error(err)
            raise PostgresError(f"restore into the side database failed ({status}): {why + '. ' if why else ''}"
                                f"{tail(err, 800).strip() or 'no message from the server'}", returncode=rc,
                                stderr=tail(err))
        return info, verify_against_manifest(access.sql(side), info, copied), warning


def _archive_locale(info) -> dict | None:
    """The encoding and locale of the archive's database (manifest ``database_locale``;
    a streamed pull's: its source database's, :attr:`FollowedArchive.locale`; None: not recorded)."""
    if isinstance(info, FollowedArchive):
        return info.locale() if info.locale is not None else None
    return (getattr(info, "manifest", None) or {}).get("database_locale")


def _needed(info) -> set | None:
    from bigskies_ops.jobs.sideload import needed_roles
    return needed_roles(info)


def check_restore(host: Host, archive: str | None, **kwargs) -> RestorePlan:
    """``db.restore --check``: :func:`plan_restore` as a dry run (changes nothing; every
    refusal is in ``plan.refusals``). ``kwargs``: as :func:`plan_restore`."""
    with PostgresAccess(host) as access:
        return plan_restore(access, host, archive, dry_run=True, **kwargs)


def restore(host: Host, archive: str, *, target_db: str | None = None, terminate_sessions: bool = False,
            jobs: int | None = None, progress=None, confirmed: bool = True,
            task: str = "db.restore", roles: bool = False, skip_missing_roles: bool = False,
            skip_space_check: bool = False, follow: "FollowedArchive | None" = None) -> RestoreResult:
    """Restore ``archive`` into ``host``'s database (or into a new ``target_db``).

    The caller has already applied the safety policy and the confirmation. The checks
    and decisions are :func:`plan_restore`'s (shared with ``--check``); this executes them.

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
            file as soon as it is complete, always before the swap. :class:`FollowedArchive`.

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
    preload_psycopg()  # beside the archive's checks
    db = host.postgres.database
    # the maintenance database's queries share one psql, from the checks to the swap's
    # housekeeping (issue 21: a psql each cost 15-80 ms); the DDL runs on psqls of its own
    with PostgresAccess(host) as access, access.pooled_session():
        plan = plan_restore(access, host, archive if follow is None else None, target_db=target_db,
                            terminate_sessions=terminate_sessions, roles=roles,
                            skip_missing_roles=skip_missing_roles, skip_space_check=skip_space_check, follow=follow)
        with host_lock(access.runner, host.backup.dir, host.name, target_db or db, task):
            report_previous_drop(access.runner, host.backup.dir, target_db or db)
            res = _restore_locked(access, host, plan.info, db, target_db, terminate_sessions, plan.policy, jobs,
                                  progress, t0, plan.old)
    if host.protected:  # a protected host's database was replaced (or a new one made): the people who watch it hear
        notify.notify(host, "restore_protected", task=task, step="restore", database=target_db or db,
                      error=f"{target_db or db} restored from {os.path.basename(str(archive or ''))}",
                      facts={"archive": os.path.basename(str(archive or ""))})
    return res


def _restore_locked(access, host, info, db, target_db, terminate, policy, jobs, progress, t0, old):
    """Steps 2-4 of the module docstring, under the (host, database) lock; the side
    database is dropped unless it was swapped in (or renamed to ``target_db``). ``old``:
    :func:`db_info` of ``db`` as the plan read it (None: absent); the renames of the swap
    fail, and the side database is dropped, if it was dropped or made since."""
    maint = access.sql(host.postgres.maintenance_db)
    now = utcnow()
    drop_leftover_side_dbs(maint, target_db or db)
    taken = database_names(maint)  # for both names: we hold the lock, so no restore of db takes them meanwhile
    side = unused_name(maint, side_db_name, target_db or db, now, taken)
    report.note(f"Restoring into side database {side!r} (the current database is not touched yet)")
    swapped, ours = False, True
    try:
        # inside the try: a CREATE the server finished before our psql died is dropped below
        # ("already exists": the name was taken after all, not ours)
        try:
            locale_warning = _create_side(maint, side, old, info, target_db or db, now,
                                          new_name=old is None or target_db is not None)
        except PostgresError as e:
            ours = "already exists" not in str(e)
            raise
        if isinstance(info, ArchiveInfo):
            info.confirm_digest()  # the sha256 read beside the checks and the CREATE: nothing loaded before it
        info, checked, later = _load_and_check(access, maint, info, side, policy, jobs, progress, old is None)
        info.confirm_unchanged()  # the file loaded is the one hashed: not replaced or written to meanwhile
        locale_warning = locale_warning or later
        # the database's own settings, privileges and comment (not in a plain pg_dump): the
        # backup's, or for an archive without them the current database's
        props = (info.manifest or {}).get("database_properties") or (database_properties(maint, db) if old else None)
        warnings = (apply_properties(maint, side, props, policy.existing if policy is not None else None)
                    if props else [])
        if locale_warning:
            report.note(f"warning: {locale_warning}")
            warnings.append(locale_warning)
        comment = lit((props or {}).get("comment"))
        if target_db is not None or old is None:
            name = target_db or db
            try:
                maint.execute(pgsql.SQL("BEGIN; ALTER DATABASE {0} RENAME TO {1}; COMMENT ON DATABASE {1} IS {2}; "
                                        "COMMIT").format(ident(side), ident(name), comment))
            except (KeyboardInterrupt, Interrupted):
                swapped = renamed_away(maint, side)  # as the swap below
                raise
            swapped = True
            return RestoreResult(name, info.path, None, [], time.monotonic() - t0, checked, warnings=warnings,
                                 has_manifest=info.manifest is not None)
        pre = unused_name(maint, pre_restore_name, db, now, taken | {side})
        with coordinators_paused(access.runner, host) as stopped:
            try:
                swap(maint, db, side, pre, terminate, info.path, comment=comment)
            except (KeyboardInterrupt, Interrupted):
                # the psql running the renames was stopped: they may have committed first
                swapped = renamed_away(maint, side)
                raise
            swapped = True
        # housekeeping (the restore is done whatever happens here), off the critical path: in
        # PostgreSQL 15 a DROP DATABASE waits for a checkpoint that writes out the whole load
        # (2.5-5 s for 1 GB); a process of its own drops the old copies (bigskies_ops.jobs.background_drop)
        keep = host.backup.keep_pre_restore
        dropped, dropping = [], [c["name"] for c in beyond_keep(pre_restore_copies(maint, db), keep)]
        if dropping and drop_copies_later(access.runner, host, db, keep, dropping) is None:
            dropped, dropping = prune_pre_restore(maint, db, keep, warnings=warnings), []
        return RestoreResult(db, info.path, pre, stopped, time.monotonic() - t0, checked,
                             warnings=warnings, dropped_copies=dropped, dropping_copies=dropping,
                             has_manifest=info.manifest is not None)
    except (KeyboardInterrupt, Interrupted):
        if swapped:  # say so: "interrupted" alone reads as "rolled back"
            report.note(f"note: the restore had completed before the interrupt: {target_db or db!r} is the restored "
                        f"copy{'' if target_db or old is None else f'; the previous database is kept as {pre!r}'}; "
                        f"pre-restore copies beyond keep_pre_restore are dropped by the next restore")
        raise
    finally:
        if not swapped and ours:
            try:
                drop_db(maint, side)
            except BigskiesError as e:
                cmd = f"psql -d {maint.database} -c 'DROP DATABASE {ident(side).as_string()} WITH (FORCE)'"
                left_behind(f"side database {side!r} is left behind ({str(e).splitlines()[0][:200]}); drop it "
                            f"with: {cmd}")
                report.note(f"warning: could not drop side database {side!r}: {e}; drop it with: {cmd}")
