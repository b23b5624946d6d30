"""The docker-compose stack's lifecycle: build, up (and wait), down, restart, ps, logs,
purge (backup first), and the data volume's facts.

Every function takes an inventory :class:`~bigskies_ops.inventory.Host` and works
through ``runners.runner_for(host)`` (local subprocess or SSH alike), with the
host's compose command in its ``project_dir`` (see :mod:`bigskies_ops.hosts.compose`).
The guide's make targets map one to one: ``make docker-build`` -> :func:`build`,
``docker-up`` -> :func:`up`, ``docker-down`` -> :func:`down`, ``docker-restart``
-> :func:`restart`, ``docker-purge`` -> :func:`purge`.

podman-compose 1.0.3 reports "exit code: N" for each podman command it runs but
itself exits 0 whatever happened, so every step's outcome is checked with the
container engine (container state, image and volume existence) rather than
trusting the compose command's exit status.
"""
from __future__ import annotations

import posixpath
import re
import time
from dataclasses import dataclass, field

from bigskies_ops import report
from bigskies_ops.hosts import compose as cmp
from bigskies_ops.pg.access import PostgresAccess
from bigskies_ops.errors import BigskiesError, CommandError, PostgresError, SafetyError, StorageError, UsageError
from bigskies_ops.inventory import Host
from bigskies_ops.hosts.runners import tail
from bigskies_ops.hosts import runner_for

EXIT_CODE_RE = re.compile(r"^exit code: (-?\d+)\s*$", re.M)
MIGRATION_RE = re.compile(r"^(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)\.sql$")
LOG_LINES = 20  # container log lines shown when PostgreSQL does not come up


def _podman_compose_failures(host: Host, r) -> list[int]:
    """Non-zero ``exit code: N`` lines that podman-compose printed (it exits 0 regardless)."""
    if "podman" not in host.compose.command_argv[0]:
        return []
    return [int(c) for c in EXIT_CODE_RE.findall(r.text) if int(c) != 0]


def _compose_strict(runner, host: Host, *args: str, what: str, timeout: float | None = None):
    r = cmp.run_compose(runner, host, *args, timeout=timeout, what=what)
    bad = _podman_compose_failures(host, r)
    if bad:
        raise CommandError(f"{what} failed on {host.name}: the engine reported exit code(s) "
                           f"{', '.join(map(str, bad))}: {tail(r.stderr + r.text, 800)}",
                           returncode=bad[0], stderr=tail(r.stderr))
    return r


def _compose_up(runner, host: Host, project: cmp.Project) -> None:
    """``compose up -d``, as idempotent as Docker's: podman-compose 1.0 answers it on a
    stack whose containers exist with a failed ``podman run`` per container (exit 125,
    "name ... is already in use") and then ``podman start``s them, so its exit codes alone
    are not the outcome. Those codes fail the step only when a service is not running
    afterwards; the message names the services and the engine's error lines.

    Raises:
        CommandError: compose failed, or a service is not running after it."""
    r = cmp.run_compose(runner, host, "up", "-d", what="compose up -d")
    bad = _podman_compose_failures(host, r)
    if not bad:
        return
    down = [row["service"] for row in services_status(runner, host, project) if row["state"] != "running"]
    if not down:
        return
    errors = [ln.strip() for ln in (r.stderr + "\n" + r.text).splitlines() if "rror" in ln][-5:]
    raise CommandError(f"compose up -d failed on {host.name}: service(s) {', '.join(down)} not running; the engine "
                       f"reported exit code(s) {', '.join(map(str, bad))}"
                       + (f": {' | '.join(errors)}" if errors else f": {tail(r.stderr + r.text, 400)}"),
                       returncode=bad[0], stderr=tail(r.stderr))


# ------------------------------------------------------------------ container facts
def container_status(runner, host: Host, name: str) -> str | None:
    """``running``, ``exited``, ``created``, ... or None when the container does not exist."""
    r = runner.run([*cmp.engine_argv(host), "inspect", "--type", "container", "--format", "{{.State.Status}}",
                    name], check=False)
    return r.text.strip() if r.returncode == 0 else None


def container_logs(runner, host: Host, name: str, lines: int = LOG_LINES) -> str:
    r = runner.run([*cmp.engine_argv(host), "logs", "--tail", str(lines), name], check=False)
    return (r.text + r.stderr).strip()


