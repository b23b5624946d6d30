"""Parallel restore of a plain ``.sql.gz`` dump with several psql sessions.

psql reads a plain dump in one session: one backend parses every COPY row while the
other cores wait (``pg_restore --jobs`` exists only for custom and directory archives).
:func:`load_plain_parallel` reads the archive once (gunzip + the restore's statement lexer,
:class:`bigskies_ops.archives.plainsql.OwnerAclFilter`, in one thread: :class:`_Fanout`) and
hands the same typed pieces to each of ``jobs`` sessions, which split the work by the
dump's own structure:

* SQL outside COPY data (CREATE, ALTER, indexes, constraints, ...) runs in the first
  session ("the leader"), in file order, exactly as psql would run it;
* session settings (``SET ...;``, ``SELECT pg_catalog.set_config(...)``) and psql
  meta-commands (``\\restrict``/``\\unrestrict``) run in every session; a session other
  than the leader runs them just before its next COPY segment, so a setting that names
  an object of the dump (``SET default_table_access_method = x``) runs after the
  leader has created it;
* COPY data is cut into segments of about :data:`SEGMENT_BYTES` at line ends (COPY's
  text format has one row per line; PostgreSQL docs, COPY "Text Format"), and each
  segment is loaded by whichever session reaches it first, as its own ``COPY ... FROM
  stdin`` with the dump's column list. Segment boundaries depend only on the data, so
  every session cuts the stream at the same places.

Ordering is psql's where it matters: a run of COPY blocks starts only after every SQL
statement before it has completed in the leader (tables exist), and the SQL after it
(indexes, constraints, triggers) starts only after every segment of the run has been
loaded. A session confirms completion with a ``SELECT '<token>'`` whose output it
waits for (a meta-command such as ``\\echo`` is refused once pg_dump's ``\\restrict``
has run). From a statement whose effect other sessions cannot share or copy, the
dump is loaded by the leader alone (the other sessions stop reading), as psql would
load it (:data:`_SERIAL_RE`, :data:`_BROADCAST_META`): a transaction (``BEGIN``: pg_dump's
large-object data, or a hand-written dump), session state changed by a statement
other than pg_dump's ``SET`` forms (``set search_path``, ``RESET``, ``set_config`` in a
query or ``DO`` block, a ``SELECT``/``CALL``/``DO`` that may call a function of the
dump, temporary tables), a ``COPY ... FROM stdin`` with options (CSV
rows may span lines, and the lexer reads such data as SQL), and any meta-command but
``\\restrict``/``\\unrestrict`` (``\\i`` would run once per session, ``\\o`` would hide the
sync replies, ``\\connect`` must follow the leader's ``CREATE DATABASE``). Each of these,
handled otherwise, loads different rows with exit 0, fails, or hangs.

Index builds are shared too, as ``pg_restore --jobs`` shares them: a run of consecutive
statements that each build one index of one table (:func:`index_build_table`: pg_dump's
``ALTER TABLE ONLY ... ADD CONSTRAINT ... PRIMARY KEY/UNIQUE/EXCLUDE`` and ``CREATE
[UNIQUE] INDEX ... ON`` a schema-qualified table) is shared statement by statement, like
COPY segments, with one rule: a table's builds run one after another in file order (their
OIDs come in psql's order, and a foreign key uses the oldest matching unique index). A
session takes a build only once the table's build before it in the run has completed, and
any session may: a table's later indexes do not wait behind another table's long build in
the session that built its first one. (A session that reaches a build before the table's
build before it has completed passes it: it is taken by a session that reaches it after
that one completed, at the latest by the session that ran that one, which reads on from
there.) What follows the run starts only after every statement of it has completed. Nothing in
such a run can depend on another statement of it: what uses an index (a foreign key,
``CLUSTER ON``, ``REPLICA IDENTITY``, ``ATTACH PARTITION``, a comment) is another
statement, which ends the run. A dump with partitioned or inheriting tables builds its
indexes in file order (a ``CREATE INDEX`` on a parent adopts a child's matching index
only if that index exists already), as does one that creates an event trigger (it
would see the builds in another order) and a single session.

Rows therefore land in a table in segment order per session (row order within a
table is not preserved, as with any concurrent load); the server's ``COPY n`` tags of
every segment are summed per table and compared with the manifest by the caller.
"""
from __future__ import annotations

