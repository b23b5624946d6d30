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
touched. ``--undo`` swaps the newest pre-restore copy back.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import socket
import time
from dataclasses import dataclass, field


from bigskies_ops.archives.integrity import (ArchiveInfo, check_archive, feed_file, gunzip_chunks, pg_restore_script,
                                              scan_archive)
from bigskies_ops.pg.access import PostgresAccess, Sql, ident, lit, pgsql
from bigskies_ops.pg.admin import (acl_items, apply_properties, check_rights, check_space, create_like, database_properties,
                      db_info, drop_db, sessions_on)
from bigskies_ops.archives.plainsql import (CopyTags, MissingRolesError, OwnerAclFilter, RolePolicy, StatementFacts,  # noqa: F401
                       missing_roles_message)  # CopyTags re-exported (tests)
from bigskies_ops.archives.catalog import iso, latest, list_backups, utcnow
from bigskies_ops.jobs.coordinators import coordinators_paused
from bigskies_ops.errors import ArchiveError, BigskiesError, Interrupted, PostgresError, SafetyError, StorageError, UsageError
from bigskies_ops.inventory import Host
from bigskies_ops.archives.locks import host_lock
from bigskies_ops.pg.tools import (pg_restore_args, psql_args)
from bigskies_ops.hosts.runners import tail
from bigskies_ops.signals import left_behind

CHUNK = 1 << 20
COUNT_BATCH = 64  # tables counted per transaction: PostgreSQL's default max_locks_per_transaction
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


def side_db_name(database: str, when, n: int = 1) -> str:
    return _fit(database, "_restoring_" + when.strftime("%Y%m%d%H%M%S") + (f"_{n}" if n > 1 else ""))


def pre_restore_name(database: str, when, n: int = 1) -> str:
    return _fit(database, "_pre_" + when.strftime("%Y%m%d%H%M%S") + (f"_{n}" if n > 1 else ""))


def verify_db_name(database: str, when, n: int = 1) -> str:
    """The throwaway database of ``db.verify --restore-test``."""
    return _fit(database, "_verify_" + when.strftime("%Y%m%d%H%M%S") + (f"_{n}" if n > 1 else ""))


def unused_name(maint, make, database: str, when) -> str:
    """``make(database, when)``, or with ``_2``, ``_3``, ... when a database of that name
    exists (restores of one database within the same second; they run one after
    another under the (host, database) lock, so the first free name stays free)."""
    taken = {r["datname"] for r in maint.query("SELECT datname FROM pg_catalog.pg_database")}
    n = 1
    while make(database, when, n) in taken:
        n += 1
    return make(database, when, n)


def cluster_roles(maint: Sql) -> set[str]:
    return {r["rolname"] for r in maint.query("SELECT rolname FROM pg_catalog.pg_roles")}


def needed_roles(info: ArchiveInfo) -> set[str] | None:
    """Roles the archive and its database properties name (None: not known before the load)."""
    if getattr(info, "roles", None) is None:  # a FollowedArchive: judged while it loads
        return None
    props = (info.manifest or {}).get("database_properties") or {}
    out = set(info.roles)
    out.update(r["role"] for r in props.get("role_settings") or [])
    out.update(g for g, _p, _o in acl_items(props.get("acl")) if g)
    return out


def role_policy(access: PostgresAccess, maint: Sql, info: ArchiveInfo, *, create_roles: bool,
                skip_missing: bool, notify) -> RolePolicy:
    """Decide, before anything is created, what the load does with roles.

    Every role the archive names exists here: owners and privileges come back as in
    the source. Some are missing: with ``create_roles`` they are created from the
    backup's roles file first (bigskies_ops.archives.roles); with ``skip_missing`` the statements
    naming them are skipped (their objects stay owned by the restoring user); else
    the restore is refused (PostgreSQL docs, pg_restore: owners and privileges need
    their roles; ``--no-owner --no-acl`` would also drop every REVOKE and so widen access).

    Raises:
        MissingRolesError: roles are missing and neither option was given (exit 3).
    """
    if create_roles:
        from bigskies_ops.archives.roles import create_missing_roles
        create_missing_roles(access, info.path, notify)
    existing = cluster_roles(maint)
    needed = needed_roles(info)
    missing = sorted(needed - existing) if needed is not None else []
    if missing and not skip_missing:
        raise SafetyError(missing_roles_message(missing, host=access.host.name))
    if missing:
        notify(f"note: {len(missing)} role(s) named by the archive do not exist here ({', '.join(missing)}): "
               f"their objects will be owned by the restoring user and the statements naming them skipped")
    return RolePolicy(frozenset(existing), skip_missing)


