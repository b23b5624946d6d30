"""Schema migrations: apply ``NNN_description.sql`` files in order, tracked in ``schema_migrations``.

This is the bootstrap coordinator's job, made safe to run anywhere, any number of
times, concurrently (docs/migrations.md is the user-facing description):

* Files ``NNN_description.sql`` in the host's ``migrations.dir`` (default
  ``configs/sql/``, read through the host's runner, so an SSH host's own folder)
  are applied in numeric order. Versions must be unique and contiguous.
* Each migration runs in ONE transaction together with its ``schema_migrations``
  row (version, name, checksum, applied_at UTC, duration_ms): a failing file
  leaves no trace, and the error names the file and line (psql reports the line
  where the failing statement ends, ``psql:<stdin>:N:``; the server's
  ``LINE k:`` is relative to the statement; we map both back into the file).
* A file whose leading comment block holds :data:`NO_TRANSACTION_MARKER` runs its
  statements one by one outside a transaction (``CREATE INDEX CONCURRENTLY``);
  each finished statement is recorded in ``schema_migrations_progress``; a failure
  reports what was and was not applied plus any INVALID index; a rerun resumes at
  the first unrecorded statement.
* Concurrent runners are serialised by a session-level advisory lock
  (:data:`LOCK_KEY`) taken on its own autocommit psql session, with a wait timeout.
  A runner that had to wait re-reads the state after it got the lock.
* The checksum is SHA-256 (hex) of the file with CRLF normalised to LF, so a
  Windows checkout does not count as an edit; a stored checksum of the raw bytes
  (what ``sampledata.bootstrap_sql`` wrote) is accepted as well.

All SQL goes through :class:`bigskies_ops.pg.access.Sql` / ``SqlSession`` (psql in
the host's access mode), so this works locally, in a container with no published
port, and over SSH alike. Decide, then act: :func:`plan` is pure.
"""
from __future__ import annotations

import hashlib
import posixpath
import re
import time
from dataclasses import dataclass, field


from bigskies_ops import output
from bigskies_ops.pg.access import PostgresAccess, Sql, SqlSession, lit, pgsql
from bigskies_ops.errors import BigskiesError, EXIT_FAILED, EXIT_REFUSED, EXIT_USAGE, LockBusyError, PostgresError
from bigskies_ops.inventory import Host
from bigskies_ops.pg.tools import PSQL_BASE
from bigskies_ops.hosts.runners import tail

#: Header comment that makes a migration non-transactional (must be in the leading comment block).
NO_TRANSACTION_MARKER = "-- bigskies:no-transaction"
#: Key of the session-level advisory lock: the ASCII bytes of "bigskies" as a bigint.
#: In pg_locks it shows as locktype 'advisory', classid 1651074931, objid 1802069363, objsubid 1.
LOCK_KEY = 0x626967736B696573
LOCK_CLASSID, LOCK_OBJID = LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF
DEFAULT_LOCK_TIMEOUT = 60.0
TABLE = "schema_migrations"
PROGRESS_TABLE = "schema_migrations_progress"
ADOPTED_TAG = "bigskies-ops: adopted"

#: The shape we create and expect (compatible with sampledata.SCHEMA_MIGRATIONS_DDL).
EXPECTED_COLUMNS = {"version": "integer", "name": "text", "checksum": "text",
                    "applied_at": "timestamp with time zone", "duration_ms": "integer"}
_COMPATIBLE_TYPES = {"version": {"integer", "bigint", "smallint"}, "name": {"text", "character varying"},
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

FILE_RE = re.compile(r"^(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)\.sql$")
_LOOKS_LIKE_RE = re.compile(r"^[0-9]+_.*\.sql$")
PSQL_LINE_RE = re.compile(r"^psql:<stdin>:(\d+):\s*(.*)$", re.M)
SERVER_LINE_RE = re.compile(r"^LINE (\d+):", re.M)
TX_CONTROL_RE = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|START\s+TRANSACTION|END|ABORT)\b(?!\s+ATOMIC)", re.I)


class MigrationError(BigskiesError):
    """A migration could not be applied or the folder/database state is not usable."""


# --------------------------------------------------------------------------- files
@dataclass(frozen=True)
class Statement:
    number: int          # 1-based
    start_line: int      # first line of the statement's first token (leading comments skipped)
    end_line: int        # line of its terminating ';' (or last line)
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationFile:
    version: int
    name: str
    filename: str
    path: str
    text: str            # CRLF normalised to LF
    checksum: str        # sha256 of text (LF-normalised) as UTF-8
    raw_checksum: str    # sha256 of the bytes as stored
    transactional: bool

    def matches(self, stored: str | None) -> bool:
        return stored is None or stored in (self.checksum, self.raw_checksum)

    def statements(self) -> list[Statement]:
        return split_statements(self.text)


