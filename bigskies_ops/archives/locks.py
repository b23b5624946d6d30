"""One lock per (host, database) for every task that changes something (CONTRACTS.md s.4).

The lock is a small JSON file created with O_EXCL in the host's backup folder
(``.lock-<database>``), holding who took it: pid, control host, task, UTC time.
A lock whose pid is gone on the machine that took it is stale and is replaced
(and we say so). Works the same through the SSH runner (SFTP exclusive create).
"""
from __future__ import annotations

import json
import os
import posixpath
import socket
import time
from contextlib import contextmanager

from bigskies_ops import report
from bigskies_ops.archives.catalog import encode_dbname, iso, utcnow
from bigskies_ops.errors import LockBusyError
from bigskies_ops.hosts.runners import pid_alive as _pid_alive


#: the task a restore hands its lock to (bigskies_ops.jobs.background_drop.TASK): another task
#: waits up to BACKGROUND_WAIT seconds for it instead of failing
BACKGROUND_TASK = "db.restore housekeeping (dropping old pre-restore copies)"
BACKGROUND_WAIT = 600.0


def lock_path(backup_dir: str, database: str) -> str:
    return posixpath.join(backup_dir, f".lock-{encode_dbname(database)}")


def _read_lock(runner, path: str) -> dict | None:
    """The lock's JSON, {} when it vanished meanwhile, None when empty or not JSON."""
    try:
        raw = runner.read_bytes(path)
    except OSError:
        return {}
    try:
        held = json.loads(raw)
    except ValueError:
        return None
    return held if isinstance(held, dict) else None


@contextmanager
def host_lock(runner, backup_dir: str, host_name: str, database: str, task: str):
    """Hold the (host, database) lock for the ``with`` body. A lock a restore handed to its
    background drop of old copies (:data:`BACKGROUND_TASK`) is waited for, up to
    :data:`BACKGROUND_WAIT` seconds.

    Raises:
        LockBusyError: another live process holds it (message names pid, host, task, since).
    """
    runner.makedirs(backup_dir)
    path = lock_path(backup_dir, database)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "task": task, "since": iso(utcnow()),
          "target": host_name, "database": database}
    data = json.dumps(me).encode()
    tries, waited_since = 0, None
    while tries < 3:
        tries += 1
        if runner.create_exclusive(path, data):
            break
        held = _read_lock(runner, path)
        if held is None:  # empty or unreadable a second later: left by a crash while it was written
            time.sleep(1.0)
            held = _read_lock(runner, path)
            if held is None:
                report.note(f"removed unreadable lock file {path} (left by a crash while it was being written)")
                runner.remove(path)
                continue
        if not held:  # released meanwhile: try again
            continue
        if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int) \
                and not _pid_alive(held["pid"]):
            report.note(f"removed stale lock of pid {held['pid']} ({held.get('task')}, since {held.get('since')})")
            runner.remove(path)
            continue
        if held.get("task") == BACKGROUND_TASK and (waited_since is None
                                                    or time.monotonic() - waited_since < BACKGROUND_WAIT):
            # a restore's old copies being dropped (bigskies_ops.jobs.background_drop): seconds, not a conflict
            if waited_since is None:
                waited_since = time.monotonic()
                report.note(f"waiting for pid {held.get('pid', '?')} to finish dropping the old pre-restore "
                            f"copies of {database!r} (a restore's housekeeping)")
            time.sleep(0.2)
            tries -= 1
            continue
        raise LockBusyError(
            f"{database!r} on {host_name} is locked by pid {held.get('pid', '?')} on {held.get('host', '?')} "
            f"(task {held.get('task', '?')}, since {held.get('since', '?')}); wait for it to finish"
            f" or remove {path} if that process is gone")
    else:
        raise LockBusyError(f"could not take lock {path}")
    try:
        yield
    finally:
        try:
            cur = json.loads(runner.read_bytes(path))
            if cur.get("pid") == me["pid"] and cur.get("host") == me["host"]:
                runner.remove(path)
        except (OSError, ValueError):
            pass
