"""Applying migration files to a database: the tracking tables, their state, the lock, the runs.

The "act" half of :mod:`bigskies_ops.jobs.migrations` (the files and the plan are
:mod:`bigskies_ops.jobs.migration_files`):

* Each transactional migration runs in ONE transaction together with its
  ``schema_migrations`` row (version, name, checksum, applied_at UTC, duration_ms): a
  failing file leaves no trace, and the error names the file and line (psql reports
  the line where the failing statement ends, ``psql:<stdin>:N:``; the server's
  ``LINE k:`` is relative to the statement; we map both back into the file).
* A non-transactional file runs its statements one by one outside a transaction
  (``CREATE INDEX CONCURRENTLY``); each finished statement is recorded in
  ``schema_migrations_progress``; a failure reports what was and was not applied plus
  any INVALID index; a rerun resumes at the first unrecorded statement.
* Concurrent runners are serialised by a session-level advisory lock
  (:data:`LOCK_KEY`) taken on its own autocommit psql session, with a wait timeout.

All SQL goes through :class:`bigskies_ops.pg.access.Sql` / ``SqlSession`` (psql in
the host's access mode), so this works locally, in a container with no published
port, and over SSH alike.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from bigskies_ops import report
from bigskies_ops.errors import EXIT_REFUSED, BigskiesError, LockBusyError, PostgresError
from bigskies_ops.hosts.runners import tail
from bigskies_ops.jobs.migration_files import (MigrationError, MigrationFile, Statement,
                                             check_no_transaction_control)
from bigskies_ops.pg.access import PostgresAccess, Sql, SqlSession, lit, pgsql
from bigskies_ops.pg.tools import PSQL_BASE

#: Key of the session-level advisory lock: the ASCII bytes of "bigskies" as a bigint.
#: In pg_locks it shows as locktype 'advisory', classid 1651074931, objid 1802069363, objsubid 1.
LOCK_KEY = 0x626967736B696573
LOCK_CLASSID, LOCK_OBJID = LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF
DEFAULT_LOCK_TIMEOUT = 60.0   # seconds
TABLE = "schema_migrations"
PROGRESS_TABLE = "schema_migrations_progress"
ADOPTED_TAG = "bigskies-ops: adopted"

#: The shape we create and expect (compatible with bigskies_ops.dev.schema.SCHEMA_MIGRATIONS_DDL).
EXPECTED_COLUMNS = {"version": "integer", "name": "text", "checksum": "text",
                    "applied_at": "timestamp with time zone", "duration_ms": "integer"}
#: Column types an adopted (foreign) ``schema_migrations`` may have instead.
COMPATIBLE_TYPES = {"version": {"integer", "bigint", "smallint"}, "name": {"text", "character varying"},
                    "checksum": {"text", "character varying", "character"},
                    "applied_at": {"timestamp with time zone"},
                    "duration_ms": {"integer", "bigint", "numeric", "double precision"}}
CREATE_TABLE_SQL = f"""CREATE TABLE IF NOT EXISTS public.{TABLE} (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer
)"""
CREATE_PROGRESS_SQL = f"""CREATE TABLE IF NOT EXISTS public.{PROGRESS_TABLE} (
    version    integer     NOT NULL,
    statement  integer     NOT NULL,
    line       integer     NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (version, statement)
)"""

PSQL_LINE_RE = re.compile(r"^psql:<stdin>:(\d+):\s*(.*)$", re.M)
SERVER_LINE_RE = re.compile(r"^LINE (\d+):", re.M)


# --------------------------------------------------------------------------- database state
@dataclass
class DbState:
    has_table: bool
    columns: dict[str, str]
    comment: str | None
    user_tables: list[str]
    rows: dict[int, dict]
    progress: dict[int, dict[int, dict]]   # version -> statement -> row
    required: list[str] = field(default_factory=list)   # NOT NULL columns without a default

    @property
    def adopted(self) -> bool:
        return bool(self.comment and self.comment.startswith(ADOPTED_TAG))

    def shape_problem(self) -> str | None:
        """Why ``schema_migrations`` is not ours, or None when it is usable."""
        if not self.has_table:
            return None
        missing = [c for c in EXPECTED_COLUMNS if c not in self.columns]
        wrong = [f"{c} is {self.columns[c]} (expected {EXPECTED_COLUMNS[c]})" for c in EXPECTED_COLUMNS
                 if c in self.columns and self.columns[c] not in COMPATIBLE_TYPES[c]]
        extra = [f"{c} {t}" for c, t in self.columns.items() if c not in EXPECTED_COLUMNS]
        if self.adopted:
            extra = []
        if not (missing or wrong or extra):
            return None
        parts = []
        if missing:
            parts.append("missing column(s): " + ", ".join(missing))
        if wrong:
            parts.append("; ".join(wrong))
        if extra:
            parts.append("unexpected column(s): " + ", ".join(extra))
        return "; ".join(parts)


STATE_SQL = f"""
SELECT to_regclass('public.{TABLE}') IS NOT NULL AS has_table,
       to_regclass('public.{PROGRESS_TABLE}') IS NOT NULL AS has_progress,
       (SELECT json_object_agg(column_name, data_type) FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name = '{TABLE}') AS columns,
       obj_description(to_regclass('public.{TABLE}'), 'pg_class') AS comment,
       (SELECT coalesce(json_agg(column_name::text), '[]'::json) FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name = '{TABLE}' AND is_nullable = 'NO'
           AND column_default IS NULL AND is_identity = 'NO' AND is_generated = 'NEVER') AS required,
       (SELECT coalesce(json_agg(format('%I.%I', n.nspname, c.relname) ORDER BY 1), '[]'::json)
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname !~ '^pg_(toast|temp_)'
           AND NOT (n.nspname = 'public' AND c.relname IN ('{TABLE}', '{PROGRESS_TABLE}'))) AS user_tables
