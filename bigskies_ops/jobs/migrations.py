"""Schema migrations: apply ``NNN_description.sql`` files in order, tracked in ``schema_migrations``.

This is the bootstrap coordinator's job, made safe to run anywhere, any number of
times, concurrently (docs/migrations.md is the user-facing description):

* Files ``NNN_description.sql`` in the host's ``migrations.dir`` (default
  ``configs/sql/``, read through the host's runner, so an SSH host's own folder)
  are applied in numeric order. Versions must be unique and contiguous; an applied
  file whose checksum changed is refused (:mod:`bigskies_ops.jobs.migration_files`).
* Each migration runs in ONE transaction together with its ``schema_migrations``
  row, or, marked non-transactional, statement by statement with resumable progress
  (:mod:`bigskies_ops.jobs.migration_apply`).
* Concurrent runners are serialised by a session-level advisory lock
  (:data:`~bigskies_ops.jobs.migration_apply.LOCK_KEY`), with a wait timeout.
  A runner that had to wait re-reads the state after it got the lock.
* A database made before this tool is adopted with ``--baseline VERSION``.

Decide, then act: :func:`~bigskies_ops.jobs.migration_files.plan` is pure; this
module reads the state, plans, and applies only what is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bigskies_ops import output, report
from bigskies_ops.archives.locks import host_lock
from bigskies_ops.errors import EXIT_FAILED, EXIT_REFUSED, EXIT_USAGE
from bigskies_ops.inventory import Host
from bigskies_ops.jobs.migration_apply import (ADOPTED_TAG, COMPATIBLE_TYPES, CREATE_TABLE_SQL, DEFAULT_LOCK_TIMEOUT,
                                               EXPECTED_COLUMNS, TABLE, DbState, MigrationLock, adoption_problem,
                                               apply_non_transactional, apply_transactional, read_state)
from bigskies_ops.jobs.migration_files import (MigrationError, MigrationFile, Plan, ahead_message, changed_message,
                                               check_no_transaction_control, plan, read_folder)
from bigskies_ops.pg.access import PostgresAccess, Sql, lit, pgsql


# --------------------------------------------------------------------------- jobs
@dataclass
class MigrateResult:
    host: str
    database: str
    applied: list[dict] = field(default_factory=list)
    pending: list[dict] = field(default_factory=list)
    backup: str | None = None
    waited_s: float = 0.0
    head: int | None = None
    check: bool = False
    baselined: list[int] = field(default_factory=list)
    would_refuse: str | None = None      # --check: the refusal a real run would hit (exit 0 anyway)

    @property
    def word(self) -> str:
        return "changed" if (self.applied or self.baselined) else "ok"

    def to_json(self) -> dict:
        return {"result": self.word, "host": self.host, "database": self.database, "applied": self.applied,
                "pending": self.pending, "backup": self.backup, "waited_for_lock_s": round(self.waited_s, 3),
                "head": self.head, "check": self.check, "baselined": self.baselined,
                "would_refuse": self.would_refuse}


def _desc(f: MigrationFile) -> dict:
    return {"version": f.version, "name": f.name, "file": f.filename, "checksum": f.checksum,
            "transactional": f.transactional}


def status(host: Host, *, database: str | None = None, access: PostgresAccess | None = None) -> dict:
    """Applied / pending / changed / unknown migrations of ``host`` (read only)."""
    db = database or host.postgres.database
    own = access is None
    access = access or PostgresAccess(host)
    try:
        files = read_folder(access.runner, host.migrations.dir)
        with access.sql(db).session() as session:
            state = read_state(session)
        problem = adoption_problem(state)
        p = plan(files, state.rows if not problem else {})
        rows = []
        for f, row in p.applied:
            rows.append({**_desc(f), "state": "applied", "applied_at": row.get("applied_at"),
                         "duration_ms": row.get("duration_ms"), "recorded_checksum": row.get("checksum")})
        for f, row in p.changed:
            rows.append({**_desc(f), "state": "changed", "applied_at": row.get("applied_at"),
                         "duration_ms": row.get("duration_ms"), "recorded_checksum": row.get("checksum")})
        for f in p.pending:
            prog = state.progress.get(f.version)
            rows.append({**_desc(f), "state": "pending", "applied_at": None, "duration_ms": None,
                         "recorded_checksum": None,
                         **({"statements_applied": sorted(prog)} if prog else {})})
        for r in p.unknown:
            rows.append({"version": int(r["version"]), "name": r.get("name"), "file": None, "checksum": None,
                         "transactional": None, "state": "unknown (no file: database ahead of code)",
                         "applied_at": r.get("applied_at"), "duration_ms": r.get("duration_ms"),
                         "recorded_checksum": r.get("checksum")})
        rows.sort(key=lambda r: r["version"])
        return {"host": host.name, "database": db, "folder": host.migrations.dir, "head": p.head,
                "has_table": state.has_table, "adoption_problem": problem, "migrations": rows,
                "counts": {"applied": len(p.applied), "pending": len(p.pending), "changed": len(p.changed),
                           "unknown": len(p.unknown)}}
    finally:
        if own:
            access.close()


def migrate(host: Host, *, to: int | None = None, check: bool = False, fail_if_pending: bool = False,
            take_backup: bool = True, baseline: int | None = None, database: str | None = None,
            lock_timeout: float = DEFAULT_LOCK_TIMEOUT, backup_fn=None,
            task: str = "db.migrate") -> MigrateResult:
    """Apply the pending migrations of ``host``'s folder to its database.

    The caller has applied the safety policy (protected hosts, ``--no-backup``).

    Args:
        to: apply up to and including this version only.
        check: dry run: report what would be applied (no lock, no change).
        fail_if_pending: read only; raise (exit 1) when anything is pending.
        take_backup: take a ``pre-migrate`` backup before applying anything.
        baseline: adopt an existing database: record versions <= ``baseline`` as applied
            without running them and without touching existing rows.
        lock_timeout: seconds to wait for the advisory lock.
        backup_fn: ``callable(host) -> archive path``; default ``backup.backup(kind="pre-migrate")``.

    Returns:
        :class:`MigrateResult` (``word`` ``ok`` when nothing was pending).

    Raises:
        MigrationError: bad folder (exit 2), changed applied file / adoption needed / database
            ahead of the code (exit 3 / 1), a failing migration (exit 1).
        LockBusyError: the lock was not free within ``lock_timeout``.
    """
    db = database or host.postgres.database
    res = MigrateResult(host.name, db, check=check)
    with PostgresAccess(host) as access:
        files = read_folder(access.runner, host.migrations.dir)
        _check_versions_exist(files, host.migrations.dir, to=to, baseline=baseline)
        sql = access.sql(db)
        if check or fail_if_pending:
            with sql.session() as session:
                state = read_state(session)
            return _dry_run(res, files, state, to, baseline, host, fail_if_pending)
        with MigrationLock(sql, lock_timeout) as lock:
            res.waited_s = lock.waited
            state = read_state(lock.session)   # after the lock: a runner we waited for may have applied
            if baseline is not None:
                res.baselined = _baseline(sql, state, files, baseline)
                state = read_state(lock.session)
            problem = adoption_problem(state)
            if problem:
                raise MigrationError(problem, exit_code=EXIT_REFUSED)
            p = plan(files, state.rows, to)
            _refuse_bad(p, host)
            res.head = p.head
            res.pending = [_desc(f) for f in p.pending]
            if not p.pending:
                return res
            for f in p.pending:
                if f.transactional:
                    check_no_transaction_control(f)
            if take_backup:
                report.note(f"taking a pre-migrate backup before applying {len(p.pending)} migration(s)")
                res.backup = (backup_fn or _pre_migrate_backup)(host)
                report.note(f"pre-migrate backup: {res.backup}")
            with host_lock(access.runner, host.backup.dir, host.name, db, task):
                _apply_pending(access, db, p.pending, state, lock, res)
            res.pending = []
            return res


def _check_versions_exist(files: list[MigrationFile], folder: str, *, to: int | None, baseline: int | None) -> None:
    """``--to`` and ``--baseline`` must name a file of the folder (MigrationError, exit 2)."""
    versions = {f.version for f in files}
    if to is not None and to not in versions:
        raise MigrationError(f"--to {to}: no migration with that version in {folder}", exit_code=EXIT_USAGE)
    if baseline is not None and baseline not in versions:
        raise MigrationError(f"--baseline {baseline}: no migration with that version in {folder}",
                             exit_code=EXIT_USAGE)


def _apply_pending(access: PostgresAccess, db: str, pending: list[MigrationFile], state: DbState,
                   lock: MigrationLock, res: MigrateResult) -> None:
    """Apply ``pending`` in order (under the migration lock and the host lock), recording each
    applied file in ``res``; ``schema_migrations`` is created with the first one if missing."""
    create = not state.has_table
    if create and not pending[0].transactional:
        access.sql(db).execute(CREATE_TABLE_SQL)
        create = False

    def done(f, secs):
        res.applied.append({**_desc(f), "seconds": round(secs, 3)})
        res.head = f.version
        report.note(f"applied {f.filename} in {secs * 1000:.0f} ms")

    for run in _runs(pending):
        if run[0].transactional:
            report.note(f"applying {', '.join(f.filename for f in run)} (one transaction each)")
            apply_transactional(access, db, run, done, create_table=create, reader=lock.session)
            create = False
        else:
            f = run[0]
            report.note(f"applying {f.filename} (non-transactional, statement by statement)")
            done(f, apply_non_transactional(access, db, f, state.progress.get(f.version, {}),
                                            reader=lock.session))


def _runs(files: list[MigrationFile]) -> list[list[MigrationFile]]:
    """Consecutive transactional files share one psql run; a non-transactional file is alone."""
    out: list[list[MigrationFile]] = []
    for f in files:
        if f.transactional and out and out[-1][0].transactional:
            out[-1].append(f)
        else:
            out.append([f])
    return out


def _refuse_bad(p: Plan, host: Host) -> None:
    if p.changed:
        raise MigrationError(changed_message(p), exit_code=EXIT_REFUSED)
    if p.unknown:
        raise MigrationError(ahead_message(p, host.migrations.dir), exit_code=EXIT_FAILED)
    applied = {f.version for f, _ in p.applied}
    if p.pending and applied and p.pending[0].version < max(applied):
        raise MigrationError(f"migration {p.pending[0].filename} is older than the newest applied migration "
                             f"({max(applied)}) but was never applied; renumber it after {max(applied)}",
                             exit_code=EXIT_FAILED)


def _dry_run(res, files, state, to, baseline, host, fail_if_pending) -> MigrateResult:
    """--check (CONTRACTS.md s.5: a dry run always exits 0, so a refusal a real run would hit
    is reported in ``would_refuse``) and --fail-if-pending (raises on anything not clean)."""
    try:
        return _dry_run_inner(res, files, state, to, baseline, host, fail_if_pending)
    except MigrationError as e:
        if fail_if_pending or e.exit_code == EXIT_USAGE:
            raise
        res.would_refuse = str(e)
        return res


def _dry_run_inner(res, files, state, to, baseline, host, fail_if_pending) -> MigrateResult:
    rows = state.rows
    if baseline is not None:
        rows = {**{f.version: {"checksum": f.checksum} for f in files if f.version <= baseline}, **rows}
        res.baselined = [f.version for f in files if f.version <= baseline and f.version not in state.rows]
    else:
        problem = adoption_problem(state)
        if problem:
            raise MigrationError(problem, exit_code=EXIT_REFUSED)
    p = plan(files, rows, to)
    _refuse_bad(p, host)
    res.head = p.head
    res.pending = [_desc(f) for f in p.pending]
    if fail_if_pending and p.pending:
        raise MigrationError(f"{len(p.pending)} migration(s) pending on {host.name}: "
                             + ", ".join(f.filename for f in p.pending), exit_code=EXIT_FAILED)
    return res


def _baseline(sql: Sql, state: DbState, files: list[MigrationFile], version: int) -> list[int]:
    """Record versions <= ``version`` as applied without running them. Existing rows are
    not touched; a foreign-shaped table gets the missing columns (nullable) added."""
    stmts = ["BEGIN"]
    if not state.has_table:
        stmts.append(CREATE_TABLE_SQL)
    else:
        for col, typ in EXPECTED_COLUMNS.items():
            if col not in state.columns:
                stmts.append(f"ALTER TABLE public.{TABLE} ADD COLUMN {col} {typ}")
        wrong = [c for c in EXPECTED_COLUMNS if c in state.columns and state.columns[c] not in COMPATIBLE_TYPES[c]]
        if wrong:
            raise MigrationError(f"refused: cannot adopt {TABLE}: column(s) {', '.join(wrong)} have incompatible "
                                 f"types ({', '.join(state.columns[c] for c in wrong)})", exit_code=EXIT_REFUSED)
        blocking = [c for c in state.required if c not in EXPECTED_COLUMNS]
        if blocking:
            raise MigrationError(
                f"refused: cannot adopt {TABLE}: column(s) {', '.join(blocking)} are NOT NULL without a default, so "
                f"no row could be recorded in it. Give them a default (ALTER TABLE {TABLE} ALTER COLUMN "
                f"{blocking[0]} SET DEFAULT ...) or make them nullable, then rerun --baseline; nothing was changed",
                exit_code=EXIT_REFUSED)
    new = [f for f in files if f.version <= version and f.version not in state.rows]
    for f in new:
        stmts.append(pgsql.SQL("INSERT INTO public.{} (version, name, checksum, applied_at, duration_ms) "
                               "VALUES ({}, {}, {}, now(), NULL)").format(
            pgsql.Identifier(TABLE), lit(f.version), lit(f.name), lit(f.checksum)).as_string())
    stmts.append(pgsql.SQL("COMMENT ON TABLE public.{} IS {}").format(
        pgsql.Identifier(TABLE), lit(f"{ADOPTED_TAG} at baseline {version}")).as_string())
    stmts.append("COMMIT")
    sql.execute(";\n".join(stmts) + ";")
    report.note(f"baseline {version}: recorded {len(new)} migration(s) as applied without running them"
                + (f" ({', '.join(str(f.version) for f in new)})" if new else ""))
    return [f.version for f in new]


def _pre_migrate_backup(host: Host) -> str:
    from bigskies_ops.jobs.backup import backup
    with report.reporting(None):  # the migration notes the backup and its path itself
        r = backup(host, kind="pre-migrate", label="before db.migrate", task="db.migrate")
    return r.backup.path


def after_restore(host: Host, database: str | None = None, *, apply: bool = False) -> dict:
    """Compare a just-restored database's migration head with the folder; optionally apply.

    Returns ``{"head", "pending": [...], "ahead": [...], "applied": [...], "message"}``.
    No pre-migrate backup is taken: the archive just restored is that backup.
    """
    db = database or host.postgres.database
    st = status(host, database=db)
    pending = [m for m in st["migrations"] if m["state"] == "pending"]
    ahead = [m for m in st["migrations"] if m["state"].startswith("unknown")]
    changed = [m for m in st["migrations"] if m["state"] == "changed"]
    out = {"head": st["head"], "pending": [m["file"] for m in pending],
           "ahead": [f"{m['version']} {m['name'] or ''}".strip() for m in ahead],
           "changed": [m["file"] for m in changed], "applied": [], "adoption_problem": st["adoption_problem"]}
    if st["adoption_problem"]:
        out["message"] = "migrations: the restored database is not tracked by schema_migrations; see db.migrations"
    elif ahead:
        out["message"] = (f"migrations: the dump is ahead of the code: it has {', '.join(out['ahead'])} that "
                          f"{host.migrations.dir} does not")
    elif changed:
        out["message"] = f"migrations: applied file(s) changed since: {', '.join(out['changed'])}"
    elif pending:
        out["message"] = (f"migrations: restored head is {st['head']}; {len(pending)} pending: "
                          f"{', '.join(out['pending'])}" + ("" if apply else
                                                            f" (apply with {output.hint(f'db.migrate --host {host.name}')})"))
    else:
        out["message"] = f"migrations: up to date (head {st['head']})"
    if apply and pending and not (ahead or changed or st["adoption_problem"]):
        r = migrate(host, database=db, take_backup=False, task="db.restore --migrate")
        out["applied"] = [a["file"] for a in r.applied]
        out["message"] = f"migrations: applied {', '.join(out['applied'])} after the restore (head {r.head})"
    return out
