"""Backup naming, the manifest sidecar, listing and ``latest`` (CONTRACTS.md section 2).

Archive names: ``<database>_backup_YYYYMMDD_HHMMSS[_N].<ext>`` in UTC; database
names outside ``[a-z0-9_-]`` are percent-encoded byte-wise (UTF-8) so the name is
reversible and safe on case-insensitive file systems; the manifest holds the real
name. A manifest ``<archive>.manifest.json`` is written before pg_dump starts
(STARTED) and replaced atomically with DONE or FAILED. ``.partial`` files are
never listed. ``latest`` is the newest DONE backup by the manifest's UTC start,
never by mtime.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import re
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone

from bigskies_ops import report
from bigskies_ops.errors import ArchiveError, StorageError
from bigskies_ops.text import human_age, json_bytes

SCHEMA_VERSION = 1
EXTENSIONS = {"plain": "sql.gz", "custom": "dump"}
FORMAT_OF_EXT = {v: k for k, v in EXTENSIONS.items()}
MANIFEST_SUFFIX = ".manifest.json"
PARTIAL_SUFFIX = ".partial"
SAFE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")
NAME_RE = re.compile(r"^(?P<db>.+)_backup_(?P<date>\d{8})_(?P<time>\d{6})(?:_(?P<n>\d+))?\.(?P<ext>sql\.gz|dump|sql)$")
SAFETY_KINDS = ("manual", "pre-restore", "pre-migrate", "pre-purge", "pulled")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime | None) -> str | None:
    """UTC ISO-8601 with a ``Z`` suffix, second precision (``2026-11-29T08:52:00Z``)."""
    if dt is None:
        return None
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(s: str | None) -> datetime | None:
    if not s:
        return None
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(timezone.utc)


def encode_dbname(name: str) -> str:
    """Reversible, file-system-safe form of a database name (``My DB`` -> ``%4Dy%20%44%42``)."""
    out = []
    for ch in name:
        if ch in SAFE_CHARS:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def decode_dbname(encoded: str) -> str:
    return urllib.parse.unquote(encoded, encoding="utf-8", errors="strict")


def archive_name(database: str, when: datetime, fmt: str, n: int = 0) -> str:
    """``bigskies_backup_20261129_085200.sql.gz`` (``_N`` when ``n`` > 0)."""
    stamp = when.astimezone(timezone.utc).strftime("%Y%m%d_%H%M%S")
    return f"{encode_dbname(database)}_backup_{stamp}{f'_{n}' if n else ''}.{EXTENSIONS[fmt]}"


@dataclass(frozen=True)
class ParsedName:
    database: str
    stamp: datetime  # naive-as-UTC for our archives; timezone unknown for legacy ones
    n: int
    ext: str


def parse_archive_name(name: str) -> ParsedName | None:
    m = NAME_RE.match(name)
    if not m:
        return None
    try:
        db = decode_dbname(m.group("db"))
        stamp = datetime.strptime(m.group("date") + m.group("time"), "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    except (ValueError, UnicodeDecodeError):
        return None
    return ParsedName(db, stamp, int(m.group("n") or 0), m.group("ext"))


#: An archive dated more than this many seconds after this machine's clock is "in the future".
FUTURE_SLACK_S = 300


@dataclass
class Backup:
    """One entry of a backup folder: an archive with its manifest, a manifest whose
    archive is missing (a FAILED run), or a legacy archive with no manifest."""

    dir: str
    name: str                      # archive file name
    manifest: dict | None
    size: int | None = None        # bytes on disk, None when the archive is absent
    origin_dir: str | None = None  # sub-folder (origin host) for pulled backups

    @property
    def path(self) -> str:
        return posixpath.join(self.dir, self.name)

    @property
    def manifest_path(self) -> str:
        return self.path + MANIFEST_SUFFIX

    @property
    def legacy(self) -> bool:
        return self.manifest is None

    @property
    def status(self) -> str:
        """The manifest's status (DONE, FAILED, STARTED), ``LEGACY`` without one, ``MISSING``
        for a DONE manifest whose archive is gone, ``DAMAGED`` for one whose archive's size
        differs from the manifest's (:attr:`damaged`)."""
        if self.manifest is None:
            return "LEGACY"
        st = self.manifest.get("status", "?")
        if st == "DONE" and self.size is None:
            return "MISSING"
        if st == "DONE" and self.damaged:
            return "DAMAGED"
        return st

    @property
    def damaged(self) -> bool:
        """The archive's size on disk differs from its manifest's ``bytes``: truncated or
        changed since it was written. A stat, no read (``db.verify`` checks the sha256).
        Such a backup is never ``latest``, never counted as a good backup by retention,
        and never pruned by it: restoring it by name fails the archive check."""
        want = (self.manifest or {}).get("bytes")
        if self.size is None or want is None:
            return False
        return type(want) is not int or self.size != want  # a manifest whose bytes is no count is damaged too

    @property
    def damage(self) -> str:
        """How a DAMAGED archive differs from its manifest, for messages: ``N bytes on disk, M in
        its manifest``."""
        return f"{self.size} bytes on disk, {(self.manifest or {}).get('bytes')!r} in its manifest"

    @property
    def database(self) -> str | None:
        if self.manifest:
            return self.manifest.get("database")
        p = parse_archive_name(self.name)
        return p.database if p else None

    @property
    def origin_host(self) -> str | None:
        if self.manifest:
            return self.manifest.get("origin_host")
        return self.origin_dir

    @property
    def started_at(self) -> datetime | None:
        if self.manifest:
            return parse_iso(self.manifest.get("started_at"))
        p = parse_archive_name(self.name)
        return p.stamp if p else None  # time zone unknown for legacy files

    @property
    def format(self) -> str | None:
        if self.manifest:
            return self.manifest.get("format")
        for ext, fmt in FORMAT_OF_EXT.items():
            if self.name.endswith("." + ext):
                return fmt
        return "plain-sql" if self.name.endswith(".sql") else None

    @property
    def kind(self) -> str:
        return self.manifest.get("kind", "?") if self.manifest else "legacy"

    @property
    def id(self) -> str:
        """The backup's short id (:func:`backup_id` of its file name)."""
        return backup_id(self.name)

    @property
    def shown_name(self) -> str:
        """The name as ``db.list`` prints it: ``prod/NAME`` for a pulled backup."""
        return f"{self.origin_dir}/{self.name}" if self.origin_dir else self.name

    @property
    def verification(self) -> str | None:
        """The NEWEST verification's outcome: ``passed``, ``failed``, or None (never verified)."""
        vs = (self.manifest or {}).get("verifications") or []
        if not vs:
            return None
        return "passed" if vs[-1].get("ok") else "failed"

    @property
    def verified(self) -> bool:
        """True when the NEWEST verification passed (a later failed one wins over an older pass)."""
        vs = (self.manifest or {}).get("verifications") or []
        return bool(vs and vs[-1].get("ok"))

    @property
    def complete(self) -> bool:
        """A backup of every table's data (not ``--schema-only``, no ``--exclude-table-data``)."""
        m = self.manifest or {}
        return not m.get("schema_only") and not m.get("excluded_table_data")

    @property
    def contents(self) -> str:
        m = self.manifest or {}
        if m.get("schema_only"):
            return "schema-only"
        if m.get("excluded_table_data"):
            return "partial data"
        return "full"

    def in_future(self, now: datetime | None = None) -> bool:
        """Dated (manifest UTC start; a legacy file's name) more than :data:`FUTURE_SLACK_S`
        ahead of ``now`` (default: this machine's clock): a clock was wrong when it was
        made, or is wrong now. Never ``latest`` (:func:`latest`)."""
        at = self.started_at
        if at is None:
            return False
        if at.tzinfo is None:  # a legacy name: time zone unknown, read as UTC
            at = at.replace(tzinfo=timezone.utc)
        return (at - (now or utcnow())).total_seconds() > FUTURE_SLACK_S

    def to_json(self, now: datetime | None = None) -> dict:
        m = self.manifest or {}
        vs = m.get("verifications") or []
        return {"id": self.id, "name": self.name, "path": self.path, "database": self.database, "origin_host": self.origin_host,
                "status": self.status, "kind": self.kind, "label": m.get("label"), "format": self.format,
                "started_at": iso(self.started_at), "bytes": self.size, "contents": self.contents, "legacy": self.legacy,
                "timezone_known": not self.legacy, "verified": self.verified, "verification": self.verification,
                "verified_at": vs[-1].get("at") if vs else None,
                "verification_error": vs[-1].get("error") if vs and not vs[-1].get("ok") else None,
                "error": m.get("error") if self.status == "FAILED" else None,
                "sha256": m.get("sha256"), "future": self.in_future(now)}

    def failed_message(self, what: str = "restore") -> str:
        """The message for a FAILED (or never finished) run asked for by name or id:
        ``backup NAME failed at TIME: ERROR; nothing to restore``."""
        m = self.manifest or {}
        if self.status == "STARTED":
            return (f"backup {self.shown_name} (started {m.get('started_at') or '?'}) never finished: "
                    f"it is running, or was killed; nothing to {what}")
        at = m.get("finished_at") or m.get("started_at") or "?"
        err = " ".join((m.get("error") or "no error recorded").split())[:300]
        return f"backup {self.shown_name} failed at {at}: {err}; nothing to {what}"

    def require_archive(self, what: str = "restore") -> None:
        """Check that this backup, asked for by name or id, has an archive to ``what``.

        Raises:
            ArchiveError: a FAILED or unfinished run (:meth:`failed_message`), or a DONE
                manifest whose archive file is gone.
        """
        if self.status in ("FAILED", "STARTED"):
            raise ArchiveError(self.failed_message(what))
        if self.status == "MISSING":
            raise ArchiveError(f"backup {self.shown_name} is gone: its manifest says DONE but {self.path} is "
                               f"missing; nothing to {what}")


