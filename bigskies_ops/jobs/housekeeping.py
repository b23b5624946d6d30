"""``db.delete``: delete one backup, or drop pre-restore copies, by hand.

One backup (named by its id, file name or path, as ``db.list`` shows them) is its
archive, its manifest and its sidecars (``<archive>.roles.sql``), or a FAILED run's
manifest (and its ``.partial``). Rules (docs/cli.md, "Backup ids and listing"):

* The only good (DONE) backup of a (origin host, database) is not deleted without
  ``allow_last``: afterwards there would be nothing to restore. pgBackRest refuses to
  expire the newest backup set the same way (``expire --set``). Deleting the newest
  of several is allowed with a warning naming the one that becomes the newest.
* Pulled copies of it on this machine (the same file name and sha256 in a local host's
  ``<origin>/`` folder) are separate backups with their own listing; they are named
  in the plan and deleted only with ``with_copies``.
* Everything is re-read and deleted under the (host, database) lock, so no backup,
  prune or restore of that database runs meanwhile; files go archive first, manifest
  last (a crash leaves a manifest whose archive is MISSING, never an archive that
  looks like a seed-era file).

Pre-restore copies (whole databases a restore kept, :mod:`bigskies_ops.jobs.swap`)
are dropped by name or all at once, under the same lock a restore holds.
"""
from __future__ import annotations

import posixpath
from contextlib import nullcontext
from dataclasses import dataclass, field

from bigskies_ops import report
from bigskies_ops.archives.catalog import Backup, id_rule, list_backups, named_backup
from bigskies_ops.archives.locks import host_lock
from bigskies_ops.errors import ArchiveError, SafetyError, StorageError, UsageError
from bigskies_ops.hosts import runner_for
from bigskies_ops.hosts.local import LocalRunner
from bigskies_ops.inventory import Host
from bigskies_ops.jobs.retention import entry_of, files_of


@dataclass
class Copy:
    """A pulled copy of the backup on this machine: in local host ``host``'s folder."""

    host: str
    backup: Backup
    files: list[tuple[str, int]]


@dataclass
class DeletePlan:
    """What deleting a backup means: the backup, its files with their sizes (bytes), the
    pulled copies found here (deleted only when ``with_copies``), warnings."""

    host: Host
    backup: Backup
    files: list[tuple[str, int]]
    copies: list[Copy] = field(default_factory=list)
    with_copies: bool = False
    warnings: list[str] = field(default_factory=list)
    #: a dry run's record of what the real run would refuse (``plan_delete(dry_run=True)``)
    refusals: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(n for _, n in self.files) + sum(n for c in self.doomed_copies for _, n in c.files)

    @property
    def doomed_copies(self) -> list[Copy]:
        return self.copies if self.with_copies else []

    def to_json(self) -> dict:
        b = self.backup
        return {"id": b.id, "name": b.name, "shown_name": b.shown_name, "status": b.status,
                "database": b.database, "origin_host": b.origin_host or self.host.name,
                "files": [{"path": p, "bytes": n} for p, n in self.files],
                "pulled_copies": [{"host": c.host, "path": c.backup.path, "deleted": self.with_copies,
                                   "files": [{"path": p, "bytes": n} for p, n in c.files]} for c in self.copies],
                "bytes": self.bytes, "warnings": self.warnings}


def _sizes(runner, paths: list[str]) -> list[tuple[str, int]]:
    out = []
    for p in paths:
        try:
            out.append((p, runner.size(p)))
        except (OSError, StorageError):
            out.append((p, 0))
    return out


