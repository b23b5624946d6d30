"""The items ``inv apply`` converges on a host (:mod:`bigskies_ops.jobs.apply`; docs/apply.md).

Each function returns the :class:`Item` (or items) of one declared piece of standing state.
``opts`` is an :class:`bigskies_ops.jobs.apply.Options` (``check``, ``diff``,
``protected_ok``). Under ``check`` nothing is written: probes are reads (``test -w``, a
listing), and ``changed`` means "would change". What would fail is ``failed`` with
``would fail: ...``.

Files that several hosts may share (the crontab, a local pgpass file, a metrics textfile)
are read and written under one lock per kind, so hosts converging in parallel never lose
each other's lines.
"""
from __future__ import annotations

import difflib
import os
import threading
import uuid
from dataclasses import dataclass, field

from bigskies_ops.errors import BigskiesError
from bigskies_ops.hosts.runners import write_probe
from bigskies_ops.inventory import Host, Inventory

OK, CHANGED, FAILED, SKIPPED, UNREACHABLE = "ok", "changed", "failed", "skipped", "unreachable"

#: the backup folder's mode when apply creates it: what ``db.backup`` creates ``backup.dir``
#: with (the runners' ``makedirs``), the archives inside being 0640 (umask 027). An existing
#: folder may be stricter (0700); group write or any access for others is taken away.
FOLDER_MODE = 0o750
#: the bits a backup folder must not have (group write, anything for others)
FOLDER_FORBIDDEN = 0o027

_CRONTAB_LOCK = threading.Lock()
_PGPASS_LOCK = threading.Lock()
_METRICS_LOCK = threading.Lock()

#: why a path cannot be written, from the host itself (POSIX sh: also a macOS control
#: machine): an existing path must be writable, else the nearest existing folder above it
_UNWRITABLE_SCRIPT = r'''p=$1
if [ -e "$p" ]; then
  if [ -d "$p" ] && [ "$2" = file ]; then echo "$p is a folder"; exit 1; fi
  if [ ! -d "$p" ] && [ "$2" = dir ]; then echo "$p is not a folder"; exit 1; fi
  [ -w "$p" ] && exit 0; echo "$p is not writable"; exit 1
fi
d=$(dirname -- "$p")
while [ ! -e "$d" ]; do d=$(dirname -- "$d"); done
[ -d "$d" ] || { echo "$d is not a folder"; exit 1; }
[ -w "$d" ] || { echo "$d is not writable"; exit 1; }
exit 0'''


@dataclass
class Item:
    """One item's outcome: ``result`` is ok | changed | failed | skipped (| unreachable for
    the ``ssh`` item of a host that cannot be reached); ``diff`` the unified diff of a file
    it manages (passwords masked), ``[]`` when it has none."""
    item: str
    result: str
    reason: str
    diff: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self, with_diff: bool = False) -> dict:
        out = {"item": self.item, "result": self.result, "reason": self.reason}
        if self.warnings:
            out["warnings"] = self.warnings
        if with_diff:
            out["diff"] = "\n".join(self.diff) + "\n" if self.diff else ""
        return out


def _one_line(e: BaseException) -> str:
    text = " | ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
    return text[:400] or type(e).__name__


def guarded(name: str, fn, *args) -> Item:
    """``fn(*args)``, its library or file errors turned into a failed item ``name``."""
    try:
        return fn(*args)
    except (BigskiesError, OSError) as e:
        return Item(name, FAILED, _one_line(e))


def unwritable(runner, path: str, kind: str = "file") -> str | None:
    """Why ``path`` (``kind``: ``file`` or ``dir``) cannot be written or created on the
    runner's host, or None when it can (a read: ``test -w`` of it or of the nearest existing
    folder above it; as root only a read-only mount, a non-folder or an ACL says no)."""
    r = runner.script(_UNWRITABLE_SCRIPT, path, kind, check=False)
    return None if r.returncode == 0 else (r.text.strip() or f"{path} cannot be written")


def _would(opts, text: str) -> str:
    return f"would fail: {text}" if opts.check else text


def _masked_pgpass(before: list[str], after: list[str]) -> tuple[list[str], list[str]]:
    """pgpass lines with their passwords masked; an entry whose password changed is masked
    ``********`` before and ``******** (changed)`` after, so a diff still shows it (pure)."""
    from bigskies_ops.pg import pgpass as pp

    def key_pw(line: str):
        f = pp.split_fields(line.rstrip("\r"))
        return (tuple(f[:4]), f[4]) if f is not None and len(f) >= 5 and not line.lstrip().startswith("#") else None
    old = dict(kp for kp in map(key_pw, before) if kp)
    out = []
    for line in after:
        kp = key_pw(line)
        changed = kp is not None and kp[0] in old and old[kp[0]] != kp[1]
        out.append(pp.masked(line) + (" (changed)" if changed else ""))
    return [pp.masked(x) for x in before], out