#: Debian/Ubuntu packages of extensions that are not in postgresql-15 itself (postgresql-contrib
#: ships with it); a name not listed here is named with the usual postgresql-15-NAME pattern.
EXTENSION_PACKAGES = {"postgis": "postgresql-15-postgis-3", "postgis_topology": "postgresql-15-postgis-3",
                      "postgis_raster": "postgresql-15-postgis-3", "vector": "postgresql-15-pgvector",
                      "timescaledb": "timescaledb-2-postgresql-15", "pg_cron": "postgresql-15-cron",
                      "pg_partman": "postgresql-15-partman", "pgrouting": "postgresql-15-pgrouting"}


def _extension_hint(name: str) -> str:
    return EXTENSION_PACKAGES.get(name, f"postgresql-15-{name.replace('_', '-')}")


def check_extensions(maint: Sql, info: ArchiveInfo, host: str) -> None:
    """Refuse before anything is created when the archive creates an extension this
    server cannot install. Raises ArchiveError naming it and the package that provides it."""
    if not info.extensions:
        return
    avail = {r["name"] for r in maint.query("SELECT name FROM pg_catalog.pg_available_extensions")}
    lacking = sorted(info.extensions - avail)
    if lacking:
        raise ArchiveError(f"{info.path}: the archive needs extension(s) {', '.join(lacking)}, which the server of "
                           f"{host} does not have; install the package that provides "
                           f"{'them' if len(lacking) > 1 else 'it'} on that server (on Debian/Ubuntu: "
                           f"{', '.join(sorted({_extension_hint(x) for x in lacking}))}). Nothing was changed")


def explain_load_error(stderr: str) -> str | None:
    """One sentence naming the object behind a failed load, from psql's/pg_restore's
    error and CONTEXT lines, or None: a missing extension (and the package to install),
    a function that failed while a table's rows were loaded (the table and the function)."""
    m = re.search(r'extension "([^"]+)" is not available|could not open extension control file "[^"]*/([^/"]+)'
                  r'\.control"', stderr)
    if m:
        name = m.group(1) or m.group(2)
        return (f"the archive needs extension {name!r}, which this server lacks: install the package that "
                f"provides it (on Debian/Ubuntu: {_extension_hint(name)})")
    m = re.search(r'new row for relation "([^"]+)" violates check constraint "([^"]+)"', stderr)
    if m:
        return (f"rows of table {m.group(1)} fail its CHECK constraint {m.group(2)} during the load (a constraint "
                f"that calls a function can give another answer than when the rows were written)")
    copy = re.search(r"COPY ([^,\n]+), line (\d+)", stderr) or re.search(
        r'COPY failed for table "([^"]+)"()', stderr)
    func = re.search(r'(?:SQL|PL/pgSQL) function "?([^"\s(]+)', stderr) or re.search(
        r"PL/pgSQL function ([^\s(]+)\(", stderr)
    if copy and func:
        line = f" (line {copy.group(2)} of its data)" if copy.group(2) else ""
        return (f"function {func.group(1)} failed while rows of table {copy.group(1).strip()} were loaded{line}: "
                f"a constraint, default or generated column of that table calls it")
    if copy:
        line = f" (line {copy.group(2)} of its data)" if copy.group(2) else ""
        return f"loading the rows of table {copy.group(1).strip()} failed{line}"
    return None


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
    from bigskies_ops.archives.counts import count_rows_sql
    # one transaction per COUNT_BATCH tables: a count takes a lock on each table until its
    # transaction ends, and the server's lock table is shared (max_locks_per_transaction x
    # connections): thousands of tables in one query ran out of shared memory
    for k in range(0, len(want), COUNT_BATCH):
        batch = want[k:k + COUNT_BATCH]
        for r in sql.query(count_rows_sql(batch)):
            t = batch[r["i"]]
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
    from bigskies_ops.hosts.local import LocalRunner
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
            jobs: int | None = None, notify=print, progress=None, confirmed: bool = True,
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
            change the result (:func:`_load`).
        roles: first create the roles of ``<archive>.roles.sql`` missing on the cluster
            (existing roles are never altered; bigskies_ops.archives.roles).
        skip_missing_roles: objects of roles missing here are owned by the restoring
            user, and the statements naming those roles skipped (:func:`role_policy`);
            without it (and without ``roles``) such an archive is refused before
            anything is created.
        skip_space_check: do not refuse for too little free space on the server
            (:func:`check_space`).
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
            notify(f"warning: {w}")
        maint = access.sql(host.postgres.maintenance_db)
        if target_db is not None and db_info(maint, target_db) is not None:
            raise UsageError(f"--target-db {target_db!r} already exists on {host.name}; choose a new name")
        if target_db is None and host.coordinators:  # unknown coordinator names: exit 2 before any change
            from bigskies_ops.jobs.coordinators import coordinators_preflight
            coordinators_preflight(access.runner, host)
        if follow is None:
            scan_archive(access, info)
            check_extensions(maint, info, host.name)
            if not skip_space_check:
                check_space(access, maint, info, notify)
        policy = role_policy(access, maint, info, create_roles=roles and follow is None,
                             skip_missing=skip_missing_roles, notify=notify)
        with host_lock(access.runner, host.backup.dir, host.name, target_db or db, task, notify=notify):
            return _restore_locked(access, host, info, db, target_db, terminate_sessions, policy, jobs,
                                   notify, progress, t0)


