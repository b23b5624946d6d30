"""``inv apply``: bring every selected host to what the inventory declares (docs/apply.md).

The inventory is the desired state; each host converges an ordered list of items, each
reporting ``ok`` (already so), ``changed`` (made so; under ``check``: would be made so),
``failed`` or ``skipped``, with a reason. Hosts run in parallel threads (the pattern of
:func:`bigskies_ops.jobs.fleet.run_on_hosts`); one host's failure never stops the others.

The items, in order (:mod:`bigskies_ops.jobs.apply_items` has each one):

1. reachability: ``ssh`` (SSH hosts; :func:`bigskies_ops.jobs.ping.ssh_check`): when it
   fails the host is ``unreachable`` (Ansible's word) and nothing else of it runs;
   ``container`` (container access) and ``postgres`` (the login), whose failure skips the
   items that need the database;
2. ``backup folder``; 3. ``schedule``; 4. ``pgpass``; 5. ``offsite NAME`` per target;
6. ``notifications``, ``heartbeat``; 7. ``metrics textfile``; 8. ``roles``.

``check``: nothing is written (no file, crontab, mode or probe); every probe is a read.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from bigskies_ops import report
from bigskies_ops.errors import EXIT_FAILED, EXIT_OK, BigskiesError, SafetyError
from bigskies_ops.inventory import Host, Inventory
from bigskies_ops.jobs.apply_items import CHANGED, FAILED, OK, SKIPPED, UNREACHABLE, Item

#: hosts converged at once (each holds an SSH connection and a database session)
MAX_PARALLEL = 8


@dataclass
class HostApply:
    """A host's run: its items in order; ``unreachable`` when SSH could not reach it."""
    host: str
    check: bool = False
    items: list[Item] = field(default_factory=list)
    unreachable: bool = False
    seconds: float | None = None

    @property
    def result(self) -> str:
        """``unreachable``, else ``failed`` (an item failed), else ``changed``, else ``ok``."""
        if self.unreachable:
            return UNREACHABLE
        words = {i.result for i in self.items}
        return FAILED if FAILED in words else CHANGED if CHANGED in words else OK

    @property
    def exit_code(self) -> int:
        """1 for an unreachable host; 1 for a failed one, except under ``check`` (a plan was
        made: what would fail is reported, docs/cli.md "Dry runs"); else 0."""
        if self.unreachable or (self.result == FAILED and not self.check):
            return EXIT_FAILED
        return EXIT_OK

    def recap(self) -> dict[str, int]:
        """``{ok, changed, failed, skipped, unreachable}``: the items counted by result; an
        unreachable host counts ``unreachable=1`` and nothing else (its items did not run)."""
        if self.unreachable:
            return {OK: 0, CHANGED: 0, FAILED: 0, SKIPPED: 0, UNREACHABLE: 1}
        out = {w: sum(i.result == w for i in self.items) for w in (OK, CHANGED, FAILED, SKIPPED)}
        out[UNREACHABLE] = 0
        return out

    def failed_items(self) -> list[str]:
        return [i.item for i in self.items if i.result in (FAILED, UNREACHABLE)]

    def to_json(self, with_diff: bool = False) -> dict:
        out = {"host": self.host, "result": self.result, "exit_code": self.exit_code, "recap": self.recap(),
               "items": [i.to_json(with_diff) for i in self.items]}
        if self.seconds is not None:
            out["seconds"] = round(self.seconds, 3)
        return out


@dataclass(frozen=True)
class Options:
    """How to apply: ``check`` (a dry run), ``diff`` (keep the unified diffs of managed
    files), ``protected_ok`` (the protected hosts whose crontab block may prune: the
    ``--force-protected --confirm DBNAME`` consent db.schedule asks for)."""
    check: bool = False
    diff: bool = False
    protected_ok: frozenset = frozenset()


def needs_consent(inv: Inventory, host: Host) -> bool:
    """Whether applying ``host`` needs ``--force-protected --confirm DBNAME``: a protected
    host that declares a ``schedule`` gets a crontab block whose nightly run prunes, the
    consent ``db.schedule`` asks for on such a host (docs/safety.md), unless its block is
    already exactly that (apply would change nothing there). Nothing else apply does is
    destructive (a pgpass file, a folder, probes, a metrics file)."""
    if not (host.protected and host.is_set("schedule")):
        return False
    from bigskies_ops.jobs import schedule as sch
    try:
        cur = sch.Crontab().read()
        want = sch.block(inv, host, sch.default_log(inv, host), protected_ok=True)
    except BigskiesError:  # unreadable crontab or a bad expression: the item says so; ask as before
        return True
    return sch.replace_block(cur, host.name, want) != cur


