"""``inventory.ping``: can each host be backed up right now? (Ansible users reach for
``ansible -m ping``; this checks what a backup needs, changing nothing.)

Per host, in order (a check that cannot run because an earlier one failed is
``skipped``, naming that check):

* ``ssh`` (SSH hosts): the connection opens and the host key is known
  (:class:`~bigskies_ops.hosts.ssh.SSHRunner`; an unknown or changed key is a failure);
* ``password``: the variable named by ``postgres.password_env`` is set here, or the
  ``postgres.passfile`` on the host that runs the tools has an entry for the host, port,
  database and user (libpq's matching, docs 34.16); neither configured: an entry in
  ``$PGPASSFILE``/``~/.pgpass`` there is reported, else libpq's other defaults (trust,
  peer), judged by the ``postgres`` check;
* ``container`` (container access): the container exists and is running, and the
  engine answers (:func:`bigskies_ops.jobs.status.container_state`);
* ``postgres``: logging in as ``postgres.user`` to ``postgres.database`` works
  (:class:`~bigskies_ops.pg.access.PostgresAccess`, the access every task uses);
* ``versions``: the pg_dump that backups run is at least the server's major version
  (pg_dump refuses a newer server; PostgreSQL docs, pg_dump "Notes"); a psql older than
  the server is a warning (psql docs: "works best with servers of the same or an older
  major version");
* ``backup_dir``: ``backup.dir`` exists and a file can be created there (a probe file,
  removed at once); missing is a warning (``db.backup`` creates it);
* ``free_space``: free bytes in ``backup.dir``; less than the next backup needs (the
  rule of ``db.backup``'s own space check, :func:`bigskies_ops.jobs.dump.check_backup_space`)
  is a failure.

States: ``ok``, ``warning`` (reported, not a failure), ``failed``, ``skipped``.
Hosts are checked in parallel threads; nothing is changed on any host.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bigskies_ops import output
from bigskies_ops.errors import BigskiesError
from bigskies_ops.hosts import runner_for
from bigskies_ops.hosts.runners import write_probe
from bigskies_ops.inventory import Host
from bigskies_ops.jobs.health import Check
from bigskies_ops.text import human_bytes

OK, WARNING, FAILED, SKIPPED = "ok", "warning", "failed", "skipped"
#: hosts checked at once (each holds an SSH connection and a few short processes)
MAX_THREADS = 8


#: one check's outcome, the same shape as db.health's (``facts`` JSON-ready, sizes in bytes)
PingCheck = Check


@dataclass
class HostPing:
    host: str
    access_mode: str
    checks: list[PingCheck]

    @property
    def failed(self) -> list[str]:
        """Names of the failed checks, in order."""
        return [c.name for c in self.checks if c.state == FAILED]

    @property
    def result(self) -> str:
        return FAILED if self.failed else OK

    def counts(self) -> dict[str, int]:
        return {s: sum(c.state == s for c in self.checks) for s in (OK, WARNING, FAILED, SKIPPED)}

    def to_json(self) -> dict:
        return {"host": self.host, "result": self.result, "access_mode": self.access_mode,
                "failed_checks": self.failed, "checks": [c.to_json() for c in self.checks]}


def _reason(e: BaseException) -> str:
    text = " | ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
    return text[:400] or type(e).__name__


def ping_hosts(hosts: list[Host], *, on_done=None) -> list[HostPing]:
    """Check ``hosts`` in parallel threads; results in the order of ``hosts``.

    Args:
        on_done: called with each :class:`HostPing` as its host finishes (from the
            calling thread, in finishing order), e.g. to print it at once.
    Never raises for a host's fault: that is a failed check.
    """
    if not hosts:
        return []
    out: dict[str, HostPing] = {}
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(hosts))) as pool:
        futures = {pool.submit(ping_host, h): h for h in hosts}
        from concurrent.futures import as_completed
        for f in as_completed(futures):
            h = futures[f]
            try:
                res = f.result()
            except Exception as e:  # noqa: BLE001 - one host's surprise must not hide the others
                res = HostPing(h.name, h.access_mode, [PingCheck("ping", FAILED, f"unexpected error: {_reason(e)}")])
            out[h.name] = res
            if on_done is not None:
                on_done(res)
    return [out[h.name] for h in hosts]


def ping_host(host: Host) -> HostPing:
    """All checks of one host (see the module docstring). Never raises for the host's faults."""
    checks: list[PingCheck] = []
    runner = runner_for(host)
    try:
        blocked = None  # the failed check that makes the later ones pointless
        if host.is_remote:
            c = _ssh(host, runner)
            checks.append(c)
            if c.state == FAILED:
                blocked = "ssh"
        checks.append(_password(host, runner) if not blocked else _skip("password", blocked))
        pw_failed = checks[-1].state == FAILED
        from bigskies_ops.pg.access import PostgresAccess
        access = PostgresAccess(host, runner)
        try:
            if host.container:
                c = _skip("container", blocked) if blocked else _container(access)
                checks.append(c)
                if c.state == FAILED:
                    blocked = blocked or "container"
            if blocked or pw_failed:
                checks.append(_skip("postgres", blocked or "password"))
                checks.append(_skip("versions", blocked or "password"))
            else:
                c, server = _postgres(access)
                checks.append(c)
                checks.append(_versions(access, server) if server else _skip("versions", "postgres"))
        finally:
            access.close()  # (its private password folder; the runner is closed below)
        ssh_down = blocked == "ssh"
        checks.append(_skip("backup_dir", "ssh") if ssh_down else _backup_dir(host, runner))
        checks.append(_skip("free_space", "ssh") if ssh_down else _free_space(host, runner))
    finally:
        try:
            runner.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass
    return HostPing(host.name, host.access_mode, checks)


