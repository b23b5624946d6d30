"""The swap that puts a restored side database in place of the live one, and the
pre-restore copies it leaves: listing, pruning, and ``db.restore --undo``.

The jobs find their databases by a JSON comment on each (``COMMENT ON DATABASE``), never
by its name: ``{"tag": SIDE_TAG, ...}`` on a side database while it loads (with the pid
and control host of the restore, so a later restore drops it if that process died), and
``{"tag": PRE_RESTORE_TAG, "of", "at", "replaced_by"}`` on a pre-restore copy. The
names themselves come from :mod:`bigskies_ops.jobs.dbnames`.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time

from bigskies_ops import report
from bigskies_ops.archives.catalog import iso, utcnow
from bigskies_ops.archives.locks import host_lock
from bigskies_ops.errors import BigskiesError, PostgresError, SafetyError, StorageError
from bigskies_ops.jobs.coordinators import coordinators_paused, running_coordinators
from bigskies_ops.hosts.runners import pid_alive
from bigskies_ops.inventory import Host
from bigskies_ops.jobs.dbnames import pre_restore_name, unused_name
from bigskies_ops.pg.access import PostgresAccess, Sql, ident, lit, pgsql
from bigskies_ops.pg.admin import drop_db, sessions_on
from bigskies_ops.signals import deferred

PRE_RESTORE_TAG = "bigskies-ops:pre-restore"
SIDE_TAG = "bigskies-ops:restoring"  # a side database being restored (left behind only if the process died)


def sessions_refusal(db: str, sess: list[dict]) -> tuple[str, str]:
    """``(listing, refusal message)`` of the sessions :func:`sessions_on` found on ``db``."""
    listing = "; ".join(f"pid {s['pid']} {s['user']}@{s['client'] or 'local'} {s['application'] or ''}".strip()
                        for s in sess)
    return listing, (f"{len(sess)} session(s) still connected to {db!r}: {listing}. Nothing was "
                     f"changed; stop them or pass --terminate-sessions")


def refuse_if_sessions(maint: Sql, db: str) -> None:
    """Refuse a restore of ``db`` while client sessions are connected to it (checked again
    at the swap, which may terminate them).

    Raises:
        SafetyError: listing each session (pid, user@client, application).
    """
    sess = sessions_on(maint, db)
    if sess:
        raise SafetyError(sessions_refusal(db, sess)[1])


def side_database_label(side: str, of: str, when) -> "pgsql.Composed":
    """The statement that comments ``side`` as the side database of a restore of ``of``
    started at ``when`` (UTC datetime) by this process, for :func:`drop_leftover_side_dbs`
    (run with the CREATE: :func:`bigskies_ops.pg.admin.create_like`'s ``then``)."""
    return pgsql.SQL("COMMENT ON DATABASE {} IS {}").format(ident(side), lit(json.dumps(
        {"tag": SIDE_TAG, "of": of, "pid": os.getpid(), "host": socket.gethostname(), "at": iso(when)})))


def drop_leftover_side_dbs(maint: Sql, db: str) -> None:
    """Drop side databases of ``db`` left by a restore whose process died (same control host,
    pid gone). We hold the (host, database) lock, so no live restore owns them."""
    for r in leftover_side_dbs(maint, db):
        c = r["tag"]
        drop_db(maint, r["name"])
        report.note(f"Dropped {r['name']!r}, left by an interrupted restore (pid {c['pid']}, {c.get('at')})")


def leftover_side_dbs(maint: Sql, db: str) -> list[dict]:
    """Side databases of ``db`` whose restore died on this control host (its pid is gone):
    what :func:`drop_leftover_side_dbs` drops (read-only). ``{"name", "tag", "bytes"}`` each."""
    return [r for r in _tagged(maint, SIDE_TAG, db)
            if r["tag"].get("host") == socket.gethostname() and isinstance(r["tag"].get("pid"), int)
            and not pid_alive(r["tag"]["pid"])]


def _tagged(maint: Sql, tag: str, db: str) -> list[dict]:
    """Databases whose comment carries ``tag`` for ``db``: ``{"name", "tag" (the comment),
    "bytes" (None where this role may not connect)}``."""
    rows = maint.query(
        "SELECT d.datname AS name, pg_catalog.shobj_description(d.oid, 'pg_database') AS comment, "
        # the size only where this role may connect: pg_database_size needs CONNECT
        "CASE WHEN pg_catalog.has_database_privilege(d.oid, 'CONNECT') THEN pg_catalog.pg_database_size(d.oid) "
        "END AS bytes FROM pg_catalog.pg_database d")
    out = []
    for r in rows:
        try:
            c = json.loads(r["comment"] or "")
        except ValueError:
            continue
        # never the live database itself, whatever its comment says (prune drops what this returns)
        if isinstance(c, dict) and c.get("tag") == tag and c.get("of") == db and r["name"] != db:
            out.append({"name": r["name"], "tag": c, "bytes": r["bytes"]})
    return out


def swap(maint: Sql, db: str, side: str, pre: str, terminate: bool, archive: str,
         comment: pgsql.Composable | None = None, what: str = "the restored copy") -> None:
    """In ONE transaction rename ``db`` to ``pre`` (commented as a pre-restore copy
    replaced by ``archive``) and ``side`` to ``db`` (commented with ``comment``; None:
    no comment);
    ``what`` names ``side`` in the note that says so (an undo swaps a pre-restore copy back).

    Sessions connected to ``db`` stop the swap before anything changes, or with
    ``terminate`` are ended first (connections refused meanwhile, allowed again after).

    Raises:
        SafetyError: sessions connected and not ``terminate``, or sessions this role can
            neither see nor end.
        PostgresError: the server refused the renames.
    """
    report.step("swapping")
    comment = pgsql.SQL("NULL") if comment is None else comment  # not a default: psycopg loads on first use
    sess = sessions_on(maint, db)
    if sess and not terminate:
        raise SafetyError(sessions_refusal(db, sess)[1])
    closed = False
    try:
        if sess:
            report.note(f"Terminating {len(sess)} session(s) on {db!r}: {sessions_refusal(db, sess)[0]}")
            closed = True  # before the ALTER: an interrupt may stop our psql after the server ran it
            maint.execute(pgsql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(ident(db)))
            # the sessions listed, never autovacuum: the server cancels it itself on RENAME/DROP,
            # and a non-superuser owner may not signal it ("must be a superuser to terminate ...")
            maint.query(pgsql.SQL("SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
                                  "WHERE datname = {} AND pid <> pg_catalog.pg_backend_pid() "
                                  "AND backend_type IN ('client backend', 'walsender')").format(lit(db)))
            deadline = time.monotonic() + 15
            while sessions_on(maint, db) and time.monotonic() < deadline:
                time.sleep(0.2)
        tag = json.dumps({"tag": PRE_RESTORE_TAG, "of": db, "at": iso(utcnow()), "replaced_by": archive})
        _renames(maint, db, pgsql.SQL(
            "BEGIN; ALTER DATABASE {old} RENAME TO {pre}; ALTER DATABASE {side} RENAME TO {old}; "
            "COMMENT ON DATABASE {pre} IS {c}; COMMENT ON DATABASE {old} IS {own}; COMMIT;").format(
            old=ident(db), pre=ident(pre), side=ident(side), c=lit(tag), own=comment), terminate)
    finally:
        if closed:  # whatever happened meanwhile (an interrupt too): both names take connections again
            with deferred():
                for name in (db, pre):
                    try:
                        maint.execute(pgsql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident(name)))
                    except BigskiesError:
                        pass
    report.note(f"Swapped: {db!r} is {what}; the previous database is kept as {pre!r}")