def postgres_container(host: Host, project: cmp.Project | None = None) -> str | None:
    if host.container:
        return host.container.name
    return None


# ------------------------------------------------------------------ waiting
def wait_ready(host: Host, *, timeout: float = 60.0, runner=None, interval: float = 0.5) -> float:
    """Wait until PostgreSQL accepts connections (``SELECT 1`` on the maintenance database).

    Returns:
        Seconds waited.

    Raises:
        PostgresError: not ready within ``timeout`` seconds, or its container exited;
            the message carries the container's last log lines (exit 1).
    """
    t0 = time.monotonic()
    runner = runner or runner_for(host)
    cname = postgres_container(host)
    last = ""
    with PostgresAccess(host, runner=runner) as access:
        while True:
            if cname:
                st = container_status(runner, host, cname)
                if st in ("exited", "dead", "stopped"):
                    raise PostgresError(f"container {cname!r} on {host.name} stopped ({st}) before PostgreSQL "
                                        f"accepted connections; its last log lines:\n"
                                        f"{container_logs(runner, host, cname)}")
            if not cname or st == "running":
                try:  # psql, not pg_isready: it takes the same connection options in every access mode
                    access.sql(host.postgres.maintenance_db).query("SELECT 1 AS ok", timeout=30)
                    return time.monotonic() - t0
                except BigskiesError as e:
                    last = str(e)
            else:
                last = f"container state: {st or 'missing'}"
            if time.monotonic() - t0 > timeout:
                logs = container_logs(runner, host, cname) if cname else "(no container: native PostgreSQL)"
                raise PostgresError(f"PostgreSQL on {host.name} did not accept connections within {timeout:g} s "
                                    f"({last or 'no answer'}); last log lines of container {cname!r}:\n{logs}")
            time.sleep(interval)


def newest_migration(runner, host: Host) -> tuple[int, str] | None:
    """(version, file name) of the newest ``NNN_name.sql`` in the host's migrations folder."""
    files = [(int(m.group("version")), n) for n in runner.listdir(host.migrations.dir)
             if (m := MIGRATION_RE.match(n))]
    return max(files) if files else None


def migration_version(access: PostgresAccess, database: str) -> int | None:
    sql = access.sql(database)
    if not sql.value("SELECT to_regclass('public.schema_migrations') IS NOT NULL AS present"):
        return None
    v = sql.value("SELECT max(version)::bigint AS v FROM public.schema_migrations")
    return int(v) if v is not None else None


def wait_migrations(host: Host, *, timeout: float = 120.0, runner=None,
                    interval: float = 1.0) -> dict:
    """Wait until ``schema_migrations`` reaches the newest file of the migrations folder
    (the guide's "watch the bootstrap logs").

    Raises:
        UsageError: the migrations folder holds no migration file (exit 2).
        PostgresError: not reached in ``timeout`` seconds (with the first coordinator's logs).
    """
    runner = runner or runner_for(host)
    newest = newest_migration(runner, host)
    if newest is None:
        raise UsageError(f"no NNN_name.sql migration files in {host.migrations.dir} "
                         f"(hosts.{host.name}.migrations.dir)")
    t0 = time.monotonic()
    current = None
    with PostgresAccess(host, runner=runner) as access:
        while True:
            try:
                current = migration_version(access, host.postgres.database)
            except PostgresError:
                current = None
            if current is not None and current >= newest[0]:
                return {"version": current, "newest_file": newest[1], "seconds": time.monotonic() - t0}
            if time.monotonic() - t0 > timeout:
                extra = ""
                if host.coordinators:
                    try:
                        r = cmp.run_compose(runner, host, "logs", "--tail", str(LOG_LINES), host.coordinators[0],
                                            check=False)
                        extra = f"; last log lines of {host.coordinators[0]}:\n{(r.text + r.stderr).strip()}"
                    except BigskiesError:
                        pass
                raise PostgresError(f"schema_migrations on {host.name} is at {current if current is not None else 'none'}"
                                    f", not at {newest[0]} ({newest[1]}) after {timeout:g} s{extra}")
            time.sleep(interval)


