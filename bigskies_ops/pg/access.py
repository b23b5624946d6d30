"""How a host's PostgreSQL is reached: native tools, or ``<engine> exec -i`` into a container.

The access is a command prefix on top of a runner (DESIGN.md practice 3), so the
same code serves the four modes of CONTRACTS.md section 3: local native, local
container, SSH native, SSH container. Passwords never appear in argv, Fabric
``env=``, logs or manifests:

* native: a private 0600 pgpass file (``PGPASSFILE``) in a private temp folder on
  the host that runs the tool, removed in ``close()``;
* container: ``<engine> exec -e PGPASSWORD`` passes the variable by NAME; its
  value lives only in the environment of the engine client process (locally the
  subprocess env; remotely read from a 0600 file by the remote shell).

The library's own SQL goes through psql via this same access (:class:`Sql`), so
it works in a container with no published port and over SSH alike.
"""
from __future__ import annotations

import json
import os
import re
import signal
import threading
from contextlib import contextmanager
from typing import Iterable

from bigskies_ops import output
from bigskies_ops.errors import BigskiesError, CommandError, PostgresError
from bigskies_ops.inventory import Host
from bigskies_ops.pg.tools import PgVersion, conn_args, parse_tool_version, psql_args
from bigskies_ops.pg.lockwait import new_app_name
from bigskies_ops.hosts.runners import Process, Result, Runner, redact_argv, tail
from bigskies_ops.hosts import runner_for
from bigskies_ops.pg.lazysql import pgsql, preload_psycopg  # noqa: F401 - re-exported: callers import them from here