def _skip(name: str, because: str) -> PingCheck:
    return PingCheck(name, SKIPPED, f"not checked: the {because} check failed")


def _ssh(host: Host, runner) -> PingCheck:
    s = host.ssh
    try:
        name = runner.hostname  # opens the connection (host key checked), runs one command
    except BigskiesError as e:
        from bigskies_ops.hosts.connection import HostKeyError
        kind = "host key" if isinstance(e, HostKeyError) else "connection"
        return PingCheck("ssh", FAILED, _reason(e), {"problem": kind})
    facts = {"remote_hostname": name, "host_key_checking": s.host_key_checking}
    key = "host key known" if s.host_key_checking else "host key NOT checked (ssh.host_key_checking: false)"
    return PingCheck("ssh", OK if s.host_key_checking else WARNING, f"reachable ({name}), {key}", facts)


def _password(host: Host, runner) -> PingCheck:
    pg = host.postgres
    if pg.password_env:
        if pg.password_env in os.environ:
            return PingCheck("password", OK, f"variable {pg.password_env} is set", {"source": "env"})
        hint = " or give the host a postgres.passfile" if not host.container else ""
        return PingCheck("password", FAILED, f"variable {pg.password_env} (hosts.{host.name}.postgres.password_env) "
                                             f"is not set: export it{hint}", {"source": "env"})
    if host.container:
        return PingCheck("password", OK, "no password configured: the container's own authentication (the "
                                         "postgres check shows whether that works)", {"source": "none"})
    from bigskies_ops.pg.pgpass import default_path
    try:
        path = default_path(host, runner)
        found = _pgpass_entry(host, runner, path)
    except BigskiesError as e:
        return PingCheck("password", FAILED, _reason(e), {"source": "passfile"})
    key = ":".join(_pgpass_key(host))
    if pg.passfile:
        if found is None:
            return PingCheck("password", FAILED, f"passfile {path} (hosts.{host.name}.postgres.passfile) does not "
                                                 f"exist on {host.name}", {"source": "passfile", "path": path})
        if not found:
            return PingCheck("password", FAILED, f"passfile {path} has no entry for {key} (write one: "
                                                 f"{output.hint(f'db.pgpass --host {host.name}')})",
                             {"source": "passfile", "path": path})
        return PingCheck("password", OK, f"passfile {path} has an entry for {key}", {"source": "passfile", "path": path})
    if found:
        return PingCheck("password", OK, f"{path} has an entry for {key}", {"source": "pgpass", "path": path})
    return PingCheck("password", OK, f"no password configured and no entry for {key} in {path}: libpq's other "
                                     f"defaults (trust or peer); the postgres check shows whether that works",
                     {"source": "libpq"})


def _pgpass_key(host: Host) -> tuple[str, str, str, str]:
    from bigskies_ops.pg.pgpass import wanted_entries
    return wanted_entries(host, "")[0].key


def _pgpass_entry(host: Host, runner, path: str) -> bool | None:
    """Whether the pgpass file at ``path`` (on the host that runs the tools) has a line
    libpq would use for the host's database and user; None when there is no such file.

    Raises:
        PgpassError: a malformed line (named by number, never its content)."""
    from bigskies_ops.pg.pgpass import parse
    if not runner.exists(path):
        return None
    key = _pgpass_key(host)
    entries = parse(runner.read_bytes(path).decode("utf-8", "replace"), path)
    return any(e is not None and e.shadows(key) for _, e in entries)