def _renames(maint: Sql, db: str, script: pgsql.Composable, terminate: bool) -> None:
    """Run the swap's renames; the server's "being accessed by other users" (sessions this
    role could not see: :func:`sessions_on`) becomes the same refusal as a listed session."""
    try:
        maint.execute(script)
    except PostgresError as e:
        if "is being accessed by other users" not in str(e):
            raise
        m = re.search(r"There (?:is|are) (\d+) other session", str(e))
        n = m.group(1) if m else "some"
        raise SafetyError(f"{n} other session(s) still connected to {db!r} that this role may not see or end "
                          f"(sessions of other roles: a member of pg_read_all_stats sees them, of pg_signal_backend "
                          f"ends them). Nothing was changed; stop them"
                          f"{'' if terminate else ' or pass --terminate-sessions'}") from None


def renamed_away(maint: Sql, name: str) -> bool:
    """Whether database ``name`` no longer exists: after an interrupt stopped the psql that
    ran a swap's renames, whether they had committed (False when that cannot be read)."""
    try:
        return not maint.value(pgsql.SQL("SELECT count(*) FROM pg_catalog.pg_database WHERE datname = {}").format(
            lit(name)))
    except BigskiesError:
        return False


def unseen_processes(maint: Sql, db: str) -> int:
    """How many processes on ``db`` this role cannot identify: without pg_read_all_stats,
    pg_stat_activity hides the type and user of another role's process, so each is a
    session of another role or an autovacuum worker (:func:`sessions_on` lists neither)."""
    return int(maint.value(pgsql.SQL(
        "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = {} "
        "AND pid <> pg_catalog.pg_backend_pid() AND backend_type IS NULL").format(lit(db))) or 0)


def refuse_unseen_sessions(maint: Sql, db: str) -> None:
    """Ask the server whether the swap could rename ``db`` now: a rename run and rolled
    back at once. The server counts the sessions this role cannot see (and ends autovacuum
    workers on ``db`` for it, as at the swap), so a restore refuses before its load instead
    of after it. For :func:`unseen_processes` > 0 with no session :func:`sessions_on` sees.

    Raises:
        SafetyError: sessions of other roles are connected (the swap's refusal).
    """
    probe = "bigskies_probe_" + os.urandom(8).hex()  # never committed; unique so no name clashes
    _renames(maint, db, pgsql.SQL("BEGIN; ALTER DATABASE {} RENAME TO {}; ROLLBACK;").format(
        ident(db), ident(probe)), terminate=False)


