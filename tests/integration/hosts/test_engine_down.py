"""With the container engine unreachable (its daemon down: here podman pointed at a dead
socket with ``--url``), ``db.status``, ``db.backup`` and ``inventory.ping`` say the engine is
unreachable, never that the container does not exist; a container that really is missing
is still called missing. Real podman, no container started. Exit codes and messages checked;
nothing is written."""
from __future__ import annotations

import json

import pytest

from tests.conftest import PASSWORD_ENV, cli, write_inventory


def _container_host(tmp_path, engine: str, name: str = "bigskies-postgres-nonexistent") -> dict:
    return {"connection": "local", "container": {"name": name, "engine_command": engine},
            "postgres": {"database": "bigskies", "user": "bigskies", "password_env": PASSWORD_ENV},
            "backup": {"dir": str(tmp_path / "b")}}


@pytest.fixture
def env(cli_env, podman_env):
    return {**cli_env, "CONTAINERS_CONF": podman_env["CONTAINERS_CONF"]}


def test_a_dead_engine_is_named_as_such(tmp_path, env):
    dead = tmp_path / "dead.sock"          # no daemon listens here
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": _container_host(tmp_path, f"podman --url unix://{dead}")})
    r = cli("db.status", "-i", str(inv), env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "the container engine (podman --url unix://" in r.stderr and "is unreachable on dev" in r.stderr, r.stderr
    assert "does not exist" not in r.stderr and "Traceback" not in r.stderr
    r = cli("db.backup", "-i", str(inv), env=env)
    assert r.returncode != 0 and "is unreachable on dev" in r.stderr and "does not exist" not in r.stderr, r.stderr
    r = cli("inventory.ping", "-i", str(inv), "--json", env=env)
    assert r.returncode == 1
    checks = {c["check"]: c for c in json.loads(r.stdout)["hosts"][0]["checks"]}
    assert checks["container"]["state"] == "failed" and "is unreachable on dev" in checks["container"]["message"]
    assert checks["postgres"]["state"] == "skipped"
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_a_missing_container_is_still_called_missing(tmp_path, env):
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": _container_host(tmp_path, "podman")})
    r = cli("db.status", "-i", str(inv), env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "container 'bigskies-postgres-nonexistent' does not exist on dev" in r.stderr, r.stderr
    assert "unreachable" not in r.stderr
