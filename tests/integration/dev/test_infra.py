"""The test infrastructure itself, against real services: podman + PostgreSQL, sshd.

These prove what the product's tests rely on: a containerised PostgreSQL 15
reachable only through ``podman exec -i`` (pipes, no TTY, binary-safe), removed
without a trace, and an OpenSSH server that enforces the test known_hosts and
hands remote commands the podman configuration.
"""
from __future__ import annotations

import os
import pty
import subprocess
import uuid

import paramiko
import pytest

from tests.infra import podman as pm
from tests.infra.sshd import SSHServer, _alive, _children, free_port

pytest_plugins = ["tests.infra.fixtures"]

PG = pm.PG_BINDIR


# -- podman / PostgreSQL -----------------------------------------------------------

def test_container_answers_select_version(pg_container):
    out = pg_container.exec_psql("SELECT version();")
    assert out.startswith("PostgreSQL 15."), out
    assert pg_container.running
    assert pm._pid_alive(pg_container.pid) and pm._pid_alive(pg_container.conmon_pid)


def test_container_password_is_scram_and_pwfile_is_gone(pg_container, infra_dir):
    assert pg_container.exec_psql(
        "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'bigskies';"
    ) == "t\n"
    assert pg_container.exec_psql(
        "SELECT string_agg(DISTINCT type || ':' || auth_method, ',') FROM pg_hba_file_rules;"
    ) == "host:scram-sha-256,local:trust\n"
    assert pg_container.exec_psql("SHOW listen_addresses;") == "\n"
    assert not list(infra_dir.glob("*.pwfile"))


def test_exec_i_gives_the_container_a_pipe_not_a_tty(pg_container, podman_env):
    """Even when our own stdin is a terminal, ``exec -i`` (no -t) hands the process a pipe."""
    script = b"if [ -t 0 ]; then echo tty; else echo pipe; fi; cat"
    # stdin a pipe
    r = subprocess.run(["podman", "exec", "-i", pg_container.name, "/bin/sh", "-c", script],
                       input=b"data\n", capture_output=True, env=podman_env, timeout=60)
    assert (r.returncode, r.stdout) == (0, b"pipe\ndata\n"), r.stderr
    # stdin a pty (a TTY heuristic on our side would fire here)
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen(["podman", "exec", "-i", pg_container.name, "/bin/sh", "-c",
                              "if [ -t 0 ]; then echo tty; else echo pipe; fi"],
                             stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=podman_env)
        os.close(slave)
        slave = -1
        os.write(master, b"\x04")  # EOF for the relayed stdin
        out, err = p.communicate(timeout=60)
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    assert (p.returncode, out) == (0, b"pipe\n"), err


def test_pg_dump_stream_is_binary_safe(pg_container, podman_env):
    """A custom-format dump streamed out of the container round-trips byte-exactly."""
    pg_container.exec_psql("DROP DATABASE IF EXISTS infra_src; DROP DATABASE IF EXISTS infra_dst;"
                           "CREATE DATABASE infra_src; CREATE DATABASE infra_dst;")
    pg_container.exec_psql(
        "CREATE TABLE blobs (id int PRIMARY KEY, b bytea);"
        # incompressible bytes (md5 chains), so the compressed stream carries every byte value
        "INSERT INTO blobs SELECT g, decode(string_agg(md5(g || '-' || i), '' ORDER BY i), 'hex')"
        " FROM generate_series(1, 200) g, generate_series(0, 255) i GROUP BY g;",
        database="infra_src")
    want = pg_container.exec_psql(
        "SELECT count(*), md5(string_agg(md5(b), '' ORDER BY id)) FROM blobs;", database="infra_src")

    dump = subprocess.run(
        ["podman", "exec", "-i", pg_container.name, f"{PG}/pg_dump", "-Fc",
         "-h", pm.SOCKET_DIR, "-U", "bigskies", "-d", "infra_src"],
        stdin=subprocess.DEVNULL, capture_output=True, env=podman_env, timeout=120)
    assert dump.returncode == 0, dump.stderr
    assert dump.stdout.startswith(b"PGDMP"), dump.stdout[:16]
    assert len(set(dump.stdout)) == 256  # every byte value, incl. \0 \r \n \x1a \xff

    restore = pg_container.exec(f"{PG}/pg_restore", "--exit-on-error", "-h", pm.SOCKET_DIR,
                                "-U", "bigskies", "-d", "infra_dst", input=dump.stdout)
    assert restore.returncode == 0, restore.stderr
    got = pg_container.exec_psql(
        "SELECT count(*), md5(string_agg(md5(b), '' ORDER BY id)) FROM blobs;", database="infra_dst")
    assert got == want and got.startswith("200|")