#: the length of the id ``db.list`` shows (hex digits of sha256 of the file name)
ID_LEN = 8
#: the shortest id prefix accepted (git's ``--short`` minimum is 4 too)
ID_MIN = 4
ID_RE = re.compile(r"^[0-9a-f]{%d,64}$" % ID_MIN)


def backup_id(name: str) -> str:
    """A backup's id: the first :data:`ID_LEN` hex digits of the sha256 of its archive's
    file name (``bigskies_backup_20261129_085200.sql.gz`` -> 8 hex digits).

    Stable: it depends on the name only, so it never changes when newer backups arrive,
    and a backup pulled with its name (``db.pull --existing``) has the same id on both
    machines. Lower-case hex, so it is never mistaken for ``db.list``'s old row numbers,
    a date, or a path."""
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:ID_LEN]


def looks_like_id(spec: str | None) -> bool:
    """Whether ``spec`` can be an id or an id prefix (4 to 64 lower-case hex digits)."""
    return bool(spec) and bool(ID_RE.match(spec))


def by_id(backups: list["Backup"], spec: str) -> list["Backup"]:
    """The backups whose id starts with ``spec`` (git-style unique prefix; the caller
    decides what 0 or several matches mean)."""
    if not looks_like_id(spec):
        return []
    return [b for b in backups if b.id.startswith(spec[:ID_LEN]) and
            (len(spec) <= ID_LEN or hashlib.sha256(b.name.encode("utf-8", "surrogateescape")).hexdigest()
             .startswith(spec))]


