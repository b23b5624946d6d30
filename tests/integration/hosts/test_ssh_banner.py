"""An SSH "server" that accepts the TCP connection and closes it at once (a port
forwarder with nothing behind it, a firewall that resets, sshd's MaxStartups): paramiko
logs the failed handshake itself, with a traceback, through the ``paramiko.transport``
logger. The user must see only our one error line (docs/cli.md "Flags": no input prints
a Python traceback), exit 1, and --json the error document. A real listener, no mocks.
"""
from __future__ import annotations

import json

import pytest

from tests.conftest import cli, write_inventory
from tests.infra.receivers import tcp_server


@pytest.fixture
def closing_listener():
    """A TCP port on 127.0.0.1 whose listener accepts each connection and closes it."""
    with tcp_server(lambda conn, stop: None) as (port, _stop):
        yield port


@pytest.fixture
def banner_inv(tmp_path, closing_listener):
    proj = tmp_path / "proj"
    (proj / "backups").mkdir(parents=True)
    (proj / "backups" / "keep.sql.gz").write_bytes(b"precious")
    inv = write_inventory(tmp_path / "inv.yaml", {"nokey": {
        "connection": "ssh", "project_dir": str(proj),
        "ssh": {"host": "127.0.0.1", "port": closing_listener, "user": "nobody", "connect_timeout": 5,
                "host_key_checking": False},
        "postgres": {"database": "bigskies", "user": "bigskies"},
        "backup": {"dir": "backups"}}})
    return inv, proj


@pytest.mark.parametrize("task", ["db.status", "db.backup", "db.list", "inventory.ping"])
def test_connection_closed_before_the_banner_is_one_error_line(banner_inv, cli_env, task):
    inv, proj = banner_inv
    cli_env.pop("BIGSKIES_DEBUG", None)
    r = cli(task, "-i", str(inv), "--host", "nokey", env=cli_env, timeout=90)
    assert r.returncode == 1, r.stderr + r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    assert "Exception (client)" not in r.stderr, r.stderr
    assert "paramiko" not in r.stderr, r.stderr
    errors = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    if task == "inventory.ping":
        assert "SSH connection failed: Error reading SSH protocol banner" in r.stdout, r.stdout
    else:
        assert "SSH connection failed: Error reading SSH protocol banner" in errors[0], r.stderr
    assert (proj / "backups" / "keep.sql.gz").read_bytes() == b"precious"
    assert sorted(p.name for p in (proj / "backups").iterdir()) == ["keep.sql.gz"]


@pytest.mark.parametrize("task", ["db.status", "inventory.ping"])
def test_connection_closed_before_the_banner_json(banner_inv, cli_env, task):
    inv, _ = banner_inv
    r = cli(task, "-i", str(inv), "--host", "nokey", "--json", env=cli_env, timeout=90)
    assert r.returncode == 1, r.stderr + r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    assert doc["result"] == "failed"