def normalise(data: bytes) -> str:
    """The text a checksum is taken over: UTF-8, CRLF -> LF (see module docstring)."""
    return data.decode("utf-8").replace("\r\n", "\n")


def checksum_of(data: bytes) -> str:
    return hashlib.sha256(normalise(data).encode("utf-8")).hexdigest()


def _has_marker(text: str) -> bool:
    for line in text.split("\n"):
        s = line.strip()
        if not s:
            continue
        if not s.startswith("--"):
            return False
        if s.lower().replace(" ", "") == NO_TRANSACTION_MARKER.replace(" ", ""):
            return True
    return False


def read_folder(runner, folder: str) -> list[MigrationFile]:
    """Read and validate the migration folder on the host (through its runner).

    Raises:
        MigrationError (exit 2): folder missing, a badly named ``NNN_*.sql`` file, a
            duplicate version, a gap in the versions, or a file that is not UTF-8.
    """
    if not runner.exists(folder):
        raise MigrationError(f"migration folder {folder} does not exist (migrations.dir)", exit_code=EXIT_USAGE)
    found: dict[int, MigrationFile] = {}
    for fn in runner.listdir(folder):
        m = FILE_RE.match(fn)
        if not m:
            if _LOOKS_LIKE_RE.match(fn):
                raise MigrationError(f"{posixpath.join(folder, fn)}: migration file names must look like "
                                     f"NNN_description.sql ([A-Za-z0-9_.-] in the description)",
                                     exit_code=EXIT_USAGE)
            continue
        v = int(m.group("version"))
        path = posixpath.join(folder, fn)
        if v in found:
            raise MigrationError(f"duplicate migration version {v}: {found[v].filename} and {fn} in {folder}; "
                                 f"every version must be used once", exit_code=EXIT_USAGE)
        data = runner.read_bytes(path)
        try:
            text = normalise(data)
        except UnicodeDecodeError as e:
            raise MigrationError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})", exit_code=EXIT_USAGE)
        found[v] = MigrationFile(v, m.group("name"), fn, path, text,
                                 hashlib.sha256(text.encode()).hexdigest(), hashlib.sha256(data).hexdigest(),
                                 not _has_marker(text))
    files = [found[v] for v in sorted(found)]
    for a, b in zip(files, files[1:]):
        if b.version != a.version + 1:
            missing = ", ".join(str(x) for x in range(a.version + 1, min(b.version, a.version + 6)))
            raise MigrationError(f"gap in migration versions in {folder}: {a.filename} is followed by {b.filename} "
                                 f"(missing {missing}{', ...' if b.version - a.version > 6 else ''}); "
                                 f"versions must be contiguous", exit_code=EXIT_USAGE)
    return files


# --------------------------------------------------------------------------- SQL splitting
_DOLLAR_RE = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z_0-9\x80-\uffff]*)?\$")
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z_0-9$]*")


