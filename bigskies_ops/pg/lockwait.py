"""Lock waits made visible: which of our sessions waits, for what, behind whom.

A backup whose pg_dump (or one of the library's own sessions: snapshot, counts,
status, swap) waits for a lock looks exactly like a hung backup. While such work
runs, :func:`watching` polls ``pg_stat_activity`` and ``pg_blocking_pids()``
(PostgreSQL docs 9.26 "System Information Functions", 28.2.3 "pg_stat_activity")
for the sessions that carry this access's ``application_name``
(``PostgresAccess.app_name``, libpq ``PGAPPNAME``), and for a ``pg_dump`` whose
``backend_xmin`` is that of one of them (it imported our exported snapshot; pg_dump
keeps its own application_name, which monitoring looks for), and reports a wait within a few
seconds, naming the blocking sessions (pid, user, application_name) and the
relation. The watcher's own query reads only catalogs and statistics views: it
takes no lock a user's ``LOCK TABLE`` could block.

How long to wait is bounded elsewhere: ``--lock-wait-timeout`` /
``backup.lock_wait_timeout`` becomes pg_dump's own ``--lock-wait-timeout`` and the
``lock_timeout`` of the library's sessions (:func:`bigskies_ops.pg.access.session_setup`).
"""
from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager

from bigskies_ops import report

FIRST_LOOK_S = 1.0   # a wait shorter than this is not worth a line
POLL_S = 1.5         # then look this often (each look is one query on the watcher's own session)
REPEAT_S = 30.0      # while the same wait lasts, say so again this often
STOP_WAIT_S = 5.0    # stop() lets a look still running finish this long, then kills its psql

WAITS_SQL = """
SELECT w.pid AS pid, round(extract(epoch FROM clock_timestamp() - w.state_change)::numeric, 1)::float AS waited_s,
       coalesce((SELECT string_agg(DISTINCT coalesce(CASE WHEN c.relname IS NOT NULL
                                                          THEN format('%I.%I', n.nspname, c.relname) END,
                                                    l.locktype || CASE WHEN l.locktype = 'object'
                                                        AND l.classid = 'pg_catalog.pg_database'::regclass
                                                        THEN ' (database ' || coalesce((SELECT quote_ident(datname)
                                                             FROM pg_catalog.pg_database WHERE oid = l.objid), '?')
                                                             || ')' ELSE '' END)
                                     || ' (' || l.mode || ')', ', ')
                 FROM pg_catalog.pg_locks l
                 LEFT JOIN pg_catalog.pg_class c ON c.oid = l.relation
                      AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
                 LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE l.pid = w.pid AND NOT l.granted), 'a lock') AS wants,
       coalesce((SELECT json_agg(json_build_object('pid', b.pid, 'user', b.usename,
                                                   'application_name', b.application_name, 'state', b.state))
                 FROM pg_catalog.pg_stat_activity b WHERE b.pid = ANY (pg_catalog.pg_blocking_pids(w.pid))),
                '[]'::json) AS blockers
FROM pg_catalog.pg_stat_activity w
WHERE w.pid <> pg_catalog.pg_backend_pid() AND w.wait_event_type = 'Lock'
  AND (w.application_name = {app}
       OR (w.application_name = 'pg_dump' AND w.datname = current_database() AND w.backend_xmin IS NOT NULL
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity s
                       WHERE s.application_name = {app} AND s.pid <> pg_catalog.pg_backend_pid()
                         AND s.backend_xmin = w.backend_xmin)))
ORDER BY w.pid
"""


def new_app_name() -> str:
    """A unique ``application_name`` for one access's sessions: ``bigskies-ops 1a2b3c4d``
    (pg_dump's: ``pg_dump (bigskies-ops 1a2b3c4d)``, ``PostgresAccess.app_name_for``)."""
    return f"bigskies-ops {uuid.uuid4().hex[:8]}"


def describe_blocker(b: dict) -> str:
    app = b.get("application_name")
    return (f"pid {b.get('pid')} (user {b.get('user') or '?'}, application_name {app!r}"
            + (f", {b['state']}" if b.get("state") else "") + ")")


def describe_wait(w: dict) -> str:
    """One line for one waiting session (a :data:`WAITS_SQL` row)."""
    who = ", ".join(describe_blocker(b) for b in w.get("blockers") or []) or "another session"
    return f"waiting for a lock on {w['wants']}, held by {who}"