def test_stopped_container_leaves_nothing(pg_base_image, podman_env, infra_dir):
    name = f"bs-tmp-{uuid.uuid4().hex[:8]}"
    pc = pm.PostgresContainer(pg_base_image).start(name, infra_dir, podman_env)
    try:
        assert pc.exec_psql("SELECT 40 + 2;").strip() == "42"
        pids = (pc.pid, pc.conmon_pid)
        assert name in pm.container_names(podman_env)
    finally:
        pc.stop()
    names = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], env=podman_env,
                           capture_output=True, text=True, check=True).stdout.split()
    assert name not in names
    assert not any(pm._pid_alive(p) for p in pids)
    assert (infra_dir / f"{name}.log").read_text().count("ready to accept connections") >= 1


# -- sshd ---------------------------------------------------------------------------

def _ssh(srv: SSHServer, *remote: str, config=None) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-F", str(config or srv.ssh_config), srv.alias, *remote],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def test_ssh_with_strict_host_key_checking(ssh_server):
    r = _ssh(ssh_server, "echo", "ok")
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
    assert ssh_server.known_hosts.read_text() == ssh_server.host_key_line + "\n"
    assert ssh_server.host_key_line.startswith(f"[127.0.0.1]:{ssh_server.port} ssh-ed25519 ")


@pytest.mark.parametrize("known", ["empty", "other-key"])
def test_ssh_refuses_unknown_or_changed_host_key(ssh_server, tmp_path, known):
    kh = tmp_path / "known_hosts"
    if known == "empty":
        kh.write_text("")
    else:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                       check=True)
        other = (tmp_path / "k.pub").read_text().split()[:2]
        kh.write_text(f"[127.0.0.1]:{ssh_server.port} {other[0]} {other[1]}\n")
    cfg = tmp_path / "ssh_config"
    cfg.write_text(ssh_server.ssh_config.read_text().replace(str(ssh_server.known_hosts), str(kh)))
    r = _ssh(ssh_server, "echo", "ok", config=cfg)
    assert r.returncode == 255 and r.stdout == ""
    assert "Host key verification failed" in r.stderr, r.stderr


def _paramiko_client(srv: SSHServer, known_hosts) -> paramiko.SSHClient:
    c = paramiko.SSHClient()
    c.load_host_keys(str(known_hosts))
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    c.connect("127.0.0.1", port=srv.port, username="root", key_filename=str(srv.client_key),
              look_for_keys=False, allow_agent=False, timeout=10)
    return c


def test_paramiko_reject_policy_and_remote_podman(ssh_server, pg_container, podman_env, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException):
        _paramiko_client(ssh_server, empty)

    c = _paramiko_client(ssh_server, ssh_server.known_hosts)
    try:
        _, out, err = c.exec_command("echo $CONTAINERS_CONF; podman ps --format '{{.Names}}'")
        text = out.read().decode()
        assert out.channel.recv_exit_status() == 0, err.read()
        lines = text.split()
        assert lines[0] == podman_env["CONTAINERS_CONF"]
        assert pg_container.name in lines[1:]

        # the product's remote path: ssh -> podman exec -i -> pg_dump, bytes on an exec channel
        chan = c.get_transport().open_session()
        chan.exec_command(f"podman exec -i {pg_container.name} {PG}/pg_dump -Fc "
                          f"-h {pm.SOCKET_DIR} -U bigskies -d postgres")
        chan.shutdown_write()
        data = bytearray()
        while chunk := chan.recv(256 * 1024):
            data += chunk
        assert chan.recv_exit_status() == 0
        assert data.startswith(b"PGDMP")
    finally:
        c.close()


def test_sshd_stops_by_pid_with_its_session_processes(infra_dir):
    srv = SSHServer(infra_dir / "ssh-tmp", free_port()).start()
    pid = srv.pid
    c = _paramiko_client(srv, srv.known_hosts)  # a live session: sshd forks a child for it
    try:
        kids = _children(pid)
        assert kids, "sshd forked no per-connection process"
    finally:
        srv.stop()
        c.close()
    assert not any(_alive(p) for p in [pid, *kids])