# ------------------------------------------------------------------ lifecycle
def build(host: Host) -> dict:
    """``compose build``: rebuild images only (the data volume is not touched).

    Raises:
        UsageError: compose file missing / compose command not installed (exit 2).
        CommandError: the build failed.
    """
    with runner_for(host) as runner:
        project = cmp.resolved_config(runner, host)
        report.note(f"Building images of compose project {project.name!r}")
        _compose_strict(runner, host, "build", what="compose build")
        built = []
        for s, img in built_images(project).items():
            r = runner.run([*cmp.engine_argv(host), "image", "inspect", img], check=False)
            if r.returncode != 0:
                raise CommandError(f"compose build reported success but image {img!r} of service {s!r} "
                                   f"does not exist on {host.name}")
            built.append(img)
        return {"project": project.name, "images": built}


def built_images(project: cmp.Project) -> dict[str, str]:
    """Service -> image of the services ``compose build`` builds (a ``build:`` and an ``image:``)."""
    return {s: d["image"] for s, d in project.services.items() if (d or {}).get("build") and (d or {}).get("image")}


#: what each lifecycle command does to a service in each state (``--check``): the compose
#: commands' documented behaviour (``up -d`` starts what is not running and keeps the rest,
#: ``down`` removes containers and keeps named volumes, ``restart`` restarts existing containers)
_WOULD = {
    "up": {"running": "kept running", "absent": "created and started", None: "started"},
    "down": {"absent": "nothing to remove", None: "stopped and removed (volumes kept)"},
    "restart": {"absent": "no container to restart", None: "restarted"},
    "build": {},
}


def plan_stack(host: Host, action: str, *, timeout: float | None = None, wait_for_migrations: bool = False,
               states: dict[str, str] | None = None) -> dict:
    """What ``docker.<action>`` (build, up, down, restart) would do, read-only (``--check``):
    the project, each service's state now and what the command would do to it, the images
    ``build`` would build (:func:`built_images`) and what ``up``/``restart`` would wait for.

    ``states``: service -> state (``running``/``exited``/``absent``) to plan against instead
    of the containers' states now: a scenario's later step is planned against the state its
    earlier steps leave (:func:`after_stack_action`); services not in it are ``absent``.

    Raises:
        UsageError: compose file missing, compose command not installed, an unknown
            coordinator (``up``), exit 2.
    """
    with runner_for(host) as runner:
        project = cmp.resolved_config(runner, host)
        if action == "up" and host.coordinators:
            cmp.check_coordinators(host, project)
        if states is None:
            rows = services_status(runner, host, project)
        else:
            rows = [{"service": s, "containers": [], "state": states.get(s, "absent"),
                     "coordinator": s in host.coordinators} for s in project.services]
    images = built_images(project)
    for r in rows:
        if action == "build":
            r["would"] = (f"image {images[r['service']]} rebuilt ("
                          + ("containers untouched)" if r["state"] != "absent" else "no container: up creates it)")
                          if r["service"] in images else "nothing to build")
        else:
            r["would"] = _WOULD[action].get(r["state"], _WOULD[action][None])
    waits = None
    if action in ("up", "restart"):
        waits = f"until PostgreSQL accepts connections (up to {timeout or 60:g} s)" + (
            "; then until schema_migrations reaches the newest migration file" if wait_for_migrations else "")
    argv = " ".join(host.compose.command_argv) if host.compose else "compose"
    command = {"up": "up -d", "down": "down", "restart": "restart", "build": "build"}[action]
    return {"project": project.name, "host": host.name, "action": action, "command": f"run {argv} {command}",
            "services": rows, "images": list(images.values()) if action == "build" else [], "waits": waits,
            "refusals": []}


#: what each lifecycle action leaves a service in (None: unchanged), for planning ahead
_AFTER = {"up": "running", "restart": None, "build": None, "down": "absent", "purge": "absent"}


def after_stack_action(states: dict[str, str], action: str, services: list[str] | None = None) -> dict[str, str]:
    """The services' states (service -> ``running``/``exited``/``absent``) after ``action``
    (``up``, ``down``, ``restart``, ``build``, ``purge``, or ``stop`` for ``services`` only),
    computed, not read: what a scenario's ``--check`` plans its next step against."""
    out = dict(states)
    for s in (services if services is not None else list(out)):
        if action == "stop":
            out[s] = "exited" if out.get(s, "absent") != "absent" else "absent"
        elif _AFTER.get(action) is not None:
            out[s] = _AFTER[action]
    return out