def find_backup(runner, host: Host, spec: str, origin: str | None = None) -> Backup:
    """The one backup ``spec`` names in ``host``'s folder: an id (or unique prefix, found in
    any sub-folder), a file name (in the folder, or with ``origin`` its ``<origin>/``
    sub-folder; ``prod/NAME`` as ``db.list --all`` shows it), or a path.

    Raises:
        UsageError: ``latest`` (a deletion names its backup).
        ArchiveError: no such backup; several match; a name found only in another
            sub-folder (the message names ``--origin``).
    """
    if spec in ("latest", ""):
        raise UsageError("db.delete needs the id or name of one backup ('latest' is not accepted: "
                         f"name the backup to delete; ids are the first column of `db.list --host {host.name}`)")
    everything = list_backups(runner, host.backup.dir, include_all=True)
    b = named_backup(everything, spec, origin, host.name)
    if b is None:
        listing = f"db.list --host {host.name}{' --all' if not origin else ' --origin ' + origin}"
        raise ArchiveError(f"{spec}: no such backup name or id in {host.name}:{host.backup.dir}"
                           f"{'/' + origin if origin else ''}; ids are the first column of `{listing}` "
                           f"{id_rule(spec)}")
    return b


def plan_delete(host: Host, runner, spec: str, *, origin: str | None = None, inv=None, with_copies: bool = False,
                allow_last: bool = False, dry_run: bool = False) -> DeletePlan:
    """Decide what deleting ``spec`` on ``host`` means (reads only).

    ``dry_run`` (``db.delete --check``): a refusal is recorded in ``refusals`` instead of
    raised, and the plan is made anyway (docs/cli.md "Dry runs").

    Raises:
        SafetyError: (exit 3, not ``dry_run``) the only good backup of its database and
            origin, without ``allow_last``.
        ArchiveError, UsageError: :func:`find_backup`.
    """
    b = find_backup(runner, host, spec, origin)
    origin_host = b.origin_host or host.name
    p = DeletePlan(host, b, _sizes(runner, files_of(runner, entry_of(b, origin_host))), with_copies=with_copies)
    if b.status == "DONE":
        group = [x for x in list_backups(runner, host.backup.dir, include_all=True)
                 if x.status == "DONE" and (x.origin_host or host.name) == origin_host and x.database == b.database]
        others = sorted((x for x in group if x.path != b.path), key=lambda x: x.started_at, reverse=True)
        if not others and not allow_last:
            refusal = (f"refused: {b.shown_name} ({b.id}) is the only good backup of {b.database!r} from "
                       f"{origin_host} in {host.name}:{host.backup.dir}; after deleting it there is nothing "
                       f"to restore. Pass --allow-last to delete it anyway")
            if not dry_run:
                raise SafetyError(refusal)
            p.refusals.append(refusal)
        elif not others:
            p.warnings.append(f"{b.shown_name} is the only good backup of {b.database!r} from {origin_host}: "
                              f"none is left after this")
        elif b.started_at and others[0].started_at and b.started_at > others[0].started_at:
            p.warnings.append(f"{b.shown_name} is the newest good backup of {b.database!r} from {origin_host}; "
                              f"the newest becomes {others[0].shown_name} ({others[0].id})")
    if inv is not None and b.origin_dir is None:
        p.copies = _pulled_copies(inv, host, b)
    return p


def _pulled_copies(inv, host: Host, b: Backup) -> list[Copy]:
    """Copies of ``b`` (same name and sha256, or size when neither has a sha256) in the
    ``<origin>/`` folder of the inventory's local hosts."""
    lr = LocalRunner()
    origin = b.origin_host or host.name
    out = []
    want = (b.manifest or {}).get("sha256")
    for other in inv.hosts.values():
        if other.is_remote:
            continue
        d = posixpath.join(other.backup.dir, origin)
        if d == b.dir or not lr.exists(posixpath.join(d, b.name)):
            continue
        try:
            found = [x for x in list_backups(lr, other.backup.dir, origin=origin) if x.name == b.name]
        except (OSError, StorageError):
            continue
        for x in found:
            have = (x.manifest or {}).get("sha256")
            if (want and have == want) or (not want and not have and x.size == b.size):
                out.append(Copy(other.name, x, _sizes(lr, files_of(lr, entry_of(x, origin)))))
    return out


