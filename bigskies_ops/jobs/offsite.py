"""``db.offsite``: copies of the archives somewhere else, verified, with the same retention.

The targets and their stores (S3, a folder through a runner), the layout on a target
and its catalog are :mod:`bigskies_ops.archives.offsite_stores`.

After an upload the object is read back and hashed; only a match is recorded in the
local manifest's ``offsite`` list. What is "not yet offsite" is decided from that
list and the target's listing, so a run that failed (target unreachable, wrong
credentials) is simply retried by the next run.

Remote retention is :func:`bigskies_ops.jobs.retention.plan` over the manifests held
by the target, with the host's policy.
"""
from __future__ import annotations

import json
import os
import posixpath
import tempfile
from dataclasses import dataclass, field

from bigskies_ops import output, report
from bigskies_ops.archives.catalog import (MANIFEST_SUFFIX, PARTIAL_SUFFIX, Backup, iso, list_backups, read_manifest,
                                           utcnow, write_manifest)
from bigskies_ops.archives.locks import host_lock
from bigskies_ops.archives.offsite_stores import (MULTIPART_THRESHOLD, OffsiteError, RemoteBackup, Target,
                                                  remote_catalog, store_for, targets)
from bigskies_ops.errors import ArchiveError, BigskiesError, StorageError
from bigskies_ops.hosts import runner_for
from bigskies_ops.hosts.local import LocalRunner
from bigskies_ops.inventory import Host
from bigskies_ops.jobs import notify
from bigskies_ops.jobs.retention import Entry, entry_of, plan
from bigskies_ops.jobs.verify import VerifyResult


# ------------------------------------------------------------------ upload
@dataclass
class TargetResult:
    target: str
    uploaded: list[str] = field(default_factory=list)
    already: int = 0
    pruned: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    exit_code: int = 0
    check: bool = False                                         # a dry run: uploaded/pruned say "would"
    upload_bytes: int = 0                                       # bytes uploaded (or that would be)
    pruned_bytes: int = 0                                       # bytes deleted on the target (or would be)
    damaged: list[str] = field(default_factory=list)            # not copied: they differ from their manifests

    @property
    def ok(self) -> bool:
        return self.error is None

    def failure(self, copies: bool = True) -> str:
        """The error and what the next run does about it: a target's error may pass (it is
        retried); a damaged archive fails every run until it is deleted. ``copies``: with
        what was done before it failed (:meth:`copied`), when anything was."""
        return (f"{self.error}" + ("" if self.damaged else " (retried on the next run)")
                + (f"; {self.copied()}" if copies and (self.uploaded or self.pruned) else ""))

    def copied(self) -> str:
        """What the run did on the target, also when it failed (the human line of ``--json``'s facts)."""
        names = f" ({', '.join(self.uploaded)})" if self.uploaded else ""
        return (f"copied and verified {len(self.uploaded)}{names}, {self.already} already there, "
                f"pruned {len(self.pruned)} on the target")

    def to_json(self) -> dict:
        if self.check:
            return {"target": self.target, "ok": self.ok, "would_upload": self.uploaded,
                    "would_upload_bytes": self.upload_bytes, "already_offsite": self.already,
                    "would_prune_remote": self.pruned, "would_free_bytes": self.pruned_bytes,
                    "skipped": self.skipped, "damaged": self.damaged, "error": self.error}
        return {"target": self.target, "ok": self.ok, "uploaded": self.uploaded, "already_offsite": self.already,
                "pruned_remote": self.pruned, "skipped": self.skipped, "damaged": self.damaged, "error": self.error}


def _record_copy(runner, host: Host, b: Backup, rec: dict) -> dict:
    db = b.database or host.postgres.database
    with host_lock(runner, b.dir, host.name, db, "db.offsite"):
        man = read_manifest(runner, b.path)
        if man is None:
            raise StorageError(f"{b.manifest_path} disappeared")
        copies = [c for c in man.get("offsite") or [] if c.get("target") != rec["target"]]
        man["offsite"] = copies + [rec]
        write_manifest(runner, b.path, man)
        return man