def pre_restore_copies(maint: Sql, db: str) -> list[dict]:
    """Pre-restore copies of ``db``, newest first (found by their comment, not their name)."""
    out = [{"name": r["name"], "of": db, "at": r["tag"].get("at"), "replaced_by": r["tag"].get("replaced_by"),
            "bytes": r["bytes"]} for r in _tagged(maint, PRE_RESTORE_TAG, db)]
    out.sort(key=lambda r: r["at"] or "", reverse=True)
    return out


def beyond_keep(copies: list[dict], keep: int) -> list[dict]:
    """The pre-restore ``copies`` (newest first, :func:`pre_restore_copies`) beyond the newest
    ``keep`` (``backup.keep_pre_restore``): what :func:`prune_pre_restore` drops."""
    return copies[max(0, keep):]


def prune_pre_restore(maint: Sql, db: str, keep: int, warnings: list[str] | None = None) -> list[str]:
    """Drop the pre-restore copies of ``db`` beyond the newest ``keep``; returns their names.

    With ``warnings`` (after a restore's swap: housekeeping that must not read as a
    failed restore) a copy that cannot be dropped is a warning with the command that
    finishes it; without, its error is raised."""
    dropped = []
    for c in beyond_keep(pre_restore_copies(maint, db), keep):
        try:
            drop_db(maint, c["name"])
        except BigskiesError as e:
            if warnings is None:
                raise
            w = (f"the restore is done, but the old pre-restore copy {c['name']!r} could not be dropped "
                 f"({str(e).splitlines()[0][:200]}); drop it with: psql -d {maint.database} -c "
                 f"'DROP DATABASE {ident(c['name']).as_string()} WITH (FORCE)'")
            report.note(f"warning: {w}")
            warnings.append(w)
            continue
        report.note(f"Dropped old pre-restore copy {c['name']!r} (keep_pre_restore = {keep})")
        dropped.append(c["name"])
    return dropped


def plan_undo(maint: Sql, host: Host, now=None) -> dict:
    """What ``db.restore --undo`` would do, read-only (the one decision for the undo and its
    ``--check``): ``{"database", "restored_from" (the newest pre-restore copy, None: none),
    "previous_kept_as" (the name the current database would get), "copies" (all, newest
    first), "sessions" (connected now)}``."""
    db = host.postgres.database
    copies = pre_restore_copies(maint, db)
    return {"database": db, "restored_from": copies[0]["name"] if copies else None,
            "restored_from_at": copies[0]["at"] if copies else None,
            "previous_kept_as": unused_name(maint, pre_restore_name, db, now or utcnow()),
            "copies": copies, "sessions": sessions_on(maint, db)}


def check_undo(host: Host, *, terminate_sessions: bool = False) -> dict:
    """``db.restore --undo --check``: :func:`plan_undo` plus the coordinators that would be
    stopped and started again (running now) and what the real run would refuse
    (``"refusals"``). Changes nothing."""
    with PostgresAccess(host) as access:
        plan = plan_undo(access.sql(host.postgres.maintenance_db), host)
        refusals = []
        if plan["restored_from"] is None:
            refusals.append(f"no pre-restore copy of {plan['database']!r} on {host.name}")
        try:
            plan["coordinators"] = running_coordinators(access.runner, host)[1]
        except BigskiesError as e:
            plan["coordinators"] = []
            refusals.append(str(e))
        if plan["sessions"] and not terminate_sessions and not host.coordinators:
            refusals.append(sessions_refusal(plan["database"], plan["sessions"])[1])
        plan["terminate_sessions"] = terminate_sessions
        plan["refusals"] = refusals
        return plan


def undo(host: Host, *, terminate_sessions: bool = False, task: str = "db.restore --undo") -> dict:
    """Swap the newest pre-restore copy back in; the current database becomes a
    pre-restore copy itself (so the undo can be undone).

    Raises:
        StorageError: there is no pre-restore copy.
    """
    db = host.postgres.database
    with PostgresAccess(host) as access:
        maint = access.sql(host.postgres.maintenance_db)
        with host_lock(access.runner, host.backup.dir, host.name, db, task):
            plan = plan_undo(maint, host)
            src, pre = plan["restored_from"], plan["previous_kept_as"]
            if src is None:
                raise StorageError(f"no pre-restore copy of {db!r} on {host.name}")
            with coordinators_paused(access.runner, host) as stopped:
                swap(maint, db, src, pre, terminate_sessions, f"undo: {src}",
                     what=f"the pre-restore copy {src!r} again")
            maint.execute(pgsql.SQL("COMMENT ON DATABASE {} IS NULL").format(ident(db)))
            return {"database": db, "restored_from": src, "previous_kept_as": pre, "coordinators": stopped}