def delete(p: DeletePlan, *, task: str = "db.delete") -> list[str]:
    """Delete what plan ``p`` says, under the (host, database) lock (and each copy's host's
    lock); the backup is looked up again under the lock. Returns the paths deleted.

    Raises:
        LockBusyError: a backup, prune or restore of that database is running.
        ArchiveError: the backup changed or went away since the plan.
    """
    host, b = p.host, p.backup
    db = b.database or host.postgres.database
    gone: list[str] = []
    with runner_for(host) as runner:
        # the folder's lock (backup, prune, restore) and, for a pulled backup, its
        # sub-folder's (db.pull takes that one)
        with host_lock(runner, host.backup.dir, host.name, db, task), (
                host_lock(runner, b.dir, b.origin_dir, db, task) if b.dir != host.backup.dir else nullcontext()):
            now = [x for x in list_backups(runner, host.backup.dir, include_all=True)
                   if x.path == b.path]
            if not now or now[0].status != b.status:
                raise ArchiveError(f"{b.shown_name} changed while we were deciding (now "
                                   f"{now[0].status if now else 'gone'}); nothing deleted, run db.delete again")
            for path in files_of(runner, entry_of(now[0], b.origin_host or host.name)):
                runner.remove(path)
                gone.append(path)
    report.note(f"Deleted {b.shown_name} ({b.id}) from {host.name}")
    lr = LocalRunner()
    for c in p.doomed_copies:
        other = c.backup
        with host_lock(lr, other.dir, other.origin_dir or c.host, db, task):  # as db.pull locks it
            for path in files_of(lr, entry_of(other, other.origin_dir or host.name)):
                if lr.exists(path):
                    lr.remove(path)
                    gone.append(path)
        report.note(f"Deleted the pulled copy {other.path} ({c.host})")
    return gone


# ------------------------------------------------------------------ pre-restore copies
def pre_restore_plan(host: Host, which: str) -> list[dict]:
    """The pre-restore copies of ``host``'s database that ``which`` names: ``all``, or one
    database name (as ``db.list --pre-restore`` shows it). Each: ``name, at,
    replaced_by, bytes``.

    Raises:
        UsageError: no pre-restore copy of that name (the message lists them).
    """
    from bigskies_ops.jobs.swap import pre_restore_copies
    from bigskies_ops.pg.access import PostgresAccess
    with PostgresAccess(host) as access:
        copies = pre_restore_copies(access.sql(host.postgres.maintenance_db), host.postgres.database)
    if which == "all":
        return copies
    hit = [c for c in copies if c["name"] == which]
    if not hit:
        have = ", ".join(c["name"] for c in copies) or "none"
        raise UsageError(f"--pre-restore {which}: no pre-restore copy of {host.postgres.database!r} by that name on "
                         f"{host.name} (there are: {have}; or give 'all')")
    return hit


def drop_pre_restore(host: Host, names: list[str], *, task: str = "db.delete --pre-restore") -> list[str]:
    """Drop the pre-restore copies ``names`` of ``host``'s database under its
    (host, database) lock (a restore holds it); each is checked again to be a
    pre-restore copy of that database (by its comment) just before it is dropped.

    Returns the names dropped."""
    from bigskies_ops.jobs.swap import pre_restore_copies
    from bigskies_ops.pg.access import PostgresAccess
    from bigskies_ops.pg.admin import drop_db
    db = host.postgres.database
    dropped = []
    with PostgresAccess(host) as access:
        maint = access.sql(host.postgres.maintenance_db)
        with host_lock(access.runner, host.backup.dir, host.name, db, task):
            current = {c["name"] for c in pre_restore_copies(maint, db)}
            for n in names:
                if n not in current:
                    report.note(f"warning: {n!r} is no longer a pre-restore copy of {db!r}; left alone")
                    continue
                drop_db(maint, n)
                report.note(f"Dropped pre-restore copy {n!r}")
                dropped.append(n)
    return dropped