class _CountedReads:
    """A runner whose :meth:`open_read` files tell ``progress`` the bytes read so far (what an
    offsite store sends is what it reads: ``put_file`` streams the file); else the runner."""

    def __init__(self, runner, progress):
        self._runner, self._progress = runner, progress

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def open_read(self, path: str):
        return _CountingFile(self._runner.open_read(path), self._progress)


class _CountingFile:
    def __init__(self, f, progress):
        self._f, self._progress, self._n = f, progress, 0

    def read(self, *args):
        b = self._f.read(*args)
        self._n += len(b)
        self._progress(self._n)
        return b

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False


def upload(host: Host, target: str | None = None, *, multipart_threshold: int = MULTIPART_THRESHOLD,
           apply_retention: bool = True, now=None, inv=None, progress=None,
           check: bool = False, task: str = "db.offsite") -> list[TargetResult]:
    """Copy every DONE archive (with its manifest) that a target lacks, verify each copy by
    reading it back, record it in the local manifest, then apply retention on the target.

    ``progress``: optional ``(bytes_sent)`` callback; each archive is a new transfer of its
    size (:func:`bigskies_ops.report.total` with ``what``), its read-back check a step.

    ``check``: a dry run: the targets are listed and nothing is uploaded, recorded or
    deleted; the results name what would be uploaded and pruned on each target (the
    remote retention planned over what the target holds plus what would be uploaded)
    and the bytes.

    A failing target does not stop the others; its :class:`TargetResult` carries the error.
    An archive whose sha256 or size differs from its manifest is not copied: the others
    are, and the target's result fails (exit 1, ``offsite_failed``) naming it, since that
    backup now has no offsite copy and only ``db.verify`` would otherwise say so.
    """
    tlist = targets(host, target)
    try:
        runner = runner_for(host)  # the archives stream from where they are (SSH hosts: over the SSH layer)
        try:
            results = [_upload_one(host, runner, t, inv, multipart_threshold, apply_retention, now, progress, check)
                       for t in tlist]
        finally:
            runner.close()
    except BigskiesError as e:
        if not check:
            notify.failed(host, "offsite_failed", e, task=task, step="offsite")
        raise
    for r in results:
        if r.error and not check:  # a damaged archive: db.verify --all shows every one
            notify.notify(host, "offsite_failed", task=task, step=f"offsite {r.target}", error=r.error,
                          hint=output.hint(f"db.verify --host {host.name} --all") if r.damaged else None,
                          facts={"target": r.target})
    return results


