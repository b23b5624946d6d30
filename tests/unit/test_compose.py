"""Pure pieces of the stack feature: argv builders, config parsing, the roles script."""
from __future__ import annotations

from pathlib import Path

import pytest

from bigskies_ops.hosts import compose as cmp
from bigskies_ops.errors import UsageError
from bigskies_ops.inventory import parse
from bigskies_ops.archives.roles import missing_roles_script
from bigskies_ops.stack.lifecycle import _human_to_bytes, _utc


def _host(**over):
    h = {"connection": "local", "project_dir": "/srv/bigskies",
         "compose": {"command": "docker compose", "file": "docker-compose.yml", "project_name": "bigskies"},
         "coordinators": ["bootstrap", "datastore"]}
    h.update(over)
    return parse({"hosts": {"dev": h}}, Path("/tmp/inv.yaml")).hosts["dev"]


def test_compose_argv_uses_the_hosts_command_file_and_project():
    h = _host()
    assert cmp.compose_argv(h, "up", "-d") == ["docker", "compose", "-f", "/srv/bigskies/docker-compose.yml",
                                               "-p", "bigskies", "up", "-d"]
    assert cmp.in_project_dir(h, ["x", "y z"]) == ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh",
                                                    "/srv/bigskies", "x", "y z"]


def test_engine_defaults_follow_the_compose_command():
    assert cmp.engine_argv(_host()) == ["docker"]
    assert cmp.engine_argv(_host(compose={"command": "podman-compose"})) == ["podman"]
    assert cmp.engine_argv(_host(container={"engine_command": "sudo podman"})) == ["sudo", "podman"]


def test_docker_compose_config_output_is_parsed_with_real_volume_names():
    text = """
name: bigskies
services:
  postgres:
    container_name: bigskies-postgres
    volumes:
      - type: volume
        source: postgres_data
        target: /var/lib/postgresql/data
  bootstrap:
    image: bigskies/bootstrap
volumes:
  postgres_data:
    name: bigskies_postgres_data
"""
    p = cmp.parse_config(text)
    assert p.name == "bigskies" and set(p.services) == {"postgres", "bootstrap"}
    assert p.volume_name("postgres_data") == "bigskies_postgres_data"
    assert p.service_using_volume("postgres_data") == "postgres"
    assert p.service_of_container("bigskies-postgres") == "postgres"


def test_unknown_coordinator_names_the_projects_services():
    p = cmp.Project("bigskies", {"postgres": {}, "bootstrap": {}})
    with pytest.raises(UsageError) as e:
        cmp.check_coordinators(_host(), p)
    assert e.value.exit_code == 2
    assert "datastore is not a service of compose project 'bigskies'" in str(e.value)
    assert "its services: bootstrap, postgres" in str(e.value)


ROLES = """--
-- Roles
--

CREATE ROLE bigskies;
ALTER ROLE bigskies WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;
CREATE ROLE "Data Store";
ALTER ROLE "Data Store" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS;
COMMENT ON ROLE "Data Store" IS 'datastore coordinator';
CREATE ROLE readers;
ALTER ROLE readers WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
ALTER ROLE readers SET search_path TO 'public';

--
-- Role memberships
--

GRANT readers TO "Data Store" GRANTED BY bigskies;
GRANT readers TO bigskies GRANTED BY bigskies;
"""


def test_roles_script_creates_only_missing_roles_and_never_alters_existing_ones():
    script, created = missing_roles_script(ROLES, {"bigskies", "readers"})
    assert created == ["Data Store"]
    assert script.splitlines() == [
        'CREATE ROLE "Data Store";',
        'ALTER ROLE "Data Store" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS;',
        "COMMENT ON ROLE \"Data Store\" IS 'datastore coordinator';",
        'GRANT readers TO "Data Store" GRANTED BY bigskies;']
    assert missing_roles_script(ROLES, {"bigskies", "readers", "Data Store"}) == ("", [])


def test_engine_sizes_and_times_are_normalised():
    assert _human_to_bytes("39.85MB") == 39_850_000 and _human_to_bytes("63B") == 63
    assert _human_to_bytes("n/a") is None
    assert _utc("2026-11-29T09:17:08.059636871Z") == "2026-11-29T09:17:08Z"
    assert _utc("2026-11-29 10:17:08.05 +0100 CET") == "2026-11-29T09:17:08Z"
