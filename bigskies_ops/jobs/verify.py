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
from bigskies_ops.archives.catalog import (MANIFEST_SUFFIX, PARTIAL_SUFFIX, Backup, id_hint, iso, latest, list_backups,
                                           named_backup, read_manifest, utcnow, write_manifest)
from bigskies_ops.signals import deferred, interrupts_unwind
from bigskies_ops.errors import ArchiveError, BigskiesError, PostgresError, StorageError, UsageError
from bigskies_ops.inventory import Host
from bigskies_ops.archives.locks import host_lock
from bigskies_ops.archives.counts import TABLES_SQL
from bigskies_ops.archives.integrity import (TAIL_BYTES, ArchiveInfo, check_against_manifest, check_archive,
                                            scan_archive, sniff)
from bigskies_ops.jobs import notify
from bigskies_ops.jobs.dbnames import unused_name, verify_db_name
from bigskies_ops.jobs.sideload import load_archive, role_policy, table_counts, verify_against_manifest
from bigskies_ops.pg.admin import create_new, db_info, drop_db


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


def select(host: Host, runner, spec: str | None, all_: bool, database: str | None = None,
           origin: str | None = None) -> list[Backup]:
    """Which backups to verify: ``--all`` (every DONE, DAMAGED and legacy archive of the folder and its
    pulled sub-folders; with ``origin`` only that sub-folder's), ``latest`` (default: the
    newest DONE or DAMAGED backup of the host, or of ``origin``) or one backup named by id, name or path
    (the lookup ``db.restore`` and ``db.delete`` share: :func:`~bigskies_ops.archives.catalog.named_backup`;
    a name that exists only in a pulled ``<origin>/`` sub-folder needs ``origin``).

    Raises:
        ArchiveError: (exit 1) nothing matches, several match, a FAILED or missing run, a
            pulled name without its ``origin``.
        UsageError: FILE together with ``--all``.
    """
    backups = list_backups(runner, host.backup.dir, include_all=True)
    if all_:
        if spec not in (None, "", "latest"):
            raise UsageError("pass either FILE or --all, not both")
        # a DAMAGED one too: it fails its check, and --all says so (exit 1) instead of leaving it out
        return [b for b in backups if b.status in ("DONE", "DAMAGED", "LEGACY")
                and (origin is None or b.origin_dir == origin)]
    db = database or host.postgres.database
    if spec in (None, "", "latest"):
        b = latest(backups, database=db, origin_host=origin or host.name, damaged_too=True)
        if b is None:
            raise ArchiveError(f"no DONE backup of {db!r} from {origin or host.name} in {host.backup.dir}")
        return [b]
    if spec.endswith(PARTIAL_SUFFIX):
        raise ArchiveError(f"{spec}: an in-progress (.partial) file is not a backup")
    b = named_backup(backups, spec, origin, host.name)
    if b is None and not host.is_remote and os.path.exists(spec):
        b = next((x for x in backups if os.path.abspath(spec) == os.path.abspath(x.path)), None)
    if b is not None:
        b.require_archive("verify")
        return [b]
    if not host.is_remote and os.path.exists(spec) and not os.path.isdir(spec):  # an archive outside the folder
        d, n = os.path.split(os.path.abspath(spec))
        man = read_manifest(runner, spec)
        return [Backup(d, n, man, os.path.getsize(spec))]
    raise ArchiveError(f"{spec}: no such file or backup id (looked in {host.backup.dir}"
                       f"{'/' + origin if origin else ''}){id_hint(spec, host.name)}")


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
    step = f"verify {b.name}" + (" --restore-test" if restore_test else "")
    try:
        _verify(host, b, res, restore_test, adopt, task, progress)
    except BigskiesError as e:
        notify.failed(host, "verify_failed", e, task=task, step=step, database=b.database)
        raise
    if not res.ok:
        notify.notify(host, "verify_failed", task=task, step=step, error=res.error or "failed",
                      database=b.database, facts={"archive": b.name})
    return res


def _verify(host: Host, b: Backup, res: VerifyResult, restore_test: bool, adopt: bool, task: str, progress) -> None:
    with PostgresAccess(host) as access:
        staged = None
        try:
            path = b.path
            if host.is_remote and restore_test:  # the restore test streams a local file into the host's tools
                staged, path = _stage_locally(access.runner, b)
            report.total(progress, os.path.getsize(path) if os.path.exists(path) else b.size,
                         what=f"verify {b.name}")
            _verify_and_record(access, host, b, path, res, restore_test, adopt, task, progress,
                               where_it_lives=host.is_remote and not restore_test)
        finally:
            if staged:
                import shutil
                shutil.rmtree(staged, ignore_errors=True)


# ------------------------------------------------------------------ checks on the host that holds the files
#: gunzip the whole archive on its host, keep the SQL's last bytes, report gzip's own exit status
_GUNZIP_TAIL = '{ gzip -dc -- "$1"; echo "bigskies-gzip-exit=$?" >&2; } | tail -c "$2"'
#: run a tool (the rest of the arguments) with the archive (first argument) on its stdin
_WITH_STDIN = 'f=$1; shift; exec "$@" < "$f"'