def unified(before: list[str], after: list[str], where: str) -> list[str]:
    """The unified diff (difflib, 3 lines of context) of a managed file's lines."""
    return list(difflib.unified_diff(before, after, fromfile=f"{where} (before)", tofile=f"{where} (after)",
                                     lineterm=""))


# ------------------------------------------------------------------ 1. reachability
def ssh_item(host: Host, runner) -> Item:
    """``ssh``: ok, or ``unreachable`` (connect refused, timeout, DNS, authentication, an
    unknown or changed host key): inventory.ping's rule (:func:`bigskies_ops.jobs.ping.ssh_check`)."""
    from bigskies_ops.jobs.ping import ssh_check
    c = ssh_check(host, runner)
    if c.state == "failed":
        return Item("ssh", UNREACHABLE, c.message)
    return Item("ssh", OK, c.message)


def database_items(access) -> list[Item]:
    """``container`` (container access: present and running) and ``postgres`` (the login);
    the login is skipped, naming why, when the container is not running."""
    from bigskies_ops.jobs.ping import container_check, postgres_check
    out = []
    if access.host.container:
        c = container_check(access)
        out.append(Item("container", c.state if c.state in (OK, FAILED) else OK, c.message))
        if c.state == FAILED:
            out.append(Item("postgres", SKIPPED, "not checked: the container item failed"))
            return out
    c = postgres_check(access)
    out.append(Item("postgres", FAILED if c.state == FAILED else OK, c.message))
    return out


# ------------------------------------------------------------------ 2. backup folder
def backup_folder(host: Host, runner, opts) -> Item:
    """``backup.dir`` exists (created :data:`FOLDER_MODE`), has no group write and no access
    for others (taken away), and a file can be created there (a probe, removed; under
    check: ``test -w``)."""
    from bigskies_ops.pg.pgpass import file_mode
    name, d = "backup folder", host.backup.dir
    problem = unwritable(runner, d, "dir")
    if problem:
        return Item(name, FAILED, _would(opts, f"{d}: {problem}"))
    mode = file_mode(runner, d)
    if mode is None:
        if opts.check:
            return Item(name, CHANGED, f"{d} would be created ({FOLDER_MODE:04o})")
        runner.makedirs(d, mode=FOLDER_MODE)
        write_probe(runner, d, "apply")
        return Item(name, CHANGED, f"{d} created ({file_mode(runner, d) or FOLDER_MODE:04o})")
    if mode & FOLDER_FORBIDDEN:
        new = mode & ~FOLDER_FORBIDDEN
        if opts.check:
            return Item(name, CHANGED, f"{d} mode {mode:04o} would become {new:04o} (no group write, nothing "
                                       f"for others: it holds whole databases)")
        _chmod(runner, d, new)
        write_probe(runner, d, "apply")
        return Item(name, CHANGED, f"{d} mode {mode:04o} -> {new:04o} (no group write, nothing for others)")
    if not opts.check:
        write_probe(runner, d, "apply")
    return Item(name, OK, f"{d} ({mode:04o}), writable")


def _chmod(runner, path: str, mode: int) -> None:
    if getattr(runner, "is_remote", False):
        runner.run(["chmod", f"{mode:o}", "--", path])
    else:
        os.chmod(path, mode)


# ------------------------------------------------------------------ 3. schedule
def schedule(inv: Inventory, host: Host, opts) -> Item:
    """The host's crontab block (:func:`bigskies_ops.jobs.schedule.converge`; the crontab
    file of ``$BIGSKIES_CRONTAB_FILE`` when set). A host without a ``schedule`` key and
    without a block is ``skipped``; one whose block is there (``db.schedule`` installed it at
    the default time) keeps it, converged like a declared one: a backup schedule is never
    removed by leaving a key out (``db.schedule --remove`` removes it). A protected host's
    block needs the consent :func:`apply.consent` checks, when it would change."""
    from bigskies_ops.jobs.schedule import Crontab, converge, current_block
    name = "schedule"
    with _CRONTAB_LOCK:
        if not host.is_set("schedule") and not current_block(Crontab().read(), host.name):
            return Item(name, SKIPPED, "no schedule declared (and no crontab block of this host)")
        refused = host.protected and host.name not in opts.protected_ok
        if refused and not host.is_set("schedule"):  # kept as db.schedule left it: nothing to consent to
            return Item(name, OK, "no schedule declared: the crontab block db.schedule installed is kept as it is "
                                  "(declare schedule: to manage it; db.schedule --remove removes it)")
        r = converge(inv, host, check=opts.check or refused, protected_ok=host.protected)
    diff = unified(r.before, r.lines, r.where) if opts.diff and r.changed else []
    entries = len(r.lines) - 2  # without the BEGIN/END markers
    if refused and r.changed:
        from bigskies_ops.safety import check_destructive
        why = f"{host.name} is protected"
        try:
            check_destructive(host, "prune", database=host.postgres.database)
        except BigskiesError as e:
            why = str(e)
        return Item(name, FAILED, f"would be refused: {why} (the block prunes every night, as db.schedule's does)",
                    diff=diff, warnings=r.warnings)
    if not r.changed:
        return Item(name, OK, f"crontab block up to date ({entries} lines, {r.where})", warnings=r.warnings)
    verb = "would be written" if opts.check else "written"
    return Item(name, CHANGED, f"crontab block {verb} ({entries} lines, {r.where})", diff=diff, warnings=r.warnings)