def _restore_locked(access, host, info, db, target_db, terminate, policy, jobs, notify, progress, t0):
    maint = access.sql(host.postgres.maintenance_db)
    now = utcnow()
    old = db_info(maint, db)
    _drop_leftover_side_dbs(maint, target_db or db, notify)
    if old is not None and target_db is None and not terminate and not host.coordinators:
        _refuse_if_sessions(maint, db)  # fail fast, before a long restore (checked again at the swap)
    check_rights(maint, db if target_db is None else None, old)
    side = unused_name(maint, side_db_name, target_db or db, now)
    notify(f"Restoring into side database {side!r} (the current database is not touched yet)")
    create_like(maint, side, old, notify)
    swapped = False
    try:
        maint.execute(pgsql.SQL("COMMENT ON DATABASE {} IS {}").format(ident(side), lit(json.dumps(
            {"tag": SIDE_TAG, "of": target_db or db, "pid": os.getpid(), "host": socket.gethostname(),
             "at": iso(now)}))))
        if isinstance(info, FollowedArchive):
            info, (rc, err, copied) = _load_followed(access, info, side, policy, jobs, notify)
        else:
            rc, out, err, copied = _load(access, info, side, policy, jobs, progress, notify)
        if rc != 0:
            why = explain_load_error(err)
            raise PostgresError(f"restore into the side database failed (exit {rc}): "
                                f"{why + '. ' if why else ''}{tail(err, 800)}", returncode=rc, stderr=tail(err))
        checked = _verify_side(access.sql(side), info, notify, copied)
        # the database's own settings, privileges and comment (not in a plain pg_dump): the
        # backup's, or for an archive without them the current database's
        props = (info.manifest or {}).get("database_properties") or (database_properties(maint, db) if old else None)
        warnings = apply_properties(maint, side, props, policy.existing if policy is not None else None, notify) if props else []
        comment = lit((props or {}).get("comment"))
        if target_db is not None or old is None:
            name = target_db or db
            maint.execute(pgsql.SQL("ALTER DATABASE {0} RENAME TO {1}; COMMENT ON DATABASE {1} IS {2}").format(
                ident(side), ident(name), comment))
            swapped = True
            return RestoreResult(name, info.path, None, [], time.monotonic() - t0, checked, warnings=warnings)
        pre = unused_name(maint, pre_restore_name, db, now)
        with coordinators_paused(access.runner, host, notify) as stopped:
            _swap(maint, db, side, pre, terminate, info.path, notify, comment=comment)
            swapped = True
        # housekeeping: the restore is done whatever happens here
        dropped = prune_pre_restore(maint, db, host.backup.keep_pre_restore, notify, warnings=warnings)
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
                notify(f"warning: could not drop side database {side!r}: {e}; drop it with: {cmd}")


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


def _load_followed(access, fa: FollowedArchive, side: str, policy: RolePolicy | None, jobs: int | None, notify):
    """Load ``fa`` into ``side`` as it arrives, then check the finished archive.

    Returns ``(ArchiveInfo of the finished archive, (rc, stderr, rows))``. Raises the
    writer's error (after stopping the load), or ArchiveError."""
    from bigskies_ops.jobs.parload import load_plain_parallel
    growing = fa.growing
    n = max(1, jobs if jobs is not None else 2)
    opts = restore_pgoptions(access, n)
    fa.start()
    stats: dict = {}
    try:
        rc, _, err, rows = load_plain_parallel(
            access, "(pull in progress)", side, jobs=n, policy=policy, pgoptions=opts, stats=stats,
            open_chunks=lambda: gunzip_chunks(None, path=growing.path or "pull", raw=growing.raw_chunks()))
        _say_load_stats(stats.get("serial_because"), stats.get("skipped"), notify)
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


