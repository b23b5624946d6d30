"""The host's compose project: argv builders, the resolved config, service states.

Every compose command runs with the host's ``compose.command`` (``docker compose``,
``docker-compose``, ``podman-compose``) inside its ``project_dir``, as
``<command> -f FILE [-p PROJECT] ARGS`` (:func:`compose_argv`, wrapped by
:func:`in_project_dir`).

What the project *is* (its name, services, container names, the real names of its
volumes) is asked of the compose command itself: ``<command> config`` (docker
compose v1/v2, podman-compose >= 1.0.4). podman-compose 1.0.3 (Debian 12) has no
``config``; for it we ask podman-compose's own parser (the same code that will
create the volumes) through its Python module (:data:`PODMAN_COMPOSE_CONFIG_PY`).
Names are never glued together here.

Whether a service is running is asked of the container engine, by the labels
every compose implementation puts on its containers
(``com.docker.compose.project`` / ``com.docker.compose.service``): podman-compose
1.0.3's ``ps`` takes no ``--services``/``--filter`` and its ``start``/``stop``
exit 0 even when podman failed, so every state change is verified with the engine.

Coordinators are compose service names (CONTRACTS.md section 4), checked against the
project here (:func:`check_coordinators`); pausing them around a restore is
:mod:`bigskies_ops.jobs.coordinators`.
"""
from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass, field

import yaml

from bigskies_ops.errors import CommandError, UsageError
from bigskies_ops.inventory import Host
from bigskies_ops.hosts.runners import redact_argv, tail

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"

#: Run by ``python3`` on the host when the compose command is podman-compose without
#: ``config``: podman-compose's own parser resolves the project, prints JSON shaped
#: like ``docker compose config`` (name, services{container_name, volumes}, volumes{name}).
PODMAN_COMPOSE_CONFIG_PY = r"""
import json, sys
import podman_compose as pc
sys.argv = ["podman-compose"] + sys.argv[1:] + ["ps"]
c = pc.podman_compose
c._parse_args()
c._parse_compose_file()
out = {"name": c.project_name, "services": {}, "volumes": {}}
for cnt in c.containers:
    svc = cnt["_service"]
    mounts = []
    for v in cnt.get("volumes") or []:
        m = pc.parse_short_mount(v, c.dirname) if isinstance(v, str) else dict(v)
        key = m.get("source")
        pc.fix_mount_dict(c, m, c.project_name, svc)
        mounts.append({"type": m.get("type"), "source": key, "target": m.get("target")})
        vol = m.get("_vol") or {}
        if m.get("type") == "volume" and key and vol.get("name"):
            out["volumes"][key] = {"name": vol["name"], "external": bool(vol.get("external"))}
    out["services"].setdefault(svc, {"container_name": cnt["name"], "volumes": mounts,
                                     "image": cnt.get("image"), "build": cnt.get("build")})
for k in (c.vols or {}):
    out["volumes"].setdefault(k, {"name": None})
print("@@BIGSKIES-CONFIG@@" + json.dumps(out))
"""


# ------------------------------------------------------------------ argv builders (pure)
def compose_argv(host: Host, *args: str) -> list[str]:
    """``<compose command> -f FILE [-p PROJECT] ARGS...`` for the host's project.

    Raises:
        UsageError: the host has no ``compose:`` block (exit 2).
    """
    c = host.compose
    if c is None:
        raise UsageError(f"hosts.{host.name}: no compose: block in the inventory")
    argv = [*c.command_argv, "-f", c.file]
    if c.project_name:
        argv += ["-p", c.project_name]
    return argv + list(args)


def in_project_dir(host: Host, argv: list[str]) -> list[str]:
    """Wrap ``argv`` so it runs in the host's ``project_dir`` (local or over SSH alike)."""
    return ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", host.project_dir or ".", *argv]


def engine_argv(host: Host) -> list[str]:
    """The container engine's command: ``container.engine_command``, else guessed from
    the compose command (``podman-compose`` -> podman, else docker)."""
    if host.container:
        return host.container.engine_argv
    cmd = host.compose.command_argv if host.compose else ["docker"]
    return ["podman"] if "podman" in cmd[0] else ["docker"]


# ------------------------------------------------------------------ engine errors
#: what docker and podman print when their daemon / service socket cannot be reached
#: (docker: "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the
#: docker daemon running?"; podman --url/CONTAINER_HOST: "Cannot connect to Podman ...
#: dial unix /x.sock: connect: no such file or directory")
_ENGINE_DOWN_RE = re.compile(r"cannot connect to (?:the docker daemon|podman)|is the docker daemon running|"
                             r"error during connect|unable to connect to podman|dial unix [^:]*: connect|"
                             r"permission denied while trying to connect to the docker daemon", re.I)
_NO_SUCH_CONTAINER_RE = re.compile(r"no such (?:container|object)|no container with name or id", re.I)


def engine_unreachable(stderr: str) -> bool:
    """Whether an engine command's stderr says the engine itself (the Docker daemon, a
    Podman service socket) could not be reached, as opposed to an answer about the
    container (pure)."""
    return bool(_ENGINE_DOWN_RE.search(stderr or ""))