# ------------------------------------------------------------------ 4. pgpass
def pgpass(host: Host, runner, opts) -> Item:
    """The host's pgpass file (:func:`bigskies_ops.pg.pgpass.converge`) when it declares
    ``postgres.password_env``; a ``postgres.passfile`` alone is checked (present, 0600, an
    entry for the database and user); neither: skipped. Container access reads no pgpass
    file on the host (the password goes in by name, ``-e PGPASSWORD``): skipped."""
    from bigskies_ops.pg import pgpass as pp
    name, pg = "pgpass", host.postgres
    if host.container:
        return Item(name, SKIPPED, "container access: the password goes into the container by name, no pgpass "
                                   "file on the host is read")
    if not pg.password_env:
        if pg.passfile:
            return _passfile_only(host, runner, pg.passfile)
        return Item(name, SKIPPED, "no postgres.password_env or postgres.passfile declared")
    if pg.password_env not in os.environ:
        return Item(name, FAILED, _would(opts, f"variable {pg.password_env} (hosts.{host.name}.postgres.password_env) "
                                               f"is not set here: apply writes the password it holds"))
    path = pp.default_path(host, runner)
    problem = unwritable(runner, path)
    if problem:
        return Item(name, FAILED, _would(opts, f"cannot write the pgpass file {path}: {problem}"))
    with _PGPASS_LOCK:
        before = runner.read_bytes(path).decode("utf-8") if runner.exists(path) else ""
        r = pp.converge(host, runner=runner, path=path, check=opts.check)
    diff = []
    if opts.diff and r.changes:
        after, _ = pp.converge_text(before, path, pp.wanted_entries(host, os.environ[pg.password_env]))
        diff = unified(*_masked_pgpass(before.splitlines(), after.splitlines()), path)
    if not r.changes:
        return Item(name, OK, f"{path} up to date (0600)")
    what = "; ".join(r.changes)
    return Item(name, CHANGED, f"{path}: {'would change: ' if opts.check else ''}{what}", diff=diff)


def _passfile_only(host: Host, runner, path: str) -> Item:
    """A declared passfile apply cannot write (no ``password_env`` to take the password
    from): it must exist, be 0600 (libpq ignores it otherwise) and hold an entry."""
    from bigskies_ops.pg import pgpass as pp
    name = "pgpass"
    if not runner.exists(path):
        return Item(name, FAILED, f"passfile {path} (hosts.{host.name}.postgres.passfile) does not exist; apply "
                                  f"writes one only from postgres.password_env")
    mode = pp.file_mode(runner, path)
    if mode is not None and mode & 0o077:
        return Item(name, FAILED, pp.LIBPQ_MODE_REASON.format(path=path) + f" (mode {mode:04o})")
    key = pp.wanted_entries(host, "")[0].key
    entries = pp.parse(runner.read_bytes(path).decode("utf-8", "replace"), path)
    if not any(e is not None and e.shadows(key) for _, e in entries):
        return Item(name, FAILED, f"passfile {path} has no entry for {':'.join(key)}")
    return Item(name, OK, f"passfile {path} has an entry for {':'.join(key)} (not written: no password_env)")


# ------------------------------------------------------------------ 5. offsite
def offsite(inv: Inventory, host: Host, opts) -> list[Item]:
    """One item per ``offsite`` target: reachable, and its prefix writable (a small probe
    object put and deleted through the store the upload uses; under check: a listing).
    Never changes anything: ok or failed."""
    if not host.offsite:
        return [Item("offsite", SKIPPED, "no offsite targets declared")]
    from bigskies_ops.archives.offsite_stores import parse_target, store_for
    out = []
    for raw in host.offsite:
        name = f"offsite {raw.get('name')}"
        try:
            t = parse_target(raw)
            store = store_for(t, inv)
            try:
                if opts.check:
                    n = len(store.list())
                    out.append(Item(name, OK, f"{t.describe()} reachable, {n} object(s) listed (no probe written "
                                              f"under --check)"))
                    continue
                key = t.key(host.name, f".bigskies-apply-probe-{uuid.uuid4().hex[:12]}")
                store.put_bytes(key, b"{}\n")
                store.delete([key])
                out.append(Item(name, OK, f"{t.describe()} reachable and writable (a probe object written and "
                                          f"deleted)"))
            finally:
                store.close()
        except (BigskiesError, OSError) as e:
            out.append(Item(name, FAILED, _would(opts, _one_line(e))))
    return out


