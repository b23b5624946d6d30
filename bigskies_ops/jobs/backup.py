"""``db.backup``: dump one database into a new archive with its manifest.

Sequence (CONTRACTS.md section 2):

1. take the (host, database) lock; pick a name that never overwrites (``_N``);
2. write the manifest as STARTED;
3. open a REPEATABLE READ, READ ONLY transaction, export its snapshot, read the
   table list and the schema_migrations head in it;
4. run ``pg_dump --snapshot`` and stream its stdout through the compressor and
   sha256 into ``<archive>.partial`` (the dump never sits in memory);
5. check pg_dump's exit status, that a plain dump ends with its completion
   trailer, and take every table's exact row count in the dump's snapshot: a plain
   dump's counts are its own COPY data lines (:func:`stream_row_counts`; the few
   tables the stream cannot give are counted with ``count(*)`` in the still open
   snapshot transaction), a custom dump's come from ``count(*)`` run in the same
   transaction while pg_dump runs (:class:`RowCounter`);
6. fsync, publish under the final name without replacing anything, and write the
   manifest as DONE (or FAILED with phase and stderr tail; the ``.partial`` is
   removed and nothing appears under the final name).
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import queue
import re
import socket
import threading
import time
from dataclasses import dataclass, field

from bigskies_ops import __version__
from bigskies_ops.archives import gz
from bigskies_ops.pg.access import PostgresAccess, SqlSession, ident, lit, pgsql
from bigskies_ops.pg.admin import database_properties_sql
from bigskies_ops.archives.plainsql import PY_CODECS
from bigskies_ops.archives.catalog import PARTIAL_SUFFIX, Backup, archive_name, iso, latest, list_backups, parse_archive_name, read_manifest, utcnow, write_manifest
from bigskies_ops.text import human_bytes
from bigskies_ops.errors import BigskiesError, CommandError, Interrupted, PostgresError, StorageError
from bigskies_ops.inventory import Host
from bigskies_ops.archives.locks import host_lock
from bigskies_ops.pg.lockwait import watching
from bigskies_ops.pg.tools import parse_server_version_num, pg_dump_args, plain_tail_complete, parse_plain_header
from bigskies_ops.hosts.runners import redact_argv, tail

CHUNK = 1 << 20  # bytes read from pg_dump per iteration

TABLES_SQL = """
SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""

#: Tables ``count(*)`` may read: SELECT on the table AND USAGE on its schema (without it
#: the count fails with "permission denied for schema" whatever the table's grants).
READABLE_SQL = """
SELECT n.nspname AS schema, c.relname AS name
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND pg_catalog.has_table_privilege(c.oid, 'SELECT')
  AND pg_catalog.has_schema_privilege(n.oid, 'USAGE')
"""

#: Every (ancestor, descendant) pair of the inheritance trees (partitioning is inheritance
#: too: pg_inherits lists each partition under its parent), with the descendant's relkind.
#: A plain SELECT of pg_inherits sees the transaction's snapshot; pg_partition_tree() and
#: find_all_inheritors() read the catalogs with a fresh catalog snapshot instead, and know
#: nothing of plain (non-partition) inheritance.
INHERITANCE_SQL = """
WITH RECURSIVE tree(root, rel) AS (
    SELECT inhparent, inhrelid FROM pg_catalog.pg_inherits
  UNION
    SELECT t.root, i.inhrelid FROM tree t JOIN pg_catalog.pg_inherits i ON i.inhparent = t.rel
)
SELECT rn.nspname AS schema, r.relname AS name, cn.nspname AS child_schema, c.relname AS child_name,
       c.relkind::text AS child_kind
FROM tree
JOIN pg_catalog.pg_class r ON r.oid = tree.root JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
JOIN pg_catalog.pg_class c ON c.oid = tree.rel JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
WHERE r.relkind IN ('r', 'p')
"""

#: Relations whose storage was replaced (TRUNCATE, VACUUM FULL, a rewriting ALTER TABLE;
#: or dropped) since the snapshot: ``relfilenode`` as the snapshot sees pg_class against
#: the current one (``pg_relation_filenode()`` reads the catalog cache, which is current).
REPLACED_STORAGE_SQL = """
SELECT n.nspname AS schema, c.relname AS name
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'f') AND c.relfilenode <> coalesce(pg_catalog.pg_relation_filenode(c.oid), 0)
"""

MIGRATION_HEAD_SQL = """
SELECT to_regclass('public.schema_migrations') IS NOT NULL AS present
"""


@dataclass
class BackupResult:
    backup: Backup
    manifest: dict
    raw_bytes: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