"""


def read_state(sql) -> DbState:
    """What the database says: schema_migrations shape and rows, progress rows, other tables.

    ``sql`` is an :class:`~bigskies_ops.pg.access.Sql` or, cheaper (one psql process for all
    the queries, which matters through SSH into a container), an open ``SqlSession``.
    """
    s = sql.query(STATE_SQL)[0]
    cols = s["columns"] or {}
    rows: dict[int, dict] = {}
    progress: dict[int, dict[int, dict]] = {}
    if s["has_table"]:
        for r in sql.query(f"SELECT to_jsonb(s) AS r FROM public.{TABLE} s"):
            d = r["r"]
            try:
                v = int(d.get("version"))
            except (TypeError, ValueError):
                raise MigrationError(f"{TABLE} holds a version that is not a number ({d.get('version')!r}); "
                                     f"it was not made by this tool (see docs/migrations.md, adopting)",
                                     exit_code=EXIT_REFUSED)
            rows[v] = d
    if s["has_progress"]:
        for r in sql.query(f"SELECT version, statement, line, checksum FROM public.{PROGRESS_TABLE}"):
            progress.setdefault(r["version"], {})[r["statement"]] = r
    return DbState(bool(s["has_table"]), cols, s["comment"], s["user_tables"], rows, progress,
                   list(s["required"] or []))


def adoption_problem(state: DbState) -> str | None:
    """Why migrations cannot track this database as it is (a refusal message naming
    ``--baseline``), or None: ``schema_migrations`` has a foreign shape, or it is missing
    while other tables exist."""
    shape = state.shape_problem()
    if shape:
        exp = ", ".join(f"{k} {v}" for k, v in EXPECTED_COLUMNS.items())
        got = ", ".join(f"{k} {v}" for k, v in state.columns.items())
        return (f"refused: {TABLE} exists but was not made by this tool ({shape}). Expected columns: {exp}; "
                f"found: {got}. To adopt it without touching its rows, run `inv db.migrate --baseline VERSION` "
                f"(see docs/migrations.md)")
    if not state.has_table and state.user_tables:
        shown = ", ".join(state.user_tables[:8]) + (", ..." if len(state.user_tables) > 8 else "")
        return (f"refused: the database has {len(state.user_tables)} table(s) ({shown}) but no {TABLE} table, so "
                f"which migrations it already has is unknown. To adopt it, run `inv db.migrate --baseline VERSION` "
                f"with the last migration its schema already contains (see docs/migrations.md)")
    return None


# --------------------------------------------------------------------------- the lock
class MigrationLock:
    """Session-level ``pg_advisory_lock(LOCK_KEY)`` on its own autocommit psql session.

    Autocommit, so a waiter never sits inside a transaction that a concurrent
    ``CREATE INDEX CONCURRENTLY`` would have to wait for. The wait is bounded by
    ``lock_timeout``. ``waited`` is the seconds spent waiting (0 when free) and
    ``holder`` the pid seen holding it.
    """

    def __init__(self, sql: Sql, timeout: float = DEFAULT_LOCK_TIMEOUT):
        self.sql, self.timeout = sql, timeout
        self.session: SqlSession | None = None
        self.waited = 0.0
        self.holder: dict | None = None

    def __enter__(self):
        self.session = self.sql.session()
        try:
            self.session.execute("SET application_name = 'bigskies-ops migrate'")
            if self.session.query(f"SELECT pg_try_advisory_lock({LOCK_KEY}) AS got")[0]["got"]:
                return self
            rows = self.session.query(
                "SELECT l.pid, a.application_name AS app, a.client_addr::text AS client, "
                "to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS since "
                "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                f"WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {LOCK_CLASSID} "
                f"AND l.objid = {LOCK_OBJID} AND l.objsubid = 1 "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())")
            self.holder = rows[0] if rows else {"pid": "?"}
            report.note(f"waiting for the migration lock (advisory lock {LOCK_KEY}) held by pid "
                        f"{self.holder.get('pid')} ({self.holder.get('app') or 'unknown application'}), "
                        f"up to {self.timeout:g} s")
            t0 = time.monotonic()
            self.session.execute(f"SET lock_timeout = '{int(self.timeout * 1000)}ms'")
            try:
                self.session.query(f"SELECT pg_advisory_lock({LOCK_KEY}) AS got")
            except PostgresError as e:
                self.waited = time.monotonic() - t0
                if "lock timeout" in (e.stderr or str(e)):
                    raise LockBusyError(
                        f"timed out after {self.timeout:g} s waiting for the migration lock (advisory lock "
                        f"{LOCK_KEY}) held by pid {self.holder.get('pid')} "
                        f"({self.holder.get('app') or 'unknown application'}); nothing was applied") from None
                raise
            self.waited = max(time.monotonic() - t0, 0.001)
            self.session.execute("RESET lock_timeout")
            report.note(f"got the migration lock after waiting {self.waited:.1f} s")
            return self
        except BaseException:
            self._close()
            raise

    def _close(self):
        if self.session is not None:
            try:
                self.session.close()
            finally:
                self.session = None

    def __exit__(self, *exc):
        try:
            if self.session is not None and exc[0] is None:
                self.session.query(f"SELECT pg_advisory_unlock({LOCK_KEY}) AS released")
        except BigskiesError:
            pass
        finally:
            self._close()


# --------------------------------------------------------------------------- applying
def _psql(access: PostgresAccess, database: str, script: str, timeout: float | None = None):
    """Run ``script`` through ``psql -f -`` (so errors carry ``psql:<stdin>:LINE:``)."""
    args = [*PSQL_BASE, "--dbname", database, "-f", "-"]
    return access.run_tool("psql", args, input=script.encode("utf-8"), check=False, timeout=timeout)


def _locate(stderr: str, line_map: dict[int, int], stmts: list[Statement]) -> tuple[int | None, str]:
    """(file line, first error line) from psql's stderr."""
    m = PSQL_LINE_RE.search(stderr)
    if not m:
        return None, tail(stderr, 400).splitlines()[0] if stderr.strip() else "psql failed"
    msg = m.group(2).strip()
    detail = re.search(r"^(DETAIL|HINT):\s*(.*)$", stderr[m.end():], re.M)
    if detail:
        msg += f" ({detail.group(1)}: {detail.group(2).strip()})"
    end = line_map.get(int(m.group(1)))
    if end is None:
        return None, msg
    sl = SERVER_LINE_RE.search(stderr[m.end():])
    for s in stmts:
        if s.start_line <= end <= s.end_line:
            if sl:
                return min(s.start_line + int(sl.group(1)) - 1, s.end_line), msg
            return s.start_line, msg   # no position from the server: where the statement starts
    return end, msg


