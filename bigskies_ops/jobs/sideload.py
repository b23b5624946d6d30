"""Loading an archive into a fresh database beside the live one, and checking what
was loaded: shared by the restore (its side database, :mod:`bigskies_ops.jobs.restore`)
and the restore test of ``db.verify`` (its throwaway database, :mod:`bigskies_ops.jobs.verify`).

* :func:`role_policy` decides, before anything is created, what the load does with
  roles the archive names that this cluster lacks;
* :func:`load_archive` loads a plain or custom archive with stop-on-error, in
  parallel only where that cannot change the result, with the session settings of
  :data:`RESTORE_PGOPTIONS`;
* :func:`verify_against_manifest` compares the loaded database with the manifest
  (every table, its row count, schema_migrations); :func:`table_counts` and
  :func:`inserted_rows` are the counts it reads.
"""
from __future__ import annotations

import os
import threading
import time

from bigskies_ops import report
from bigskies_ops.archives.integrity import ArchiveInfo, feed_file, pg_restore_script
from bigskies_ops.archives.plainsql import CopyTags, OwnerAclFilter, RolePolicy, missing_roles_message
from bigskies_ops.errors import PostgresError, SafetyError
from bigskies_ops.jobs.parload import load_plain_parallel
from bigskies_ops.pg.access import PostgresAccess, Sql, lit
from bigskies_ops.pg.admin import acl_items
from bigskies_ops.pg.loadcheck import cluster_roles
from bigskies_ops.pg.tools import pg_restore_args, psql_args

LOAD_COUNT_BATCH = 64  # tables counted per transaction: PostgreSQL's default max_locks_per_transaction


#: Session settings of the tools loading the side database (libpq PGOPTIONS):
#: synchronous_commit=off spares one WAL flush per pg_restore item (PostgreSQL 15 docs,
#: 14.4 "Populating a Database"). It does not weaken the result: the swap transaction
#: commits synchronously, and WAL is flushed in order, so every earlier commit of the load
#: is durable before the swap is. maintenance_work_mem is the server's own, as for
#: pg_restore and psql: a larger one (256MB-1GB per session, until 2026-12-05) sorted the
#: 5M-row primary key of the benchmark in memory, 1 s faster when that memory had just been
#: freed, but 1.4-2.1 s slower for the whole 6 s restore when it had not (a VM returning
#: free memory to its host pays a fault per first touch: bench/run.py, probe_first_touch),
#: and it took up to 2 GB of a production server's memory unasked.
#: (backend_flush_after=2MB was tried and dropped: the loading backends' forced
#: writeback made a 1 GB pg_restore -j 2 about 2.5 s slower on the reference machine.)
RESTORE_PGOPTIONS = "-c synchronous_commit=off"


def needed_roles(info: ArchiveInfo) -> set[str] | None:
    """Roles the archive and its database properties name (None: not known before the load)."""
    if getattr(info, "roles", None) is None:  # a FollowedArchive: judged while it loads
        return None
    props = (info.manifest or {}).get("database_properties") or {}
    out = set(info.roles)
    out.update(r["role"] for r in props.get("role_settings") or [])
    out.update(g for g, _p, _o in acl_items(props.get("acl")) if g)
    return out


def missing_roles(maint: Sql, info: ArchiveInfo, *, created: tuple[str, ...] | list[str] = (),
                  existing: set[str] | frozenset[str] | None = None) -> list[str]:
    """Roles the archive names (:func:`needed_roles`) that this cluster lacks, less
    ``created`` (the ones a ``--roles`` restore creates first); [] when not known before
    the load. ``existing``: the cluster's roles when already read (:func:`cluster_roles`;
    None: read them). Read-only: the decision of :func:`role_policy` and ``db.restore --check``."""
    needed = needed_roles(info)
    if needed is None:
        return []
    return sorted(needed - (cluster_roles(maint) if existing is None else existing) - set(created))