import re
import secrets
import threading
import time

from bigskies_ops.pg.access import PostgresAccess
from bigskies_ops.errors import ArchiveError
from bigskies_ops.pg.tools import psql_args
from bigskies_ops.archives.plainsql import CopyTags, OwnerAclFilter, RolePolicy
from bigskies_ops.archives.sqltokens import fold_name
from bigskies_ops.archives.integrity import gunzip_chunks
from bigskies_ops.hosts.local import LocalRunner

#: COPY data per segment (bytes of text), cut at the next line end.
SEGMENT_BYTES = 8 * 1024 * 1024
#: seconds from an aborted load to its sessions being killed (:func:`_join_workers`)
ABORT_GRACE = 2.0

#: statements (other than the ``set`` pieces every session runs) after which only the
#: leader loads: they open a transaction, change session state the other sessions
#: would miss, or are a COPY from stdin the lexer cannot cut (see the module docstring)
_SERIAL_RE = re.compile(
    rb"\A(?:BEGIN|START\s+TRANSACTION|SET|RESET|DISCARD|LOAD)\b"
    rb"|\A(?:SELECT|DO|CALL)\b.*(?:\bset_config\b|\bSET\s)"
    # a function of the dump may change session state (set_config in its body): pg_dump's
    # own SELECTs call pg_catalog's functions only
    rb"|\A(?:DO|CALL)\b|\ASELECT\b(?!\s+pg_catalog\s*\.)"
    rb"|\ACREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\b"
    rb"|\ACREATE\b.*?\bpg_temp\s*\."  # a temporary object made without TEMP
    rb"|\ACOPY\b.*\bFROM\s+STDIN\b", re.I | re.S)
#: an identifier as pg_dump writes it: quoted (quotes doubled inside) or plain
_IDENT = rb'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_TABLE = rb"(" + _IDENT + rb")\s*\.\s*(" + _IDENT + rb")"  # schema-qualified, as pg_dump writes it
#: a statement that builds one index of one schema-qualified table: nothing but the
#: session's settings decides its result (see the module docstring); ``ON ONLY`` (a
#: partitioned table), ``CONCURRENTLY`` and ``USING INDEX`` (an existing index) are left
#: in file order, as is an ALTER TABLE with another subcommand (checked by index_build_table)
_INDEX_RE = re.compile(
    rb"\A(?:CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?!CONCURRENTLY\b)" + _IDENT + rb"\s+ON\s+(?!ONLY\b)" + _TABLE
    + rb"\s*(?:USING\b|\()"
    rb"|ALTER\s+TABLE\s+ONLY\s+" + _TABLE + rb"\s+ADD\s+CONSTRAINT\s+" + _IDENT
    + rb"\s+(?:PRIMARY\s+KEY|UNIQUE|EXCLUDE)\b([^;]*))"
    rb"[^;]*;\s*\Z", re.I | re.S)
#: a dump with table inheritance or partitions (a parent's CREATE INDEX adopts a child's
#: matching index only if it exists already), or an event trigger (it would see the builds
#: in another order): from such a statement on, index builds stay in file order. Loose on
#: purpose: a false match only costs the sharing.
_KEEP_INDEX_ORDER_RE = re.compile(
    rb"\A(?:CREATE|ALTER)\b"
    rb"(?!\s+(?:OR\s+REPLACE\s+)?(?:VIEW|MATERIALIZED\s+VIEW|FUNCTION|PROCEDURE|AGGREGATE|RULE)\b)"
    rb"(?:.*\b(?:PARTITION|INHERITS?)\b|(?=.*\bEVENT\b).*\bTRIGGER\b)", re.I | re.S)
#: meta-commands every session runs; any other one makes the load serial
_BROADCAST_META = frozenset({b"restrict", b"unrestrict"})
_META_NAME = re.compile(rb"\\([A-Za-z_!?]*)")