def service_states(host: Host) -> dict[str, str]:
    """service -> state now (``running``/``exited``/``absent``), read-only."""
    with runner_for(host) as runner:
        project = cmp.resolved_config(runner, host)
        return {r["service"]: r["state"] for r in services_status(runner, host, project)}


def up(host: Host, *, timeout: float = 60.0, wait_for_migrations: bool = False,
       migrations_timeout: float = 120.0) -> dict:
    """``compose up -d``, then wait until PostgreSQL accepts connections (and, with
    ``wait_for_migrations``, until schema_migrations reaches the newest migration file).

    Raises:
        UsageError: compose file missing, compose command not installed (exit 2).
        PostgresError: PostgreSQL not ready in time (message has its last log lines).
    """
    with runner_for(host) as runner:
        project = cmp.resolved_config(runner, host)
        if host.coordinators:
            cmp.check_coordinators(host, project)
        report.note(f"Starting compose project {project.name!r} ({', '.join(project.services)})")
        _compose_up(runner, host, project)
        report.note("Waiting for PostgreSQL to accept connections"
                    + (f" (container {host.container.name})" if host.container else ""))
        waited = wait_ready(host, timeout=timeout, runner=runner)
        out = {"project": project.name, "ready_after_s": round(waited, 3)}
        if wait_for_migrations:
            report.note(f"Waiting for schema_migrations to reach the newest file in {host.migrations.dir}")
            out["migrations"] = wait_migrations(host, timeout=migrations_timeout, runner=runner)
        out["services"] = services_status(runner, host, project)
        not_running = [s["service"] for s in out["services"] if s["state"] != "running"]
        if not_running:
            report.note(f"warning: service(s) not running: {', '.join(not_running)}")
        return out


def down(host: Host) -> dict:
    """``compose down``: stop and remove the containers; named volumes are kept."""
    with runner_for(host) as runner:
        project = cmp.resolved_config(runner, host)
        report.note(f"Stopping compose project {project.name!r} (volumes are kept)")
        cmp.run_compose(runner, host, "down", what="compose down")
        left = [s for s in project.services if cmp.service_containers(runner, host, project, s, running_only=True)]
        if left:
            raise CommandError(f"compose down reported success but service(s) {', '.join(left)} still run "
                               f"on {host.name}")
        return {"project": project.name}


def restart(host: Host, *, timeout: float = 60.0) -> dict:
    """``compose restart``, then wait until PostgreSQL accepts connections."""
    with runner_for(host) as runner:
        project = cmp.resolved_config(runner, host)
        report.note(f"Restarting compose project {project.name!r}")
        _compose_strict(runner, host, "restart", what="compose restart")
        waited = wait_ready(host, timeout=timeout, runner=runner)
        return {"project": project.name, "ready_after_s": round(waited, 3),
                "services": services_status(runner, host, project)}


def services_status(runner, host: Host, project: cmp.Project) -> list[dict]:
    """One row per service: service, container names, state (``running``/``exited``/``absent``)."""
    rows = []
    for s in project.services:
        names = cmp.service_containers(runner, host, project, s)
        states = [container_status(runner, host, n) or "absent" for n in names]
        state = "absent" if not names else ("running" if all(x == "running" for x in states) else states[0])
        rows.append({"service": s, "containers": names, "state": state,
                     "coordinator": s in host.coordinators})
    return rows


def ps(host: Host) -> dict:
    with runner_for(host) as runner:
        project = cmp.resolved_config(runner, host)
        return {"project": project.name, "services": services_status(runner, host, project)}