def inspect_failure(host: Host, container: str, stderr: str) -> str:
    """The one-line reason an ``<engine> inspect``/``exec`` of ``container`` failed: the
    engine unreachable (its daemon down), the container missing, or the engine's own last
    line. A container is only said not to exist when the engine said so (pure)."""
    engine = " ".join(engine_argv(host))
    last = stderr.strip().splitlines()[-1].strip() if (stderr or "").strip() else "no error output"
    if engine_unreachable(stderr):
        return (f"the container engine ({engine}) is unreachable on {host.name}: is its daemon running? "
                f"({last[:200]})")
    if _NO_SUCH_CONTAINER_RE.search(stderr or ""):
        return f"container {container!r} does not exist on {host.name} ({last[:200]})"
    return f"{engine} cannot inspect container {container!r} on {host.name}: {last[:200]}"


# ------------------------------------------------------------------ running compose
def require_compose(runner, host: Host) -> None:
    """The host has a compose block and its compose file exists.

    Raises:
        UsageError: no compose block, or the compose file is missing (exit 2).
    """
    if host.compose is None:
        raise UsageError(f"hosts.{host.name}: no compose: block in the inventory")
    if not runner.exists(host.compose.file):
        raise UsageError(f"compose file {host.compose.file} not found on {host.name} "
                         f"(hosts.{host.name}.compose.file, relative to project_dir {host.project_dir})")


def run_compose(runner, host: Host, *args: str, check: bool = True, timeout: float | None = None,
                what: str | None = None):
    """Run ``<compose> ARGS`` in the project dir; return the :class:`~runners.Result`.

    Raises:
        UsageError: the compose command is not installed on the host (exit 2).
        CommandError: it failed (exit 1) and ``check`` is true.
    """
    argv = compose_argv(host, *args)
    r = runner.run(in_project_dir(host, argv), check=False, timeout=timeout)
    if r.returncode == 127:  # sh: exec: <command>: not found
        raise UsageError(f"compose command {host.compose.command!r} is not installed on {host.name} "
                         f"(hosts.{host.name}.compose.command): {tail(r.stderr, 200)}")
    if host.compose.command_argv[:2] == ["docker", "compose"] and r.returncode != 0 \
            and "is not a docker command" in r.stderr:
        raise UsageError(f"'docker compose' (the compose plugin) is not installed on {host.name}")
    if check and r.returncode != 0:
        raise CommandError(f"{what or shlex.join(redact_argv(argv))} failed on {host.name} "
                           f"(exit {r.returncode}): {tail(r.stderr or r.text, 800)}",
                           argv=redact_argv(argv), returncode=r.returncode, stderr=tail(r.stderr))
    return r


# ------------------------------------------------------------------ the resolved project
@dataclass
class Project:
    """The compose project as the compose command resolves it."""

    name: str | None
    services: dict[str, dict] = field(default_factory=dict)
    volumes: dict[str, dict] = field(default_factory=dict)
    source: str = "config"          # "config" or "podman-compose parser"

    def volume_name(self, key: str) -> str | None:
        v = self.volumes.get(key)
        return (v or {}).get("name") if v is not None else None

    def mounts_of(self, service: str) -> list[dict]:
        out = []
        for m in (self.services.get(service) or {}).get("volumes") or []:
            if isinstance(m, str):
                parts = m.split(":")
                src, tgt = (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])
                kind = "bind" if src and (src.startswith((".", "/", "~"))) else "volume"
                out.append({"type": kind, "source": src, "target": tgt})
            else:
                out.append(m)
        return out

    def service_using_volume(self, key: str) -> str | None:
        for s in self.services:
            if any(m.get("type") == "volume" and m.get("source") == key for m in self.mounts_of(s)):
                return s
        return None

    def service_of_container(self, container: str) -> str | None:
        for s, d in self.services.items():
            if (d or {}).get("container_name") == container:
                return s
        return None


def parse_config(text: str, source: str = "config") -> Project:
    """Parse ``<compose> config`` output (YAML, or JSON which is YAML) into a :class:`Project`."""
    marker = "@@BIGSKIES-CONFIG@@"
    if marker in text:
        text = text[text.index(marker) + len(marker):].splitlines()[0]
    doc = yaml.safe_load(text) or {}
    if not isinstance(doc, dict):
        raise CommandError("compose config output is not a mapping")
    vols = {}
    for k, v in (doc.get("volumes") or {}).items():
        vols[str(k)] = v if isinstance(v, dict) else {"name": None}
    return Project(doc.get("name"), {str(k): (v or {}) for k, v in (doc.get("services") or {}).items()},
                   vols, source)


def resolved_config(runner, host: Host) -> Project:
    """Ask the compose command how it resolves the project (see the module docstring).

    Raises:
        UsageError: compose file missing, compose command not installed (exit 2).
        CommandError: the compose command rejected the file.
    """
    require_compose(runner, host)
    key = (host.name, host.project_dir, host.compose.command, host.compose.file, host.compose.project_name,
           getattr(runner, "is_remote", False))
    if key in _CONFIG_CACHE:
        return _CONFIG_CACHE[key]
    _CONFIG_CACHE[key] = p = _resolve(runner, host)
    return p