def migration_head(session_or_sql) -> dict | None:
    """The newest row of ``schema_migrations`` (version, name) or None when absent."""
    if not session_or_sql.query(MIGRATION_HEAD_SQL)[0]["present"]:
        return None
    cols = {r["column_name"] for r in session_or_sql.query(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name = 'schema_migrations'")}
    name_col = "name" if "name" in cols else None
    rows = session_or_sql.query(
        "SELECT version::text AS version" + (", name" if name_col else ", NULL::text AS name")
        + " FROM public.schema_migrations ORDER BY version DESC LIMIT 1")
    if not rows:
        return {"version": None, "name": None, "count": 0}
    cnt = session_or_sql.query("SELECT count(*) AS n FROM public.schema_migrations")[0]["n"]
    return {"version": rows[0]["version"], "name": rows[0]["name"], "count": cnt}


def count_rows_sql(tables: list[dict]) -> pgsql.Composable:
    """One query counting every table exactly: ``SELECT 0 AS i, count(*) FROM s.t UNION ALL ...``."""
    parts = [pgsql.SQL("SELECT {} AS i, count(*) AS n FROM {}").format(lit(i), ident(t["schema"], t["name"]))
             for i, t in enumerate(tables)]
    return pgsql.SQL(" UNION ALL ").join(parts)


#: Tables counted per short transaction (:func:`count_in_snapshot`). Each count holds an
#: ACCESS SHARE lock on its table (and the planner's on its indexes) until COMMIT; 16 is
#: also the number of "fast-path" lock slots a backend has, which use no shared lock table
#: entry at all (PostgreSQL's lock.c, FP_LOCK_SLOTS_PER_BACKEND).
COUNT_BATCH = 16


def count_in_snapshot(session: SqlSession, tables: list[dict], idx: list[int],
                      tree: dict | None = None) -> tuple[dict[int, int], list[int]]:
    """Exact ``count(*)`` of ``tables[i]`` for each ``i`` in ``idx``, in the snapshot that
    ``session`` exported (``session.snapshot``; its transaction must still be open).

    The counts run on a second session, :data:`COUNT_BATCH` tables per transaction,
    each transaction importing the snapshot (``SET TRANSACTION SNAPSHOT``, PostgreSQL
    docs "SET TRANSACTION") and committing, which releases its locks. Counting every
    table in the snapshot's own transaction held one lock per table on top of
    pg_dump's own: with ~3,000 tables and the default ``max_locks_per_transaction``
    the backup failed "out of shared memory" where ``pg_dump -Fc`` alone succeeded.
    Now the counting holds at most one batch's locks at a time.

    A table (or a descendant in ``tree``) whose storage was replaced since the
    snapshot (TRUNCATE, a rewriting ALTER TABLE: not MVCC-safe, docs 13.6) is checked
    inside the batch's transaction, while the count's locks still keep it as counted,
    and left out: such counts would describe the new storage, not the snapshot.

    Returns:
        ``({index: rows}, [indexes whose count was not recorded: storage replaced])``.

    Raises:
        PostgresError: a count failed, or the snapshot is gone.
    """
    counts: dict[int, int] = {}
    lost: list[int] = []
    if not idx:
        return counts, lost
    if not session.snapshot:
        raise ValueError("count_in_snapshot: the session exported no snapshot")
    tree = tree or {}
    key = [(t["schema"], t["name"]) for t in tables]
    with session.sql.session() as counter:
        begin = pgsql.SQL("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}").format(
            lit(session.snapshot))
        for start in range(0, len(idx), COUNT_BATCH):
            batch = idx[start:start + COUNT_BATCH]
            counter.execute(begin)
            got = {batch[r["i"]]: r["n"] for r in counter.query(count_rows_sql([tables[i] for i in batch]))}
            changed = {(r["schema"], r["name"]) for r in counter.query(REPLACED_STORAGE_SQL)}
            counter.execute("COMMIT")
            for i, n in got.items():
                if ({key[i]} | {c for c, _ in tree.get(key[i], ())}) & changed:
                    lost.append(i)
                else:
                    counts[i] = n
    return counts, lost


class _Sink:
    """Compress (plain: gzip container, ISA-L or zlib level N: bigskies_ops.archives.gz) + sha256 + write, chunk by chunk.

    For plain dumps it keeps the first 64 KiB (the header) and the last 8 KiB (the
    completion trailer) of the SQL, and with ``track_copy`` reads the SQL with the
    same statement lexer as the restore (restore.OwnerAclFilter, tracking only): which
    tables have a ``COPY ... FROM stdin`` block (pg_dump's own ``--exclude-table-data``
    semantics) and how many data lines each block holds (:meth:`copy_blocks`), so a
    data row or a function body that looks like a COPY statement is never taken for one.
    """

    def __init__(self, f, fmt: str, level: int, track_copy: bool = False):
        self.f = f
        self.sha = hashlib.sha256()
        self.out_bytes = 0
        self.raw_bytes = 0
        self.comp = gz.compressobj(level) if fmt == "plain" else None
        self.head = b""
        self.tail = b""
        self._copy = None
        if track_copy and fmt == "plain":
            from bigskies_ops.archives.plainsql import OwnerAclFilter
            self._copy = OwnerAclFilter(emit=False, count_rows=True)

    def copy_blocks(self) -> tuple[list[tuple[str, str] | None], list[int]]:
        """End the stream; the ``COPY ... FROM stdin`` blocks in stream order: their tables
        (``(schema, name)``, None for a name the lexer could not read) and their data lines
        (one row per line in COPY's text format). Raises ValueError when not tracked."""
        if self._copy is None:
            raise ValueError("COPY blocks are tracked only for plain dumps with track_copy")
        self._copy.flush()  # the last bytes
        return list(self._copy.copy_tables), list(self._copy.copy_rows)

    def named_roles(self) -> tuple[set[str], set[str]]:
        """The roles the dump's statements name (owners, grantees, ...) and the extensions
        it creates (after :meth:`copy_blocks`)."""
        return set(self._copy.roles), set(self._copy.facts.extensions)

    def _emit(self, data: bytes):
        if data:
            self.sha.update(data)
            self.f.write(data)
            self.out_bytes += len(data)

    def write(self, chunk: bytes):
        self.raw_bytes += len(chunk)
        if self.comp is not None:
            if len(self.head) < 65536:
                self.head += chunk[:65536 - len(self.head)]
            if self._copy is not None:
                self._copy.feed(chunk)
            self.tail = (self.tail + chunk[-8192:])[-8192:]
            self._emit(self.comp.compress(chunk))
        else:
            self._emit(chunk)

    def finish(self):
        if self.comp is not None:
            self._emit(self.comp.flush())


def snapshot_facts(session: SqlSession, access: PostgresAccess, manifest: dict) -> tuple[str, list[dict]]:
    """In ``session`` (not yet in a transaction): open the REPEATABLE READ, READ ONLY
    transaction whose snapshot pg_dump shares (``pg_dump --snapshot``, PostgreSQL docs
    9.27.5 "Snapshot Synchronization Functions"), and record in ``manifest`` what
    describes it: server and pg_dump versions, snapshot id, schema_migrations head.

    Returns:
        ``(snapshot_id, tables)``: the tables (``TABLES_SQL`` rows) seen by the snapshot.
    """
    session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    snap = session.query("SELECT pg_export_snapshot() AS s, current_setting('server_version_num') AS v, "
                         "current_setting('server_encoding') AS e")[0]
    session.snapshot = snap["s"]  # counts import it (count_in_snapshot)
    manifest["server_version"] = str(parse_server_version_num(snap["v"]))
    manifest["server_encoding"] = snap["e"]
    manifest["snapshot"] = snap["s"]
    tables = session.query(TABLES_SQL)
    manifest["schema_migrations_head"] = migration_head(session)
    manifest["database_properties"] = session.query(database_properties_sql())[0]
    # what a restore of it will occupy on the server (restore.check_space), bytes
    manifest["database_bytes"] = session.query("SELECT pg_catalog.pg_database_size(current_database()) AS b")[0]["b"]
    manifest["pg_dump_version"] = str(access.tool_version("pg_dump"))
    return snap["s"], tables


class RowCounter:
    """Count every table's rows exactly in the snapshot's own transaction, on a thread,
    while pg_dump runs (so the counts describe the very snapshot that was dumped).

    Used for custom archives (pg_dump compresses its own output: there is no SQL
    stream to count from) and by ``pull.py``; plain dumps count their own COPY data
    instead (:func:`stream_row_counts`). Only tables the user may read are counted: a
    failing count would abort the transaction and invalidate the snapshot under
    pg_dump, hiding pg_dump's real error.
    """

    def __init__(self, session: SqlSession, tables: list[dict], schema_only: bool, notify=None):
        self.session, self.tables, self.schema_only, self.notify = session, tables, schema_only, notify
        self.counts: dict[int, int] = {}
        self.lost: list[int] = []  # counted, but the storage was replaced since the snapshot
        self._err: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "RowCounter":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            if self.tables and not self.schema_only:
                can = {(r["schema"], r["name"]) for r in self.session.query(READABLE_SQL)}
                idx = [i for i, t in enumerate(self.tables) if (t["schema"], t["name"]) in can]
                if idx:
                    tree = inheritance_tree(self.session.query(INHERITANCE_SQL))
                    counts, self.lost = count_in_snapshot(self.session, self.tables, idx, tree)
                    self.counts.update(counts)
        except BaseException as e:  # reported after the dump, by result()
            self._err.append(e)

    def result(self, manifest: dict) -> dict[int, int]:
        """Wait for the counts: ``{table index: rows}``. Raises the counting error (with
        ``manifest["phase"] = "count"``)."""
        self._thread.join()
        if self._err:
            manifest["phase"] = "count"
            raise self._err[0]
        if self.lost and self.notify:
            key = [(t["schema"], t["name"]) for t in self.tables]
            self.notify(f"warning: no row count recorded for {len(self.lost)} table(s) truncated or rewritten after "
                        f"the dump's snapshot ({_names([key[i] for i in self.lost])}); the archive holds the "
                        f"snapshot's rows")
        return self.counts

    def manifest_tables(self, data_tables: set | None) -> list[dict]:
        """The manifest's ``tables``: rows None for a table whose data is not in the archive."""
        return [{"schema": t["schema"], "name": t["name"],
                 "rows": (self.counts.get(i) if (data_tables is None or (t["schema"], t["name"]) in data_tables)
                          else None)}
                for i, t in enumerate(self.tables)]


NO_DATA, UNKNOWN, RECOUNT = "no data", "unknown", "recount"


@dataclass
class StreamCounts:
    """Row counts of the snapshot's tables as a plain dump's own COPY blocks give them
    (:func:`stream_row_counts`). All lists are indexed like ``tables``."""
    rows: list[int | None]  # exact rows; None: no data in the archive, or in recount/unknown
    recount: list[int] = field(default_factory=list)  # indexes to count with count(*) in the snapshot
    unknown: list[int] = field(default_factory=list)  # indexes left None: unreadable COPY names hide
    #                                                    whether pg_dump dumped their data


def inheritance_tree(rows: list[dict]) -> dict[tuple[str, str], list[tuple[tuple[str, str], str]]]:
    """:data:`INHERITANCE_SQL` rows -> ``{(schema, name): [((schema, name), relkind), ...]}``:
    every descendant (children, grandchildren, ...) of each parent, once."""
    tree: dict[tuple[str, str], list[tuple[tuple[str, str], str]]] = {}
    for r in rows:
        tree.setdefault((r["schema"], r["name"]), []).append(((r["child_schema"], r["child_name"]), r["child_kind"]))
    return tree


def stream_row_counts(tables: list[dict], copy_tables: list[tuple[str, str] | None], copy_rows: list[int],
                      tree: dict[tuple[str, str], list[tuple[tuple[str, str], str]]], *,
                      all_data: bool, schema_only: bool = False) -> StreamCounts:
    """Each table's exact row count from a plain dump's own ``COPY ... FROM stdin`` blocks.

    pg_dump ran in the snapshot we exported (``pg_dump --snapshot``), so the rows of its
    COPY blocks are the rows of that snapshot, and exactly what the archive holds. In
    COPY's text format every row is one line: newlines, carriage returns and
    backslashes inside values are escaped, so a value can neither split a row nor
    end the block early (PostgreSQL docs, COPY "Text Format"); the lexer
    (restore.OwnerAclFilter) counts each block's lines up to its ``\\.`` line. This
    replaces a second ``count(*)`` scan of every table, which competed with pg_dump for
    the same CPUs (measured on a 1.1 GB database, 2 cores: plain backup 8.47 s with
    it, 7.85 s without, bare ``pg_dump > /dev/null`` 6.17 s).

    Rules, per table of ``tables`` (``TABLES_SQL`` rows, ``kind`` its relkind):

    * its own rows: the sum of its COPY blocks' lines (a name may appear twice);
      a partitioned table (``p``) has none (no storage: pg_dump copies its leaves);
    * a parent in ``tree`` (inheritance or partitioning) gets the rows of itself and
      of every descendant, as ``count(*)`` of a parent (and the restore's check of it)
      counts them;
    * a table (or descendant) with data but no stream count -- its COPY name could not
      be read (None in ``copy_tables``: e.g. a name that is not valid UTF-8), or it is
      a foreign partition, whose rows pg_dump never copies -- goes to ``recount``:
      its caller counts it with ``count(*)`` in the still open snapshot transaction;
    * None where the data is not in the archive: ``schema_only``, or a table without a
      COPY block when data was excluded (``all_data`` false); when data was excluded
      AND some COPY names could not be read, a table without a block may be either,
      so it is left None and listed in ``unknown``. A wrong number is never recorded.

    Args:
        tables: the snapshot's tables (dicts with ``schema``, ``name``, optional ``kind``).
        copy_tables: per COPY block in stream order, ``(schema, name)`` or None.
        copy_rows: per COPY block, its data lines (same order, same length).
        tree: :func:`inheritance_tree` of the snapshot.
        all_data: no ``--exclude-table-data`` and not ``--schema-only``: pg_dump copied
            every table's data.
        schema_only: ``--schema-only``: no data at all (every rows None).

    Returns:
        :class:`StreamCounts`.

    Raises:
        ValueError: ``copy_tables`` and ``copy_rows`` differ in length.
    """
    if len(copy_tables) != len(copy_rows):
        raise ValueError(f"{len(copy_tables)} COPY tables but {len(copy_rows)} row counts")
    if schema_only:
        return StreamCounts([None] * len(tables))
    stream: dict[tuple[str, str], int] = {}
    unread = 0
    for t, n in zip(copy_tables, copy_rows):
        if t is None:
            unread += 1
        else:
            stream[t] = stream.get(t, 0) + n

    def own(key: tuple[str, str], kind: str) -> int | str:
        if kind == "p":
            return 0
        if kind != "r":  # a foreign partition: its rows are never in a dump; count(*) reads them
            return RECOUNT
        if key in stream:
            return stream[key]
        if all_data:
            return RECOUNT
        return UNKNOWN if unread else NO_DATA

    out = StreamCounts([])
    for i, t in enumerate(tables):
        key = (t["schema"], t["name"])
        parts = [own(key, t.get("kind") or "r")] + [own(c, k) for c, k in tree.get(key, ())]
        if all(isinstance(p, int) for p in parts):
            out.rows.append(sum(parts))
            continue
        out.rows.append(None)
        if NO_DATA in parts:
            pass
        elif UNKNOWN in parts:
            out.unknown.append(i)
        else:
            out.recount.append(i)
    return out


def plain_manifest_tables(session: SqlSession, tables: list[dict], copy_tables: list[tuple[str, str] | None],
                          copy_rows: list[int], *, all_data: bool, schema_only: bool, notify=print) -> list[dict]:
    """The manifest's ``tables`` for a plain dump: :func:`stream_row_counts` from the dump's
    own COPY blocks, then ``count(*)`` for its ``recount`` tables in ``session``, which must
    still be in the snapshot's REPEATABLE READ transaction: after pg_dump has exited it is
    still the same snapshot.

    Two limits of counting after the dump, both ending in rows None and a warning
    (``notify``), never in a wrong number:

    * tables the user may not read (``READABLE_SQL``) are not counted: pg_dump would
      have failed on their data, and a failing count would end the transaction;
    * once pg_dump has exited its locks are gone, and TRUNCATE or a table-rewriting
      ALTER TABLE committed after the snapshot is not MVCC-safe: an older snapshot then
      sees the new, empty storage (PostgreSQL docs 13.6 "Caveats"). The count holds its
      locks to the end of the transaction; a counted table (or descendant) whose
      storage (``relfilenode``) differs from the snapshot's is not recorded.

    Args:
        session: the snapshot's session (:func:`snapshot_facts`), still in its transaction.
        tables, copy_tables, copy_rows, all_data, schema_only: see :func:`stream_row_counts`.
        notify: callable for one-line warnings.

    Returns:
        ``[{schema, name, rows}]`` in the order of ``tables``.

    Raises:
        PostgresError: the catalog query or a count failed (the session is gone).
    """
    tree = {} if schema_only else inheritance_tree(session.query(INHERITANCE_SQL))
    sc = stream_row_counts(tables, copy_tables, copy_rows, tree, all_data=all_data, schema_only=schema_only)
    rows = list(sc.rows)
    key = [(t["schema"], t["name"]) for t in tables]
    if sc.recount:
        can = {(r["schema"], r["name"]) for r in session.query(READABLE_SQL)}
        idx = [i for i in sc.recount if key[i] in can]
        if len(idx) < len(sc.recount):
            notify(f"warning: no row count recorded for {len(sc.recount) - len(idx)} table(s) this user may not "
                   f"read ({_names([key[i] for i in sc.recount if key[i] not in can])})")
        if idx:
            counts, lost = count_in_snapshot(session, tables, idx, tree)
            for i, n in counts.items():
                rows[i] = n
            if lost:
                notify(f"warning: no row count recorded for {len(lost)} table(s) truncated or rewritten after the "
                       f"dump's snapshot ({_names([key[i] for i in lost])}); the archive holds the snapshot's rows")
    if sc.unknown:
        notify(f"warning: the table name of {copy_tables.count(None)} COPY block(s) in the dump could not be decoded "
               f"and data was excluded: no row count recorded for {len(sc.unknown)} table(s) that may or may not "
               f"have data in it ({_names([key[i] for i in sc.unknown])}); the restore checks only that they exist")
    return [{"schema": t["schema"], "name": t["name"], "rows": rows[i]} for i, t in enumerate(tables)]


def stream_manifest_tables(session: SqlSession, sink, tables: list[dict], *, excl, schema_only: bool,
                           manifest: dict, notify=print) -> list[dict]:
    """The manifest's ``tables`` of a plain dump that streamed through ``sink`` (this
    module's ``_Sink`` or ``pull._StreamSink``, built to count rows): its COPY blocks
    through :func:`plain_manifest_tables` in the snapshot's ``session``; ``manifest``'s
    phase is ``count`` meanwhile."""
    copy_tables, copy_rows = sink.copy_blocks()
    roles, extensions = sink.named_roles()
    manifest["roles"], manifest["extensions"] = sorted(roles), sorted(extensions)  # checked before a restore
    manifest["phase"] = "count"
    return plain_manifest_tables(session, tables, copy_tables, copy_rows, all_data=not (excl or schema_only),
                                 schema_only=schema_only, notify=notify)


def _names(keys: list[tuple[str, str]], n: int = 5) -> str:
    return ", ".join(f"{s}.{t}" for s, t in keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _keep_session_while_idle(session: SqlSession, manifest: dict) -> None:
    """``SET LOCAL idle_in_transaction_session_timeout = 0`` (PostgreSQL >= 9.6): the
    snapshot session idles while pg_dump runs and must still be there to count afterwards."""
    major, _, minor = manifest.get("server_version", "0.0").partition(".")
    if int(major) >= 10 or (int(major) == 9 and int(minor or 0) >= 600):
        session.execute("SET LOCAL idle_in_transaction_session_timeout = 0")


def publish(writer, partial: str, final: str, manifest: dict | None) -> None:
    """Record the DONE ``manifest`` of the finished ``partial``, then rename it to ``final``
    (``manifest`` None: a legacy archive without one, only renamed).

    In this order an archive under its final name always has a DONE manifest (CONTRACTS
    s.2), whatever stops us: a SIGKILL or a lost connection between the two steps leaves
    a DONE manifest whose archive is missing (``Backup.status`` MISSING, never picked as
    ``latest``) next to the complete ``.partial``, which the next run publishes
    (:func:`settle_interrupted`, or a rerun of ``db.pull --existing``). A break-it trial
    found complete archives with STARTED, FAILED, empty or no manifests when the rename
    came first. SIGINT/SIGTERM are held for the step (:func:`bigskies_ops.signals.deferred`).

    Raises:
        StorageError: ``final`` exists already, or the manifest could not be written.
        Interrupted: a signal arrived during the step (raised after it; the backup is DONE).
    """
    from bigskies_ops import signals
    taken = StorageError(f"{final} appeared while we were writing; refusing to overwrite it")
    with signals.deferred():
        if writer.exists(final):  # never a manifest over someone else's archive
            raise taken
        if manifest is not None:
            write_manifest(writer, final, manifest)
        if not writer.link_noreplace(partial, final):
            raise taken


def settle_interrupted(runner, bdir: str, db: str, notify, what: str = "backup", *, orphans: bool = False) -> None:
    """Under the (host, database) lock, deal with what killed runs of ``db`` left in ``bdir``:
    a ``.partial`` whose manifest is DONE and whose size is the manifest's was stopped
    between the two steps of :func:`publish` and is published now (its checks had passed);
    a ``.partial`` beside a STARTED manifest is removed and the manifest becomes FAILED (it
    would be listed as 'started' for ever; break-it trials). A ``.partial`` without a
    manifest is someone else's download (``db.restore --from-offsite`` writes one without
    holding the lock) and is left alone, unless ``orphans`` (a streamed pull's own folder,
    where a rerun starts over)."""
    for n in runner.listdir(bdir):
        if not n.endswith(PARTIAL_SUFFIX):
            continue
        arch = n[: -len(PARTIAL_SUFFIX)]
        p = parse_archive_name(arch)
        if p is None or p.database != db:
            continue
        part, final = posixpath.join(bdir, n), posixpath.join(bdir, arch)
        try:
            m = read_manifest(runner, final)
        except (BigskiesError, OSError, ValueError):
            m = None
        status = (m or {}).get("status")
        if status not in ("DONE", "STARTED") and not (orphans and m is None):
            continue
        try:
            if (status == "DONE" and m.get("bytes") == runner.size(part) and not runner.exists(final)
                    and runner.link_noreplace(part, final)):
                notify(f"published {arch}: a run that was stopped while publishing had finished it")
                continue
            runner.remove(part)
            notify(f"removed {n} left by an interrupted {what}"
                   + (" (a streamed pull starts over)" if what == "pull" else ""))
            if status == "STARTED":
                m.update({"status": "FAILED", "error": f"interrupted: the {what} ended without finishing; "
                          f"its .partial was removed by a later {what}", "phase": m.get("phase")})
                write_manifest(runner, final, m)
        except (BigskiesError, OSError) as e:
            notify(f"warning: could not settle {n}: {e}")


def _done_on_disk(writer, final: str) -> bool:
    try:
        return writer.exists(final) and (read_manifest(writer, final) or {}).get("status") == "DONE"
    except (BigskiesError, OSError, ValueError):
        return False


def record_failure(e: BaseException, manifest: dict, t0: float, writer, final: str, partial: str,
                   proc, session, notify, *, record: bool = True) -> None:
    """After a failed dump: stop pg_dump and the snapshot session, remove the ``.partial``,
    write the manifest as FAILED (when ``record``; a failure to write it is a warning),
    then re-raise ``e`` as the project's error (OSError -> StorageError). A signal held
    by :func:`publish` arrives after the DONE manifest: then only ``e`` is re-raised."""
    if isinstance(e, (Interrupted, KeyboardInterrupt)) and manifest.get("status") == "DONE" \
            and _done_on_disk(writer, final):
        notify(f"the backup had finished before the signal; kept: {final}")
        raise e
    if proc is not None:
        proc.kill()
    if session is not None:
        try:
            session.proc.kill()
        except Exception:
            pass
    try:
        writer.remove(partial)
    except BigskiesError:
        pass
    manifest.update({"status": "FAILED", "error": str(e) or type(e).__name__,
                     "finished_at": iso(utcnow()), "duration_s": round(time.monotonic() - t0, 3)})
    if isinstance(e, CommandError) and e.stderr and "stderr_tail" not in manifest:
        manifest["stderr_tail"] = e.stderr
    try:
        if record:
            write_manifest(writer, final, manifest)
    except BigskiesError as e2:
        notify(f"warning: could not record the FAILED manifest: {e2}")
    if isinstance(e, (KeyboardInterrupt, BigskiesError)):
        raise e
    if isinstance(e, OSError):
        raise StorageError(f"backup failed: {e}") from e
    raise e


def _pump(stream, q: "queue.Queue") -> None:
    """Reader thread: move pg_dump's stdout into a bounded queue so pg_dump never waits
    while we compress (zlib and pipe reads release the GIL: the two overlap)."""
    try:
        while True:
            b = stream.read(CHUNK)
            q.put(b)
            if not b:
                return
    except BaseException as e:  # delivered to the consumer
        q.put(e)


def as_listed(name: str, server_encoding: str | None) -> str:
    """``name`` as it reads in ``pg_restore -l`` output decoded as UTF-8 with replacement:
    pg_dump writes names in the database's encoding (a LATIN1 ``café`` is the byte 0xE9,
    shown as U+FFFD), so the comparison goes through the same loss."""
    codec = PY_CODECS.get((server_encoding or "UTF8").upper(), "utf-8")
    try:
        raw = name.encode(codec, "surrogateescape")
    except (UnicodeEncodeError, LookupError):
        return name
    return raw.decode("utf-8", "replace")


def _custom_data_tables(access: PostgresAccess, path: str, tables: list[dict],
                        server_encoding: str | None = None) -> set[tuple[str, str]] | None:
    """Tables that have a TABLE DATA entry in a custom archive's TOC (``pg_restore -l``)."""
    from bigskies_ops.jobs.restore import toc_listing
    try:
        text = toc_listing(access, path)
    except BigskiesError:
        return None
    return {(t["schema"], t["name"]) for t in tables
            if f" TABLE DATA {as_listed(t['schema'], server_encoding)} {as_listed(t['name'], server_encoding)} "
            in text}


def backup(host: Host, *, fmt: str | None = None, label: str | None = None, kind: str = "manual",
           exclude_table_data: tuple[str, ...] = (), schema_only: bool = False, database: str | None = None,
           progress=None, notify=print, task: str = "db.backup", verbose: bool = False,
           lock_wait_timeout: float | None = None) -> BackupResult:
    """Back up one database of ``host`` into its ``backup.dir``.

    Args:
        host: inventory host (local; SSH hosts stream through the same code).
        fmt: ``plain`` (``.sql.gz``) or ``custom`` (``.dump``); default ``host.backup.format``.
        label: free text stored in the manifest.
        kind: manifest kind (``manual``, ``scheduled``, ``pre-restore``, ...).
        exclude_table_data: pg_dump ``--exclude-table-data`` patterns.
        schema_only: pg_dump ``--schema-only``.
        database: override ``postgres.database``.
        progress: optional callable ``(raw_bytes_read, bytes_written)`` called per chunk.
        notify: callable for one-line messages (stale lock removed, warnings).
        verbose: pg_dump ``--verbose`` (its messages go to stderr and the manifest's
            stderr_tail, never into the archive).
        lock_wait_timeout: seconds the dump may wait for a lock (pg_dump
            ``--lock-wait-timeout``, and our sessions' ``lock_timeout``); default
            ``host.backup.lock_wait_timeout``, None waits. A wait is reported (``notify``)
            within a few seconds, naming the blocking session (:mod:`bigskies_ops.pg.lockwait`).

    Returns:
        :class:`BackupResult` with the published archive and its DONE manifest.

    Raises:
        PostgresError: unreachable server, bad credentials, pg_dump failure (manifest FAILED).
        StorageError: the backup folder cannot be written (full disk; manifest FAILED).
        LockBusyError: another task holds the (host, database) lock.
    """
    if lock_wait_timeout is not None:
        host = with_lock_wait_timeout(host, lock_wait_timeout)
    if host.is_remote:
        from bigskies_ops.jobs.pull import remote_backup
        res = remote_backup(host, fmt=fmt, label=label, kind=kind, exclude_table_data=exclude_table_data,
                            schema_only=schema_only, database=database, progress=progress, notify=notify, task=task,
                            **({"verbose": True} if verbose else {}))
        _size_alert(host, res, notify)
        return res
    fmt = fmt or host.backup.format
    if fmt not in ("plain", "custom"):
        raise BigskiesError(f"--format: expected plain or custom, got {fmt!r}", exit_code=2)
    db = database or host.postgres.database
    level = host.backup.compress_level
    with PostgresAccess(host) as access:
        runner = access.runner
        bdir = host.backup.dir
        runner.makedirs(bdir)
        with host_lock(runner, bdir, host.name, db, task, notify=notify):
            settle_interrupted(runner, bdir, db, notify)
            res = _backup_locked(access, host, bdir, db, fmt, level, label, kind, tuple(exclude_table_data),
                                 schema_only, progress, notify, verbose=verbose)
        _size_alert(host, res, notify, runner)
        return res


def without_space_check(host: Host, skip: bool) -> Host:
    """``host`` with ``backup.space_check`` off when ``skip`` (``--skip-space-check``)."""
    from dataclasses import replace
    return replace(host, backup=replace(host.backup, space_check=False)) if skip else host


def check_backup_space(writer, host: Host, bdir: str, db: str, fmt: str, manifest: dict) -> None:
    """Fail before pg_dump starts when ``bdir`` (on ``writer``'s machine) has less free
    space than the backup will take: the newest DONE backup of ``db`` in that format plus
    20%, or for a first backup the database's size (``manifest["database_bytes"]``, an
    upper bound: compression only shrinks it). Off with ``backup.space_check: false`` or
    ``--skip-space-check``; nothing is checked where free space cannot be read.

    Raises:
        StorageError: too little space (the manifest's phase is ``space``), naming both
            figures and the override.
    """
    if not host.backup.space_check:
        return
    last = latest([b for b in list_backups(writer, bdir) if b.format == fmt], database=db,
                  origin_host=manifest.get("origin_host"), notify=lambda _msg: None)
    if last is not None and last.size:
        need, basis = int(last.size * 1.2), f"the last {fmt} backup ({human_bytes(last.size)}) plus 20%"
    elif manifest.get("database_bytes"):
        need, basis = int(manifest["database_bytes"]), "the database's size (first backup in this format)"
    else:
        return
    free = writer.free_bytes(bdir)
    if free is not None and free < need:
        manifest["phase"] = "space"
        raise StorageError(f"not enough free space for the backup in {bdir}: {human_bytes(free)} free, about "
                           f"{human_bytes(need)} needed ({basis}); free space there, or pass --skip-space-check "
                           f"(backup.space_check: false) if you know it fits")


def with_lock_wait_timeout(host: Host, seconds: float | None) -> Host:
    """``host`` with ``backup.lock_wait_timeout`` set to ``seconds`` (a task's
    ``--lock-wait-timeout`` overrides the inventory's)."""
    from dataclasses import replace
    if seconds is None:
        return host
    if seconds < 0:
        raise BigskiesError(f"--lock-wait-timeout: expected seconds >= 0, got {seconds:g}", exit_code=2)
    return replace(host, backup=replace(host.backup, lock_wait_timeout=float(seconds) or None))


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
    err = PostgresError(f"gave up after {limit:g} s waiting for {what.removeprefix('waiting for ')} "
                        f"(--lock-wait-timeout {limit:g}); nothing was published. Run again when the "
                        f"blocking session has finished, or raise --lock-wait-timeout",
                        argv=getattr(e, "argv", None), returncode=getattr(e, "returncode", None),
                        stderr=getattr(e, "stderr", "") or "")
    return err


def _size_alert(host: Host, res: BackupResult, notify, runner=None) -> None:
    """Warn (and post to the ``alerts.webhook_env`` webhook) when the new archive's size is more
    than ``alerts.size_change_pct`` away from the median of the recent ones (health.py).
    Never fails the backup: a problem here is itself only a warning."""
    from bigskies_ops.jobs.health import size_alert_after_backup
    try:
        w = size_alert_after_backup(host, res.backup, notify=notify, runner=runner)
    except Exception as e:  # noqa: BLE001 - an alert must never turn a good backup into a failure
        notify(f"warning: size check skipped: {e}")
        return
    if w:
        res.warnings.append(w)


def _pick_name(runner, bdir: str, db: str, fmt: str, when) -> str:
    names = set(runner.listdir(bdir))
    n = 0
    while True:
        name = archive_name(db, when, fmt, n)
        if not ({name, name + ".manifest.json", name + PARTIAL_SUFFIX} & names):
            return name
        n += 1


def _backup_locked(access, host, bdir, db, fmt, level, label, kind, excl, schema_only, progress, notify,
                   verbose=False):
    runner = access.runner
    started = utcnow()
    t0 = time.monotonic()
    name = _pick_name(runner, bdir, db, fmt, started)
    final = posixpath.join(bdir, name)
    partial = final + PARTIAL_SUFFIX
    manifest = {
        "schema_version": 1, "tool": f"bigskies-ops {__version__}", "status": "STARTED", "phase": "connect",
        "kind": kind, "label": label, "origin_host": host.name, "control_host": socket.gethostname(),
        "database": db, "archive": name, "format": fmt,
        "compressor": gz.codec_name(level) if fmt == "plain" else "pg_dump custom (zlib)",
        "compress_level": level, "access_mode": host.access_mode,
        "container": host.container.name if host.container else None,
        "started_at": iso(started), "finished_at": None, "duration_s": None,
        "excluded_table_data": list(excl), "schema_only": schema_only,
        "verifications": [], "offsite": [], "pulled_from": None, "pulled_at": None,
    }
    session: SqlSession | None = None
    proc = None
    recorded = False  # STARTED manifest written (only once connected: s.7 "nothing harmed")
    wait_s = host.backup.lock_wait_timeout
    if wait_s:
        manifest["lock_wait_timeout_s"] = wait_s
    watch = watching(access, db, what="backup", timeout_s=wait_s, notify=notify)
    watcher = watch.__enter__()
    try:
        session = access.sql(db).session()
        snapshot, tables = snapshot_facts(session, access, manifest)
        args = pg_dump_args(db, fmt=fmt, compress_level=level, snapshot=snapshot,
                            exclude_table_data=excl, schema_only=schema_only, verbose=verbose,
                            lock_wait_timeout=wait_s)
        # A local custom archive is written by pg_dump itself: a seekable file gets the data
        # offsets in its TOC (pg_restore --jobs and -L then seek instead of scanning), and
        # pg_dump fsyncs it (pg_dump docs, --no-sync). Streams (container, SSH) go through _Sink.
        direct = fmt == "custom" and not access.host.container and not access.host.is_remote
        if direct:
            args = [*args, "--file", partial]
        argv = access.tool_argv("pg_dump", args)
        manifest["argv"] = redact_argv(argv)
        manifest["phase"] = "dump"
        write_manifest(runner, final, manifest)  # STARTED, before pg_dump starts
        recorded = True
        check_backup_space(runner, host, bdir, db, fmt, manifest)
        try:
            f = runner.open_write(partial)  # created with our mode (0640) before pg_dump may open it
        except OSError as e:
            raise StorageError(f"cannot write {partial}: {e.strerror}") from e
        if direct:
            f.close()
            f = open(os.devnull, "wb")
        if fmt == "plain":  # counted from the dump's own COPY data afterwards, in this transaction
            _keep_session_while_idle(session, manifest)
        proc = access.popen_tool("pg_dump", args)
        counter = RowCounter(session, tables, schema_only, notify).start() if fmt != "plain" else None
        sink = _Sink(f, fmt, level, track_copy=fmt == "plain")
        q: queue.Queue = queue.Queue(maxsize=16)
        threading.Thread(target=_pump, args=(proc.stdout, q), daemon=True).start()
        try:
            with f:
                while True:
                    chunk = q.get()
                    if isinstance(chunk, BaseException):
                        raise chunk
                    if not chunk:
                        break
                    sink.write(chunk)
                    if progress:
                        progress(sink.raw_bytes, sink.out_bytes)
                sink.finish()
                f.flush()
                if not direct:
                    _fsync(f)
        except OSError as e:
            manifest["phase"] = "write"
            proc.kill()
            raise StorageError(f"writing {partial} failed: {e.strerror or e}"
                               f"{' (file system full)' if getattr(e, 'errno', 0) == 28 else ''}") from e
        rc = proc.wait()
        if rc != 0:
            manifest["stderr_tail"] = tail(proc.stderr_text())
            err = access.error_for(proc.argv, rc, proc.stderr_text(), "pg_dump")
            if direct and "No space left on device" in proc.stderr_text():
                manifest["phase"] = "write"
                raise StorageError(f"writing {partial} failed: {tail(proc.stderr_text(), 300)} "
                                   f"(file system full)") from err
            raise err
        if direct:  # one read of the fresh file, from the page cache
            from bigskies_ops.archives.hashing import sha256_file
            digest, size = sha256_file(runner, partial)
            if progress:
                progress(size, size)
        else:
            digest, size = sink.sha.hexdigest(), sink.out_bytes
        if fmt == "plain":
            manifest["phase"] = "finalize"
            try:
                header = parse_plain_header(sink.head)
            except ValueError as e:
                raise StorageError(f"pg_dump output is not a plain dump: {e}") from e
            if not plain_tail_complete(sink.tail, header.restrict_key):
                raise StorageError("pg_dump exited 0 but the dump lacks its completion trailer")
            manifest["tables"] = stream_manifest_tables(session, sink, tables, excl=excl,
                                                        schema_only=schema_only, manifest=manifest, notify=notify)
            session.close()
            session = None
            manifest["phase"] = "finalize"
        else:
            counter.result(manifest)
            session.close()
            session = None
            manifest["phase"] = "finalize"
            manifest["tables"] = counter.manifest_tables(_custom_data_tables(access, partial, tables,
                                                                             manifest.get("server_encoding")))
            if direct:  # written here with offsets: its schema reads fast (restore.scan_archive)
                from bigskies_ops.jobs.restore import custom_schema_facts
                manifest.update(custom_schema_facts(access, partial))
        roles_data = None
        if host.backup.roles:  # backup.roles: true -> <archive>.roles.sql beside it (bigskies_ops.archives.roles)
            from bigskies_ops.archives.roles import dump_roles
            manifest["phase"] = "roles"
            roles_data = dump_roles(access)
        if roles_data is not None:
            from bigskies_ops.archives.roles import write_roles
            write_roles(runner, final, roles_data, manifest)
        finished = utcnow()
        manifest.update({
            "status": "DONE", "phase": None, "sha256": digest, "bytes": size,
            "raw_bytes": sink.raw_bytes if fmt == "plain" else None,
            "finished_at": iso(finished), "duration_s": round(time.monotonic() - t0, 3),
            "stderr_tail": tail(proc.stderr_text()) or None,
        })
        watch.__exit__(None, None, None)
        publish(runner, partial, final, manifest)
        return BackupResult(Backup(bdir, name, manifest, size), manifest, sink.raw_bytes,
                            time.monotonic() - t0)
    except BaseException as e:
        watch.__exit__(None, None, None)
        e = lock_timeout_error(e, host, watcher) or e
        # could not even connect (no STARTED manifest yet): leave the backup folder as it was
        record_failure(e, manifest, t0, runner, final, partial, proc, session, notify, record=recorded)


def _fsync(f) -> None:
    import os
    try:
        os.fsync(f.fileno())
    except (OSError, AttributeError, ValueError):
        pass


def recent_backups(host: Host, runner, n: int = 5) -> list[Backup]:
    return list_backups(runner, host.backup.dir)[:n]