def check_where_it_lives(access: PostgresAccess, path: str) -> ArchiveInfo:
    """:func:`bigskies_ops.archives.integrity.check_archive` in full for an archive on an SSH
    host, run on that host: nothing is copied to this machine.

    sha256 and size: ``sha256sum`` there (:meth:`Runner.sha256`); plain archives: the
    whole gzip stream is decompressed there (``gzip -dc``, its exit status checked) and
    only the SQL's last :data:`TAIL_BYTES` come back for the completion trailer; custom
    archives: the host's ``pg_restore --list`` and ``pg_restore --file /dev/null`` read
    the file there (in the container through stdin). The header (:data:`HEAD_BYTES`) is
    read over the connection into memory.

    Raises:
        ArchiveError: missing, FAILED, checksum or size mismatch, truncated, not a dump,
            or too new for the host's tools.
    """
    runner = access.runner
    where = f"{access.host.name}:{path}"
    if not runner.exists(path):
        raise ArchiveError(f"{where}: no such file")
    man = check_against_manifest(runner, path)
    head = sniff(runner, path)
    if head.startswith(b"\x1f\x8b"):
        return _plain_there(access, path, where, head, man)
    if head.startswith(b"PGDMP"):
        return _custom_there(access, path, where, head, man)
    raise ArchiveError(f"{where}: not a PostgreSQL dump (neither gzip nor custom archive)")


def _plain_there(access: PostgresAccess, path: str, where: str, head: bytes, man: dict | None) -> ArchiveInfo:
    import re
    from bigskies_ops.archives import gz
    from bigskies_ops.hosts.runners import tail
    from bigskies_ops.archives.integrity import plain_verdict
    from bigskies_ops.pg.tools import parse_plain_header
    try:
        ph = parse_plain_header(gz.decompressobj().decompress(head))
    except gz.ERRORS as e:
        raise ArchiveError(f"{where}: corrupt gzip data ({e})") from None
    except ValueError as e:
        raise ArchiveError(f"{where}: {e}") from None
    r = access.runner.script(_GUNZIP_TAIL, path, str(TAIL_BYTES), check=False)
    m = re.search(r"bigskies-gzip-exit=(\d+)", r.stderr)
    if m is None or m.group(1) != "0" or r.returncode != 0:
        err = re.sub(r"bigskies-gzip-exit=\d+\s*", "", r.stderr).strip()
        raise ArchiveError(f"{where}: gzip on {access.host.name} cannot read the whole archive "
                           f"(exit {m.group(1) if m else r.returncode}): {tail(err, 300) or 'no message'}")
    return plain_verdict(access, path, where, ph, man, r.stdout)


def _custom_there(access: PostgresAccess, path: str, where: str, head: bytes, man: dict | None) -> ArchiveInfo:
    from bigskies_ops.pg.tools import PgVersion, parse_custom_header
    try:
        hdr = parse_custom_header(head)
    except ValueError as e:
        raise ArchiveError(f"{where}: {e}") from None
    pr_v = access.tool_version("pg_restore")
    for args in (["--list"], ["--file", "/dev/null"]):
        _pg_restore_there(access, args, path, where)
    try:
        dv = PgVersion(*[int(x) for x in hdr.pg_dump_version.split(".")[:2]])
    except (ValueError, AttributeError):
        dv = None
    return ArchiveInfo(path, "custom", man, dv, pr_v, [])


def _pg_restore_there(access: PostgresAccess, args: list[str], path: str, where: str) -> None:
    """``pg_restore ARGS < path`` on the archive's host (natively or in its container)."""
    import re
    from bigskies_ops.hosts.runners import tail
    argv = ["sh", "-c", _WITH_STDIN, "sh", path, *access.tool_argv("pg_restore", args, stdin=True)]
    r = access.runner.run(argv, env=access.env(), check=False)
    if r.returncode != 0:
        m = re.search(r"unsupported version \(([\d.]+)\) in file header", r.stderr)
        if m:
            raise ArchiveError(f"{where}: archive format {m.group(1)} is from a newer pg_dump than "
                               f"pg_restore {access.tool_version('pg_restore')} can read")
        raise ArchiveError(f"{where}: pg_restore cannot read the archive: {tail(r.stderr, 400)}")


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
                       task: str, progress=None, where_it_lives: bool = False) -> None:
    info = None
    try:
        if where_it_lives:  # on the host: nothing is read here to watch
            info = check_where_it_lives(access, path)
            res.notes.append(f"checked on {host.name}, where the archive is (nothing copied here)")
        else:
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
        res.recorded = res.adopted = _adopt(access.runner, host, b, info, entry, task,
                                            local_path=None if where_it_lives else path)
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
    like, ours = db_info(maint, host.postgres.database), True
    try:
        try:  # as in restore: a CREATE finished before our psql died is dropped below; signals wait for it
            with deferred(insist=True):
                # no database here: the archive's encoding and locale, as a restore makes it
                warned = create_new(maint, name, (info.manifest or {}).get("database_locale") if like is None else None,
                                    like=like)
            if warned:
                report.note(f"note: {warned}")
        except PostgresError as e:
            ours = "already exists" not in str(e)
            raise
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
            if ours:
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