_CONFIG_CACHE: dict[tuple, Project] = {}  # one resolution per process and project (files do not change mid-task)


def _resolve(runner, host: Host) -> Project:
    r = run_compose(runner, host, "config", check=False)
    if r.returncode == 0 and r.text.strip():
        p = parse_config(r.text)
        if p.name is None and host.compose.project_name:
            p.name = host.compose.project_name
        return p
    unsupported = ("invalid choice" in r.stderr or "unrecognized arguments" in r.stderr
                   or "unknown command" in r.stderr.lower())
    if not unsupported:
        raise CommandError(f"{host.compose.command} config failed on {host.name} (exit {r.returncode}): "
                           f"{tail(r.stderr or r.text, 800)}", returncode=r.returncode, stderr=tail(r.stderr))
    if "podman" not in host.compose.command_argv[0]:
        raise CommandError(f"{host.compose.command} on {host.name} has no 'config' command; "
                           f"cannot resolve the project's names")
    args = ["-f", host.compose.file] + (["-p", host.compose.project_name] if host.compose.project_name else [])
    # run with podman-compose's own interpreter (its script's #! line), in the project dir
    script = ('d=$1; code=$2; shift 2; p=$(command -v "$0") || exit 127; '
              'i=$(head -n 1 "$p" | sed "s/^#! *//"); cd "$d" && exec $i -c "$code" "$@"')
    r2 = runner.run(["sh", "-c", script, host.compose.command_argv[0], host.project_dir or ".",
                     PODMAN_COMPOSE_CONFIG_PY, *args], check=False)
    if r2.returncode != 0 or "@@BIGSKIES-CONFIG@@" not in r2.text:
        raise CommandError(f"cannot resolve the compose project on {host.name} with podman-compose's parser: "
                           f"{tail(r2.stderr or r2.text, 600)}")
    return parse_config(r2.text, "podman-compose parser")


def check_coordinators(host: Host, project: Project) -> None:
    """Every inventory coordinator is a service of the project.

    Raises:
        UsageError: naming the unknown ones and the project's services (exit 2).
    """
    unknown = [c for c in host.coordinators if c not in project.services]
    if unknown:
        raise UsageError(f"hosts.{host.name}.coordinators: {', '.join(unknown)} "
                         f"{'is not a service' if len(unknown) == 1 else 'are not services'} of compose project "
                         f"{project.name!r} ({host.compose.file}); its services: {', '.join(sorted(project.services))}")


def service_containers(runner, host: Host, project: Project, service: str, *, running_only: bool = False) -> list[str]:
    """Names of the containers of ``service`` (by compose labels), optionally only running ones."""
    argv = [*engine_argv(host), "ps", *(["--filter", "status=running"] if running_only else ["-a"]),
            "--filter", f"label={PROJECT_LABEL}={project.name}",
            "--filter", f"label={SERVICE_LABEL}={service}", "--format", "{{.Names}}"]
    r = runner.run(argv, check=False)
    if r.returncode != 0:
        raise CommandError(f"{shlex.join(argv)} failed on {host.name}: {tail(r.stderr, 400)}",
                           argv=argv, returncode=r.returncode, stderr=tail(r.stderr))
    return [n for n in r.text.split() if n]


def running_services(runner, host: Host, project: Project | None = None,
                     services: list[str] | None = None) -> set[str]:
    """Names of the project's services (all, or ``services``) whose containers are running."""
    project = project or resolved_config(runner, host)
    want = list(services) if services is not None else list(project.services)
    return {s for s in want if service_containers(runner, host, project, s, running_only=True)}


def _wait_states(runner, host, project, services, running: bool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        now = running_services(runner, host, project, services)
        bad = [s for s in services if (s in now) != running]
        if not bad:
            return
        if time.monotonic() > deadline:
            raise CommandError(f"service(s) {', '.join(bad)} on {host.name} did not "
                               f"{'start' if running else 'stop'} (compose reported success)")
        time.sleep(0.3)


def stop_services(runner, host: Host, services: list[str], project: Project | None = None) -> None:
    """``compose stop SERVICES`` and verify with the engine that they stopped."""
    if services:
        run_compose(runner, host, "stop", *services)
        _wait_states(runner, host, project or resolved_config(runner, host), services, running=False)


def start_services(runner, host: Host, services: list[str], project: Project | None = None) -> None:
    """``compose start SERVICES`` and verify with the engine that they run."""
    if services:
        run_compose(runner, host, "start", *services)
        _wait_states(runner, host, project or resolved_config(runner, host), services, running=True)


def engine_json(runner, host: Host, *args: str) -> list | dict | None:
    """``<engine> ARGS`` parsed as JSON; None when the command fails (object missing)."""
    r = runner.run([*engine_argv(host), *args], check=False)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.text)
    except ValueError:
        return None