def split_statements(text: str) -> list[Statement]:
    """Split SQL into statements the way psql does: on ``;`` outside quotes, comments,
    dollar quotes and ``BEGIN ATOMIC ... END`` bodies. Line numbers are 1-based."""
    out: list[Statement] = []
    i, n, line = 0, len(text), 1
    buf_start = None           # index where the current statement's first token starts
    start_line = 1
    atomic = 0                 # depth inside BEGIN ATOMIC ... END (CASE ... END nests)
    prev_word = ""

    def flush(end: int, end_line: int):
        nonlocal buf_start, atomic, prev_word
        if buf_start is not None:
            body = text[buf_start:end].strip()
            if body and body != ";":
                out.append(Statement(len(out) + 1, start_line, end_line, body))
        buf_start, atomic, prev_word = None, 0, ""

    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if c in " \t\r\f":
            i += 1
            continue
        if text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if buf_start is None:
            buf_start, start_line = i, line
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            line += text.count("\n", i, j)
            i = j
            continue
        if c in "'\"":
            esc = c == "'" and i > 0 and text[i - 1] in "eE" and (i < 2 or not (text[i - 2].isalnum() or text[i - 2] == "_"))
            j = i + 1
            while j < n:
                if esc and text[j] == "\\":
                    j += 2
                    continue
                if text[j] == c:
                    if j + 1 < n and text[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            line += text.count("\n", i, j + 1)
            i = j + 1
            continue
        if c == "$":
            m = _DOLLAR_RE.match(text, i)
            if m and not (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
                tag = m.group(0)
                j = text.find(tag, m.end())
                j = n if j < 0 else j + len(tag)
                line += text.count("\n", i, j)
                i = j
                continue
        if c.isalpha() or c == "_":
            m = _WORD_RE.match(text, i)
            w = m.group(0).upper()
            if w == "ATOMIC" and prev_word == "BEGIN":
                atomic += 1
            elif atomic and w == "CASE":
                atomic += 1
            elif atomic and w == "END":
                atomic -= 1
            prev_word = w
            i = m.end()
            continue
        if c == ";" and not atomic:
            flush(i + 1, line)
            i += 1
            continue
        prev_word = ""
        i += 1
    flush(n, line)
    return out


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
                 if c in self.columns and self.columns[c] not in _COMPATIBLE_TYPES[c]]
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


# --------------------------------------------------------------------------- plan (pure)
@dataclass
class Plan:
    applied: list[tuple[MigrationFile, dict]] = field(default_factory=list)
    pending: list[MigrationFile] = field(default_factory=list)
    changed: list[tuple[MigrationFile, dict]] = field(default_factory=list)
    unknown: list[dict] = field(default_factory=list)        # rows without a file (db ahead of code)
    beyond_target: list[MigrationFile] = field(default_factory=list)

    @property
    def head(self) -> int | None:
        vs = [f.version for f, _ in self.applied + self.changed] + [int(r["version"]) for r in self.unknown]
        return max(vs) if vs else None


def plan(files: list[MigrationFile], rows: dict[int, dict], to: int | None = None) -> Plan:
    """Compare the folder with the applied rows. Pure: no I/O."""
    p = Plan()
    known = {f.version for f in files}
    for f in files:
        row = rows.get(f.version)
        if row is not None:
            (p.applied if f.matches(row.get("checksum")) else p.changed).append((f, row))
        elif to is not None and f.version > to:
            p.beyond_target.append(f)
        else:
            p.pending.append(f)
    p.unknown = [rows[v] for v in sorted(rows) if v not in known]
    return p


def changed_message(p: Plan) -> str:
    lines = [f"{f.filename} was changed after it was applied (file checksum {f.checksum}, recorded "
             f"{row.get('checksum')} on {row.get('applied_at')})" for f, row in p.changed]
    return ("refused: " + "; ".join(lines) + ". Applied migrations must never be edited: restore the file "
            "(git checkout) and put the change in a new migration")


def ahead_message(p: Plan, folder: str) -> str:
    names = ", ".join(f"{r['version']} {r.get('name') or ''}".strip() for r in p.unknown)
    return (f"the database is ahead of the code: migration(s) {names} are applied but not in {folder}; "
            f"update the code (or its migrations folder) before migrating")


# --------------------------------------------------------------------------- the lock
class MigrationLock:
    """Session-level ``pg_advisory_lock(LOCK_KEY)`` on its own autocommit psql session.

    Autocommit, so a waiter never sits inside a transaction that a concurrent
    ``CREATE INDEX CONCURRENTLY`` would have to wait for. The wait is bounded by
    ``lock_timeout``. ``waited`` is the seconds spent waiting (0 when free) and
    ``holder`` the pid seen holding it.
    """

    def __init__(self, sql: Sql, timeout: float = DEFAULT_LOCK_TIMEOUT, notify=print):
        self.sql, self.timeout, self.notify = sql, timeout, notify
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
            self.notify(f"waiting for the migration lock (advisory lock {LOCK_KEY}) held by pid "
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
            self.notify(f"got the migration lock after waiting {self.waited:.1f} s")
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


def check_no_transaction_control(f: MigrationFile) -> None:
    """A transactional file must not BEGIN/COMMIT itself (it would break all-or-nothing)."""
    for s in f.statements():
        m = TX_CONTROL_RE.match(s.text)
        if m:
            raise MigrationError(f"{f.path}:{s.start_line}: transaction control ({m.group(1).upper()}) is "
                                 f"not allowed in a migration; each file already runs in one transaction (or mark "
                                 f"it '{NO_TRANSACTION_MARKER}'); nothing was applied", exit_code=EXIT_USAGE)


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
                            notify=print, reader=None) -> float:
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
        notify(f"resuming {f.filename} at statement {todo[0].number if todo else len(stmts) + 1} of {len(stmts)} "
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


def _adoption_problem(state: DbState) -> str | None:
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


def status(host: Host, *, database: str | None = None, access: PostgresAccess | None = None) -> dict:
    """Applied / pending / changed / unknown migrations of ``host`` (read only)."""
    db = database or host.postgres.database
    own = access is None
    access = access or PostgresAccess(host)
    try:
        files = read_folder(access.runner, host.migrations.dir)
        with access.sql(db).session() as session:
            state = read_state(session)
        problem = _adoption_problem(state)
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
            lock_timeout: float = DEFAULT_LOCK_TIMEOUT, notify=print, backup_fn=None,
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
        if to is not None and to not in {f.version for f in files}:
            raise MigrationError(f"--to {to}: no migration with that version in {host.migrations.dir}",
                                 exit_code=EXIT_USAGE)
        if baseline is not None and baseline not in {f.version for f in files}:
            raise MigrationError(f"--baseline {baseline}: no migration with that version in {host.migrations.dir}",
                                 exit_code=EXIT_USAGE)
        sql = access.sql(db)
        if check or fail_if_pending:
            with sql.session() as session:
                state = read_state(session)
            return _dry_run(res, files, state, to, baseline, host, fail_if_pending)
        with MigrationLock(sql, lock_timeout, notify) as lock:
            res.waited_s = lock.waited
            state = read_state(lock.session)   # after the lock: a runner we waited for may have applied
            if baseline is not None:
                res.baselined = _baseline(sql, state, files, baseline, notify)
                state = read_state(lock.session)
            problem = _adoption_problem(state)
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
                notify(f"taking a pre-migrate backup before applying {len(p.pending)} migration(s)")
                res.backup = (backup_fn or _pre_migrate_backup)(host)
                notify(f"pre-migrate backup: {res.backup}")
            from bigskies_ops.archives.locks import host_lock
            with host_lock(access.runner, host.backup.dir, host.name, db, task, notify=notify):
                create = not state.has_table
                if create and not p.pending[0].transactional:
                    sql.execute(CREATE_TABLE_SQL)
                    create = False

                def done(f, secs):
                    res.applied.append({**_desc(f), "seconds": round(secs, 3)})
                    res.head = f.version
                    notify(f"applied {f.filename} in {secs * 1000:.0f} ms")

                for run in _runs(p.pending):
                    if run[0].transactional:
                        notify(f"applying {', '.join(f.filename for f in run)} (one transaction each)")
                        apply_transactional(access, db, run, done, create_table=create, reader=lock.session)
                        create = False
                    else:
                        f = run[0]
                        notify(f"applying {f.filename} (non-transactional, statement by statement)")
                        done(f, apply_non_transactional(access, db, f, state.progress.get(f.version, {}), notify,
                                                        reader=lock.session))
            res.pending = []
            return res


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
        problem = _adoption_problem(state)
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


def _baseline(sql: Sql, state: DbState, files: list[MigrationFile], version: int, notify) -> list[int]:
    """Record versions <= ``version`` as applied without running them. Existing rows are
    not touched; a foreign-shaped table gets the missing columns (nullable) added."""
    stmts = ["BEGIN"]
    if not state.has_table:
        stmts.append(CREATE_TABLE_SQL)
    else:
        for col, typ in EXPECTED_COLUMNS.items():
            if col not in state.columns:
                stmts.append(f"ALTER TABLE public.{TABLE} ADD COLUMN {col} {typ}")
        wrong = [c for c in EXPECTED_COLUMNS if c in state.columns and state.columns[c] not in _COMPATIBLE_TYPES[c]]
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
    notify(f"baseline {version}: recorded {len(new)} migration(s) as applied without running them"
           + (f" ({', '.join(str(f.version) for f in new)})" if new else ""))
    return [f.version for f in new]


def _pre_migrate_backup(host: Host) -> str:
    from bigskies_ops.jobs.backup import backup
    r = backup(host, kind="pre-migrate", label="before db.migrate", notify=lambda m: None, task="db.migrate")
    return r.backup.path


def after_restore(host: Host, database: str | None = None, *, apply: bool = False, notify=print) -> dict:
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
        r = migrate(host, database=db, take_backup=False, notify=notify, task="db.restore --migrate")
        out["applied"] = [a["file"] for a in r.applied]
        out["message"] = f"migrations: applied {', '.join(out['applied'])} after the restore (head {r.head})"
    return out