def _row_insert(f: MigrationFile) -> str:
    return pgsql.SQL(
        "INSERT INTO public.{t} (version, name, checksum, applied_at, duration_ms) VALUES ({v}, {n}, {c}, now(), "
        "(extract(epoch FROM clock_timestamp() - now()) * 1000)::int);").format(
        t=pgsql.Identifier(TABLE), v=lit(f.version), n=lit(f.name), c=lit(f.checksum)).as_string()


def apply_transactional(access: PostgresAccess, database: str, files: list[MigrationFile],
                        done=None, *, create_table: bool = False, reader=None) -> list[tuple[MigrationFile, float]]:
    """Apply transactional files, each in ONE transaction with its schema_migrations row.

    All of them go through one psql run (one round trip even through SSH + a container);
    ``ON_ERROR_STOP`` stops at the first error, so the files before the failing one are
    committed and nothing of the failing one stays. ``done(file, seconds)`` is called
    for each committed file.

    Returns:
        ``[(file, seconds)]`` (seconds from the recorded ``duration_ms``).

    Raises:
        MigrationError: a file failed (message names the file and line, and which files
            before it were applied).
    """
    for f in files:
        check_no_transaction_control(f)
    parts: list[str] = []
    line_map: dict[int, tuple[MigrationFile, int]] = {}
    n = 0

    def add(text: str, f: MigrationFile, file_line: int | None):
        nonlocal n
        for k, _ in enumerate(text.split("\n")):
            n += 1
            line_map[n] = (f, file_line + k if file_line is not None else max(f.text.count("\n"), 1))
        parts.append(text)

    for i, f in enumerate(files):
        body = f.text[:-1] if f.text.endswith("\n") else f.text
        add("BEGIN;", f, None)
        if create_table and i == 0:     # in the first file's transaction: a failure leaves no table either
            add(" ".join(CREATE_TABLE_SQL.split()) + ";", f, None)
        add(body, f, 1)
        add(";", f, None)                  # ends an unterminated last statement
        add(_row_insert(f), f, None)
        add("COMMIT;", f, None)
    t0 = time.monotonic()
    r = _psql(access, database, "\n".join(parts) + "\n")
    applied_rows = {}
    if r.returncode != 0 or len(files) > 1:
        try:
            applied_rows = read_state(reader or access.sql(database)).rows
        except BigskiesError:
            applied_rows = {}
    out = []
    for f in files:
        row = applied_rows.get(f.version)
        if r.returncode == 0 or (row is not None and row.get("checksum") == f.checksum):
            secs = (row or {}).get("duration_ms")
            secs = secs / 1000 if isinstance(secs, (int, float)) else time.monotonic() - t0
            out.append((f, secs))
            if done:
                done(f, secs)
    if r.returncode == 0:
        return out
    m = PSQL_LINE_RE.search(r.stderr)
    failed = line_map.get(int(m.group(1)), (None, None))[0] if m else None
    failed = failed or next((f for f in files if f not in [x for x, _ in out]), files[0])
    before = f" (applied before it: {', '.join(f.filename for f, _ in out)})" if out else ""
    if m is None:
        reason = access.error_for(r.argv, r.returncode, r.stderr, "psql")
        raise MigrationError(f"migration {failed.filename} could not run: {reason}; nothing of it was "
                             f"applied{before}")
    file_map = {k: ln for k, (f, ln) in line_map.items() if f is failed}
    line, msg = _locate(r.stderr, file_map, failed.statements())
    where = f"{failed.path}:{line}" if line else failed.path
    raise MigrationError(f"migration {failed.filename} failed at {where}: {msg}; nothing of it was applied "
                         f"(its transaction was rolled back){before}")


