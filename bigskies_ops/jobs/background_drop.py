"""A restore's housekeeping, off its critical path: dropping the pre-restore copies beyond
``backup.keep_pre_restore`` in a process of its own that outlives the task.

Why: in PostgreSQL 15 ``DROP DATABASE`` forces a checkpoint and waits for it
(``dropdb()`` in src/backend/commands/dbcommands.c), and right after a restore that
checkpoint writes out the whole load: 2.5-5 s for the benchmark's 1 GB, a third of what
``pg_restore -j 2`` itself takes (issue 21). The restore is complete once the names are
swapped; the copies it leaves beyond ``keep`` can go a few seconds later.

How it stays safe:

* The copies dropped are only those beyond ``keep`` AFTER the swap (never the one the
  swap just made while ``keep`` >= 1), so ``db.restore --undo`` always finds its copy.
* The (host, database) lock (bigskies_ops.archives.locks) is handed to the process: it
  holds it until it is done, and the next task on that database waits for it
  (:data:`TASK`, :func:`bigskies_ops.archives.locks.host_lock`) instead of failing.
  A crashed process leaves a stale lock, replaced as any other.
* It runs in its own session: a Ctrl-C or a closed terminal after the restore does not
  interrupt a ``DROP DATABASE`` half way.
* What it did is written to ``<backup.dir>/.background-drop-<database>.json``; the next
  restore of that database prints its warnings (a copy that could not be dropped, with
  the command that drops it) and drops what is still beyond ``keep``.
* No secret crosses argv: the host's settings reach the process on its stdin, the
  passwords stay in the environment it inherits (CONTRACTS.md s.5).
"""
from __future__ import annotations

import json
import os
import pickle
import posixpath
import socket
import subprocess
import sys
import threading

from bigskies_ops import report
from bigskies_ops.archives.catalog import encode_dbname, iso, utcnow
from bigskies_ops.archives.locks import BACKGROUND_TASK, lock_path
from bigskies_ops.inventory import Host

#: the task name the handed-over lock carries; host_lock waits for a lock held by it
TASK = BACKGROUND_TASK


def outcome_path(backup_dir: str, database: str) -> str:
    """Where the process records what it did (JSON: at, dropped, warnings)."""
    return posixpath.join(backup_dir, f".background-drop-{encode_dbname(database)}.json")


def drop_copies_later(runner, host: Host, database: str, keep: int, names: list[str]) -> int | None:
    """Start the process that drops ``database``'s pre-restore copies beyond ``keep`` (the
    caller saw ``names``) and hand it the (host, database) lock the caller holds.

    Args:
        runner: the runner of ``host`` (the lock file is in its ``backup.dir``).

    Returns:
        The process id, or None when it could not be started (the caller then drops the
        copies itself: :func:`bigskies_ops.jobs.swap.prune_pre_restore`).
    """
    try:
        proc = subprocess.Popen([sys.executable, "-m", "bigskies_ops.jobs.background_drop"],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
    except OSError as e:
        report.note(f"could not start the housekeeping process ({e}); dropping the old copies now")
        return None
    held = {"pid": proc.pid, "host": socket.gethostname(), "task": TASK, "since": iso(utcnow()),
            "target": host.name, "database": database}
    try:
        runner.write_atomic(lock_path(host.backup.dir, database), json.dumps(held).encode(), mode=0o640)
        proc.stdin.write(pickle.dumps({"host": host, "database": database, "keep": keep}))
        proc.stdin.close()
    except Exception as e:  # noqa: BLE001 - any failure: the caller drops the copies itself
        proc.kill()
        proc.wait()
        report.note(f"could not hand the old copies to the housekeeping process ({e}); dropping them now")
        return None
    threading.Thread(target=proc.wait, daemon=True, name="reap-drop").start()  # no zombie that looks alive
    report.note(f"Dropping old pre-restore cop{'ies' if len(names) > 1 else 'y'} "
                f"{', '.join(repr(n) for n in names)} in the background (keep_pre_restore = {keep}; pid "
                f"{proc.pid}; the next task on {database!r} waits for it)")
    return proc.pid


def report_previous(runner, backup_dir: str, database: str) -> None:
    """Print the warnings the last housekeeping of ``database`` left (then forget them)."""
    path = outcome_path(backup_dir, database)
    try:
        done = json.loads(runner.read_bytes(path))
    except (OSError, ValueError):
        return
    for w in done.get("warnings") or []:
        report.note(f"warning: after the restore of {done.get('at', '?')}: {w}")
    try:
        runner.remove(path)
    except OSError:
        pass


def _run(host: Host, database: str, keep: int) -> None:
    from bigskies_ops.jobs.swap import prune_pre_restore
    from bigskies_ops.pg.access import PostgresAccess
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    done = {"at": iso(utcnow()), "dropped": [], "warnings": []}
    access = PostgresAccess(host)
    try:
        try:
            maint = access.sql(host.postgres.maintenance_db)
            done["dropped"] = prune_pre_restore(maint, database, keep, warnings=done["warnings"])
        except Exception as e:  # noqa: BLE001 - recorded for the next restore to print
            done["warnings"].append(f"the old pre-restore copies of {database!r} were not dropped "
                                    f"({str(e).splitlines()[0][:300] if str(e) else type(e).__name__}); the "
                                    f"next restore drops them")
        if done["warnings"]:
            try:
                access.runner.write_atomic(outcome_path(host.backup.dir, database),
                                           json.dumps(done).encode(), mode=0o640)
            except Exception:  # noqa: BLE001 - nowhere left to say it
                pass
    finally:
        path = lock_path(host.backup.dir, database)
        try:
            cur = json.loads(access.runner.read_bytes(path))
            if cur.get("pid") == me["pid"] and cur.get("host") == me["host"]:
                access.runner.remove(path)
        except Exception:  # noqa: BLE001 - a lock left behind is stale once this pid is gone
            pass
        access.close()


def main() -> int:
    """Entry of the process :func:`drop_copies_later` starts: its order arrives on stdin."""
    try:
        order = pickle.load(sys.stdin.buffer)  # noqa: S301 - written by our own parent process
    except Exception:  # noqa: BLE001 - the parent gave up (it drops the copies itself)
        return 1
    _run(order["host"], order["database"], order["keep"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
