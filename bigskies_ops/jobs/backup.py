"""``db.backup``: dump one database into a new archive with its manifest, on any host.

A local host's archive is written here (:class:`bigskies_ops.jobs.destinations.FileHere`),
an SSH host's in ITS ``backup.dir`` (:class:`~bigskies_ops.jobs.destinations.FileOnHost`:
the dump never leaves the host); both through the one engine, bigskies_ops.jobs.dump,
whose docstring gives the sequence (CONTRACTS.md section 2).
"""
from __future__ import annotations

from dataclasses import replace

from bigskies_ops.errors import BigskiesError
from bigskies_ops.inventory import Host
from bigskies_ops.jobs import notify
from bigskies_ops.jobs.destinations import FileHere, FileOnHost
from bigskies_ops.jobs.dump import (BackupResult, DumpSpec, archive_lock, backup_space_need, check_format, dump,
                                   host_access, pick_name, size_alert, space_refusal)


def backup(host: Host, *, fmt: str | None = None, label: str | None = None, kind: str = "manual",
           exclude_table_data: tuple[str, ...] = (), schema_only: bool = False, database: str | None = None,
           progress=None, task: str = "db.backup", verbose: bool = False,
           lock_wait_timeout: float | None = None) -> BackupResult:
    """Back up one database of ``host`` into its ``backup.dir`` (on that host).

    Args:
        host: inventory host; a local one's archive is written here, an SSH host's on that
            host (the same engine: bigskies_ops.jobs.dump).
        fmt: ``plain`` (``.sql.gz``) or ``custom`` (``.dump``); default ``host.backup.format``.
        label: free text stored in the manifest.
        kind: manifest kind (``manual``, ``scheduled``, ``pre-restore``, ...).
        exclude_table_data: pg_dump ``--exclude-table-data`` patterns.
        schema_only: pg_dump ``--schema-only``.
        database: override ``postgres.database``.
        progress: optional callable ``(raw_bytes_read, bytes_written)`` called per chunk.
        verbose: pg_dump ``--verbose`` (its messages go to stderr and the manifest's
            stderr_tail, never into the archive).
        lock_wait_timeout: seconds the dump may wait for a lock (pg_dump
            ``--lock-wait-timeout``, and our sessions' ``lock_timeout``); default
            ``host.backup.lock_wait_timeout``, None waits. A wait is reported (``report.note``)
            within a few seconds, naming the blocking session (:mod:`bigskies_ops.pg.lockwait`).

    Returns:
        :class:`BackupResult` with the published archive and its DONE manifest.

    Raises:
        UsageError: ``fmt`` is neither plain nor custom.
        PostgresError: unreachable server, bad credentials, pg_dump failure (manifest FAILED).
        StorageError: the backup folder cannot be written (full disk; manifest FAILED).
        LockBusyError: another task holds the (host, database) lock.
        SSHError / HostKeyError / StallError: an SSH host's connection or transfer failed.
    """
    if lock_wait_timeout is not None:
        host = with_lock_wait_timeout(host, lock_wait_timeout)
    fmt = check_format(fmt, host)
    spec = DumpSpec(db=database or host.postgres.database, fmt=fmt, level=host.backup.compress_level, kind=kind,
                    label=label, excl=tuple(exclude_table_data), schema_only=schema_only, verbose=verbose)
    try:
        with host_access(host) as access:
            dest = FileOnHost(access) if host.is_remote else FileHere(access)
            with archive_lock(dest.writer, dest.bdir, host.name, spec.db, task):
                res = dump(dest, spec, progress=progress)
            size_alert(host, res, dest.writer)
            return res
    except BigskiesError as e:  # the FAILED manifest is written; tell the people who asked (notify.on)
        notify.failed(host, "backup_failed", e, task=task, step="backup" if kind in ("manual", "scheduled") else
                      f"backup ({kind})", database=spec.db)
        raise


def plan_backup(host: Host, *, fmt: str | None = None, exclude_table_data: tuple[str, ...] = (),
                schema_only: bool = False, database: str | None = None) -> dict:
    """What ``db.backup`` would do, read-only (``db.backup --check``): the facts the real run
    decides from (:func:`bigskies_ops.jobs.dump.backup_space_need`, ``pick_name``,
    ``backup.lock_wait_timeout``). Sizes in bytes, times UTC ISO-8601.

    Returns:
        ``{"database", "database_bytes", "format", "compress_level", "archive" (the path that
        would be written), "dir", "dir_exists", "estimated_bytes" (the last backup of that
        format, None: first), "estimate_basis", "needed_bytes", "free_bytes", "space_check"
        (on/off), "lock_wait" ({"timeout_s", "policy"}), "exclude_table_data", "schema_only",
        "roles_file", "refusals"}``.

    Raises:
        UsageError: ``fmt`` is neither plain nor custom. PostgresError / SSHError: the
        server or host cannot be reached (the real run would fail the same way).
    """
    import posixpath

    from bigskies_ops.archives.catalog import iso, utcnow
    fmt = check_format(fmt, host)
    db = database or host.postgres.database
    with host_access(host) as access:
        dest = FileOnHost(access) if host.is_remote else FileHere(access)
        size = access.sql(db).value("SELECT pg_catalog.pg_database_size(current_database())")
        now = utcnow()
        name = pick_name(dest.writer, dest.bdir, db, fmt, now)
        need, basis, last = backup_space_need(dest.writer, dest.bdir, db, fmt, host.name, size)
        free, where = dest.writer.free_bytes(dest.bdir), dest.bdir
        while free is None and where not in ("", "/"):  # a folder the run would create: its parent's space
            where = posixpath.dirname(where.rstrip("/")) or "/"
            free = dest.writer.free_bytes(where)
        exists = dest.writer.exists(dest.bdir)
    lw = host.backup.lock_wait_timeout
    refusals = []
    if host.backup.space_check and need is not None and free is not None and free < need:
        refusals.append(space_refusal(dest.bdir, free, need, basis))
    return {"database": db, "database_bytes": size, "format": fmt, "compress_level": host.backup.compress_level,
            "archive": posixpath.join(dest.bdir, name), "dir": dest.bdir, "dir_exists": exists,
            "on_host": host.name if host.is_remote else None, "started_at": iso(now),
            "estimated_bytes": last.size if last is not None else None, "estimate_basis": basis,
            "needed_bytes": need, "free_bytes": free, "space_check": host.backup.space_check,
            "lock_wait": {"timeout_s": lw, "policy": (f"give up after {lw:g} s waiting for a table lock "
                                                      f"(pg_dump --lock-wait-timeout)") if lw else
                          "wait for table locks as long as it takes (a wait is reported within seconds)"},
            "exclude_table_data": list(exclude_table_data), "schema_only": schema_only,
            "roles_file": host.backup.roles, "refusals": refusals}


def without_space_check(host: Host, skip: bool) -> Host:
    """``host`` with ``backup.space_check`` off when ``skip`` (``--skip-space-check``)."""
    return replace(host, backup=replace(host.backup, space_check=False)) if skip else host


def with_lock_wait_timeout(host: Host, seconds: float | None) -> Host:
    """``host`` with ``backup.lock_wait_timeout`` set to ``seconds`` (a task's
    ``--lock-wait-timeout`` overrides the inventory's)."""
    if seconds is None:
        return host
    if seconds < 0:
        raise BigskiesError(f"--lock-wait-timeout: expected seconds >= 0, got {seconds:g}", exit_code=2)
    return replace(host, backup=replace(host.backup, lock_wait_timeout=float(seconds) or None))
