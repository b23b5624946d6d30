"""A compose project shaped like BIG SKIES' for the stack tests (podman + podman-compose).

``write_project(dir, suffix)`` lays out:

* ``postgres``: the locally imported base image (``localhost/bigskies-pgbase:15``,
  tests/infra/podman.py) with the host's /usr and /etc bind-mounted read-only,
  the named volume ``postgres_data`` (initdb on first start, then ``CREATE DATABASE
  bigskies`` in single-user mode, like the official image's POSTGRES_DB), and the
  unix socket shared with the coordinators through the named volume ``pg_socket``
  (no published port, no TCP at all);
* ``bootstrap`` and ``datastore``: coordinators from an image built by
  ``docker.build`` FROM the base image (the Dockerfile only COPYs a script: there is
  no shell in the image at build time and no registry). They keep a psql session
  open (``pg_sleep(3600)`` in a loop, reconnecting when dropped), with
  ``application_name`` = the service name. ``bootstrap`` first applies the
  migrations of configs/sql (mounted read-only) and records them in
  schema_migrations, like BIG SKIES' bootstrap coordinator. ``datastore`` logs in
  as the role ``bigskies_datastore`` (a cluster role that only a backup taken with
  ``backup.roles: true`` brings back after a purge).

Every name (project, containers, image, volumes, network) carries ``suffix``, so
parallel runs do not collide; :func:`teardown` removes all of them.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import yaml

from tests.infra.podman import BASE_IMAGE, PG_BINDIR, TEST_LABEL

POSTGRES_INIT = f"""#!/bin/sh
set -e
D=/var/lib/postgresql/data
B={PG_BINDIR}
if [ ! -s "$D/PG_VERSION" ]; then
  echo "initialising a new cluster in $D"
  $B/initdb -D "$D" -U bigskies -E UTF8 --locale=C.UTF-8 --auth-local=trust --no-sync >/tmp/initdb.log 2>&1 \\
    || {{ cat /tmp/initdb.log >&2; exit 1; }}
  echo "CREATE DATABASE bigskies" | $B/postgres --single -D "$D" postgres >/dev/null
fi
exec $B/postgres -D "$D" -c listen_addresses= -c unix_socket_directories=/var/run/postgresql \\
  -c fsync=off -c max_connections=40 -c shared_buffers=16MB -c client_connection_check_interval=500
"""

COORDINATOR = f"""#!/bin/sh
# A BIG SKIES coordinator stand-in: (bootstrap) apply migrations, then hold a session.
B={PG_BINDIR}
export PGHOST=/var/run/postgresql PGDATABASE=bigskies PGAPPNAME="$COORDINATOR"
migrate() {{
  $B/psql -X -q -v ON_ERROR_STOP=1 -c "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,
    name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), duration_ms integer)" \\
    || return 1
  for f in /migrations/[0-9]*_*.sql; do
    b=$(basename "$f" .sql); v=$(expr "${{b%%_*}}" + 0); n=${{b#*_}}
    if [ -z "$($B/psql -X -tA -c "SELECT 1 FROM schema_migrations WHERE version = $v")" ]; then
      sum=$(sha256sum "$f" | cut -d' ' -f1)
      $B/psql -X -q -1 -v ON_ERROR_STOP=1 -f "$f" \\
        -c "INSERT INTO schema_migrations(version, name, checksum) VALUES ($v, '$n', '$sum')" || return 1
      echo "applied migration $b"
    fi
  done
}}
until $B/pg_isready -q; do sleep 0.5; done
if [ "$MIGRATE" = 1 ]; then
  until migrate; do echo "migrations failed, retrying"; sleep 2; done
  echo "migrations done"
fi
while true; do
  $B/psql -X -q -c "SELECT pg_sleep(3600)" >/dev/null 2>&1
  sleep 1