def role_policy(access: PostgresAccess, maint: Sql, info: ArchiveInfo, *, create_roles: bool,
                skip_missing: bool) -> RolePolicy:
    """Decide, before anything is created, what the load does with roles.

    Every role the archive names exists here: owners and privileges come back as in
    the source. Some are missing: with ``create_roles`` they are created from the
    backup's roles file first (bigskies_ops.archives.roles); with ``skip_missing`` the statements
    naming them are skipped (their objects stay owned by the restoring user); else
    the restore is refused (PostgreSQL docs, pg_restore: owners and privileges need
    their roles; ``--no-owner --no-acl`` would also drop every REVOKE and so widen access).

    Raises:
        SafetyError: roles are missing and neither option was given (exit 3).
    """
    if create_roles:
        from bigskies_ops.archives.roles import create_missing_roles
        create_missing_roles(access, info.path)
    existing = frozenset(cluster_roles(maint))  # read once, after the roles are created (issue 21)
    missing = missing_roles(maint, info, existing=existing)
    refusal = missing_roles_refusal(missing, access.host.name, skip_missing)
    if refusal:
        raise SafetyError(refusal)
    if missing:
        report.note(f"note: {len(missing)} role(s) named by the archive do not exist here ({', '.join(missing)}): "
                    f"their objects will be owned by the restoring user and the statements naming them skipped")
    return RolePolicy(existing, skip_missing)


def missing_roles_refusal(missing: list[str], host: str, skip_missing: bool) -> str | None:
    """The refusal of a restore whose archive names the ``missing`` roles (None: none
    missing, or ``--skip-missing-roles``)."""
    return missing_roles_message(missing, host=host) if missing and not skip_missing else None


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
    # one transaction per LOAD_COUNT_BATCH tables: a count takes a lock on each table until its
    # transaction ends, and the server's lock table is shared (max_locks_per_transaction x
    # connections): thousands of tables in one query ran out of shared memory
    for k in range(0, len(want), LOAD_COUNT_BATCH):
        batch = want[k:k + LOAD_COUNT_BATCH]
        for r in sql.query(count_rows_sql(batch)):
            t = batch[r["i"]]
            out[(t["schema"], t["name"])] = r["n"]
    return out


def load_archive(access: PostgresAccess, info: ArchiveInfo, side: str, policy: RolePolicy | None,
                 jobs: int | None, progress) -> tuple[int, str, str, dict | None]:
    """Load the checked archive ``info`` into the new, empty database ``side``.

    Args:
        jobs: loading sessions (default 2; local hosts only, an SSH host loads with one).
        progress: called with the archive bytes read so far, or None.

    Returns:
        ``(returncode, stdout, stderr, copied)``: the loading tool's exit status and
        output (the load stops at the first error: psql ``ON_ERROR_STOP``, pg_restore
        ``--exit-on-error``); ``copied`` maps ``(schema, table)`` to the rows the server
        reported for the load (psql's ``COPY n`` tags for plain dumps, :func:`inserted_rows`
        for custom archives), or None.

    Several sessions load only where that cannot change the result: a plain dump goes
    serial from the first statement that calls the dump's own functions while data is
    loaded (bigskies_ops.jobs.parload), a custom archive loads with one job when its DDL
    says so (:class:`bigskies_ops.archives.plainsql.StatementFacts`, read by
    :func:`bigskies_ops.archives.integrity.scan_archive`). Statements naming
    roles follow ``policy``; a custom archive whose missing roles are skipped is read
    as SQL (``pg_restore --file -``) through the same scanner as a plain dump."""
    native_local = not access.host.container and not access.host.is_remote
    progress = _LoadProgress.wrap(progress, info, native_local)
    j = jobs if jobs is not None else 2  # local hosts only; remote ones load with one session
    facts = info.facts
    if info.format == "custom" and j > 1 and facts is not None and (facts.load_hazards or facts.post_hazards):
        report.note(f"Loading with one job: {(facts.load_hazards + facts.post_hazards)[0]} (hidden from pg_restore's "
                    f"scheduler: a parallel load could give another result than a serial one)")
        j = 1
    if info.format == "plain" and not access.host.is_remote and j > 1:
        stats: dict = {}
        res = load_plain_parallel(access, info.path, side, jobs=j, policy=policy, pgoptions=RESTORE_PGOPTIONS,
                                  progress=progress, stats=stats)
        report_load_stats(stats.get("serial_because"), stats.get("skipped"))
        return res
    skip = policy is not None and policy.skip_missing and bool((needed_roles(info) or set()) - policy.existing)
    if info.format == "plain" or skip:
        flt = OwnerAclFilter(policy)
        tags = CopyTags()
        source = None if info.format == "plain" else pg_restore_script(access, info.path, [])
        rc, out, err = feed_file(access, "psql", psql_args(side, single_transaction=True, quiet=False), info.path,
                                 decompress=True, line_filter=flt, progress=progress, pgoptions=RESTORE_PGOPTIONS,
                                 stdout_sink=tags.feed, source=source)
        report_load_stats(None, flt.skipped)
        return rc, out, err, (tags.by_table(flt.copy_tables) if rc == 0 else None)
    if native_local:
        stop = _watch_side_size(access, side, progress)  # pg_restore reads the file itself
        try:
            r = access.run_tool("pg_restore", pg_restore_args(side, jobs=j, no_owner=False, from_file=info.path),
                                check=False, pgoptions=RESTORE_PGOPTIONS)
        finally:
            stop.set()
        return r.returncode, r.text, r.stderr, (inserted_rows(access.sql(side)) if r.returncode == 0 else None)
    rc, out, err = feed_file(access, "pg_restore", pg_restore_args(side, jobs=1, no_owner=False),
                             info.path, decompress=False, progress=progress, pgoptions=RESTORE_PGOPTIONS)
    return rc, out, err, (inserted_rows(access.sql(side)) if rc == 0 else None)