def logs(host: Host, service: str | None = None, *, follow: bool = False, tail_lines: int | None = None,
         sink=None) -> int:
    """Stream ``compose logs [-f] [SERVICE]`` into ``sink`` (a binary file); returns the exit status."""
    import sys
    sink = sink or sys.stdout.buffer
    with runner_for(host) as runner:
        project = cmp.resolved_config(runner, host)
        if service and service not in project.services:
            raise UsageError(f"{service!r} is not a service of compose project {project.name!r}; "
                             f"its services: {', '.join(sorted(project.services))}")
        args = ["logs"] + (["-f"] if follow else []) + (["--tail", str(tail_lines)] if tail_lines else [])
        args += [service] if service else []
        proc = runner.popen(cmp.in_project_dir(host, cmp.compose_argv(host, *args)))
        try:
            for chunk in iter(lambda: proc.stdout.read(4096), b""):
                sink.write(chunk)
                sink.flush()
        except KeyboardInterrupt:
            proc.kill()
        rc = proc.wait()
        err = proc.stderr_text()
        if err:
            sink.write(err.encode())
            sink.flush()
        return rc


# ------------------------------------------------------------------ the data volume
def _human_to_bytes(s: str) -> int | None:
    m = re.match(r"^([\d.]+)\s*([kKMGTP]?i?B)$", s.strip())
    if not m:
        return None
    mult = {"B": 1, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4, "PB": 1000**5,
            "KiB": 1024, "kiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}.get(m.group(2))
    return int(float(m.group(1)) * mult) if mult else None


def volume_size(runner, host: Host, name: str) -> tuple[int | None, str]:
    """(bytes or None, engine's text) from ``<engine> system df -v``; (None, "unknown") otherwise."""
    r = runner.run([*cmp.engine_argv(host), "system", "df", "-v"], check=False, timeout=120)
    if r.returncode != 0:
        return None, "unknown"
    section = False
    for line in r.text.splitlines():
        if "VOLUME NAME" in line:
            section = True
            continue
        if section:
            parts = line.split()
            if not parts:
                if section:
                    continue
            if parts and parts[0] == name and len(parts) >= 3:
                return _human_to_bytes(parts[-1]), parts[-1]
            if line.strip().endswith("space usage:"):
                section = False
    return None, "unknown"


def volume_info(host: Host, *, runner=None) -> dict:
    """Facts about the data volume (``compose.volume``): its real name from the compose
    command's resolved config, whether it exists, size, creation time, and a warning
    when the database's data directory is a bind mount (the guide's "Volume Not Persisting").

    Raises:
        UsageError: compose problems, or ``compose.volume`` not declared in the project (exit 2).
    """
    own = runner is None
    runner = runner or runner_for(host)
    try:
        project = cmp.resolved_config(runner, host)
        key = host.compose.volume
        if key not in project.volumes:
            raise UsageError(f"hosts.{host.name}.compose.volume: {key!r} is not a volume of compose project "
                             f"{project.name!r}; its volumes: {', '.join(sorted(project.volumes)) or 'none'}")
        name = project.volume_name(key) or key
        info = cmp.engine_json(runner, host, "volume", "inspect", name)
        if isinstance(info, list):
            info = info[0] if info else None
        out = {"host": host.name, "project": project.name, "key": key, "name": name, "exists": info is not None,
               "created_at": None, "mountpoint": None, "driver": None, "size_bytes": None, "size": "unknown",
               "resolved_by": project.source, "warnings": []}
        if info:
            out["created_at"] = _utc(info.get("CreatedAt"))
            out["mountpoint"] = info.get("Mountpoint")
            out["driver"] = info.get("Driver")
            out["size_bytes"], out["size"] = volume_size(runner, host, name)
        out["warnings"] += _data_dir_warnings(runner, host, project, key)
        return out
    finally:
        if own:
            runner.close()


def _utc(s: str | None) -> str | None:
    """Engine time (``2026-11-29T09:17:08.05963Z`` or ``... +0000 UTC``) -> ``YYYY-MM-DDTHH:MM:SSZ``."""
    if not s:
        return None
    from datetime import datetime, timezone
    t = s.strip().replace(" UTC", "")
    m = re.match(r"^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.\d+)?\s*(Z|[+-]\d\d:?\d\d)?", t)
    if not m:
        return s
    tz = m.group(3) or "Z"
    tz = "+00:00" if tz == "Z" else (tz if ":" in tz else tz[:3] + ":" + tz[3:])
    return datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}{tz}").astimezone(timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def _data_dir_warnings(runner, host: Host, project: cmp.Project, key: str) -> list[str]:
    svc = (project.service_of_container(host.container.name) if host.container else None) \
        or project.service_using_volume(key)
    if svc is None:
        return [f"no service of project {project.name!r} mounts volume {key!r}"]
    data_dir = None
    if host.container and container_status(runner, host, host.container.name) == "running":
        try:
            with PostgresAccess(host, runner=runner) as access:
                data_dir = access.sql(host.postgres.maintenance_db).value(
                    "SELECT current_setting('data_directory') AS d")
        except BigskiesError:
            data_dir = None
    mounts = project.mounts_of(svc)
    if data_dir:
        cover = [m for m in mounts if m.get("target") and
                 (data_dir == m["target"] or data_dir.startswith(m["target"].rstrip("/") + "/"))]
        cover.sort(key=lambda m: len(m["target"]), reverse=True)
        if not cover:
            return [f"the data directory {data_dir} of service {svc!r} is on no volume: it is lost when "
                    f"the container is removed"]
        m = cover[0]
        if m.get("type") == "bind":
            return [f"the data directory {data_dir} of service {svc!r} is a bind mount of {m.get('source')}, "
                    f"not the named volume {key!r} (the guide's 'Volume Not Persisting')"]
        if m.get("source") != key:
            return [f"the data directory {data_dir} of service {svc!r} is on volume {m.get('source')!r}, "
                    f"not on {key!r} (hosts.{host.name}.compose.volume)"]
        return []
    binds = [m for m in mounts if m.get("type") == "bind" and "postgres" in str(m.get("target"))]
    if binds and not any(m.get("type") == "volume" and m.get("source") == key for m in mounts):
        return [f"service {svc!r} mounts {binds[0].get('source')} at {binds[0].get('target')} as a bind "
                f"mount, not the named volume {key!r} (the guide's 'Volume Not Persisting')"]
    return []