def find(backups: list["Backup"], spec: str) -> list["Backup"]:
    """The backups ``spec`` names, as the tasks accept it: a file name, ``origin/NAME`` as
    ``db.list`` shows it, a path, or an id (prefix). Returns every match (the caller
    reports none or several)."""
    hit = [b for b in backups if spec in (b.name, b.path, b.shown_name)]
    return hit or by_id(backups, spec)


def ambiguous_message(spec: str, matches: list["Backup"]) -> str:
    """Message for an id (prefix) or name that matches several backups."""
    names = ", ".join(f"{b.id} {b.shown_name}" for b in matches[:5])
    return (f"{spec} matches {len(matches)} backups ({names}{' ...' if len(matches) > 5 else ''}); "
            f"give more of the id, the file name, or --origin")


def id_rule(spec: str) -> str:
    """``(4 or more hex digits)``, the id rule in a "no such backup" message; for a short
    hex ``spec`` (``b3b``) it says how many it has."""
    short = (f"; {spec!r} has {len(spec)}" if spec and len(spec) < ID_MIN and not spec.isdigit()
             and re.fullmatch(r"[0-9a-fA-F]+", spec) else "")
    return f"({ID_MIN} or more hex digits{short})"


def id_hint(spec: str, host_name: str, listing: str | None = None) -> str:
    """``"; ids are the first column of `db.list --host dev` (4 or more hex digits)"`` for a
    "no such backup" message when ``spec`` looks like an attempt at an id or a row number
    (digits, hex digits), else "". ``listing``: the command to name instead."""
    if not spec or not re.fullmatch(r"[0-9a-fA-F]{1,64}", spec):
        return ""
    return f"; ids are the first column of `{listing or 'db.list --host ' + host_name}` {id_rule(spec)}"


