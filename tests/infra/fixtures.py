"""Session-scoped pytest fixtures for real services: podman + PostgreSQL container, sshd.

Load as a plugin (``pytest_plugins = ["tests.infra.fixtures"]``, in the root
conftest.py and/or a test module; pytest registers it once however often it is
named). Everything is started by these fixtures and stopped by them at session
end: containers are removed by name (and their processes checked gone), sshd is
stopped by its process id. The base image is removed at teardown when this
session built it, unless ``BIGSKIES_KEEP_TEST_IMAGE=1`` (building takes < 1 s).

Under pytest-xdist every worker has its own session fixtures (its own container,
sshd, clusters: names and ports are unique per worker); only the base image is
shared. Workers build it under a file lock and never remove it; the controller
notes at session start whether it existed and removes it at session end, after
every worker has stopped its containers.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.infra import podman as pm
from tests.infra.sshd import SSHServer, free_port

__all__ = ["infra_dir", "podman_env", "pg_base_image", "pg_container", "ssh_server",
           "pytest_terminal_summary"]

# name -> seconds, filled by the fixtures; printed at the end of the run.
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="session")
def infra_dir(tmp_path_factory) -> Path:
    """Folder of this test run holding containers.conf, ssh keys/configs, logs."""
    return tmp_path_factory.mktemp("infra")


@pytest.fixture(scope="session")
def podman_env(infra_dir) -> dict:
    """``os.environ`` + ``CONTAINERS_CONF`` (a containers.conf inside ``infra_dir``)."""
    return pm.podman_env(infra_dir)


def _xdist_worker(config) -> bool:
    return hasattr(config, "workerinput")


def _xdist_controller(config) -> bool:
    return config.pluginmanager.hasplugin("dsession")


@pytest.fixture(scope="session")
def pg_base_image(podman_env, request, tmp_path_factory):
    """Name of the local base image (``localhost/bigskies-pgbase:15``), built if missing."""
    worker = _xdist_worker(request.config)
    if worker:  # one build for all workers; the controller removes it at the end
        with open(tmp_path_factory.getbasetemp().parent / "pgbase-image.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            existed = pm.image_exists(podman_env)
            name = pm.ensure_base_image(podman_env)
    else:
        existed = pm.image_exists(podman_env)
        name = pm.ensure_base_image(podman_env)
    if not existed and name in pm.BUILD_SECONDS:
        TIMINGS["image build (cold)"] = pm.BUILD_SECONDS[name]
    yield name
    if not worker and not existed and os.environ.get("BIGSKIES_KEEP_TEST_IMAGE") != "1":
        pm.remove_image(podman_env, name)  # fails harmlessly while another run uses it


def pytest_sessionstart(session):
    config = session.config
    if _xdist_controller(config) and shutil.which("podman"):
        d = Path(tempfile.mkdtemp(prefix="bigskies-xdist-"))
        try:
            config._bigskies_image_existed = pm.image_exists(pm.podman_env(d))
        finally:
            shutil.rmtree(d, ignore_errors=True)


def pytest_sessionfinish(session):
    config = session.config
    if _xdist_worker(config):
        config.workeroutput["bigskies_infra_timings"] = json.dumps(TIMINGS)
        config.workeroutput["bigskies_worker"] = os.environ.get("PYTEST_XDIST_WORKER", "gw?")
    elif (_xdist_controller(config) and getattr(config, "_bigskies_image_existed", True) is False
          and os.environ.get("BIGSKIES_KEEP_TEST_IMAGE") != "1"):
        d = Path(tempfile.mkdtemp(prefix="bigskies-xdist-"))
        try:
            pm.remove_image(pm.podman_env(d))  # every worker has stopped its containers by now
        finally:
            shutil.rmtree(d, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """(controller, pytest-xdist) Collect each worker's infra timings for the summary."""
    out = getattr(node, "workeroutput", None) or {}
    gw = out.get("bigskies_worker", "gw?")
    for k, v in json.loads(out.get("bigskies_infra_timings", "{}")).items():
        TIMINGS[f"{k} [{gw}]"] = v


@pytest.fixture(scope="session")
def pg_container(pg_base_image, podman_env, infra_dir):
    """A running :class:`~tests.infra.podman.PostgresContainer` (PostgreSQL 15).

    ``.name`` is ``bs-prod-<random>``; superuser ``bigskies``, password
    ``prod-secret`` (local socket trusts; TCP would need scram); no published
    port, reach it with ``podman exec -i NAME ...`` and ``env=podman_env``.
    """
    pc = pm.PostgresContainer(pg_base_image)
    name = f"bs-prod-{uuid.uuid4().hex[:8]}"
    pc.start(name, infra_dir, podman_env, superuser="bigskies", password="prod-secret")
    TIMINGS["postgres container start"] = pc.start_seconds
    yield pc
    pc.stop()
    leftovers = pm.podman(podman_env, "ps", "-a", "--filter", f"name=^{name}$",
                          "--format", "{{.Names}}").stdout.decode().split()
    assert not leftovers, f"container left behind: {leftovers}"


@pytest.fixture(scope="session")
def ssh_server(infra_dir, podman_env):
    """A started :class:`~tests.infra.sshd.SSHServer` on 127.0.0.1 (alias ``testprod``).

    Remote commands get ``CONTAINERS_CONF`` (same file as ``podman_env``) and a
    standard PATH, so ``podman`` works over SSH.
    """
    srv = SSHServer(infra_dir / "ssh", free_port(),
                    containers_conf=podman_env["CONTAINERS_CONF"]).start()
    TIMINGS["sshd start"] = srv.start_seconds
    yield srv
    srv.stop()


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_line(
            "infra timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in TIMINGS.items()))
        base = os.environ.get("BIGSKIES_INFRA_TIMINGS")
        if base:
            Path(base).write_text(json.dumps(TIMINGS, indent=1))