def index_build_table(statement: bytes) -> tuple[bytes, bytes] | None:
    """The table (schema, name; unquoted, folded as PostgreSQL folds them) whose one index
    ``statement`` (one SQL statement, comments before it allowed) builds, when it may run
    beside the other statements of its run (:data:`_INDEX_RE`; the module docstring says
    why); None otherwise."""
    body = statement[OwnerAclFilter.LEADING.match(statement).end():]
    m = _INDEX_RE.match(body)
    if m is None or re.search(rb"\bUSING\s+INDEX\b", body, re.I):
        return None
    if m.group(5) is not None:  # ALTER TABLE: one subcommand only (no comma outside parentheses)
        rest = m.group(5)
        while (shorter := re.sub(rb"\([^()]*\)", b"", rest)) != rest:
            rest = shorter
        if b"," in rest or b"(" in rest or b")" in rest:
            return None
    schema, name = (fold_name(x) for x in (m.group(1, 2) if m.group(1) is not None else m.group(3, 4)))
    return None if schema.startswith(b"pg_temp") else (schema, name)


class _Abort(Exception):
    """Another session failed (or the load was cancelled): stop quietly."""


class _Stop(Exception):
    """The load went serial: a session other than the leader has nothing left to do."""


class _Session:
    """One psql process fed over stdin; its stdout is read for ``COPY n`` tags and the
    sync tokens it echoes back."""

    def __init__(self, access: PostgresAccess, database: str, pgoptions: str | None, token: str):
        self.proc = access.popen_tool("psql", psql_args(database, quiet=False), stdin=True, pgoptions=pgoptions)
        self.token = token
        self.tags = CopyTags()  # the server's COPY n tags, one per segment this session loaded
        self._sent = 0
        self._seen = 0
        self._eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        carry = b""
        prefix = self.token.encode() + b"-"
        try:
            for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
                self.tags.feed(chunk)
                buf = carry + chunk
                lines = buf.split(b"\n")
                carry = lines.pop()[-4096:]
                for line in lines:
                    s = line.strip()
                    if s.startswith(prefix) and s[len(prefix):].isdigit():
                        with self._cond:
                            self._seen = max(self._seen, int(s[len(prefix):]))
                            self._cond.notify_all()
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
        except (BrokenPipeError, OSError, ValueError):
            raise _Abort() from None

    def sync(self, abort: threading.Event) -> None:
        """Wait until psql has executed everything sent so far."""
        self._sent += 1
        self.send(f"SELECT '{self.token}-{self._sent}' AS bigskies_sync;\n".encode())
        try:
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise _Abort() from None
        with self._cond:
            while self._seen < self._sent:
                if self._eof or abort.is_set():
                    raise _Abort()
                self._cond.wait(0.2)

    def close(self) -> int:
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass
        rc = self.proc.wait()
        self._reader.join(5)
        return rc


class _Shared:
    """State the sessions share: who loads which segment, and the barriers."""

    def __init__(self):
        self.cond = threading.Condition()
        self.claims: dict[tuple, int] = {}  # (block, segment) or (("index", run, table), n) -> worker
        self.run_done: dict[int, int] = {}  # COPY or index run -> segments / builds confirmed
        self.chains: dict[tuple, int] = {}  # ("index", run, table) -> its builds completed
        self.sql_done: set[int] = set()  # SQL runs completed by the leader
        self.abort = threading.Event()
        self.errors: list[BaseException] = []

    def claim(self, key: tuple, worker: int) -> bool:
        with self.cond:
            return self.claims.setdefault(key, worker) == worker

    def claim_in_turn(self, chain: tuple, n: int, worker: int) -> bool:
        """Claim the ``n``-th (0-based) statement of ``chain`` for ``worker``: only when
        the ``n`` before it have completed (:meth:`chain_step_done`) and no one has it."""
        with self.cond:
            if self.chains.get(chain, 0) != n:
                return False
            return self.claims.setdefault((chain, n), worker) == worker

    def chain_step_done(self, chain: tuple, run: int) -> None:
        with self.cond:  # (re-entrant: segment_done counts it for the run's barrier)
            self.chains[chain] = self.chains.get(chain, 0) + 1
            self.segment_done(run)

    def wait_for(self, ready) -> None:
        with self.cond:
            while not ready():
                if self.abort.is_set():
                    raise _Abort()
                self.cond.wait(0.2)

    def segment_done(self, run: int) -> None:
        with self.cond:
            self.run_done[run] = self.run_done.get(run, 0) + 1
            self.cond.notify_all()

    def fail(self, e: BaseException) -> None:
        with self.cond:
            self.errors.append(e)
            self.abort.set()
            self.cond.notify_all()