class Watcher:
    """Polls for lock waits of the sessions named ``access.app_name`` on a daemon thread,
    which reports (:func:`bigskies_ops.report.note`) where the code that made the watcher does.

    The looks share one psql session of the watcher's own (:class:`bigskies_ops.pg.access.SqlSession`,
    autocommit: every look sees fresh statistics, which PostgreSQL keeps for a whole
    transaction), opened at the first look: a psql per look cost, on an SSH host, a channel,
    the login shell's start and a connection every :data:`POLL_S` s (issue 21 traced 0.3 s
    of CPU per look on a host whose shell sources a heavy ``.bashrc``, during the dump)."""

    def __init__(self, access, database: str, what: str = "", timeout_s: float | None = None):
        self.access, self.database, self.what = access, database, what
        self.timeout_s = timeout_s
        self.last: list[dict] = []      # the last waits seen (for the error after a lock timeout)
        self.seen_wait = False
        self._stop = threading.Event()
        self._lock = threading.Lock()   # the session: one look at a time, and stop() after it
        self._session = None
        self._thread = threading.Thread(target=report.carried(self._run), daemon=True, name="bigskies-lockwait")

    def start(self) -> "Watcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop looking and close the session (a look still running after
        :data:`STOP_WAIT_S` s has its psql killed). Returns None."""
        self._stop.set()
        if self._lock.acquire(timeout=STOP_WAIT_S):
            try:
                self._close()
            finally:
                self._lock.release()
            return
        session = self._session
        if session is not None:
            try:
                session.proc.kill()  # its look ends with an error, which it ignores
            except Exception:  # noqa: BLE001 - stopping must never fail the work it watched
                pass

    def _close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            except Exception:  # noqa: BLE001
                pass

    def _look(self) -> list[dict] | None:
        """The waits now (:data:`WAITS_SQL` rows), or None when they could not be read. A
        session that has ended since the last look (``idle_session_timeout``, terminated)
        is replaced at once and asked again: its failure says nothing about the waits."""
        app = "'" + self.access.app_name.replace("'", "''") + "'"  # standard_conforming_strings: on
        with self._lock:
            for _attempt in range(2):
                if self._stop.is_set():
                    return None
                try:
                    if self._session is None:
                        self._session = self.access.sql(self.database).session()
                    return self._session.query(WAITS_SQL.replace("{app}", app))
                except Exception:  # noqa: BLE001 - watching must never break the work it watches
                    self._close()
            return None

    def _run(self) -> None:
        if self._stop.wait(FIRST_LOOK_S):
            return
        said: dict[str, float] = {}
        while not self._stop.is_set():
            try:
                waits = self._look()
            except Exception:  # noqa: BLE001 - watching must never break the work it watches
                waits = None
            if self._stop.is_set():
                return
            now = time.monotonic()
            if waits:
                self.last = waits
                self.seen_wait = True
                for w in waits:
                    key = f"{w['pid']}|{w['wants']}|{sorted(b.get('pid') or 0 for b in w.get('blockers') or [])}"
                    if key not in said or now - said[key] >= REPEAT_S:
                        again = key in said
                        said[key] = now
                        bound = (f"; gives up after {self.timeout_s:g} s (--lock-wait-timeout)" if self.timeout_s
                                 else "; no limit (--lock-wait-timeout SECONDS sets one)")
                        self._say(f"{self.what + ': ' if self.what else ''}{'still ' if again else ''}"
                                  f"{describe_wait(w)} (waited {w.get('waited_s') or 0:g} s, session pid {w['pid']})"
                                  f"{bound}")
            elif said and waits is not None:  # None: not known, neither a new wait nor the end of one
                self._say(f"{self.what + ': ' if self.what else ''}lock wait over, going on")
                said.clear()
            if self._stop.wait(POLL_S):
                return

    def _say(self, text: str) -> None:
        try:
            report.note(text)
        except Exception:  # noqa: BLE001
            pass

    def blocker_text(self) -> str:
        """The last seen wait, for an error message ('' when none was seen)."""
        return "; ".join(describe_wait(w) for w in self.last)


@contextmanager
def watching(access, database: str, *, what: str = "", timeout_s: float | None = None):
    """Report lock waits of ``access``'s sessions on ``database`` while the block runs.

    Does nothing when ``access.app_name`` is unset, or when there is nobody to tell (no
    note sink in effect, :func:`bigskies_ops.report.sinks`) and no lock-wait timeout whose
    error should name the blocker. Yields the :class:`Watcher` (or None)."""
    if not getattr(access, "app_name", None) or (report.sinks().note is None and not timeout_s):
        yield None
        return
    w = Watcher(access, database, what, timeout_s).start()
    try:
        yield w
    finally:
        w.stop()