def named_backup(everything: list["Backup"], spec: str, origin: str | None, host_name: str) -> "Backup | None":
    """The one backup ``spec`` names among ``everything`` (a host's folder with its pulled
    sub-folders): the lookup ``db.restore``, ``db.verify`` and ``db.delete`` share
    (docs/cli.md "Ids"). A name or path is looked for in the ``origin`` sub-folder (None:
    the folder itself) first, then anywhere; an id (prefix), ``prod/NAME`` (as ``db.list
    --all`` shows it) and a path name one backup wherever it is; a bare file name found only
    in another folder than ``origin`` is refused, naming the flag.

    Returns:
        the backup (any status: the caller decides what FAILED or MISSING means), or None
        when nothing matches (the caller names where it looked; :func:`id_hint`).

    Raises:
        ArchiveError: several match (:func:`ambiguous_message`); a name found only in
            another sub-folder than ``origin`` (``NAME: that is prod/NAME, a backup pulled
            from prod; pass --origin prod (or its id ..., or its path: ...)``), exit 1.
    """
    here = [b for b in everything if b.origin_dir == origin]
    hits = find(here, spec) or find(everything, spec)
    if len(hits) > 1:
        raise ArchiveError(ambiguous_message(spec, hits))
    if not hits:
        return None
    b = hits[0]
    if spec == b.name and b.origin_dir != origin:
        # a bare file name does not say which folder: an id, prod/NAME and a path do
        flag = f"--origin {b.origin_dir}" if b.origin_dir else "no --origin"
        whose = f"pulled from {b.origin_dir}" if b.origin_dir else f"of {host_name} itself"
        raise ArchiveError(f"{spec}: that is {b.shown_name}, a backup {whose}; pass {flag} "
                           f"(or its id {b.id}, or its path: {b.path})")
    return b


def is_archive_file(name: str) -> bool:
    return bool(NAME_RE.match(name)) and not name.endswith(PARTIAL_SUFFIX)


def scan_dir(runner, directory: str, origin_dir: str | None = None) -> list[Backup]:
    """List one folder (no recursion): manifests, archives, legacy archives.

    ``.partial`` files, temp files and unrelated files are ignored.
    """
    names = set(runner.listdir(directory))
    out: list[Backup] = []
    seen = set()
    for n in sorted(names):
        if n.endswith(MANIFEST_SUFFIX):
            arch = n[: -len(MANIFEST_SUFFIX)]
            try:
                man = json.loads(runner.read_bytes(posixpath.join(directory, n)))
            except (OSError, ValueError):
                continue
            if not isinstance(man, dict) or man.get("schema_version") != SCHEMA_VERSION:
                continue
            size = _size(runner, posixpath.join(directory, arch)) if arch in names else None
            out.append(Backup(directory, arch, man, size, origin_dir))  # size None: MISSING
            seen.add(arch)
    for n in sorted(names):
        if n in seen or n.endswith(MANIFEST_SUFFIX) or n.endswith(PARTIAL_SUFFIX) or n.startswith("."):
            continue
        if is_archive_file(n) and (size := _size(runner, posixpath.join(directory, n))) is not None:
            out.append(Backup(directory, n, None, size, origin_dir))
    return out


def _size(runner, path: str) -> int | None:
    """Bytes of ``path``, or None where there is no file to measure: a dangling symlink in
    the archive's place, or a file pruned between the folder's listing and this stat
    (helper-38: either made db.list fail)."""
    try:
        return runner.size(path)
    except (OSError, StorageError):
        return None