class _Fanout:
    """The archive read and lexed once, for every session: a thread of its own inflates it
    (or takes the SQL a pull hands over) and splits it into typed pieces with ONE
    :class:`OwnerAclFilter`; each session's worker takes the same pieces in the same order
    (:meth:`pieces`), so every worker sees exactly what its own reader and lexer used to
    give it, for 1/``jobs`` of the CPU (on the benchmark's 752 MB of SQL, inflating and
    lexing cost each reader ~2 s of the two cores the server's backends load with).

    Bounded: a worker at most ``limit`` bytes of archive behind the reader holds it back
    (memory stays flat). No worker waits for data beyond its own position (a session waits
    only for the leader's SQL before its COPY run, or for the segments of a run it has read
    past), so a worker held back by another never deadlocks the load.
    """

    _END = object()

    def __init__(self, chunks, policy: RolePolicy | None, workers: int, shared: _Shared, limit: int):
        self.flt = OwnerAclFilter(policy)
        self.shared, self.limit = shared, limit
        self.cond = threading.Condition()
        self.queues: list[list] = [[] for _ in range(workers)]
        self.held = [0] * workers  # archive bytes queued per worker
        self.open = [True] * workers
        self.thread = threading.Thread(target=self._read, args=(chunks,), daemon=True, name="parload-reader")

    def start(self) -> None:
        self.thread.start()

    def _read(self, chunks) -> None:
        try:
            last = 0
            for done, chunk in chunks:
                if self.shared.abort.is_set():
                    return
                self._put((done, self.flt.feed_pieces(chunk)), len(chunk))
                last = done
            self._put((last, self.flt.flush_pieces()), 0)
            self._put(self._END, 0)
        except _Abort:
            return
        except BaseException as e:  # a reading/lexing error (corrupt gzip, missing roles): stop every session
            self.shared.fail(e)
            with self.cond:
                self.cond.notify_all()

    def _put(self, item, size: int) -> None:
        with self.cond:
            while any(o and h and h + size > self.limit for o, h in zip(self.open, self.held)):
                if self.shared.abort.is_set():
                    raise _Abort()
                self.cond.wait(0.2)
            for w, o in enumerate(self.open):
                if o:
                    self.queues[w].append((item, size))
                    self.held[w] += size
            self.cond.notify_all()

    def pieces(self, wid: int):
        """``(archive bytes read, pieces)`` for worker ``wid``, in archive order, until the end.

        Raises:
            _Abort: the load was stopped (another session failed, or the reader did)."""
        q = self.queues[wid]
        while True:
            with self.cond:
                while not q:
                    if self.shared.abort.is_set():
                        raise _Abort()
                    self.cond.wait(0.2)
                item, size = q.pop(0)
                self.held[wid] -= size
                self.cond.notify_all()
            if item is self._END:
                return
            yield item

    def close(self, wid: int) -> None:
        """Worker ``wid`` reads no more (it finished, stopped or failed)."""
        with self.cond:
            self.open[wid] = False
            self.queues[wid].clear()
            self.held[wid] = 0
            self.cond.notify_all()