def _container(access) -> PingCheck:
    from bigskies_ops.jobs.status import container_state
    try:
        st = container_state(access)
    except BigskiesError as e:
        return PingCheck("container", FAILED, _reason(e))
    if st["status"] != "running":
        return PingCheck("container", FAILED, f"container {st['name']!r} is {st['status']}, not running", st)
    return PingCheck("container", OK, f"container {st['name']!r} is running", st)


def _postgres(access) -> tuple[PingCheck, object]:
    from bigskies_ops.pg.tools import parse_server_version_num
    pg = access.host.postgres
    try:
        row = access.sql(pg.database).query("SELECT current_setting('server_version_num') AS num, "
                                            "current_setting('server_version') AS version")[0]
    except BigskiesError as e:
        return PingCheck("postgres", FAILED, _reason(e)), None
    server = parse_server_version_num(row["num"])
    return (PingCheck("postgres", OK, f"login as {pg.user!r} to {pg.database!r} works "
                                      f"(PostgreSQL {row['version']})", {"server_version": row["version"]}), server)


def _versions(access, server) -> PingCheck:
    facts: dict = {"server_major": server.major}
    where = "in the container" if access.host.container else f"on {access.host.name}"
    try:
        dump, psql = access.tool_version("pg_dump"), access.tool_version("psql")
    except BigskiesError as e:
        return PingCheck("versions", FAILED, f"cannot run the PostgreSQL tools {where}: {_reason(e)}", facts)
    facts.update(pg_dump=str(dump), psql=str(psql))
    if dump.major < server.major:
        return PingCheck("versions", FAILED, f"pg_dump {dump} ({where}) cannot dump a PostgreSQL {server.major} "
                                             f"server: install pg_dump {server.major} or newer and point "
                                             f"postgres.bindir at it", facts)
    if psql.major < server.major:
        return PingCheck("versions", WARNING, f"psql {psql} is older than the server ({server.major}); "
                                              f"restores may fail on newer syntax", facts)
    return PingCheck("versions", OK, f"pg_dump {dump} and psql {psql} fit server {server.major}", facts)


def _backup_dir(host: Host, runner) -> PingCheck:
    d = host.backup.dir
    facts = {"dir": d}
    try:
        if not runner.exists(d):
            return PingCheck("backup_dir", WARNING, f"{d} does not exist yet (db.backup creates it)", facts)
        write_probe(runner, d, "ping")
    except (BigskiesError, OSError) as e:
        return PingCheck("backup_dir", FAILED, f"{d} is not writable: {_reason(e)}", facts)
    return PingCheck("backup_dir", OK, f"{d} exists and is writable", facts)


def _free_space(host: Host, runner) -> PingCheck:
    d = host.backup.dir
    try:
        probe = d
        while probe and not runner.exists(probe) and probe not in ("/", "."):  # a folder not created yet
            probe = os.path.dirname(probe.rstrip("/")) or "/"
        free = runner.free_bytes(probe)
    except BigskiesError as e:
        return PingCheck("free_space", FAILED, f"cannot read the free space of {d}: {_reason(e)}", {"dir": d})
    if free is None:
        return PingCheck("free_space", WARNING, f"free space of {d} cannot be read", {"dir": d, "free_bytes": None})
    facts = {"dir": d, "free_bytes": free}
    if free == 0:
        return PingCheck("free_space", FAILED, f"no free space in {d}", facts)
    if probe != d:  # no backups there yet: nothing to size the next one by
        return PingCheck("free_space", OK, f"{human_bytes(free)} free where {d} will be created", facts)
    from bigskies_ops.errors import StorageError
    from bigskies_ops.jobs.dump import check_backup_space
    try:  # db.backup's own rule (last backup + 20%); a first backup is not judged here
        check_backup_space(runner, host, probe, host.postgres.database, host.backup.format, {"origin_host": host.name})
    except StorageError as e:
        return PingCheck("free_space", FAILED, _reason(e), facts)
    except BigskiesError as e:
        return PingCheck("free_space", WARNING, f"{human_bytes(free)} free in {d}; the last backup's size cannot be "
                                                f"read: {_reason(e)}", facts)
    return PingCheck("free_space", OK, f"{human_bytes(free)} free in {d}", facts)


# ------------------------------------------------------------------ shared with ``apply``
def ssh_check(host: Host, runner) -> PingCheck:
    """The ``ssh`` check alone (connection opens, host key known): ``inv apply``'s
    reachability test, the same rule as ``inventory.ping``. Never raises."""
    return _ssh(host, runner)


def container_check(access) -> PingCheck:
    """The ``container`` check alone (exists and running). Never raises."""
    return _container(access)


def postgres_check(access) -> PingCheck:
    """The ``postgres`` check alone (login as ``postgres.user`` to ``postgres.database``
    works). Never raises."""
    return _postgres(access)[0]