# ------------------------------------------------------------------ 6. notifications, heartbeat
def notifications(inv: Inventory, host: Host) -> list[Item]:
    """``notifications`` (``notify.urls_env``, ``alerts.webhook_env``) and ``heartbeat``
    (``heartbeat.url_env``): each variable set here and its URL readable (apprise's parse;
    an http(s) heartbeat): ``inventory.check``'s rule (:func:`bigskies_ops.jobs.notify.check_urls`).
    Nothing is sent."""
    from bigskies_ops.jobs import notify
    bad = notify.check_urls(Inventory(inv.path, {host.name: host}, {}))
    out = []
    named = [(f"hosts.{host.name}.{f}", v) for f, v in notify.targets(host)]
    groups = [("notifications", named, "no notify.urls_env or alerts.webhook_env declared")]
    hb = host.heartbeat.url_env
    groups.append(("heartbeat", [(f"hosts.{host.name}.heartbeat.url_env", hb)] if hb else [],
                   "no heartbeat.url_env declared"))
    for item, variables, none in groups:
        if not variables:
            out.append(Item(item, SKIPPED, none))
            continue
        fields = {f for f, _ in variables}
        problems = [f"variable {v} ({f}) is not set here" for f, v in variables if not os.environ.get(v)]
        problems += [f"{b['field']}: {b['message']}" for b in bad if b["field"] in fields]
        if problems:
            out.append(Item(item, FAILED, "; ".join(problems)))
        else:
            out.append(Item(item, OK, f"{', '.join(v for _, v in variables)} set, URL(s) readable (nothing sent)"))
    return out


# ------------------------------------------------------------------ 7. metrics textfile
def metrics_textfile(inv: Inventory, host: Host, opts) -> Item:
    """``metrics.textfile`` (on this machine): its folder exists and is writable; the file
    is written when missing (:func:`bigskies_ops.jobs.metrics.write_textfile`, every host
    naming it). An existing file is left alone: each scheduled run rewrites it, and a
    second apply changes nothing. The folder is node_exporter's: apply does not create it."""
    name, path = "metrics textfile", host.metrics.textfile
    if not path:
        return Item(name, SKIPPED, "no metrics.textfile declared")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        return Item(name, FAILED, _would(opts, f"the folder {folder} does not exist (node_exporter's textfile "
                                               f"folder: create it, or fix metrics.textfile)"))
    if not os.access(folder, os.W_OK):
        return Item(name, FAILED, _would(opts, f"the folder {folder} is not writable"))
    with _METRICS_LOCK:
        if os.path.exists(path):
            if not opts.check:
                from bigskies_ops.hosts.local import LocalRunner
                write_probe(LocalRunner(), folder, "apply")  # the scheduled run writes a temporary file there
            return Item(name, OK, f"{path} present (each scheduled run rewrites it)")
        if opts.check:
            return Item(name, CHANGED, f"{path} would be written")
        from bigskies_ops.jobs.metrics import write_textfile
        hosts = [h for h in inv.hosts.values() if h.metrics.textfile == path]
        write_textfile(hosts, path)
    return Item(name, CHANGED, f"{path} written ({len(hosts)} host(s))")


# ------------------------------------------------------------------ 8. roles
def roles(host: Host, access, db_down: str | None) -> Item:
    """With ``backup.roles``: the login can read the roles each backup saves (the backup's
    own ``pg_dumpall --roles-only --no-role-passwords``, :func:`bigskies_ops.archives.roles.dump_roles`,
    its output discarded). A read: the same under check."""
    name = "roles"
    if not host.backup.roles:
        return Item(name, SKIPPED, "backup.roles is false")
    if db_down:
        return Item(name, SKIPPED, f"not checked: {db_down}")
    from bigskies_ops.archives.roles import dump_roles
    data = dump_roles(access)
    n = data.count(b"\nCREATE ROLE ") + data.startswith(b"CREATE ROLE ")
    return Item(name, OK, f"{host.postgres.user!r} can read the roles the backup saves ({n} role(s), "
                          f"pg_dumpall --roles-only)")