class _Worker:
    """One psql session's driver over the shared pieces of the archive (worker 0 is the leader)."""

    def __init__(self, wid: int, shared: _Shared, session: _Session, fanout: _Fanout,
                 progress=None, segment_bytes: int = SEGMENT_BYTES):
        self.wid, self.shared, self.s = wid, shared, session
        self.fanout = fanout
        self.flt = fanout.flt  # read only here: its lists (copy_tables, facts) are filled ahead by the reader
        self.progress = progress if wid == 0 else None
        self.segment_bytes = segment_bytes
        self.loaded: list[tuple[str, str] | None] = []  # table of each segment this session loaded, in order
        # stream position
        self.run = -1
        self.run_kind: str | None = None
        self.segments_in_run = 0
        self.block = -1
        self.seg = 0
        self.copy_stmt = b""
        self.last_kind: str | None = None
        self.off = 0
        self.next_cut = 0
        self.in_seg = False
        self.mine = False
        self.serial = False
        self.serial_because: str | None = None
        self.pending: list[bytes] = []  # settings not yet sent (a session other than the leader)
        # index builds are shared (module docstring) when there is another session, until a
        # statement on partitions, inheritance or an event trigger (_KEEP_INDEX_ORDER_RE)
        self.share_indexes = len(fanout.queues) > 1
        self.built = 0  # index builds this session ran in shared runs
        self.chain_pos: dict[tuple, int] = {}  # ("index", run, table) -> its builds this session has passed

    @property
    def leader(self) -> bool:
        return self.wid == 0

    def run_all(self) -> None:
        try:
            for done, pieces in self.fanout.pieces(self.wid):
                if self.shared.abort.is_set():
                    raise _Abort()
                self._pieces(pieces)
                if self.progress:
                    self.progress(done)
            if self.serial and not self.leader:
                return
            if self.in_seg or self.flt.in_copy:
                # psql would end the COPY at end of input and commit a part of the table
                raise ArchiveError(f"the dump ends inside the COPY data of table #{self.block + 1}: "
                                   "it is truncated")
            self._leave_run()
        except _Stop:
            return
        except _Abort:
            self.shared.abort.set()
        except BaseException as e:  # stop every session
            self.shared.fail(e)
        finally:
            self.fanout.close(self.wid)

    # -------------------------------------------------------------- pieces
    def _pieces(self, pieces) -> None:
        for kind, data in pieces:
            if kind == "meta" and not self.serial:
                m = _META_NAME.match(data, self.flt.LEADING.match(data).end())  # after the comments before it
                if (m.group(1) if m else b"") not in _BROADCAST_META:
                    self._go_serial()
            if kind in ("set", "meta"):
                if self.leader:
                    self.s.send(data)
                else:
                    self.pending.append(data)  # sent before this session's next segment
            elif kind == "blank":
                if self.leader:
                    self.s.send(data)
                continue  # a blank piece does not separate a COPY statement from the rest of its line
            elif kind in ("sql", "hazard"):
                body = data[self.flt.LEADING.match(data).end():]  # without the comments before it
                table = index_build_table(body) if kind == "sql" and self.share_indexes and not self.serial else None
                if table is not None:
                    self._enter_run("index")
                    self._index(data, table)
                    self.last_kind = kind
                    continue
                if kind == "sql" and self.share_indexes and _KEEP_INDEX_ORDER_RE.match(body):
                    self.share_indexes = False
                self._enter_run("sql")
                if not self.serial and kind == "hazard":
                    # the schema calls its own functions while data is loaded: a concurrent
                    # load could compute other values than psql's (archives.plainsql.StatementFacts)
                    if self.block < 0:
                        self.serial_because = self.flt.facts.load_hazards[0]
                    self._go_serial()
                if not self.serial and _SERIAL_RE.match(body):
                    self._go_serial()
                if self.leader:
                    self.s.send(data)
            elif kind == "copy":
                self._enter_run("copy")
                if self.last_kind == "copy":  # the rest of the COPY statement's line
                    self.copy_stmt += data
                else:
                    self.block += 1
                    self.seg = 0
                    self.copy_stmt = data
                    self.off = 0
                    self.next_cut = self.segment_bytes
            elif kind == "data":
                self._data(data)
            elif kind == "end":
                if not self.in_seg and self.seg == 0:  # a table without rows: one empty segment
                    self._start_segment()
                if self.in_seg:
                    self._finish_segment()
            self.last_kind = kind

    def _go_serial(self) -> None:
        """The leader alone from here on; any other session stops (raises :class:`_Stop`).

        Every reader reaches this at the same place of the stream, after its last
        segment before it is loaded and confirmed, so no segment is lost or doubled."""
        self.serial = True
        if not self.leader:
            raise _Stop()

    def _enter_run(self, kind: str) -> None:
        if kind == self.run_kind:
            return
        self._leave_run()
        self.run += 1
        self.run_kind = kind
        self.segments_in_run = 0
        if kind in ("copy", "index") and self.leader and self.run > 0 and not self.serial:
            self.s.sync(self.shared.abort)  # the SQL before this run has completed
            with self.shared.cond:
                self.shared.sql_done.add(self.run - 1)
                self.shared.cond.notify_all()

    def _leave_run(self) -> None:
        if self.run_kind in ("copy", "index") and self.leader:
            run, total = self.run, self.segments_in_run
            self.shared.wait_for(lambda: self.shared.run_done.get(run, 0) >= total)
        self.run_kind = None

    def _index(self, data: bytes, table: tuple[bytes, bytes]) -> None:
        """One statement of an index run, built by this session if it is the table's next
        build in file order and the one before has completed (module docstring): the
        table's indexes get their OIDs in psql's order, and a foreign key uses the oldest
        matching unique index. Otherwise a session that comes to it later does (at the
        latest the one that ran the build before it, which reads on from there)."""
        self.segments_in_run += 1
        chain = ("index", self.run, table)
        n = self.chain_pos.get(chain, 0)  # every session counts a table's builds alike
        self.chain_pos[chain] = n + 1
        if not self.shared.claim_in_turn(chain, n, self.wid):
            return
        if not self.leader:
            self._after_previous_run()
        self.s.send(data)
        self.s.sync(self.shared.abort)
        self.built += 1
        self.shared.chain_step_done(chain, self.run)

    def _after_previous_run(self) -> None:
        """A session other than the leader, about to load in this run: wait until what came
        before it has completed in the leader, then take the settings it has not sent."""
        if self.run > 0:
            prev = self.run - 1
            self.shared.wait_for(lambda: prev in self.shared.sql_done)
        if self.pending:
            self.s.send(b"".join(self.pending))
            self.pending = []

    def _data(self, data: bytes) -> None:
        while data:
            if not self.in_seg:
                self._start_segment()
            rel = self.next_cut - 1 - self.off  # the cut follows the first line end at or after next_cut - 1
            if rel < len(data):
                j = data.find(b"\n", max(rel, 0))
                if j >= 0:
                    part, data = data[:j + 1], data[j + 1:]
                    if self.mine:
                        self.s.send(part)
                    self.off += len(part)
                    self._finish_segment()
                    self.next_cut = self.off + self.segment_bytes
                    continue
            if self.mine:
                self.s.send(data)
            self.off += len(data)
            data = b""

    def _start_segment(self) -> None:
        key = (self.block, self.seg)
        self.segments_in_run += 1
        if self.serial:
            self.mine = self.leader
        else:
            self.mine = self.shared.claim(key, self.wid)
        if self.mine:
            if not self.leader:
                self._after_previous_run()
            self.s.send(self.copy_stmt)
        self.in_seg = True

    def _finish_segment(self) -> None:
        if self.mine:
            self.s.send(b"\\.\n")
            if not self.serial:  # serial: nobody waits for it (and a \\o may hide the reply)
                self.s.sync(self.shared.abort)
            self.loaded.append(self.flt.copy_tables[self.block] if self.block < len(self.flt.copy_tables) else None)
            self.shared.segment_done(self.run)
        self.in_seg = False
        self.mine = False
        self.seg += 1


