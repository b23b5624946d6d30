"""``db.prune``: grandfather-father-son retention, decided first, then applied.

DESIGN.md practice 8 (decide, then act): :func:`plan` is a pure function from a
list of :class:`Entry` (built from manifests and file NAMES, never mtimes) to a
keep/prune decision with reasons for every file; :func:`prune` re-reads the
folder under the (host, database) lock, plans, and deletes what the plan says.

Rules (CONTRACTS.md section 2; the table is docs/policy.md):

* Retention works per (origin_host, database).
* Buckets are UTC days, ISO-8601 weeks and calendar months of the manifest's
  ``started_at``. The newest DONE ``scheduled`` backup in a bucket represents it.
  ``daily: N`` keeps the representatives of the N most recent days that HAVE a
  backup (days without one do not use up a slot); likewise weeks and months.
  Tiers overlap: one file can be ``daily 2026-11-28`` and ``weekly 2026-W48``.
* Safety kinds (any kind but ``scheduled``) are kept ``keep_safety_days`` from
  their start and never fill a retention slot.
* Legacy (seed-era, no manifest) files are left alone unless ``include_legacy``;
  then they take part like scheduled backups (their name's time, zone unknown,
  is read as UTC).
* The newest verified good backup and the newest good backup are never pruned.
* FAILED runs (and STARTED leftovers, DONE manifests whose archive is gone,
  ``.partial`` files) are pruned only with ``include_failed``.
* A group whose newest run FAILED is refused: nothing in it is pruned right
  after a failed backup (the next good backup lifts this).
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from bigskies_ops.archives.catalog import (MANIFEST_SUFFIX, PARTIAL_SUFFIX, Backup, iso, list_backups,
                      parse_archive_name, utcnow)
from bigskies_ops.errors import SafetyError, StorageError
from bigskies_ops.inventory import Host, RetentionSettings
from bigskies_ops.archives.locks import host_lock

FAILED_STATES = ("FAILED", "STARTED", "MISSING", "PARTIAL")


@dataclass(frozen=True)
class Entry:
    """One file (or failed run) as retention sees it.

    ``status``: DONE, FAILED, STARTED, MISSING (DONE manifest, archive gone),
    LEGACY (no manifest), PARTIAL (a ``.partial`` file). ``started_at`` is UTC.
    """

    name: str
    origin_host: str | None
    database: str | None
    started_at: datetime | None
    status: str
    kind: str = "scheduled"
    verified: bool = False
    path: str = ""            # where it is (apply step only; the plan never reads it)
    has_manifest: bool = True
    bytes: int | None = None  # the archive's size on disk (what pruning it frees; None: no archive)

    @property
    def group(self) -> tuple[str, str]:
        return (self.origin_host or "?", self.database or "?")


@dataclass(frozen=True)
class Decision:
    entry: Entry
    keep: bool
    reasons: tuple[str, ...]

    @property
    def action(self) -> str:
        return "keep" if self.keep else "prune"

    def to_json(self) -> dict:
        e = self.entry
        return {"name": e.name, "origin_host": e.origin_host, "database": e.database, "status": e.status,
                "kind": e.kind, "started_at": iso(e.started_at), "action": self.action,
                "reasons": list(self.reasons)}


@dataclass
class Plan:
    decisions: list[Decision] = field(default_factory=list)
    refused: dict[tuple[str, str], str] = field(default_factory=dict)  # group -> why

    @property
    def keep(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    @property
    def prune(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    def kept_names(self) -> list[str]:
        return [d.entry.name for d in self.keep]

    def pruned_names(self) -> list[str]:
        return [d.entry.name for d in self.prune]


def day_key(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d")


def week_key(t: datetime) -> str:
    y, w, _ = t.astimezone(timezone.utc).isocalendar()
    return f"{y}-W{w:02d}"


def month_key(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m")


TIERS = (("daily", day_key), ("weekly", week_key), ("monthly", month_key))


def _newest(entries: list[Entry]) -> Entry | None:
    cands = [e for e in entries if e.started_at is not None]
    return max(cands, key=lambda e: (e.started_at, e.name)) if cands else None


def plan(entries: list[Entry], retention: RetentionSettings, *, keep_safety_days: int, now: datetime,
         include_failed: bool = False, include_legacy: bool = False) -> Plan:
    """Decide keep/prune for every entry. Pure: no I/O, no clock (``now`` is given).

    Args:
        entries: every backup, failed run, legacy and ``.partial`` file of a folder.
        retention: ``daily``/``weekly``/``monthly`` counts (0 = tier off).
        keep_safety_days: days a safety (non-scheduled) backup is kept.
        now: the current UTC time.
        include_failed: prune FAILED/STARTED/MISSING runs and ``.partial`` files.
        include_legacy: let legacy files take part in GFS (else they are kept).

    Returns:
        :class:`Plan`: one :class:`Decision` per entry, newest first, reasons like
        ``daily 2026-11-28``, ``weekly 2026-W47``, ``monthly 2026-10`` or
        ``beyond retention``; ``refused`` names groups whose newest run FAILED.
    """
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        groups.setdefault(e.group, []).append(e)
    out = Plan()
    for g in sorted(groups):
        members = groups[g]
        refused = _refusal(g, members)
        if refused is not None:
            out.refused[g] = refused
        reasons = _keep_reasons(members, retention, include_legacy)
        prune_reason = _judge_the_rest(members, reasons, keep_safety_days=keep_safety_days, now=now,
                                       include_failed=include_failed, include_legacy=include_legacy)
        epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
        for e in sorted(members, key=lambda e: (e.started_at or epoch, e.name), reverse=True):
            r = reasons[id(e)]
            if refused is not None:
                out.decisions.append(Decision(e, True, tuple(r) + ("refused: newest run failed",)))
            elif r:
                out.decisions.append(Decision(e, True, tuple(r)))
            else:
                out.decisions.append(Decision(e, False, (prune_reason.get(id(e), "beyond retention"),)))
    return out


def _refusal(g: tuple[str, str], members: list[Entry]) -> str | None:
    """Why group ``g`` must not be pruned at all (its newest run FAILED or never finished), or None."""
    runs = [e for e in members if e.has_manifest and e.status in ("DONE", "MISSING", "FAILED", "STARTED")]
    newest_run = _newest(runs)
    if newest_run is None or newest_run.status not in ("FAILED", "STARTED"):
        return None
    return (f"the newest backup run of {g[1]!r} from {g[0]} ({newest_run.name}, started "
            f"{iso(newest_run.started_at)}) {'FAILED' if newest_run.status == 'FAILED' else 'never finished'}; "
            f"nothing is pruned right after a failed backup")


def _keep_reasons(members: list[Entry], retention: RetentionSettings, include_legacy: bool) -> dict[int, list[str]]:
    """``id(entry) -> reasons to keep it`` from the GFS tiers and the protections (the newest
    verified good and the newest good backup); an empty list is no reason yet."""
    reasons: dict[int, list[str]] = {id(e): [] for e in members}
    done = [e for e in members if e.status == "DONE"]
    # GFS candidates: scheduled DONE backups (+ legacy when asked)
    cands = [e for e in done if e.kind == "scheduled"]
    if include_legacy:
        cands += [e for e in members if e.status == "LEGACY" and e.started_at is not None]
    for tier, keyf in TIERS:
        n = getattr(retention, tier)
        if n <= 0:
            continue
        buckets: dict[str, list[Entry]] = {}
        for e in cands:
            if e.started_at is not None:
                buckets.setdefault(keyf(e.started_at), []).append(e)
        for key in sorted(buckets, reverse=True)[:n]:
            rep = _newest(buckets[key])
            reasons[id(rep)].append(f"{tier} {key}")
    nv = _newest([e for e in done if e.verified])
    if nv is not None:
        reasons[id(nv)].append("newest verified good backup")
    ng = _newest(done)
    if ng is not None:
        reasons[id(ng)].append("newest good backup")
    return reasons


def _judge_the_rest(members: list[Entry], reasons: dict[int, list[str]], *, keep_safety_days: int, now: datetime,
                    include_failed: bool, include_legacy: bool) -> dict[int, str]:
    """Safety backups, legacy files and failed runs: appends their reasons to keep to
    ``reasons`` and returns ``id(entry) -> reason to prune`` for the others."""
    prune_reason: dict[int, str] = {}
    for e in members:
        if e.status == "DONE" and e.kind != "scheduled":
            if e.started_at is None:
                reasons[id(e)].append(f"{e.kind}: start time unknown")
            else:
                until = e.started_at + timedelta(days=keep_safety_days)
                if now < until:
                    reasons[id(e)].append(f"{e.kind}: safety backup kept until {day_key(until)} "
                                          f"(keep_safety_days {keep_safety_days})")
                else:
                    prune_reason[id(e)] = f"{e.kind}: safety backup older than {keep_safety_days} days"
        elif e.status == "DONE":
            prune_reason[id(e)] = "beyond retention"
        elif e.status == "LEGACY":
            if include_legacy:
                prune_reason[id(e)] = "beyond retention (legacy, time zone unknown)"
            else:
                reasons[id(e)].append("legacy (no manifest): left alone without --include-legacy")
        elif e.status in FAILED_STATES:
            what = {"FAILED": "failed run", "STARTED": "run that never finished",
                    "MISSING": "manifest whose archive is missing",
                    "PARTIAL": "in-progress or abandoned .partial file"}[e.status]
            if include_failed:
                prune_reason[id(e)] = what
            else:
                reasons[id(e)].append(f"{what}: pruned only with --failed")
        else:
            reasons[id(e)].append(f"status {e.status}: left alone")
    return prune_reason


# ------------------------------------------------------------------ reading a folder
def entry_of(b: Backup, default_origin: str) -> Entry:
    return Entry(name=b.name, origin_host=b.origin_host or default_origin, database=b.database,
                 started_at=b.started_at, status=b.status, kind=b.kind if not b.legacy else "legacy",
                 verified=b.verified, path=b.path, has_manifest=not b.legacy, bytes=b.size)


def partial_entries(runner, directory: str, origin: str) -> list[Entry]:
    """``<archive>.partial`` files of one folder (their group comes from the archive name)."""
    out = []
    try:
        names = runner.listdir(directory)
    except NotADirectoryError:  # an unrelated file without a dot in its name
        return out
    for n in names:
        if not n.endswith(PARTIAL_SUFFIX):
            continue
        p = parse_archive_name(n[: -len(PARTIAL_SUFFIX)])
        if p is None:
            continue
        path = posixpath.join(directory, n)
        try:
            size = runner.size(path)
        except (OSError, StorageError):  # gone meanwhile (a pull finished)
            size = None
        out.append(Entry(name=n, origin_host=origin, database=p.database, started_at=p.stamp, status="PARTIAL",
                         kind="partial", path=path, has_manifest=False, bytes=size))
    return out


def collect(runner, host: Host) -> list[Entry]:
    """Every entry of the host's backup folder and its pulled ``<origin>/`` sub-folders."""
    bdir = host.backup.dir
    backups = list_backups(runner, bdir, include_all=True)
    entries = [entry_of(b, b.origin_dir or host.name) for b in backups]
    entries += partial_entries(runner, bdir, host.name)
    for sub in runner.listdir(bdir):
        if not sub.startswith(".") and "." not in sub:
            entries += partial_entries(runner, posixpath.join(bdir, sub), sub)
    return entries