INVALID_INDEXES_SQL = ("SELECT format('%I.%I', n.nspname, c.relname) AS index FROM pg_catalog.pg_index i "
                       "JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
                       "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid ORDER BY 1")


def apply_non_transactional(access: PostgresAccess, database: str, f: MigrationFile, done: dict[int, dict],
                            reader=None) -> float:
    """Run the file's statements one by one outside a transaction, recording each in
    ``schema_migrations_progress``; resume after the statements already recorded.

    Raises:
        MigrationError: a statement failed (message: applied / not applied, INVALID indexes),
            or a recorded statement's text changed since it ran.
    """
    stmts = f.statements()
    for no, row in sorted(done.items()):
        if no > len(stmts) or stmts[no - 1].checksum != row["checksum"]:
            raise MigrationError(f"refused: statement {no} of {f.filename} (recorded as applied from line "
                                 f"{row['line']}) has changed since it ran; restore it or finish by hand "
                                 f"(see docs/migrations.md)", exit_code=EXIT_REFUSED)
    todo = [s for s in stmts if s.number not in done]
    if done:
        report.note(f"resuming {f.filename} at statement {todo[0].number if todo else len(stmts) + 1} of {len(stmts)} "
                    f"({len(done)} already applied)")
    sql = access.sql(database)
    lines = [" ".join(CREATE_PROGRESS_SQL.split()) + ";"]
    line_map: dict[int, int] = {}
    for s in todo:
        base = len(lines) + 1
        chunk = s.text.split("\n")
        for k in range(len(chunk)):
            line_map[base + k] = s.start_line + k
        lines += chunk
        lines.append(";")
        line_map[len(lines)] = s.end_line
        lines.append(pgsql.SQL("INSERT INTO public.{} (version, statement, line, checksum) VALUES ({}, {}, {}, {});")
                     .format(pgsql.Identifier(PROGRESS_TABLE), lit(f.version), lit(s.number), lit(s.start_line),
                             lit(s.checksum)).as_string())
    lines += ["BEGIN;", _row_insert(f),
              pgsql.SQL("DELETE FROM public.{} WHERE version = {};").format(
                  pgsql.Identifier(PROGRESS_TABLE), lit(f.version)).as_string(), "COMMIT;"]
    t0 = time.monotonic()
    r = _psql(access, database, "\n".join(lines) + "\n")
    if r.returncode == 0:
        return time.monotonic() - t0
    line, msg = _locate(r.stderr, line_map, stmts)
    try:
        st = read_state(reader or sql)
        now_done = st.progress.get(f.version, {})
        invalid = [x["index"] for x in (reader or sql).query(INVALID_INDEXES_SQL)]
    except BigskiesError:
        now_done, invalid = done, []
    failed = next((s for s in stmts if s.number not in now_done), None)
    applied = [f"{s.number} (line {s.start_line})" for s in stmts if s.number in now_done]
    not_applied = [f"{s.number} (line {s.start_line})" for s in stmts if s.number not in now_done]
    where = f"{f.path}:{line}" if line else f.path
    text = (f"migration {f.filename} (non-transactional) failed at statement "
            f"{failed.number if failed else '?'} of {len(stmts)}, {where}: {msg}. "
            f"Applied statements: {', '.join(applied) or 'none'}. "
            f"Not applied: {', '.join(not_applied) or 'none'}. ")
    if invalid:
        text += (f"INVALID index(es) left behind: {', '.join(invalid)} (drop them with DROP INDEX CONCURRENTLY "
                 f"before rerunning). ")
    text += "Fix the file and rerun `inv db.migrate`: it resumes at the first statement not applied."
    raise MigrationError(text)