def load_plain_parallel(access: PostgresAccess, path: str, database: str, *, jobs: int,
                        policy: RolePolicy | None = None, pgoptions: str | None = None, progress=None, open_chunks=None,
                        segment_bytes: int = SEGMENT_BYTES, stats: dict | None = None, source_failed=None):
    """Restore the plain dump ``path`` (gzip) into ``database`` with ``jobs`` psql sessions.

    Args:
        jobs: sessions (>= 1), fed from one reader of the archive (:class:`_Fanout`).
        policy: what to do with statements naming roles missing on the target
            (:class:`bigskies_ops.archives.plainsql.RolePolicy`; None: run every statement).
        pgoptions: session settings for every psql (libpq ``PGOPTIONS``).
        progress: called with the compressed bytes read by the leader.
        open_chunks: ``open_chunks()`` -> iterator of ``(compressed bytes read, SQL bytes)``
            (default: the local file through :func:`bigskies_ops.archives.integrity.gunzip_chunks`);
            called once.
        segment_bytes: COPY data per segment.
        source_failed: ``source_failed()`` -> the error of the archive's writer (a pull) or None,
            polled: it stops the load even while every session waits on the server.
        stats: if given, filled with ``segments``: the segments each session loaded;
            ``serial_because``: why the leader loaded alone (None: it did not);
            ``index_builds``: the statements of shared index runs each session ran;
            ``skipped``: statements skipped per missing role (the leader's count).

    Returns:
        ``(returncode, stdout, stderr, rows)``: psql's exit status (the first failing
        session's), ``""``, that session's stderr, and the rows the server reported per
        table (summed ``COPY n`` tags), or None when they cannot be paired with tables.

    Raises:
        ArchiveError: the archive is corrupt (raised by a reader; every session is stopped).
    """
    if open_chunks is None:
        def open_chunks():
            f = LocalRunner().open_read(path)

            def gen():
                with f:
                    yield from gunzip_chunks(f, path=path)
            return gen()
    shared = _Shared()
    token = "bigskies-sync-" + secrets.token_hex(8)
    sessions: list[_Session] = []
    workers: list[_Worker] = []
    # a worker may fall this far behind the reader: a segment it loads while another
    # session reads past it and the next, plus a chunk
    fanout = _Fanout(open_chunks(), policy, jobs, shared, limit=2 * segment_bytes + (2 << 20))
    try:
        for wid in range(jobs):
            s = _Session(access, database, pgoptions, token)
            sessions.append(s)
            workers.append(_Worker(wid, shared, s, fanout, progress, segment_bytes))
        threads = [threading.Thread(target=w.run_all, daemon=True, name=f"parload-{w.wid}") for w in workers]
        fanout.start()
        for t in threads:
            t.start()
        _join_workers(threads, shared, sessions, source_failed)
        # the workers took the reader's last piece, or stopped (abort: the reader stops at its next
        # chunk, or stays blocked on a pull that sends nothing; its pull is stopped by the caller)
        fanout.thread.join(None if not shared.abort.is_set() else 5)
    except BaseException:
        shared.abort.set()
        for s in sessions:
            s.proc.kill()
        raise
    if shared.abort.is_set():
        for s in sessions:
            s.proc.kill()
    rcs = [s.close() for s in sessions]
    if stats is not None:
        stats["segments"] = [len(w.loaded) for w in workers]
        stats["serial_because"] = workers[0].serial_because
        stats["index_builds"] = [w.built for w in workers]
        stats["skipped"] = dict(fanout.flt.skipped)
    if shared.errors:
        raise shared.errors[0]
    if shared.abort.is_set() or any(rcs):
        # the session that exited with an error has the server's message; the others were
        # killed (negative status); else the first that ended unexpectedly
        i = next((j for j, rc in enumerate(rcs) if rc > 0), next((j for j, rc in enumerate(rcs) if rc), 0))
        return rcs[i] or 1, "", sessions[i].proc.stderr_text(), None
    return 0, "", "\n".join(s.proc.stderr_text() for s in sessions if s.proc.stderr_text()), _rows(workers, sessions)