def _load(access, info: ArchiveInfo, side: str, policy: RolePolicy | None, jobs: int | None, progress,
          notify=print):
    """Load the archive into ``side``. Returns ``(returncode, stdout, stderr, copied)``;
    ``copied`` maps tables to the rows the server reported for the load (psql's ``COPY n``
    tags for plain dumps, :func:`inserted_rows` for custom archives), or None.

    Several sessions load only where that cannot change the result: a plain dump goes
    serial from the first statement that calls the dump's own functions while data is
    loaded (bigskies_ops.jobs.parload), a custom archive loads with one job when its DDL
    says so (:class:`StatementFacts`, read by :func:`scan_archive`). Statements naming
    roles follow ``policy``; a custom archive whose missing roles are skipped is read
    as SQL (``pg_restore --file -``) through the same scanner as a plain dump."""
    native_local = not access.host.container and not access.host.is_remote
    j = jobs if jobs is not None else 2  # local hosts only; remote ones load with one session
    facts = info.facts
    if info.format == "custom" and j > 1 and facts is not None and (facts.load_hazards or facts.post_hazards):
        notify(f"Loading with one job: {(facts.load_hazards + facts.post_hazards)[0]} (hidden from pg_restore's "
               f"scheduler: a parallel load could compute other values than a serial one)")
        j = 1
    parallel = j > 1 and (native_local or (info.format == "plain" and not access.host.is_remote))
    opts = restore_pgoptions(access, j if parallel else 1)
    if info.format == "plain" and not access.host.is_remote and j > 1:
        from bigskies_ops.jobs.parload import load_plain_parallel
        stats: dict = {}
        res = load_plain_parallel(access, info.path, side, jobs=j, policy=policy, pgoptions=opts,
                                  progress=progress, stats=stats)
        _say_load_stats(stats.get("serial_because"), stats.get("skipped"), notify)
        return res
    skip = policy is not None and policy.skip_missing and bool((needed_roles(info) or set()) - policy.existing)
    if info.format == "plain" or skip:
        flt = OwnerAclFilter(policy)
        tags = CopyTags()
        source = None if info.format == "plain" else pg_restore_script(access, info.path, [])
        rc, out, err = feed_file(access, "psql", psql_args(side, single_transaction=True, quiet=False), info.path,
                                 decompress=True, line_filter=flt, progress=progress, pgoptions=opts,
                                 stdout_sink=tags.feed, source=source)
        _say_load_stats(None, flt.skipped, notify)
        return rc, out, err, (tags.by_table(flt.copy_tables) if rc == 0 else None)
    if native_local:
        r = access.run_tool("pg_restore", pg_restore_args(side, jobs=j, no_owner=False, from_file=info.path),
                            check=False, pgoptions=opts)
        return r.returncode, r.text, r.stderr, (inserted_rows(access.sql(side)) if r.returncode == 0 else None)
    rc, out, err = feed_file(access, "pg_restore", pg_restore_args(side, jobs=1, no_owner=False),
                             info.path, decompress=False, progress=progress, pgoptions=opts)
    return rc, out, err, (inserted_rows(access.sql(side)) if rc == 0 else None)


def _say_load_stats(serial_because: str | None, skipped: dict | None, notify) -> None:
    if serial_because:
        notify(f"Loading serially: {serial_because} (a parallel load could compute other values than psql's "
               f"serial load of the same dump)")
    if skipped:
        notify(f"Skipped {sum(skipped.values())} statement(s) naming roles missing here: "
               + ", ".join(f"{r} ({n})" for r, n in sorted(skipped.items())))


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


#: every table of a database, and for a partition the top of its partition tree
_TABLES_AND_ROOTS_SQL = (
    "SELECT n.nspname AS schema, c.relname AS name, rn.nspname AS root_schema, r.relname AS root_name "
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_catalog.pg_class r ON c.relispartition AND r.oid = pg_catalog.pg_partition_root(c.oid) "
    "LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace "
    "WHERE c.relkind IN ('r', 'p') AND c.relispartition")