def pgpass_escape(value: str) -> str:
    """Escape ``:`` and ``\\`` as libpq requires in a pgpass field (libpq docs 34.16)."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


def classify_pg_error(stderr: str, host: Host) -> str | None:
    """Turn libpq/psql/engine stderr into a one-line reason a user can act on."""
    s = stderr
    pg = host.postgres
    where = f"{pg.host or pg.socket_dir or 'default socket'}:{pg.port}"
    if host.container:
        from bigskies_ops.hosts.compose import engine_unreachable, inspect_failure
        if engine_unreachable(s):  # the daemon is down: not the container's (nor the server's) fault
            return inspect_failure(host, host.container.name, s)
    m = re.search(r'password file "[^"]*" has group or world access[^\n]*', s)
    if m:  # libpq ignored the file; say so before the auth failure it causes
        return f"{m.group(0)} (libpq ignored it). Fix: {output.hint(f'db.pgpass --host {host.name}')}"
    if "password authentication failed" in s or "no password supplied" in s:
        return f"authentication failed for user {pg.user!r} at {where} (check {pg.password_env or 'the passfile'})"
    if re.search(r"does not exist", s) and "database" in s and "FATAL" in s:
        m = re.search(r'database "([^"]+)" does not exist', s)
        name = m.group(1) if m else pg.database
        if name == pg.maintenance_db and name != pg.database:  # the inventory key to fix, not a restore to run
            return (f"database {name!r} does not exist on {host.name}: it is postgres.maintenance_db (where "
                    f"databases are created, renamed and dropped from); set that key to a database this role may "
                    f"connect to")
        return f"database {name!r} does not exist on {host.name}"
    if ("Connection refused" in s or "No such file or directory" in s and "connection to server" in s
            or "could not connect" in s or "timeout expired" in s):
        m = re.search(r"(?:failed|error): ((?:Connection refused|No such file or directory|timeout expired|"
                      r"could not [^\n]*?))\s*$", s, re.M)
        why = f" ({m.group(1).strip()})" if m else ""  # libpq's own reason
        return f"PostgreSQL on {host.name} is unreachable at {where}{why}"
    if host.container:
        c = host.container.name
        if re.search(r"no such container|no container with name or ID", s, re.I):
            return f"container {c!r} does not exist on {host.name}"
        if re.search(r"is not running|container state improper|can only exec", s, re.I):
            return f"container {c!r} is not running on {host.name}"
    if "has group or world access" in s:
        return (f"{s.strip().splitlines()[0]}  (fix: chmod 0600 the file, or run `{output.hint(f'db.pgpass --host {host.name}')}`)")
    return None


class PostgresAccess:
    """Runs PostgreSQL tools and SQL for one host. Use as a context manager:
    ``with PostgresAccess(host) as pg: ...`` (it owns the runner unless one is given)."""

    def __init__(self, host: Host, runner: Runner | None = None):
        self.host = host
        self.runner = runner or runner_for(host)
        self._own_runner = runner is None
        self._secret_dir: str | None = None
        self._secret_env: dict[str, str] | None = None
        self._bindir: str | None = None
        self._versions: dict[str, PgVersion] = {}
        self._versions_lock = threading.Lock()  # a version read ahead on a thread is waited for, not read twice
        #: ``application_name`` of every session this access opens (libpq ``PGAPPNAME``):
        #: lets a lock watcher find our own sessions (:mod:`bigskies_ops.pg.lockwait`).
        self.app_name: str | None = new_app_name()
        #: ``lock_timeout`` of the library's own sessions, seconds (0: wait, but visibly)
        self.lock_timeout_s: float = float(getattr(host.backup, "lock_wait_timeout", None) or 0)
        #: the open :meth:`pooled_session` blocks' sessions (none: every query runs its own psql)
        self._pools: "list[PooledSession]" = []

    # -------------------------------------------------------------- lifecycle
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        while self._pools:  # a pool left open by an exception path: no psql outlives us
            self._pools.pop().close()
        if self._secret_dir:
            try:
                self.runner.remove_tree(self._secret_dir)
            finally:
                self._secret_dir = None
        if self._own_runner:
            self.runner.close()

    # -------------------------------------------------------------- secrets
    def _password(self) -> str | None:
        """The password from ``postgres.password_env``; None without one, or when that
        variable is unset and a ``postgres.passfile`` is declared (a cron run has not the
        interactive environment: the passfile ``inv apply`` writes serves it)."""
        name = self.host.postgres.password_env
        if not name:
            return None
        if name not in os.environ and self.host.postgres.passfile and not self.host.container:
            return None
        if name not in os.environ:
            raise BigskiesError(f"hosts.{self.host.name}.postgres.password_env: environment variable "
                                f"{name} is not set", exit_code=2)
        return os.environ[name]

    def env(self) -> dict[str, str]:
        """Environment for the process that runs a tool (or the engine client).

        Local native: ``PGPASSFILE`` pointing at a private 0600 file (or the inventory's
        passfile). SSH hosts and containers: the password itself, which only ever lives in
        the environment of the process that needs it: the remote command (handed over on
        its stdin, :data:`bigskies_ops.hosts.shell.WRAPPER`) or the engine client, which passes it
        on by name (``-e PGPASSWORD``). Nothing is written to a remote disk, so a killed
        client or a dropped connection leaves no password behind there (no per-run
        pgpass file in /tmp on prod).
        """
        if self._secret_env is not None:
            return self._secret_env
        pw = self._password()
        env: dict[str, str] = {"PGCONNECT_TIMEOUT": str(self.host.postgres.connect_timeout)}
        if pw is not None:
            if self.host.container or self.runner.is_remote:
                env["PGPASSWORD"] = pw
            else:
                self._secret_dir = self.runner.make_private_dir()
                path = self._secret_dir.rstrip("/") + "/pgpass"
                self.runner.write_atomic(path, f"*:*:*:*:{pgpass_escape(pw)}\n".encode(), mode=0o600)
                env["PGPASSFILE"] = path
        elif self.host.postgres.passfile and not self.host.container:
            from bigskies_ops.pg.pgpass import check_mode  # libpq only WARNS and ignores a too-open file: refuse it
            check_mode(self.runner, self.host.postgres.passfile, self.host.name)
            env["PGPASSFILE"] = self.host.postgres.passfile
        elif not self.host.container and not self.runner.is_remote:
            from bigskies_ops.pg.pgpass import check_mode
            check_mode(self.runner, os.environ.get("PGPASSFILE") or os.path.expanduser("~/.pgpass"),
                       self.host.name)
        self._secret_env = env
        return env

    # -------------------------------------------------------------- tool argv
    def bindir(self) -> str | None:
        """Where the tools live: ``postgres.bindir``, then ``pg_config --bindir``, then PATH (None).

        Debian's ``/usr/bin/pg_dump`` is a version-selecting wrapper; pg_config names
        the real binaries. Inside a container we use the container's PATH unless
        ``postgres.bindir`` says otherwise.
        """
        if self._bindir is not None:
            return self._bindir or None
        b = self.host.postgres.bindir
        if not b and not self.host.container:
            r = self.runner.run(["pg_config", "--bindir"], check=False) if self._has_pg_config() else None
            if r is not None and r.ok and r.text.strip():
                b = r.text.strip()
        self._bindir = b or ""
        return b or None

    def _has_pg_config(self) -> bool:
        try:
            r = self.runner.run(["sh", "-c", "command -v pg_config"], check=False)
        except CommandError:
            return False
        return r.ok and bool(r.text.strip())

    def tool_path(self, tool: str) -> str:
        b = self.bindir()
        return f"{b.rstrip('/')}/{tool}" if b else tool

    def conn_args(self) -> list[str]:
        pg = self.host.postgres
        h = pg.socket_dir or pg.host
        if self.host.container and not h:
            return conn_args(host=None, port=None, user=pg.user)
        return conn_args(host=h, port=pg.port, user=pg.user)

    def tool_argv(self, tool: str, args: Iterable[str], *, stdin: bool = False,
                  pgoptions: str | None = None) -> list[str]:
        """Full argv for a PostgreSQL tool in this host's access mode.

        Container mode never asks for a TTY (``-i`` only: a TTY would mangle binary
        streams and merge stderr into the dump). Nothing of ours runs inside the container
        but the tool itself: in the official image PostgreSQL is PID 1, so any helper
        process orphaned there is reaped by the postmaster, and one that died by a signal
        makes it restart every session as after a crash (seen with an in-container
        watcher shell; PostgreSQL's postmaster.c, CleanupBackend).
        """
        inner = [self.tool_path(tool), *self.conn_args(), *args]
        if not self.host.container:
            return inner
        c = self.host.container
        argv = [*c.engine_argv, "exec", "-i"]
        env = self.env()
        if "PGPASSWORD" in env:
            argv += ["-e", "PGPASSWORD"]
        argv += ["-e", f"PGCONNECT_TIMEOUT={self.host.postgres.connect_timeout}"]
        if pgoptions:  # not a secret: server settings for the tool's sessions
            argv += ["-e", f"PGOPTIONS={pgoptions}"]
        if self.app_name_for(tool):  # not a secret either: names our sessions in pg_stat_activity
            argv += ["-e", f"PGAPPNAME={self.app_name_for(tool)}"]
        if c.exec_user:
            argv += ["--user", c.exec_user]
        return argv + [c.name, *inner]

    def run_tool(self, tool: str, args: Iterable[str], *, input: bytes | None = None, check: bool = True,
                 timeout: float | None = None, pgoptions: str | None = None) -> Result:
        """Run a PostgreSQL tool to completion.

        Args:
            pgoptions: server settings for every session the tool opens (libpq's
                ``PGOPTIONS``, e.g. ``-c maintenance_work_mem=256MB``).
        """
        argv = self.tool_argv(tool, args, pgoptions=pgoptions)
        r = self.runner.run(argv, input=input, env=self._tool_env(pgoptions, tool), check=False, timeout=timeout)
        if check and r.returncode != 0:
            raise self.error_for(r.argv, r.returncode, r.stderr, tool)
        return r

    def popen_tool(self, tool: str, args: Iterable[str], *, stdin: bool = False,
                   pgoptions: str | None = None) -> Process:
        """Start a PostgreSQL tool; ``pgoptions`` as for :meth:`run_tool`."""
        return self.runner.popen(self.tool_argv(tool, args, pgoptions=pgoptions), env=self._tool_env(pgoptions, tool),
                                 stdin=stdin)

    def app_name_for(self, tool: str) -> str | None:
        """``application_name`` of ``tool``'s sessions: :attr:`app_name` for psql (the
        library's SQL); None for pg_dump and the other tools, which keep their own
        (monitoring and scripts look for ``pg_dump``); the lock watcher finds our pg_dump
        by the snapshot it shares with our session (:mod:`bigskies_ops.pg.lockwait`)."""
        return self.app_name if tool == "psql" else None

    def _tool_env(self, pgoptions: str | None, tool: str = "psql") -> dict[str, str]:
        env = self.env()
        if self.app_name_for(tool) and not self.host.container:  # containers get it by -e (tool_argv)
            env = {**env, "PGAPPNAME": self.app_name_for(tool)}
        if pgoptions and not self.host.container:  # containers get it by -e (tool_argv)
            own = os.environ.get("PGOPTIONS", "").strip() if not self.runner.is_remote else ""
            env = {**env, "PGOPTIONS": f"{own} {pgoptions}" if own else pgoptions}  # ours last: they win
        return env

    def error_for(self, argv: list[str], returncode: int, stderr: str, tool: str) -> PostgresError:
        if returncode < 0:  # killed: say by what, there may be no stderr at all
            try:
                how = f"killed by signal {-returncode} ({signal.Signals(-returncode).name})"
            except ValueError:
                how = f"killed by signal {-returncode}"
        else:
            how = f"exit {returncode}"
        one_line = " | ".join(l.strip() for l in tail(stderr, 600).splitlines() if l.strip())  # one-line errors
        reason = classify_pg_error(stderr, self.host) or f"{tool} failed ({how}){': ' + one_line if one_line else ''}"
        return PostgresError(reason, argv=redact_argv(argv), returncode=returncode, stderr=tail(stderr))

    def tool_version(self, tool: str) -> PgVersion:
        """Version of the tool that will actually run (recorded in manifests)."""
        with self._versions_lock:
            if tool not in self._versions:
                r = self.runner.run(self._version_argv(tool), env=self.env(), check=False)
                if r.returncode != 0:
                    raise self.error_for(r.argv, r.returncode, r.stderr + r.text, tool)
                self._versions[tool] = parse_tool_version(r.text)
            return self._versions[tool]

    def _version_argv(self, tool: str) -> list[str]:
        inner = [self.tool_path(tool), "--version"]
        if not self.host.container:
            return inner
        c = self.host.container
        return [*c.engine_argv, "exec", "-i", *(["--user", c.exec_user] if c.exec_user else []), c.name, *inner]

    # -------------------------------------------------------------- SQL
    def sql(self, database: str | None = None) -> "Sql":
        return Sql(self, database or self.host.postgres.database)

    @contextmanager
    def pooled_session(self, database: str | None = None):
        """Within the block, :meth:`Sql.query` and :meth:`Sql.value` on the maintenance
        database (``postgres.maintenance_db``) share ONE psql session (a pooler's
        "session mode"), instead of starting a psql per query: each start costs 15 ms on
        a quiet machine, 30-80 ms under load (issue 21: a restore ran 20 of them).

        By default only the maintenance database is pooled: a restore renames and drops the
        others, and a session left on one would stop that (PostgreSQL docs, ALTER DATABASE:
        "the current database cannot be renamed", and other sessions refuse a RENAME).
        Nothing is pooled when the maintenance database is the host's own database.
        ``database`` pools that database instead, beside the maintenance database's pool:
        the caller leaves the block before anything renames or drops it (a restore's
        checks of its side database, before the swap).
        :meth:`Sql.execute` (DDL: CREATE/DROP/ALTER DATABASE, the swap), queries with a
        ``timeout`` and queries from other threads keep their own psql. Queries run in
        autocommit, each seeing the catalogs as they are then, as separate psql runs did.

        Re-entrant (an inner block uses the outer one's session). The session is started
        at the first query and ended when the block exits, exception or Ctrl-C included.
        Yields the :class:`PooledSession` (None when an outer block owns it or nothing
        is pooled).
        """
        db = database or self.host.postgres.maintenance_db
        if any(p.database == db for p in self._pools) or (database is None and db == self.host.postgres.database):
            yield None
            return
        pool = PooledSession(self, db)
        self._pools.append(pool)
        try:
            yield pool
        finally:
            if pool in self._pools:  # (close() inside the block has closed it already)
                self._pools.remove(pool)
            pool.close()


Query = "str | psycopg.sql.Composable"  # (a str: naming it must not import psycopg)


def render(q: Query) -> str:
    """SQL text of ``q``. Names read from a SQL_ASCII database may hold bytes that are not
    UTF-8: they arrive as lone surrogates (``surrogateescape``) and go back to the server
    as the very same bytes (:func:`ident`, and :func:`encode_sql`)."""
    if isinstance(q, str):
        return q
    if isinstance(q, pgsql.Composable):
        return q.as_bytes(None).decode("utf-8", "surrogateescape")
    return q


def encode_sql(text: str) -> bytes:
    """SQL text to the bytes psql reads: UTF-8, and lone surrogates back to their bytes."""
    return text.encode("utf-8", "surrogateescape")


def decode_out(data: bytes) -> str:
    """psql's output: UTF-8 (:func:`session_setup` asks for it); a byte that is not UTF-8
    (a name in a SQL_ASCII database) becomes a lone surrogate, so it can be sent back
    exactly (:func:`encode_sql`) and shown escaped (:func:`printable`)."""
    return data.decode("utf-8", "surrogateescape")


def session_setup(lock_timeout_s: float = 0) -> str:
    """The settings every session of the library's own sets first, as pg_dump does for its
    own (a role or database may carry others: ``ALTER ROLE r IN DATABASE d SET
    statement_timeout = '50ms'`` made our snapshot session fail where pg_dump succeeded):

    * ``client_encoding`` UTF8: names read right whatever the server encoding (psql
      without a terminal otherwise talks in the database's encoding: a LATIN1
      database's ``café`` arrived as the byte 0xE9, not UTF-8); SQL_ASCII for a SQL_ASCII
      server, which converts nothing but would reject a name's non-UTF-8 bytes coming
      back in our SQL under UTF8 (they travel as they are: :func:`decode_out`);
    * ``statement_timeout`` and ``idle_in_transaction_session_timeout`` 0: a count of a
      big table, and the snapshot session idling while pg_dump runs, must not be cut;
    * ``lock_timeout`` ours (``backup.lock_wait_timeout``/``--lock-wait-timeout``, 0 =
      wait, visibly: :mod:`bigskies_ops.pg.lockwait`), not the role's.

    One ``SELECT set_config(...) \\gset``: no output, and servers older than 9.6 (no
    idle_in_transaction_session_timeout) set statement_timeout twice instead of failing.
    """
    ms = max(0, int(round(lock_timeout_s * 1000)))
    return ("SELECT set_config('client_encoding', CASE current_setting('server_encoding') WHEN 'SQL_ASCII' "
            "THEN 'SQL_ASCII' ELSE 'UTF8' END, false) AS bigskies_a, "
            "set_config('statement_timeout', '0', false) AS bigskies_b, "
            f"set_config('lock_timeout', '{ms}', false) AS bigskies_c, "
            "set_config(CASE WHEN current_setting('server_version_num')::int >= 90600 "
            "THEN 'idle_in_transaction_session_timeout' ELSE 'statement_timeout' END, '0', false) AS bigskies_d "
            "\\gset\n")


def wrap_query(q: Query) -> str:
    """``q`` as one statement whose single output line is its rows as a JSON array."""
    return f"SELECT coalesce(json_agg(t), '[]'::json) FROM ({render(q).rstrip().rstrip(';')}) t;\n"


class Sql:
    """The library's one SQL interface (status, swap, counts, locks, migrations).

    Each call runs psql with ``ON_ERROR_STOP`` and returns rows decoded from JSON,
    so values round-trip exactly whatever the access mode. Within
    :meth:`PostgresAccess.pooled_session`, :meth:`query` and :meth:`value` on the pooled
    database (the maintenance database, or the one named) share one psql instead
    (:class:`PooledSession`). Every identifier is
    composed with ``psycopg.sql.Identifier`` and every value with ``psycopg.sql.Literal``.
    """

    def __init__(self, access: PostgresAccess, database: str):
        self.access = access
        self.database = database

    def query(self, q: Query, *, timeout: float | None = None) -> list[dict]:
        """Run one SELECT; return its rows as dicts.

        Raises:
            PostgresError: connection or SQL error (reason classified, stderr tail kept).
        """
        pool = next((p for p in self.access._pools if p.serves(self.database)), None)
        if timeout is None and pool is not None:
            return pool.query(q)
        return self.query_alone(q, timeout=timeout)

    def query_alone(self, q: Query, *, timeout: float | None = None) -> list[dict]:
        """:meth:`query` on a psql of its own, even within :meth:`PostgresAccess.pooled_session`."""
        r = self._run(psql_args(self.database, tuples_only=True), wrap_query(q), timeout)
        out = decode_out(r.stdout).strip()
        return json.loads(out) if out else []

    def _run(self, args: list[str], text: str, timeout: float | None) -> Result:
        """psql ``args`` reading :func:`session_setup` then ``text``; a lock wait longer than
        a moment is reported while it lasts (:func:`bigskies_ops.pg.lockwait.watching`)."""
        from bigskies_ops.pg.lockwait import watching
        data = encode_sql(session_setup(self.access.lock_timeout_s) + text)
        with watching(self.access, self.database):
            return self.access.run_tool("psql", args, input=data, timeout=timeout)

    def value(self, q: Query):
        rows = self.query(q)
        if not rows:
            return None
        return next(iter(rows[0].values()))

    def execute(self, script: Query, *, single_transaction: bool = False, timeout: float | None = None) -> str:
        """Run statements (no result rows expected); return psql's stdout."""
        r = self._run(psql_args(self.database, single_transaction=single_transaction),
                      render(script).rstrip() + "\n", timeout)
        return decode_out(r.stdout)

    def session(self) -> "SqlSession":
        return SqlSession(self)


class SqlSession:
    """One long-lived psql session (a real transaction held open across calls), used to
    export a snapshot for pg_dump and count rows inside that same snapshot."""

    MARK = "__bigskies_ops_end__"

    def __init__(self, sql: Sql):
        self.sql = sql
        self.snapshot: str | None = None  # set by whoever exports one in this session
        self.proc = sql.access.popen_tool("psql", psql_args(sql.database, tuples_only=True), stdin=True)
        self._write(session_setup(sql.access.lock_timeout_s))

    def query(self, q: Query) -> list[dict]:
        return json.loads(self._send(wrap_query(q) + f"\\echo {self.MARK}\n") or "[]")

    def execute(self, q: Query) -> None:
        self._send(render(q).rstrip().rstrip(";") + ";\n" + f"\\echo {self.MARK}\n")

    def _write(self, text: str) -> None:
        try:
            self.proc.stdin.write(encode_sql(text))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail()

    def _send(self, text: str) -> str:
        self._write(text)
        lines = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self._fail()
            s = decode_out(line).rstrip("\n")
            if s == self.MARK:
                return "\n".join(lines).strip()
            lines.append(s)

    def _fail(self):
        rc = self.proc.wait(10)
        raise self.sql.access.error_for(self.proc.argv, rc, self.proc.stderr_text(), "psql")

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.write(b"COMMIT;\n\\q\n")
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except Exception:
            self.proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#: a line of psql's stderr that reports an SQL error of the statement it ran (a session
#: that ends without one was killed or lost its server: see :class:`PooledSession`); psql
#: reading its stdin puts no ``psql:<stdin>:N:`` before it (only a script file's lines are named)
_SQL_ERROR_LINE = re.compile(r"^ERROR:", re.M)


class _SessionEnded(Exception):
    """The pooled psql closed its stdin or stdout (it exited)."""


class PooledSession:
    """The psql session of :meth:`PostgresAccess.pooled_session`: queries on ``database``
    from the thread that opened it go down one psql's stdin, one after the other, each
    answered by its JSON line then a marker line (:class:`SqlSession`'s protocol).

    psql runs with ``ON_ERROR_STOP`` as a psql of its own does, so a failing query ends
    the session with the same exit status (3) and stderr: the error raised is the one
    :meth:`Sql.query` raises without a pool (:meth:`PostgresAccess.error_for`), from this
    query's part of the stderr: psql 13 and later write a marker line there before each
    query (``\\warn``); stderr is read by a thread, so without one a notice of the query
    before may lead the error. The next query starts a new session. A session that ended without an SQL error (killed; Ctrl-C,
    after which psql reading a script exits at its next line, psql's MainLoop; the server
    ended the connection) runs the query on a psql of its own, as if there were no pool.

    Attributes:
        spawned: psql processes this pool started (int).
    """

    MARK = SqlSession.MARK

    def __init__(self, access: PostgresAccess, database: str):
        self.access, self.database = access, database
        self.owner = threading.get_ident()
        self.proc: Process | None = None
        self.spawned = 0
        self._warn = False  # this psql has \warn (13+): stderr is marked per query

    def serves(self, database: str) -> bool:
        """True for a query on ``database`` from the thread that opened the pool (a
        second thread would interleave its lines with ours on the one pipe)."""
        return database == self.database and threading.get_ident() == self.owner

    @property
    def pid(self) -> int | None:
        """Process id of the running psql (of the engine or SSH client in those modes), or None."""
        return getattr(self.proc, "pid", None) if self.proc is not None else None

    def query(self, q: Query) -> list[dict]:
        """:meth:`Sql.query` on the pooled session.

        Raises:
            PostgresError: as :meth:`Sql.query`.
        """
        from bigskies_ops.pg.lockwait import watching
        if self.proc is not None and self.proc.poll() is not None:
            self._discard()  # it ended between two queries (Ctrl-C, the server went away)
        before = ""  # (a failure of the setup itself: all of its stderr)
        try:
            if self.proc is None:
                self._open()
            before = self.proc.stderr_text()
            mark = f"\\warn {self.MARK}\n" if self._warn else ""
            with watching(self.access, self.database):
                out = self._exchange(mark + wrap_query(q) + f"\\echo {self.MARK}\n")
        except _SessionEnded:
            proc = self.proc
            rc = proc.wait(10)
            full = proc.stderr_text()  # this query's part: after its marker, else after what came before
            if self._warn and self.MARK + "\n" in full:
                err = full.rsplit(self.MARK + "\n", 1)[1]
            else:  # (the 64 KiB window moved: all of it)
                err = full[len(before):] if before and full.startswith(before) else full
            self._discard()
            if rc != 0 and _SQL_ERROR_LINE.search(err):
                raise self.access.error_for(proc.argv, rc, err, "psql") from None
            return Sql(self.access, self.database).query_alone(q)
        except BaseException:
            self._discard()  # interrupted mid-exchange: what the session holds is unknown
            raise
        return json.loads(out) if out else []

    def _open(self) -> None:
        self.proc = self.access.popen_tool("psql", psql_args(self.database, tuples_only=True), stdin=True)
        self.spawned += 1
        version = self._exchange(session_setup(self.access.lock_timeout_s)
                                 + f"\\echo :VERSION_NUM\n\\echo {self.MARK}\n")  # psql's own version
        self._warn = version.isdigit() and int(version) >= 130000

    def _write(self, text: str) -> None:
        try:
            self.proc.stdin.write(encode_sql(text))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise _SessionEnded() from None

    def _exchange(self, text: str) -> str:
        self._write(text)
        lines = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise _SessionEnded()
            s = decode_out(line).rstrip("\n")
            if s == self.MARK:
                return "\n".join(lines).strip()
            lines.append(s)

    def _discard(self) -> None:
        """End the current process now (it failed, or its state is unknown)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(5)
            except Exception:  # noqa: BLE001 - killed already; nothing more to do
                pass

    def close(self) -> None:
        """End the session: ``\\q`` and end of input, then a kill if psql has not exited
        within 5 seconds (or this wait is interrupted)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.write(b"\\q\n")
                proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            proc.wait(5)
        except Exception:  # noqa: BLE001 - not gone in 5 s: killed below
            pass
        finally:  # (Ctrl-C during the wait included)
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(5)
                except Exception:  # noqa: BLE001
                    pass


def ident(*names: str) -> pgsql.Identifier:
    """``psycopg.sql.Identifier(*names)``; a name holding lone surrogates (bytes that are
    not UTF-8, see :func:`decode_out`) is quoted the same way, byte for byte."""
    if any(any("\udc80" <= ch <= "\udcff" for ch in n) for n in names if isinstance(n, str)):
        return _raw_ident_class()(*names)
    return pgsql.Identifier(*names)


_RAW_IDENT = None


def _raw_ident_class():
    global _RAW_IDENT
    if _RAW_IDENT is None:
        class RawIdentifier(pgsql.Identifier):
            """An Identifier whose parts go out as their original bytes (surrogateescape)."""

            def as_bytes(self, context=None) -> bytes:
                return b".".join(self._escape_identifier(s.encode("utf-8", "surrogateescape")) for s in self._obj)
        _RAW_IDENT = RawIdentifier
    return _RAW_IDENT


def lit(value) -> pgsql.Literal:
    return pgsql.Literal(value)