def _join_workers(threads: list[threading.Thread], shared: _Shared, sessions: list[_Session], source_failed) -> None:
    """Wait for the workers; kill the sessions :data:`ABORT_GRACE` s after an abort (a session
    or the reader failed, or ``source_failed()`` gave a lost pull's error): a worker blocked
    on a psql whose backend waits for a lock would hold the command as long as the lock."""
    aborted_at, killed = None, False
    for t in threads:
        while t.is_alive():
            t.join(0.5)
            err = source_failed() if source_failed is not None and not shared.abort.is_set() else None
            if err is not None:
                shared.fail(err)
            if shared.abort.is_set() and aborted_at is None:
                aborted_at = time.monotonic()
            if aborted_at is not None and not killed and time.monotonic() - aborted_at >= ABORT_GRACE:
                for s in sessions:
                    s.proc.kill()
                killed = True


def _rows(workers: list[_Worker], sessions: list[_Session]) -> dict[tuple[str, str], int] | None:
    """Rows per table: every session's ``COPY n`` tags summed; None when tags and segments
    do not pair up."""
    rows: dict[tuple[str, str], int] = {}
    for w, s in zip(workers, sessions):
        mine = s.tags.by_table(w.loaded)
        if mine is None:
            return None
        for t, n in mine.items():
            rows[t] = rows.get(t, 0) + n
    return rows