class _LoadProgress:
    """A load's progress: the archive bytes read against the archive's size (the loaders
    read it: integrity.feed_file, parload), and once the whole archive is read, the step
    "building indexes and constraints" (what is left of a dump at its end is its
    post-data section: indexes, constraints, triggers).

    Created in the job's thread: the step sink in effect there is kept, the loaders call
    this from their own threads."""

    def __init__(self, progress, size: int):
        self.progress, self.size = progress, size
        self.step = report.sinks().step
        self.told = False

    @classmethod
    def wrap(cls, progress, info: ArchiveInfo, native_local: bool):
        if progress is None:
            return None
        if native_local and info.format == "custom":
            # pg_restore reads the file itself: the side database's size against the source's
            report.total(progress, (info.manifest or {}).get("database_bytes"), estimate=True,
                         basis="database size")
            return progress
        try:
            size = os.path.getsize(info.path)
        except OSError:
            return progress
        report.total(progress, size)
        return cls(progress, size)

    def __call__(self, done: int, written: int | None = None) -> None:
        self.progress(done)
        if done >= self.size and not self.told:
            self.told = True
            if self.step is not None:
                self.step("building indexes and constraints")


def _watch_side_size(access: PostgresAccess, side: str, progress, every: float = 1.0) -> threading.Event:
    """Tell ``progress`` ``pg_database_size(side)`` every ``every`` seconds until the
    returned event is set (a load whose reads this process does not see)."""
    stop = threading.Event()
    if progress is None or not getattr(progress, "shows_bytes", True):
        return stop
    sql = access.sql(access.host.postgres.maintenance_db)

    def poll() -> None:
        while not stop.wait(every):
            try:
                progress(int(sql.value(f"SELECT pg_catalog.pg_database_size({lit(side).as_string()})")))
            except Exception:  # noqa: BLE001 - progress only; the load's own errors are reported
                return
    threading.Thread(target=poll, daemon=True, name="side-size").start()
    return stop


def report_load_stats(serial_because: str | None, skipped: dict | None) -> None:
    """Note (``report.note``) why a parallel load went serial (``serial_because``) and how many
    statements naming missing roles it skipped (``skipped``: role -> count)."""
    if serial_because:
        report.note(f"Loading serially: {serial_because} (a parallel load could compute other values than psql's "
                    f"serial load of the same dump)")
    if skipped:
        report.note(f"Skipped {sum(skipped.values())} statement(s) naming roles missing here: "
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


def verify_against_manifest(sql: Sql, info: ArchiveInfo, copied: dict | None = None) -> int:
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
    report.step("checking row counts")
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
            report.note("note: the rows of " + ", ".join(f"{s}.{n}" for s, n in sorted(moved)) + " are all there, "
                        "spread over the partitions as the server routes them (pg_dump loads such tables through "
                        "their root, as PostgreSQL's own restore does)")
        if extra:
            report.note("warning: rows were added during the load by the schema itself (its triggers, rules or "
                        "functions), as PostgreSQL's own restore would add them: " + "; ".join(extra[:10]))
    has_sm = sql.value("SELECT to_regclass('public.schema_migrations') IS NOT NULL")
    if man.get("schema_migrations_head") and not has_sm:
        raise PostgresError("restored copy has no schema_migrations table, but the backup recorded one")
    if not has_sm:
        report.note("warning: the restored database has no schema_migrations table")
    return len(tables)
