"""Row counts of an archive: counted in the dump's own snapshot, or from the dump's stream.

The manifest records them; a restore checks the loaded tables against them.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from bigskies_ops import report
from bigskies_ops.pg.access import PostgresAccess, SqlSession, ident, lit, pgsql
from bigskies_ops.pg.admin import DATABASE_LOCALE_SQL, database_properties_sql, migration_head
from bigskies_ops.pg.tools import parse_server_version_num

NO_DATA, UNKNOWN, RECOUNT = "no data", "unknown", "recount"


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
    manifest["database_locale"] = session.query(DATABASE_LOCALE_SQL)[0]
    # what a restore of it will occupy on the server (pg.admin.check_space), bytes
    manifest["database_bytes"] = session.query("SELECT pg_catalog.pg_database_size(current_database()) AS b")[0]["b"]
    manifest["pg_dump_version"] = str(access.tool_version("pg_dump"))
    return snap["s"], tables


class RowCounter:
    """Count every table's rows exactly in the snapshot's own transaction, on a thread,
    while pg_dump runs (so the counts describe the very snapshot that was dumped).

    Used for custom archives (pg_dump compresses its own output: there is no SQL
    stream to count from) and for plain dumps whose SQL never passes through this process
    (written on an SSH host); other plain dumps count their own COPY data
    instead (:func:`stream_row_counts`). Only tables the user may read are counted: a
    failing count would abort the transaction and invalidate the snapshot under
    pg_dump, hiding pg_dump's real error.
    """

    def __init__(self, session: SqlSession, tables: list[dict], schema_only: bool):
        self.session, self.tables, self.schema_only = session, tables, schema_only
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
        if self.lost:
            key = [(t["schema"], t["name"]) for t in self.tables]
            report.note(f"warning: no row count recorded for {len(self.lost)} table(s) truncated or rewritten after "
                        f"the dump's snapshot ({manifest_names([key[i] for i in self.lost])}); the archive holds the "
                        f"snapshot's rows")
        return self.counts

    def manifest_tables(self, data_tables: set | None) -> list[dict]:
        """The manifest's ``tables``: rows None for a table whose data is not in the archive."""
        return [{"schema": t["schema"], "name": t["name"],
                 "rows": (self.counts.get(i) if (data_tables is None or (t["schema"], t["name"]) in data_tables)
                          else None)}
                for i, t in enumerate(self.tables)]


@dataclass
class StreamCounts:
    """Row counts of the snapshot's tables as a plain dump's own COPY blocks give them
    (:func:`stream_row_counts`). All lists are indexed like ``tables``."""
    rows: list[int | None]  # exact rows; None: no data in the archive, or in recount/unknown
    recount: list[int] = field(default_factory=list)  # indexes to count with count(*) in the snapshot
    unknown: list[int] = field(default_factory=list)  # indexes left None: unreadable COPY names hide


def inheritance_tree(rows: list[dict]) -> dict[tuple[str, str], list[tuple[tuple[str, str], str]]]:
    """:data:`INHERITANCE_SQL` rows -> ``{(schema, name): [((schema, name), relkind), ...]}``:
    every descendant (children, grandchildren, ...) of each parent, once."""
    tree: dict[tuple[str, str], list[tuple[tuple[str, str], str]]] = {}
    for r in rows:
        tree.setdefault((r["schema"], r["name"]), []).append(((r["child_schema"], r["child_name"]), r["child_kind"]))
    return tree


def _own_rows(stream: dict[tuple[str, str], int], key: tuple[str, str], kind: str, all_data: bool,
              unread: int) -> int | str:
    """A table's own rows in the stream (its COPY lines), or why there is no number:
    :data:`RECOUNT`, :data:`UNKNOWN` or :data:`NO_DATA` (rules: :func:`stream_row_counts`)."""
    if kind == "p":
        return 0
    if kind != "r":  # a foreign partition: its rows are never in a dump; count(*) reads them
        return RECOUNT
    if key in stream:
        return stream[key]
    if all_data:
        return RECOUNT
    return UNKNOWN if unread else NO_DATA


