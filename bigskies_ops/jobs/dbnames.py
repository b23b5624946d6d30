"""Names of the databases a restore makes next to the live one: the side database it
loads (``<db>_restoring_<UTC stamp>``), the pre-restore copy the swap keeps
(``<db>_pre_<stamp>``) and the restore test's throwaway database (``<db>_verify_<stamp>``).

The names only help a reader: the jobs find their databases by the JSON comment on
them (:mod:`bigskies_ops.jobs.swap`), never by parsing a name.
"""
from __future__ import annotations

import hashlib

from bigskies_ops.pg.access import Sql

MAX_DBNAME = 63  # NAMEDATALEN - 1 bytes (PostgreSQL docs 4.1.1: longer identifiers are truncated)


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
    """The side database a restore of ``database`` loads at ``when`` (a UTC datetime); the
    ``n``-th of that second gets ``_n``. At most 63 bytes (:data:`MAX_DBNAME`)."""
    return _fit(database, "_restoring_" + when.strftime("%Y%m%d%H%M%S") + (f"_{n}" if n > 1 else ""))


def pre_restore_name(database: str, when, n: int = 1) -> str:
    """The name the swap gives the replaced ``database`` (kept as a pre-restore copy); as
    :func:`side_db_name`."""
    return _fit(database, "_pre_" + when.strftime("%Y%m%d%H%M%S") + (f"_{n}" if n > 1 else ""))


def verify_db_name(database: str, when, n: int = 1) -> str:
    """The throwaway database of ``db.verify --restore-test``; as :func:`side_db_name`."""
    return _fit(database, "_verify_" + when.strftime("%Y%m%d%H%M%S") + (f"_{n}" if n > 1 else ""))


def database_names(maint: Sql) -> set[str]:
    """Names of every database of ``maint``'s cluster (``pg_database``)."""
    return {r["datname"] for r in maint.query("SELECT datname FROM pg_catalog.pg_database")}


def unused_name(maint: Sql, make, database: str, when, taken: set[str] | None = None) -> str:
    """``make(database, when)``, or with ``_2``, ``_3``, ... when a database of that name
    exists (restores of one database within the same second; they run one after
    another under the (host, database) lock, so the first free name stays free).
    ``taken``: the names of :func:`database_names` when already read (None: read them)."""
    if taken is None:
        taken = database_names(maint)
    n = 1
    while make(database, when, n) in taken:
        n += 1
    return make(database, when, n)