def _verify_side(sql: Sql, info: ArchiveInfo, notify, copied: dict | None = None) -> int:
    """Every table of the manifest present with its recorded row count; schema_migrations present.

    ``copied``: rows per table reported by the server for the load itself (psql's COPY
    tags for plain dumps, :func:`inserted_rows` for pg_restore). A table whose
    reported rows equal the manifest's, and into which nothing else inserted during
    the load (the server's own insert counter agrees), is not scanned again (a
    ``count(*)`` of a fresh table also rewrites every page to set hint bits); every
    other table is counted.

    Rules (the check never fails a faithful restore, never passes a lossy one):

    * a partition is compared at the top of its partition tree: pg_dump loads some
      partitioned tables through their root (hash partitioning on an enum key, or
      ``--load-via-partition-root``), and the server may then route rows to other
      partitions than in the source, as PostgreSQL's own restore does (a note says so);
    * a table with more rows than the backup, where the load itself inserted exactly
      the backup's rows, got the others from the schema during the load (a trigger,
      rule or function of its own): a warning names it and the numbers.

    Raises:
        PostgresError: a table is missing or has rows missing or doubled.
    """
    man = info.manifest or {}
    tables = man.get("tables") or []
    if tables:
        expected = {(t["schema"], t["name"]): t.get("rows") for t in tables}
        root_of = {(r["schema"], r["name"]): (r["root_schema"], r["root_name"])
                   for r in sql.query(_TABLES_AND_ROOTS_SQL)}
        stats = inserted_rows(sql) if copied is not None and info.format == "plain" else None
        trusted = {k: v for k, v in (copied or {}).items()
                   if expected.get(k) is not None and v == expected[k]
                   and (stats is None or stats.get(k) == v)}  # absent: rows updated or deleted during the load
        counts = table_counts(sql, tables, known=trusted)
        bad, extra, moved = [], [], set()
        for t in tables:
            key = (t["schema"], t["name"])
            got, want = counts[key], t.get("rows")
            if got is None:
                bad.append(f"{t['schema']}.{t['name']} missing")
            elif want is None or got == want:
                continue
            elif key in root_of:
                moved.add(root_of[key])  # judged at the root below
            elif got > want and (info.format == "custom" or (copied or {}).get(key) == want):
                extra.append(f"{t['schema']}.{t['name']} ({got} rows, {got - want} more than the backup)")
            else:
                bad.append(f"{t['schema']}.{t['name']} has {got} rows, manifest says {want}")
        if bad:
            raise PostgresError("restored copy does not match the manifest: " + "; ".join(bad[:10]))
        moved = {r for r in moved if counts.get(r) is not None and counts.get(r) == expected.get(r)}
        if moved:
            notify("note: the rows of " + ", ".join(f"{s}.{n}" for s, n in sorted(moved)) + " are all there, "
                   "spread over the partitions as the server routes them (pg_dump loads such tables through "
                   "their root, as PostgreSQL's own restore does)")
        if extra:
            notify("warning: rows were added during the load by the schema itself (its triggers, rules or "
                   "functions), as PostgreSQL's own restore would add them: " + "; ".join(extra[:10]))
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
    from bigskies_ops.hosts.runners import pid_alive
    return pid_alive(pid)


def _tagged(maint: Sql, tag: str, db: str) -> list[dict]:
    rows = maint.query(
        "SELECT d.datname AS name, pg_catalog.shobj_description(d.oid, 'pg_database') AS comment, "
        # the size only where this role may connect: pg_database_size needs CONNECT
        "CASE WHEN pg_catalog.has_database_privilege(d.oid, 'CONNECT') THEN pg_catalog.pg_database_size(d.oid) "
        "END AS bytes FROM pg_catalog.pg_database d")
    out = []
    for r in rows:
        try:
            c = json.loads(r["comment"] or "")
        except ValueError:
            continue
        if isinstance(c, dict) and c.get("tag") == tag and c.get("of") == db:
            out.append({"name": r["name"], "tag": c, "bytes": r["bytes"]})
    return out