def _upload_one(host, runner, t, inv, multipart_threshold, apply_retention, now, progress=None,
                check=False) -> TargetResult:
    res = TargetResult(t.name, check=check)
    coming: list[Backup] = []  # (check) what would be uploaded
    store = None
    try:
        store = store_for(t, inv, **({"multipart_threshold": multipart_threshold} if t.scheme == "s3" else {}))
        remote = store.list()
        everything = list_backups(runner, host.backup.dir, include_all=True)
        # DAMAGED ones too: the sha256 check below skips them, saying so
        backups = [b for b in everything if b.status in ("DONE", "DAMAGED") and b.manifest.get("sha256")]
        wanted = _kept_by_retention(host, everything, now) if apply_retention else None
        for b in sorted(backups, key=lambda b: (b.started_at, b.name)):
            if wanted is not None and (b.origin_host or host.name, b.name) not in wanted:
                continue  # the target's retention would delete it again right away
            origin = b.origin_host or host.name
            key = t.key(origin, b.name)
            have = [c for c in b.manifest.get("offsite") or [] if c.get("target") == t.name]
            if have and remote.get(key) == b.manifest.get("bytes", b.size) and (key + MANIFEST_SUFFIX) in remote:
                res.already += 1  # by the manifest's size: a local copy damaged since still has its copy there
                if b.status == "DAMAGED":
                    res.skipped.append(f"{b.name}: local archive's size differs from its manifest; the copy on "
                                       f"{t.name} has the recorded size (check it: db.verify {b.id} --offsite "
                                       f"{t.name}; restore it: db.restore --from-offsite {t.name} {b.name})")
                continue
            if b.status == "DAMAGED":  # its size alone says so (the real run would hash it and fail too)
                res.skipped.append(f"{b.name}: local archive's size differs from its manifest; not copied "
                                   f"(run db.verify)")
                res.damaged.append(b.name)
                continue
            if check:  # nothing read, written or recorded: the sha256 check runs on the real run
                res.uploaded.append(b.name)
                res.upload_bytes += b.size or 0
                coming.append(b)
                continue
            sha, size = _source_sha(runner, b.path)
            if sha != b.manifest["sha256"] or size != b.manifest.get("bytes", size):
                res.skipped.append(f"{b.name}: local archive differs from its manifest; not copied (run db.verify)")
                res.damaged.append(b.name)
                continue
            report.note(f"Uploading {b.name} ({size} bytes) to {t.name}")
            report.total(progress, size, what=f"offsite {t.name}: {b.name}")
            store.put_file(_CountedReads(runner, progress) if progress else runner, b.path, key, sha)
            report.step("reading the copy back (sha256)")
            rsha, rsize = store.digest(key)
            meta = store.stored_sha256(key)
            if rsha != sha or rsize != size or meta != sha:
                raise OffsiteError(f"offsite target {t.name!r}: the uploaded copy of {b.name} does not match "
                                   f"(sha256 read back {rsha[:12]}, stored {str(meta)[:12]}, local {sha[:12]})")
            rec = {"target": t.name, "url": f"{t.url.rstrip('/')}/{origin}/{b.name}",
                   "key": key, "uploaded_at": iso(utcnow()), "sha256": sha, "bytes": size,
                   "verified_at": iso(utcnow())}
            man = _record_copy(runner, host, b, rec)
            store.put_bytes(key + MANIFEST_SUFFIX,
                            json.dumps(man, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n")
            res.uploaded.append(b.name)
        if apply_retention:
            res.pruned = prune_remote(host, t, store, now=now, check=check, coming=coming, result=res)
    except BigskiesError as e:
        res.error = str(e)
        res.exit_code = e.exit_code
    finally:
        if store is not None:
            store.close()
    if res.damaged and not check:  # the others were copied; the run still fails: these have no offsite copy
        msg = (f"{len(res.damaged)} archive(s) differ from their manifests and were not copied "
               f"({', '.join(res.damaged)}): run db.verify, then db.delete them (a new backup gets its own copy; "
               f"this fails every run until they are deleted)")
        res.error = f"{res.error}; also {msg}" if res.error else msg
        res.exit_code = res.exit_code or 1
    return res


def _source_sha(runner, path: str) -> tuple[str, int]:
    """(sha256, bytes) of an archive where it is (computed there)."""
    return runner.sha256(path)


def _kept_by_retention(host: Host, backups: list[Backup], now) -> set[tuple[str, str]]:
    p = plan([entry_of(b, b.origin_dir or host.name) for b in backups], host.retention,
             keep_safety_days=host.backup.keep_safety_days, now=now or utcnow())
    return {(d.entry.origin_host, d.entry.name) for d in p.keep}


def prune_remote(host: Host, t: Target, store, *, now=None, check: bool = False, coming: list[Backup] = (),
                 result: TargetResult | None = None) -> list[str]:
    """Apply the host's retention to what the target holds; returns the names pruned there
    (``check``: that would be; ``coming``: backups a dry run would have uploaded first,
    planned with the rest and never deleted). ``result.pruned_bytes`` gets the bytes."""
    entries = []
    by_name = {}
    for r in remote_catalog(store, t):
        if r.manifest is None:
            continue  # a copy without a manifest is not ours to judge: left alone
        m = r.manifest
        e = Entry(name=r.name, origin_host=r.origin, database=m.get("database"), started_at=r.started_at,
                  status=r.status, kind=m.get("kind", "?"),
                  verified=any(v.get("ok") for v in m.get("verifications") or []), path=r.key)
        entries.append(e)
        by_name[(r.origin, r.name)] = r
    held = {(e.origin_host, e.name) for e in entries}
    for b in coming:
        if (b.origin_host or host.name, b.name) not in held:
            entries.append(entry_of(b, b.origin_dir or host.name))
    p = plan(entries, host.retention, keep_safety_days=host.backup.keep_safety_days, now=now or utcnow())
    gone = [d for d in p.prune if (d.entry.origin_host, d.entry.name) in by_name]
    if result is not None:
        result.pruned_bytes = sum(by_name[(d.entry.origin_host, d.entry.name)].size or 0 for d in gone)
    keys = []
    for d in gone:
        keys += [d.entry.path, d.entry.path + MANIFEST_SUFFIX]
    if keys and not check:
        store.delete(keys)
    return [d.entry.name for d in gone]


# ------------------------------------------------------------------ verify, list, fetch
def verify_remote(host: Host, target: str, spec: str | None, all_: bool, *, inv=None):
    """Read each selected object back and compare its sha256 with the one stored with it and
    with the manifest's (remote and, when present, local). Records the result locally."""
    [t] = targets(host, target)
    store = store_for(t, inv)
    try:
        return _verify_remote(host, t, store, spec, all_)
    finally:
        store.close()


def _verify_remote(host, t, store, spec, all_):
    cat = [r for r in remote_catalog(store, t) if r.status == "DONE"]
    chosen = _choose(host, cat, spec, all_)
    lr = LocalRunner()
    out = []
    for r in chosen:
        res = VerifyResult(f"{t.url.rstrip('/')}/{r.origin}/{r.name}", r.name, False, [])
        local_dir = host.backup.dir if r.origin == host.name else posixpath.join(host.backup.dir, r.origin)
        local_man = None if host.is_remote else read_manifest(lr, posixpath.join(local_dir, r.name))
        try:
            meta = store.stored_sha256(r.key)
            sha, size = store.digest(r.key)
            want = r.manifest.get("sha256")
            if meta is None:
                raise OffsiteError(f"{r.key}: the object carries no sha256 metadata")
            if sha != meta:
                raise OffsiteError(f"{r.key}: object changed on the target: its content's sha256 {sha[:16]}... "
                                   f"differs from the sha256 stored with it {meta[:16]}...")
            if want and sha != want:
                raise OffsiteError(f"{r.key}: sha256 differs from the manifest's")
            if local_man and local_man.get("sha256") and local_man["sha256"] != sha:
                raise OffsiteError(f"{r.key}: sha256 differs from the local manifest's")
            res.checks = ["object sha256 = stored sha256", "= manifest sha256"]
            res.ok = True
        except OffsiteError as e:
            res.error = str(e)
        if local_man is not None:
            try:
                b = Backup(local_dir, r.name, local_man, None)
                _record_remote_check(lr, host, b, t.name, res.ok, res.error)
                res.recorded = True
            except BigskiesError as e:
                res.notes.append(f"not recorded: {e}")
        out.append(res)
    return out


def _record_remote_check(runner, host, b: Backup, target: str, ok: bool, error: str | None) -> None:
    with host_lock(runner, b.dir, host.name, b.database or host.postgres.database, "db.verify --offsite"):
        man = read_manifest(runner, b.path)
        if man is None:
            return
        for c in man.get("offsite") or []:
            if c.get("target") == target:
                c["last_check_at"] = iso(utcnow())
                c["last_check_ok"] = ok
                c["last_check_error"] = error
        write_manifest(runner, b.path, man)


def _choose(host: Host, cat: list[RemoteBackup], spec: str | None, all_: bool) -> list[RemoteBackup]:
    if all_:
        return cat
    db = host.postgres.database
    if spec in (None, "", "latest"):
        for r in cat:  # newest first
            if r.origin == host.name and r.database == db:
                return [r]
        raise ArchiveError(f"the offsite target holds no DONE backup of {db!r} from {host.name}")
    base = os.path.basename(spec)
    for r in cat:
        if base == r.name or spec in (r.key, f"{r.origin}/{r.name}"):
            return [r]
    from bigskies_ops.archives.catalog import backup_id, looks_like_id
    if looks_like_id(spec):  # an id as db.list (--offsite T) shows it, or a unique prefix
        hits = [r for r in cat if backup_id(r.name).startswith(spec[:8])]
        if len(hits) == 1:
            return hits
        if hits:
            raise ArchiveError(f"{spec} matches {len(hits)} backups on the offsite target "
                               f"({', '.join(r.name for r in hits[:5])}); give more of the id or the name")
    raise ArchiveError(f"{spec}: not on the offsite target")


def list_remote(host: Host, target: str, inv=None) -> list[RemoteBackup]:
    [t] = targets(host, target)
    store = store_for(t, inv)
    try:
        return remote_catalog(store, t)
    finally:
        store.close()


def fetch(host: Host, target: str, spec: str | None, *, inv=None) -> str:
    """Download a backup from a target into the local backup folder (``<origin>/`` for other
    origins) through a ``.partial`` file, check its sha256 against the stored one and the
    manifest's, then publish it with its manifest. Returns the local archive path.

    Raises:
        ArchiveError: the copy does not match (the ``.partial`` is removed).
        OffsiteError: the target is unreachable or refuses us.
    """
    [t] = targets(host, target)
    store = store_for(t, inv)
    try:
        return _fetch(host, t, store, spec, inv)
    finally:
        store.close()


def fetch_dir(host: Host, inv=None) -> str:
    """Where fetched copies land on the control machine: the host's backup folder for a local
    host; for an SSH host (whose backup folder is over there, or gone) a local folder
    ``<inventory folder>/offsite-fetched/<host>``."""
    if not host.is_remote:
        return host.backup.dir
    base = str(inv.base_dir) if inv is not None else tempfile.gettempdir()
    return os.path.join(base, "offsite-fetched", host.name)


def _fetch(host, t, store, spec, inv=None) -> str:
    cat = [r for r in remote_catalog(store, t) if r.status == "DONE"]
    [r] = _choose(host, cat, spec, False)
    lr = LocalRunner()
    base = fetch_dir(host, inv)
    d = base if r.origin == host.name else posixpath.join(base, r.origin)
    lr.makedirs(d)
    final = posixpath.join(d, r.name)
    want = r.manifest.get("sha256")
    if lr.exists(final):
        sha, _ = lr.sha256(final)
        if sha == want:
            report.note(f"{final} is already here with the right sha256; not downloading it again")
            if read_manifest(lr, final) is None:
                write_manifest(lr, final, dict(r.manifest, fetched_from=f"{t.url}", fetched_at=iso(utcnow())))
            return final
        raise ArchiveError(f"{final} exists locally with different content; move it away first")
    partial = final + PARTIAL_SUFFIX
    report.note(f"Fetching {r.key} from {t.name} into {partial}")
    try:
        with open(partial, "wb") as f:
            sha, size = store.stream(r.key, sink=f.write)
            f.flush()
            os.fsync(f.fileno())
        meta = store.stored_sha256(r.key)
        if sha != meta or (want and sha != want):
            raise ArchiveError(f"{r.key}: the downloaded copy's sha256 does not match the one stored with it or "
                               f"the manifest's; not restoring it")
        with host_lock(lr, base, host.name, r.database or host.postgres.database, "db.restore --from-offsite"):
            if not lr.link_noreplace(partial, final):
                raise ArchiveError(f"{final} appeared while we were downloading; refusing to overwrite it")
            write_manifest(lr, final, dict(r.manifest, fetched_from=f"{t.url}", fetched_at=iso(utcnow())))
    finally:
        lr.remove(partial)
    return final
