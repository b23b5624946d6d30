"""``db.verify``: prove a backup is whole, not only that gzip can read it.

Checks (the archive checks are bigskies_ops.archives.integrity.check_archive's, run in full):

* sha256 and size against the manifest;
* plain (``.sql.gz``): the whole gzip stream decompresses, and the SQL ends with
  pg_dump's completion trailer followed only by the ``\\unrestrict`` line that
  matches the file's ``\\restrict`` key (a dump cut short and re-gzipped passes gzip);
* custom (``.dump``): a full read with ``pg_restore -f /dev/null`` (a TOC listing
  alone passes a truncated archive);
* ``restore_test``: restored into a throwaway database on the host's server whose
  per-table row counts must equal the manifest's; the database is dropped in
  every outcome (also on Ctrl-C and SIGTERM).

The result is appended to the manifest's ``verifications`` (atomic rewrite) and
shown by ``db.list``. ``adopt`` writes a manifest for a legacy (seed-era) file
that passed its checks, so it becomes an ordinary, verifiable backup.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from bigskies_ops import __version__, report
from bigskies_ops.pg.access import PostgresAccess
from bigskies_ops.archives.catalog import Backup, MANIFEST_SUFFIX, PARTIAL_SUFFIX, iso, latest, list_backups, read_manifest, utcnow, \
    write_manifest
from bigskies_ops.signals import interrupts_unwind
from bigskies_ops.errors import ArchiveError, BigskiesError, PostgresError, StorageError, UsageError
from bigskies_ops.inventory import Host
from bigskies_ops.archives.locks import host_lock
from bigskies_ops.archives.counts import TABLES_SQL
from bigskies_ops.archives.integrity import check_archive, scan_archive
from bigskies_ops.jobs.dbnames import unused_name, verify_db_name
from bigskies_ops.jobs.sideload import load_archive, role_policy, table_counts, verify_against_manifest
from bigskies_ops.pg.admin import create_like, db_info, drop_db


@dataclass
class VerifyResult:
    path: str
    name: str
    ok: bool
    checks: list[str]
    error: str | None = None
    restore_test: dict | None = None
    recorded: bool = False
    adopted: bool = False
    legacy: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"name": self.name, "path": self.path, "ok": self.ok, "checks": self.checks, "error": self.error,
                "restore_test": self.restore_test, "recorded": self.recorded, "adopted": self.adopted,
                "legacy": self.legacy, "notes": self.notes}


def _sigterm_unwinds():
    """SIGTERM during a restore test unwinds through ``finally`` so the throwaway database is dropped."""
    return interrupts_unwind()


def select(host: Host, runner, spec: str | None, all_: bool, database: str | None = None) -> list[Backup]:
    """Which backups to verify: ``--all`` (every DONE and legacy archive of the folder and its
    pulled sub-folders), ``latest`` (default) or a file (path, or name in the backup folder)."""
    backups = list_backups(runner, host.backup.dir, include_all=True)
    if all_:
        if spec not in (None, "", "latest"):
            raise UsageError("pass either FILE or --all, not both")
        return [b for b in backups if b.status in ("DONE", "LEGACY")]
    db = database or host.postgres.database
    if spec in (None, "", "latest"):
        b = latest(backups, database=db, origin_host=host.name)
        if b is None:
            raise ArchiveError(f"no DONE backup of {db!r} from {host.name} in {host.backup.dir}")
        return [b]
    if spec.endswith(PARTIAL_SUFFIX):
        raise ArchiveError(f"{spec}: an in-progress (.partial) file is not a backup")
    for b in backups:
        shown = f"{b.origin_dir}/{b.name}" if b.origin_dir else b.name  # as db.list prints it: prod/NAME
        if spec in (b.name, b.path, shown) or os.path.abspath(spec) == os.path.abspath(b.path):
            return [b]
    if not host.is_remote and os.path.exists(spec):  # an archive outside the backup folder
        d, n = os.path.split(os.path.abspath(spec))
        man = read_manifest(runner, spec)
        return [Backup(d, n, man, os.path.getsize(spec))]
    raise ArchiveError(f"{spec}: no such backup (looked in {host.backup.dir})")


def _checks_for(fmt: str, manifest: dict | None) -> list[str]:
    c = []
    if manifest and manifest.get("sha256"):
        c += ["sha256", "size"]
    if fmt == "plain":
        c += ["gzip stream", "completion trailer"]
    elif fmt == "custom":
        c += ["pg_restore --list", "pg_restore full read"]
    return c


def verify_backup(host: Host, b: Backup, *, restore_test: bool = False, adopt: bool = False,
                  task: str = "db.verify", progress=None) -> VerifyResult:
    """Verify one archive (on the control machine) and record the result in its manifest.

    Args:
        host: the host whose server runs the restore test and whose tools read the archive.
        b: the backup (see :func:`select`).
        restore_test: also restore into a throwaway database and compare row counts.
        adopt: for a legacy file that passes, write a manifest (kind ``scheduled``,
            ``adopted: true``, time from its name with the zone unknown).
        progress: optional ``(bytes)`` callback: the bytes of the archive read so far by
            the checks (hashing, then the full read) against its size; the restore test's
            load is a new transfer (:func:`bigskies_ops.jobs.sideload.load_archive`).

    Returns:
        :class:`VerifyResult` (``ok`` False carries the reason in ``error``).

    Raises:
        UsageError: ``adopt`` on a file that already has a manifest.
    """
    if adopt and not b.legacy:
        raise UsageError(f"{b.name} already has a manifest; --adopt is for seed-era files without one")
    res = VerifyResult(b.path, b.name, False, [], legacy=b.legacy)
    with PostgresAccess(host) as access:
        staged = None
        try:
            path = b.path
            if host.is_remote:  # the checks read a local copy; the host's own tools read it over SSH
                staged, path = _stage_locally(access.runner, b)
            report.total(progress, os.path.getsize(path) if os.path.exists(path) else b.size,
                         what=f"verify {b.name}")
            _verify_and_record(access, host, b, path, res, restore_test, adopt, task, progress)
        finally:
            if staged:
                import shutil
                shutil.rmtree(staged, ignore_errors=True)
    return res


def _stage_locally(runner, b: Backup) -> tuple[str, str]:
    """Copy an archive (and its manifest) from an SSH host into a private local folder."""
    import json
    import tempfile
    d = tempfile.mkdtemp(prefix="bigskies-verify-")
    local = os.path.join(d, b.name)
    report.note(f"Copying {b.name} from {runner.label} to check it here")
    with runner.open_read(b.path) as src, open(local, "wb") as dst:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            dst.write(chunk)
    if b.manifest is not None:
        with open(local + MANIFEST_SUFFIX, "w") as f:
            json.dump(b.manifest, f)
    return d, local


def _watch_reads(path: str, progress, every: float = 0.5) -> threading.Event:
    """Tell ``progress`` how far this process has read ``path``: the offset of its open file
    descriptors on it (``/proc/self/fdinfo``, Linux proc(5); elsewhere nothing is told), every
    ``every`` seconds until the returned event is set. The checks read the file themselves
    (archives.integrity), so their reads are watched rather than counted."""
    stop = threading.Event()
    if progress is None or not os.path.isdir("/proc/self/fdinfo"):
        return stop
    real = os.path.realpath(path)

    def poll() -> None:
        while not stop.wait(every):
            pos = None
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{fd}") != real:
                        continue
                    with open(f"/proc/self/fdinfo/{fd}") as f:
                        pos = max(pos or 0, int(f.readline().split()[1]))
                except (OSError, ValueError, IndexError):
                    continue
            if pos is not None:
                progress(pos)
    threading.Thread(target=poll, daemon=True, name="verify-reads").start()
    return stop


def _verify_and_record(access, host: Host, b: Backup, path: str, res: VerifyResult, restore_test: bool, adopt: bool,
                       task: str, progress=None) -> None:
    info = None
    try:
        stop = _watch_reads(path, progress)
        try:
            info = check_archive(access, path, full=True)
        finally:
            stop.set()
        res.checks = _checks_for(info.format, info.manifest)
        res.notes += info.warnings
        if restore_test:
            with _sigterm_unwinds():
                res.restore_test = _restore_test(access, host, info, progress)
            res.checks.append("restore test")
        res.ok = True
    except (ArchiveError, PostgresError) as e:
        res.error = str(e)
        if restore_test and info is not None:
            res.restore_test = {"ok": False, "error": str(e)}
    entry = {"at": iso(utcnow()), "ok": res.ok, "checks": res.checks, "error": res.error,
             "restore_test": res.restore_test, "tool": f"bigskies-ops {__version__}"}
    if b.manifest is not None:
        res.recorded = _record(access.runner, host, b, entry, task)
    elif adopt and res.ok:
        res.recorded = res.adopted = _adopt(access.runner, host, b, info, entry, task, local_path=path)
    elif b.legacy:
        res.notes.append("legacy file without a manifest: the result is not recorded (pass --adopt to "
                         "write a manifest for it)")


def _restore_test(access: PostgresAccess, host: Host, info, progress=None) -> dict:
    maint = access.sql(host.postgres.maintenance_db)
    db = (info.manifest or {}).get("database") or host.postgres.database
    name = unused_name(maint, verify_db_name, db, utcnow())
    t0 = time.monotonic()
    report.note(f"Restore test into throwaway database {name!r}")
    # a throwaway copy: roles missing here cost their statements, never the test
    policy = role_policy(access, maint, scan_archive(access, info), create_roles=False, skip_missing=True)
    create_like(maint, name, db_info(maint, host.postgres.database))
    try:
        report.total(progress, os.path.getsize(info.path), what=f"restore test {os.path.basename(info.path)}")
        rc, out, err, _copied = load_archive(access, info, name, policy, None, progress)  # counted independently below
        if rc != 0:
            from bigskies_ops.hosts.runners import tail
            raise PostgresError(f"restore test: restoring into {name!r} failed (exit {rc}): {tail(err, 600)}")
        try:
            checked = verify_against_manifest(access.sql(name), info)
        except PostgresError as e:
            raise PostgresError(f"restore test: {e}") from None
        tables = access.sql(name).query(TABLES_SQL)
        counts = table_counts(access.sql(name), tables)
        return {"ok": True, "database": name, "tables_checked": checked,
                "tables": [{"schema": t["schema"], "name": t["name"], "rows": counts[(t["schema"], t["name"])]}
                           for t in tables],
                "seconds": round(time.monotonic() - t0, 3)}
    finally:
        try:
            drop_db(maint, name)
            report.note(f"Dropped throwaway database {name!r}")
        except BigskiesError as e:
            report.note(f"warning: could not drop throwaway database {name!r}: {e}")


def _record(runner, host: Host, b: Backup, entry: dict, task: str) -> bool:
    """Append ``entry`` to the manifest's verifications (under the lock; re-read first)."""
    db = b.database or host.postgres.database
    rt = entry.get("restore_test")
    if rt:
        entry = dict(entry, restore_test={k: v for k, v in rt.items() if k != "tables"})
    with host_lock(runner, b.dir, host.name, db, task):
        if not runner.exists(b.path):
            report.note(f"warning: {b.name} disappeared during verification; result not recorded")
            return False
        man = read_manifest(runner, b.path)
        if man is None:
            return False
        man.setdefault("verifications", []).append(entry)
        write_manifest(runner, b.path, man)
    return True