@dataclass
class PruneResult:
    """What :func:`prune` decided and did: the plan, the files deleted (paths), whether it
    was a dry run, the files the plan's prunes consist of (``files``) and the bytes they
    take (``freed``: freed when not a dry run, else what would be freed)."""

    plan: Plan
    deleted: list[str]
    dry_run: bool
    files: list[str] = field(default_factory=list)
    freed: int = 0


#: files kept beside an archive that belong to it (``<archive><suffix>``): deleted with it
SIDECAR_SUFFIXES = (".roles.sql",)


def files_of(runner, e: Entry) -> list[str]:
    """The files that make up entry ``e``, in the order they are deleted: the archive first
    (a crash then leaves a MISSING manifest, never an archive that looks legacy), its
    sidecars (``<archive>.roles.sql``), a FAILED run's leftover ``.partial``, the manifest
    last. Only files that exist."""
    if e.status == "PARTIAL":
        return [e.path]
    out = []
    if e.status not in ("MISSING", "FAILED", "STARTED"):
        out.append(e.path)
    out += [e.path + sfx for sfx in SIDECAR_SUFFIXES if runner.exists(e.path + sfx)]
    if e.status in ("FAILED", "STARTED") and runner.exists(e.path + PARTIAL_SUFFIX):
        out.append(e.path + PARTIAL_SUFFIX)
    if e.has_manifest:
        out.append(e.path + MANIFEST_SUFFIX)
    return out