def _swap(maint: Sql, db: str, side: str, pre: str, terminate: bool, archive: str, notify,
          comment: pgsql.Composable = pgsql.SQL("NULL")) -> None:
    sess = sessions_on(maint, db)
    if sess:
        listing = "; ".join(f"pid {s['pid']} {s['user']}@{s['client'] or 'local'} {s['application'] or ''}".strip()
                            for s in sess)
        if not terminate:
            raise SafetyError(f"{len(sess)} session(s) still connected to {db!r}: {listing}. Nothing was "
                              f"changed; stop them or pass --terminate-sessions")
        notify(f"Terminating {len(sess)} session(s) on {db!r}: {listing}")
        maint.execute(pgsql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(ident(db)))
        # the sessions listed, never autovacuum: the server cancels it itself on RENAME/DROP,
        # and a non-superuser owner may not signal it ("must be a superuser to terminate ...")
        maint.query(pgsql.SQL("SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
                              "WHERE datname = {} AND pid <> pg_catalog.pg_backend_pid() "
                              "AND backend_type IN ('client backend', 'walsender')").format(lit(db)))
        deadline = time.monotonic() + 15
        while sessions_on(maint, db) and time.monotonic() < deadline:
            time.sleep(0.2)
    tag = json.dumps({"tag": PRE_RESTORE_TAG, "of": db, "at": iso(utcnow()), "replaced_by": archive})
    try:
        _renames(maint, db, pgsql.SQL(
            "BEGIN; ALTER DATABASE {old} RENAME TO {pre}; ALTER DATABASE {side} RENAME TO {old}; "
            "COMMENT ON DATABASE {pre} IS {c}; COMMENT ON DATABASE {old} IS {own}; COMMIT;").format(
            old=ident(db), pre=ident(pre), side=ident(side), c=lit(tag), own=comment), terminate)
    finally:
        if terminate:
            for name in (db, pre):
                try:
                    maint.execute(pgsql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident(name)))
                except BigskiesError:
                    pass
    notify(f"Swapped: {db!r} is the restored copy; the previous database is kept as {pre!r}")


def _renames(maint: Sql, db: str, script: pgsql.Composable, terminate: bool) -> None:
    """Run the swap's renames; the server's "being accessed by other users" (sessions this
    role could not see: :func:`sessions_on`) becomes the same refusal as a listed session."""
    try:
        maint.execute(script)
    except PostgresError as e:
        if "is being accessed by other users" not in str(e):
            raise
        m = re.search(r"There (?:is|are) (\d+) other session", str(e))
        n = m.group(1) if m else "some"
        raise SafetyError(f"{n} other session(s) still connected to {db!r} that this role may not see or end "
                          f"(sessions of other roles: a member of pg_read_all_stats sees them, of pg_signal_backend "
                          f"ends them). Nothing was changed; stop them"
                          f"{'' if terminate else ' or pass --terminate-sessions'}") from None


def pre_restore_copies(maint: Sql, db: str) -> list[dict]:
    """Pre-restore copies of ``db``, newest first (found by their comment, not their name)."""
    out = [{"name": r["name"], "of": db, "at": r["tag"].get("at"), "replaced_by": r["tag"].get("replaced_by"),
            "bytes": r["bytes"]} for r in _tagged(maint, PRE_RESTORE_TAG, db)]
    out.sort(key=lambda r: r["at"] or "", reverse=True)
    return out


def prune_pre_restore(maint: Sql, db: str, keep: int, notify=print, warnings: list[str] | None = None) -> list[str]:
    """Drop the pre-restore copies of ``db`` beyond the newest ``keep``; returns their names.

    With ``warnings`` (after a restore's swap: housekeeping that must not read as a
    failed restore) a copy that cannot be dropped is a warning with the command that
    finishes it; without, its error is raised."""
    dropped = []
    for c in pre_restore_copies(maint, db)[keep:]:
        try:
            drop_db(maint, c["name"])
        except BigskiesError as e:
            if warnings is None:
                raise
            w = (f"the restore is done, but the old pre-restore copy {c['name']!r} could not be dropped "
                 f"({str(e).splitlines()[0][:200]}); drop it with: psql -d {maint.database} -c "
                 f"'DROP DATABASE {ident(c['name']).as_string()} WITH (FORCE)'")
            notify(f"warning: {w}")
            warnings.append(w)
            continue
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
            pre = unused_name(maint, pre_restore_name, db, now)
            with coordinators_paused(access.runner, host, notify) as stopped:
                _swap(maint, db, src, pre, terminate_sessions, f"undo: {src}", notify)
            maint.execute(pgsql.SQL("COMMENT ON DATABASE {} IS NULL").format(ident(db)))
            return {"database": db, "restored_from": src, "previous_kept_as": pre, "coordinators": stopped}