done
"""

DOCKERFILE = f"""FROM {BASE_IMAGE}
LABEL org.bigskies.role=coordinator
COPY coordinator.sh /opt/bigskies/coordinator.sh
"""


def names(suffix: str) -> dict:
    return {"project": f"bsst{suffix}", "postgres": f"bsst{suffix}-postgres",
            "image": f"localhost/bsst{suffix}-coordinator:latest",
            "volume": f"bsst{suffix}_postgres_data", "socket_volume": f"bsst{suffix}_pg_socket",
            "network": f"bsst{suffix}_default"}


def write_project(root: Path, suffix: str, migrations_dir: Path) -> Path:
    """Write docker-compose.yml and the build context into ``root``; return ``root``."""
    n = names(suffix)
    root.mkdir(parents=True, exist_ok=True)
    (root / "postgres-init.sh").write_text(POSTGRES_INIT)
    ctx = root / "coordinator"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "coordinator.sh").write_text(COORDINATOR)
    common = ["/usr:/usr:ro", "/etc:/etc:ro", "pg_socket:/var/run/postgresql"]
    coord = {"image": n["image"], "user": "postgres", "stop_signal": "SIGKILL", "depends_on": ["postgres"],
             "labels": [TEST_LABEL], "command": ["/bin/sh", "/opt/bigskies/coordinator.sh"]}
    doc = {
        "version": "3.8",
        "services": {
            "postgres": {"image": BASE_IMAGE, "container_name": n["postgres"], "user": "postgres",
                         "stop_signal": "SIGINT", "labels": [TEST_LABEL],
                         "volumes": ["/usr:/usr:ro", "/etc:/etc:ro", "postgres_data:/var/lib/postgresql",
                                     "pg_socket:/var/run/postgresql", "./postgres-init.sh:/opt/init.sh:ro"],
                         "command": ["/bin/sh", "/opt/init.sh"]},
            "bootstrap": {**coord, "build": "./coordinator",
                          "environment": {"COORDINATOR": "bootstrap", "MIGRATE": "1", "PGUSER": "bigskies"},
                          "volumes": common + [f"{migrations_dir}:/migrations:ro"]},
            "datastore": {**coord, "environment": {"COORDINATOR": "datastore", "PGUSER": "bigskies_datastore"},
                          "volumes": common},
        },
        "volumes": {"postgres_data": None, "pg_socket": None},
    }
    (root / "docker-compose.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


def write_broken_project(root: Path, suffix: str, message: str) -> Path:
    """A project whose PostgreSQL never becomes ready: it logs ``message`` and sleeps."""
    root.mkdir(parents=True, exist_ok=True)
    doc = {"version": "3.8", "services": {"postgres": {
        "image": BASE_IMAGE, "container_name": f"bsbr{suffix}-postgres", "user": "postgres",
        "stop_signal": "SIGKILL", "labels": [TEST_LABEL], "volumes": ["/usr:/usr:ro", "/etc:/etc:ro"],
        "command": ["/bin/sh", "-c", f"echo '{message}' >&2; exec sleep 3600"]}}}
    (root / "docker-compose.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


def podman(env: dict, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=check)


def project_leftovers(env: dict, project: str) -> dict:
    """Containers, volumes and networks still labelled with ``project``."""
    lab = f"label=com.docker.compose.project={project}"
    out = {}
    for kind, args in (("containers", ["ps", "-a", "--filter", lab, "--format", "{{.Names}}"]),
                       ("volumes", ["volume", "ls", "--filter", lab, "--format", "{{.Name}}"]),
                       ("networks", ["network", "ls", "--filter", lab, "--format", "{{.Name}}"])):
        out[kind] = podman(env, *args).stdout.split()
    return out


def teardown(env: dict, project: str, images: tuple[str, ...] = ()) -> dict:
    """Remove every container, volume and network of ``project`` and ``images``;
    return what is left (all lists empty when clean)."""
    lab = f"label=com.docker.compose.project={project}"
    for _ in range(3):
        left = project_leftovers(env, project)
        if left["containers"]:
            podman(env, "rm", "-f", "-t", "0", *left["containers"])
        if left["volumes"]:
            podman(env, "volume", "rm", "-f", *left["volumes"])
        if left["networks"]:
            podman(env, "network", "rm", "-f", *left["networks"])
        left = project_leftovers(env, project)
        if not any(left.values()):
            break
        time.sleep(1)
    for img in images:
        podman(env, "rmi", "-f", img)
    del lab
    return project_leftovers(env, project)