def _adopt(runner, host: Host, b: Backup, info, entry: dict, task: str, local_path: str | None = None) -> bool:
    from bigskies_ops.archives.catalog import SCHEMA_VERSION, parse_archive_name
    from bigskies_ops.hosts.local import LocalRunner
    p = parse_archive_name(b.name)
    if p is None:
        return False
    digest, size = LocalRunner().sha256(local_path) if local_path else runner.sha256(b.path)
    rt = entry.get("restore_test") or {}
    man = {
        "schema_version": SCHEMA_VERSION, "tool": f"bigskies-ops {__version__}", "status": "DONE", "phase": None,
        "kind": "scheduled", "label": "adopted seed-era backup", "adopted": True, "timezone_known": False,
        "origin_host": b.origin_dir or host.name, "database": p.database, "archive": b.name,
        "format": info.format, "compressor": "gzip" if info.format == "plain" else "pg_dump custom",
        "compress_level": None, "started_at": iso(p.stamp), "finished_at": None, "duration_s": None,
        "sha256": digest, "bytes": size,
        "pg_dump_version": str(info.dump_version) if info.dump_version else None,
        "tables": rt.get("tables") or [], "schema_migrations_head": None,
        "verifications": [], "offsite": [], "pulled_from": None, "pulled_at": None,
        "adopted_at": iso(utcnow()),
    }
    if rt:
        entry = dict(entry, restore_test={k: v for k, v in rt.items() if k != "tables"})
    man["verifications"].append(entry)
    with host_lock(runner, b.dir, host.name, p.database, task):
        if runner.exists(b.path + MANIFEST_SUFFIX):
            raise StorageError(f"{b.name} got a manifest while we were checking it; not adopting")
        write_manifest(runner, b.path, man)
    report.note(f"Adopted {b.name}: manifest written (time zone of its name unknown, read as UTC)")
    return True