# ------------------------------------------------------------------ purge
@dataclass
class PurgePlan:
    project: str | None
    containers: list[str]
    volume: str
    volume_exists: bool
    volume_size: str
    other_volumes: list[str] = field(default_factory=list)
    volume_size_bytes: int | None = None  # bytes (db.volume's size_bytes); volume_size is the engine's text

    def lines(self) -> list[str]:
        out = [f"compose project {self.project!r}:"]
        out.append(f"  containers removed: {', '.join(self.containers) or 'none'}")
        out.append(f"  data volume DELETED: {self.volume} ({'size ' + self.volume_size if self.volume_exists else 'does not exist'})")
        if self.other_volumes:
            out.append(f"  other project volumes deleted: {', '.join(self.other_volumes)}")
        return out


def purge_plan(host: Host, *, runner=None) -> PurgePlan:
    """What ``docker.purge`` would delete (decide, then act)."""
    own = runner is None
    runner = runner or runner_for(host)
    try:
        project = cmp.resolved_config(runner, host)
        vi = volume_info(host, runner=runner)
        containers = []
        for s in project.services:
            containers += cmp.service_containers(runner, host, project, s)
        others = [(v or {}).get("name") or k for k, v in project.volumes.items()
                  if k != host.compose.volume and not (v or {}).get("external")]
        return PurgePlan(project.name, containers, vi["name"], vi["exists"], vi["size"], others,
                         volume_size_bytes=vi["size_bytes"])
    finally:
        if own:
            runner.close()


def plan_purge(host: Host, *, take_backup: bool = True) -> dict:
    """What ``docker.purge`` would do, read-only (``--check``): :func:`purge_plan`'s facts and,
    with ``take_backup``, the pre-purge backup's plan (:func:`bigskies_ops.jobs.backup.plan_backup`);
    ``refusals``: what the run would refuse (the backup's space check)."""
    from bigskies_ops.jobs.backup import plan_backup
    plan = purge_plan(host)
    backup, refusals = None, []
    if take_backup:
        try:
            backup = plan_backup(host)
            refusals = list(backup.get("refusals") or [])
        except (PostgresError, CommandError) as e:
            # the server cannot be read (container absent or stopped): the run's pre-purge backup
            # would fail and nothing would be purged; the check says so instead of failing
            refusals = [f"the pre-purge backup would fail ({e}), so nothing would be purged; "
                        f"--no-backup purges without one"]
    return {"project": plan.project, "containers": plan.containers, "volume": plan.volume,
            "volume_exists": plan.volume_exists, "volume_size": plan.volume_size,
            "volume_size_bytes": plan.volume_size_bytes, "other_volumes": plan.other_volumes,
            "no_backup": not take_backup, "backup": backup, "backup_error": refusals[0] if take_backup and
            backup is None else None, "refusals": refusals}