def consent(inv: Inventory, hosts: list[Host], *, force_protected: bool,
            confirm: str | None) -> tuple[frozenset, dict[str, str]]:
    """Which hosts have the consent :func:`needs_consent` asks for, by db.schedule's rule
    (each protected host alone: ``--force-protected --confirm`` its database;
    :func:`bigskies_ops.safety.check_destructive`).

    Returns:
        ``(hosts given consent, {host: the refusal's message})``.
    """
    from bigskies_ops.safety import check_destructive
    ok, refused = set(), {}
    for h in hosts:
        if not needs_consent(inv, h):
            continue
        try:
            check_destructive(h, "prune", database=h.postgres.database, force_protected=force_protected,
                              confirm=confirm)
            ok.add(h.name)
        except SafetyError as e:
            refused[h.name] = f"{e} (its crontab block prunes every night, as db.schedule's does)"
    return frozenset(ok), refused


def apply_hosts(inv: Inventory, hosts: list[Host], opts: Options, *,
                on_done: Callable[[HostApply], None] | None = None) -> list[HostApply]:
    """Converge ``hosts`` in parallel threads; results in the order of ``hosts``.

    ``on_done`` is called with each host's result as soon as it is done (one call at a time),
    so a long run shows results as they come. Never raises for a host's fault: an unexpected
    error is a failed item of that host (KeyboardInterrupt still propagates).
    """
    import threading
    told = threading.Lock()

    def one(h: Host) -> HostApply:
        t0 = time.monotonic()
        try:
            res = apply_host(inv, h, opts)
        except Exception as e:  # noqa: BLE001 - a bug on one host must not hide the others' results
            res = HostApply(h.name, opts.check, [Item("apply", FAILED, f"unexpected error: {type(e).__name__}: {e}")])
        res.seconds = time.monotonic() - t0
        if on_done is not None:
            with told:
                on_done(res)
        return res

    if len(hosts) == 1:
        return [one(hosts[0])]

    def one_prefixed(h: Host) -> HostApply:
        with report.reporting(report.prefixed(h.name)):
            return one(h)
    with ThreadPoolExecutor(max_workers=min(len(hosts), MAX_PARALLEL), thread_name_prefix="apply") as ex:
        futures = [ex.submit(report.carried(one_prefixed), h) for h in hosts]  # a context per host
        return [f.result() for f in futures]


def apply_host(inv: Inventory, host: Host, opts: Options) -> HostApply:
    """Every item of one host, in order (the module docstring). Never raises for the host's
    faults: each is a failed item (or the host is unreachable)."""
    from bigskies_ops.hosts import runner_for
    from bigskies_ops.jobs import apply_items as it
    from bigskies_ops.pg.access import PostgresAccess
    res = HostApply(host.name, opts.check)
    runner = runner_for(host)
    try:
        if host.is_remote:
            ssh = it.ssh_item(host, runner)
            if ssh.result == UNREACHABLE:
                res.unreachable = True
                res.items.append(ssh)
                return res
            res.items.append(ssh)
        access = PostgresAccess(host, runner)
        try:
            reach = it.database_items(access)
            res.items += reach
            db_down = next((f"the {i.item} item failed" for i in reach if i.result == FAILED), None)
            res.items.append(it.guarded("backup folder", it.backup_folder, host, runner, opts))
            res.items.append(it.guarded("schedule", it.schedule, inv, host, opts))
            res.items.append(it.guarded("pgpass", it.pgpass, host, runner, opts))
            res.items += it.offsite(inv, host, opts)
            res.items += it.notifications(inv, host)
            res.items.append(it.guarded("metrics textfile", it.metrics_textfile, inv, host, opts))
            res.items.append(it.guarded("roles", it.roles, host, access, db_down))
        finally:
            access.close()
    finally:
        try:
            runner.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass
    return res


def exit_code(results: list[HostApply]) -> int:
    """0 when every host is ok or changed (under check: every host planned), else 1."""
    return max((r.exit_code for r in results), default=EXIT_OK)


def overall(results: list[HostApply]) -> str:
    """The run's word: ``failed`` (a host failed or was unreachable), ``changed``, ``ok``."""
    words = {r.result for r in results}
    if words & {FAILED, UNREACHABLE}:
        return FAILED
    return CHANGED if CHANGED in words else OK