def list_backups(runner, backup_dir: str, *, origin: str | None = None, include_all: bool = False) -> list[Backup]:
    """Backups newest first. Default: the folder itself (the host's own backups);
    ``origin``: the ``<origin>/`` sub-folder of pulled backups; ``include_all``: both."""
    found: list[Backup] = []
    if origin is None or include_all:
        try:
            found += scan_dir(runner, backup_dir)
        except NotADirectoryError:
            raise StorageError(f"backup folder {backup_dir} is not a directory (backup.dir)") from None
    if origin is not None or include_all:
        subs = [origin] if origin and not include_all else [
            d for d in runner.listdir(backup_dir) if not d.startswith(".") and "." not in d]
        for sub in subs:
            try:
                found += scan_dir(runner, posixpath.join(backup_dir, sub), origin_dir=sub)
            except NotADirectoryError:  # an unrelated file without a dot in its name (README)
                continue
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    # manifests keep whole seconds: two backups started in the same second are told apart by
    # their finish (a plain and a custom run back to back were listed in name order)
    found.sort(key=lambda b: (b.started_at or epoch, (b.manifest or {}).get("finished_at") or "", b.name),
               reverse=True)
    return found


def latest(backups: list[Backup], database: str | None = None, origin_host: str | None = None,
           complete_only: bool = False, damaged_too: bool = False) -> Backup | None:
    """Newest DONE backup (by the manifest's UTC start) of (origin_host, database); a
    newer DAMAGED one (:attr:`Backup.damaged`) is passed over with a warning.

    ``complete_only`` skips ``--schema-only`` and ``--exclude-table-data`` backups: what
    ``db.restore latest`` wants (restoring a schema-only dump would empty every table).
    ``damaged_too`` takes DAMAGED ones like DONE ones: what ``db.verify latest`` wants
    (finding the damage is its job, and its failure is recorded and notified).

    An archive dated in the future (:meth:`Backup.in_future`, by this machine's clock)
    is never ``latest``: it would stay "newest" for as long as the clock error lasts and
    hide every real backup after it (and retention would keep it). It is passed over with
    a warning naming it and how to pick it by name (:func:`bigskies_ops.report.note`).
    """
    mine = [b for b in backups if (b.complete or not complete_only)
            and (database is None or b.database == database)
            and (origin_host is None or b.origin_host == origin_host)]
    ok = ("DONE", "DAMAGED") if damaged_too else ("DONE",)
    cands = sorted((b for b in mine if b.status in ok), key=lambda b: b.started_at, reverse=True)
    now = utcnow()
    ahead = [b for b in cands if b.in_future(now)]
    for b in ahead:
        report.note(future_warning(b, now))
    cands = [b for b in cands if not b.in_future(now)]
    newest = cands[0].started_at if cands else None
    for b in mine:  # a damaged one newer than what is taken: say why it was not
        if b.status == "DAMAGED" and b.started_at and (newest is None or b.started_at > newest):
            report.note(f"warning: not taken as latest: {b.shown_name} is damaged: {b.damage} (truncated or changed)")
    return cands[0] if cands else None


def future_warning(b: Backup, now: datetime | None = None) -> str:
    """The warning for an archive dated in the future that ``latest`` passed over."""
    now = now or utcnow()
    return (f"warning: not taken as latest: {b.name} is dated {iso(b.started_at)}, "
            f"{human_age(now, b.started_at)} ahead of this machine's clock ({iso(now)}); check the clocks. "
            f"To use it anyway, name it: {b.path}")


def write_manifest(runner, archive_path: str, manifest: dict) -> None:
    """Atomically (temp + fsync + rename) write ``<archive>.manifest.json``."""
    runner.write_atomic(archive_path + MANIFEST_SUFFIX, json_bytes(manifest))


def read_manifest(runner, archive_path: str) -> dict | None:
    p = archive_path + MANIFEST_SUFFIX
    if not runner.exists(p):
        return None
    try:
        return json.loads(runner.read_bytes(p))
    except ValueError as e:
        raise StorageError(f"{p}: manifest is not valid JSON ({e})") from e


