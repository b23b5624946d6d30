"""``psycopg.sql`` imported on first use (:data:`pgsql`), or ahead on a thread
(:func:`preload_psycopg`). Re-exported by :mod:`bigskies_ops.pg.access`."""
from __future__ import annotations

import threading


class _LazySql:
    """``psycopg.sql`` (SQL, Identifier, Literal, Composable, ...), imported on first use:
    importing psycopg costs ~0.1 s, which a task that composes no SQL (``db.pull
    --existing``, ``--help``) should not pay. ``from .access import pgsql`` gives the same
    names as ``from psycopg import sql as pgsql``."""

    def __getattr__(self, name: str):
        from psycopg import sql
        value = getattr(sql, name)
        setattr(self, name, value)  # later lookups are plain attribute reads
        return value


pgsql = _LazySql()


def preload_psycopg() -> None:
    """Import psycopg on a daemon thread: a job that first waits on other work (an archive
    read, a subprocess) no longer pays the import (~0.15 s of CPU) where it composes its
    first SQL (:class:`_LazySql`); that use waits for the thread's import (the import lock)
    and, if it failed, raises the error itself."""
    threading.Thread(target=_import_psycopg, daemon=True, name="psycopg-import").start()


def _import_psycopg() -> None:
    try:
        from psycopg import sql  # noqa: F401
    except Exception:  # noqa: BLE001 - raised again by the first real use
        pass