def stream_row_counts(tables: list[dict], copy_tables: list[tuple[str, str] | None], copy_rows: list[int],
                      tree: dict[tuple[str, str], list[tuple[tuple[str, str], str]]], *,
                      all_data: bool, schema_only: bool = False) -> StreamCounts:
    """Each table's exact row count from a plain dump's own ``COPY ... FROM stdin`` blocks.

    pg_dump ran in the snapshot we exported (``pg_dump --snapshot``), so the rows of its
    COPY blocks are the rows of that snapshot, and exactly what the archive holds. In
    COPY's text format every row is one line: newlines, carriage returns and
    backslashes inside values are escaped, so a value can neither split a row nor
    end the block early (PostgreSQL docs, COPY "Text Format"); the lexer
    (archives.plainsql.OwnerAclFilter) counts each block's lines up to its ``\\.`` line. This
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

    out = StreamCounts([])
    for i, t in enumerate(tables):
        key = (t["schema"], t["name"])
        parts = [_own_rows(stream, c, k, all_data, unread) for c, k in [(key, t.get("kind") or "r"), *tree.get(key, ())]]
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
                          copy_rows: list[int], *, all_data: bool, schema_only: bool) -> list[dict]:
    """The manifest's ``tables`` for a plain dump: :func:`stream_row_counts` from the dump's
    own COPY blocks, then ``count(*)`` for its ``recount`` tables in ``session``, which must
    still be in the snapshot's REPEATABLE READ transaction: after pg_dump has exited it is
    still the same snapshot.

    Two limits of counting after the dump, both ending in rows None and a warning
    (``report.note``), never in a wrong number:

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
            report.note(f"warning: no row count recorded for {len(sc.recount) - len(idx)} table(s) this user may not "
                        f"read ({manifest_names([key[i] for i in sc.recount if key[i] not in can])})")
        if idx:
            counts, lost = count_in_snapshot(session, tables, idx, tree)
            for i, n in counts.items():
                rows[i] = n
            if lost:
                report.note(f"warning: no row count recorded for {len(lost)} table(s) truncated or rewritten after "
                            f"the dump's snapshot ({manifest_names([key[i] for i in lost])}); the archive holds the "
                            f"snapshot's rows")
    if sc.unknown:
        report.note(f"warning: the table name of {copy_tables.count(None)} COPY block(s) in the dump could not be "
                    f"decoded and data was excluded: no row count recorded for {len(sc.unknown)} table(s) that may or "
                    f"may not have data in it ({manifest_names([key[i] for i in sc.unknown])}); the restore checks "
                    f"only that they exist")
    return [{"schema": t["schema"], "name": t["name"], "rows": rows[i]} for i, t in enumerate(tables)]


def stream_manifest_tables(session: SqlSession, sink, tables: list[dict], *, excl, schema_only: bool,
                           manifest: dict) -> list[dict]:
    """The manifest's ``tables`` of a plain dump that streamed through ``sink`` (a
    bigskies_ops.jobs.destinations.SqlTap that tracked its COPY blocks): its COPY blocks
    through :func:`plain_manifest_tables` in the snapshot's ``session``; ``manifest``'s
    phase is ``count`` meanwhile."""
    copy_tables, copy_rows = sink.copy_blocks()
    roles, extensions = sink.named_roles()
    manifest["roles"], manifest["extensions"] = sorted(roles), sorted(extensions)  # checked before a restore
    manifest["phase"] = "count"
    return plain_manifest_tables(session, tables, copy_tables, copy_rows, all_data=not (excl or schema_only),
                                 schema_only=schema_only)


def manifest_names(keys: list[tuple[str, str]], n: int = 5) -> str:
    return ", ".join(f"{s}.{t}" for s, t in keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