def purge(host: Host, *, take_backup: bool = True, pull: bool = True, backup_fn=None,
          pull_to: Host | None = None) -> dict:
    """Remove the project's containers AND its data volume, after a ``pre-purge`` backup.

    The caller has applied the safety policy and the confirmation. The backup lands
    in the host's ``backup.dir``, which is refused when it lies inside the volume;
    for a remote host it is also pulled to ``pull_to``'s backup dir (under
    ``<host>/``) when ``pull``. If the backup (or that pull) fails, nothing is purged.

    Returns:
        dict with project, volume, backup (archive path or None), removed volumes.

    Raises:
        StorageError / PostgresError: the pre-purge backup failed (nothing purged).
        CommandError: compose or the engine failed while purging.
    """
    from bigskies_ops.jobs.backup import backup as run_backup
    backup_fn = backup_fn or run_backup
    with runner_for(host) as runner:
        plan = purge_plan(host, runner=runner)
        result = {"project": plan.project, "volume": plan.volume, "backup": None, "pulled": None}
        if take_backup:
            vi_mount = (cmp.engine_json(runner, host, "volume", "inspect", plan.volume) or [{}])
            mnt = (vi_mount[0] if isinstance(vi_mount, list) and vi_mount else {}).get("Mountpoint")
            bdir = host.backup.dir
            if mnt and (posixpath.normpath(bdir) + "/").startswith(posixpath.normpath(mnt) + "/"):
                raise StorageError(f"backup.dir {bdir} lies inside the volume {plan.volume} that purge deletes; "
                                   f"nothing was purged")
            report.note(f"Taking a pre-purge backup into {bdir}")
            try:
                res = backup_fn(host, kind="pre-purge", label="before docker.purge",
                                task="docker.purge")
            except SafetyError:  # a caller's check of the backup refused: its own words
                raise
            except BigskiesError as e:
                raise BigskiesError(f"pre-purge backup failed, nothing was purged: {e}",
                                    exit_code=e.exit_code) from e
            result["backup"] = res.backup.path
            report.note(f"Pre-purge backup written: {res.backup.path}")
            if host.is_remote and pull:
                result["pulled"] = _pull_backup(host, res, pull_to)
        report.note(f"Purging compose project {plan.project!r}: containers and volumes")
        cmp.run_compose(runner, host, "down", "-v", what="compose down -v")
        project = cmp.resolved_config(runner, host)
        engine = cmp.engine_argv(host)
        removed = []
        for name in [plan.volume, *plan.other_volumes]:
            if runner.run([*engine, "volume", "inspect", name], check=False).returncode == 0:
                r = runner.run([*engine, "volume", "rm", name], check=False)
                if r.returncode != 0:
                    raise CommandError(f"could not remove volume {name} on {host.name}: {tail(r.stderr, 400)}")
            removed.append(name)
        # podman-compose 1.0.3 leaves the project's network behind
        r = runner.run([*engine, "network", "ls", "-q", "--filter", f"label={cmp.PROJECT_LABEL}={project.name}"],
                       check=False)
        for net in (r.text.split() if r.returncode == 0 else []):
            runner.run([*engine, "network", "rm", net], check=False)
        if runner.run([*engine, "volume", "inspect", plan.volume], check=False).returncode == 0:
            raise CommandError(f"volume {plan.volume} still exists on {host.name} after purge")
        result["removed_volumes"] = removed
        return result


def _pull_backup(host: Host, res, pull_to: Host | None) -> str | None:
    """Copy a remote pre-purge backup to ``<pull_to backup.dir>/<host>/`` (bigskies_ops.jobs.pull)."""
    if pull_to is None:
        report.note(f"warning: no local host to pull to; the pre-purge backup stays on {host.name} at "
                    f"{res.backup.path}")
        return None
    from bigskies_ops.jobs.pull import pull_existing
    out = pull_existing(host, pull_to, res.backup.name)
    report.note(f"Pre-purge backup pulled to {out.backup.path}")
    return out.backup.path