def _delete(runner, d: Decision) -> list[str]:
    gone = []
    for path in files_of(runner, d.entry):
        runner.remove(path)
        gone.append(path)
    return gone


def bytes_freed(runner, decisions: list[Decision]) -> int:
    """Bytes the files of ``decisions`` take on disk (archives, sidecars, manifests)."""
    total = 0
    for d in decisions:
        for path in files_of(runner, d.entry):
            if path == d.entry.path and d.entry.bytes is not None:
                total += d.entry.bytes
                continue
            try:
                total += runner.size(path)
            except (OSError, StorageError):
                pass
    return total


def prune(host: Host, *, dry_run: bool = False, include_failed: bool = False, include_legacy: bool = False,
          now: datetime | None = None, task: str = "db.prune", runner=None) -> PruneResult:
    """Plan retention for ``host``'s backup folder and (unless ``dry_run``) delete what it prunes.

    The folder is read and the plan made again while holding the (host, database)
    lock of every database found, so no backup can start or finish in between.

    Raises:
        SafetyError: (exit 3) a group's newest run FAILED; other groups are pruned
            first, the refused group is left untouched.
        LockBusyError: a backup (or another task) holds a lock.
    """
    from bigskies_ops.hosts import runner_for
    own = runner is None
    runner = runner or runner_for(host)
    try:
        now = now or utcnow()
        kw = dict(keep_safety_days=host.backup.keep_safety_days, now=now, include_failed=include_failed,
                  include_legacy=include_legacy)
        if dry_run:
            p = plan(collect(runner, host), host.retention, **kw)
            files = [f for d in p.prune for f in files_of(runner, d.entry)]
            return PruneResult(p, [], True, files, bytes_freed(runner, p.prune))
        dbs = sorted({e.database for e in collect(runner, host) if e.database} | {host.postgres.database})
        deleted: list[str] = []
        with _locks(runner, host, dbs, task):
            p = plan(collect(runner, host), host.retention, **kw)
            freed = bytes_freed(runner, p.prune)
            for d in p.prune:
                deleted += _delete(runner, d)
        if p.refused:
            raise PruneRefused(p, deleted)
        return PruneResult(p, deleted, False, list(deleted), freed)
    finally:
        if own:
            runner.close()


class PruneRefused(SafetyError):
    def __init__(self, p: Plan, deleted: list[str]):
        super().__init__("refused: " + "; ".join(p.refused.values()))
        self.plan = p
        self.deleted = deleted


class _locks:
    """Hold the (host, database) lock of several databases (sorted, so never a deadlock)."""

    def __init__(self, runner, host: Host, dbs: list[str], task: str):
        self.cms = [host_lock(runner, host.backup.dir, host.name, db, task) for db in dbs]
        self.entered = []

    def __enter__(self):
        try:
            for cm in self.cms:
                cm.__enter__()
                self.entered.append(cm)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for cm in reversed(self.entered):
            cm.__exit__(*exc)
        self.entered = []
        return False
