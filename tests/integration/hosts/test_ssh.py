"""The SSH runner against a real OpenSSH server on loopback (tests/infra/sshd.py).

Host keys are checked against the test's own known_hosts; every bad connection
input gives a clear message, the documented exit code, and harms nothing.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bigskies_ops.inventory import parse
from bigskies_ops.hosts.ssh import SSHRunner
from bigskies_ops.hosts.connection import HostKeyError
from bigskies_ops.hosts.shell import ENV_MARK, pipeline_script, stage_statuses
from tests.conftest import cli, write_inventory
from tests.pgcheck import dir_hashes
from tests.remote_helpers import ssh_block, wait_for

pytestmark = pytest.mark.usefixtures("ssh_server")


def _host(srv, tmp_path, name="prod", **ssh):
    doc = {"hosts": {name: {"connection": "ssh", "project_dir": str(tmp_path / "proj"),
                            "ssh": ssh_block(srv, **ssh), "backup": {"dir": "backups", "stall_timeout": 20}}}}
    return parse(doc, tmp_path / "inv.yaml").hosts[name]


# ----------------------------------------------------------------------------- pure
def test_command_line_quotes_every_word_and_keeps_secrets_off_it(tmp_path, ssh_server, monkeypatch):
    h = _host(ssh_server, tmp_path, become=True, become_password_env="BIGSKIES_TEST_SUDO_PW")
    monkeypatch.setenv("BIGSKIES_TEST_SUDO_PW", "sudo-pw; $(reboot)")
    r = SSHRunner(h)
    line, prefix = r.command_line(["pg_dump", "x; rm -rf y.sql.gz"], env={"PGPASSWORD": "pw'\" $HOME"})
    assert shlex.split(line)[:5] == ["sudo", "-S", "-p", "", "--"]
    assert shlex.split(line)[-2:] == ["pg_dump", "x; rm -rf y.sql.gz"]
    assert "pw'" not in line and "sudo-pw" not in line and "PGPASSWORD" not in line
    assert prefix == b"sudo-pw; $(reboot)\n" + ENV_MARK.encode() + b"\nPGPASSWORD=pw'\" $HOME\n\n"
    plain = SSHRunner(_host(ssh_server, tmp_path))
    assert plain.command_line(["ls", "a b"]) == ("ls 'a b'", b"")


def test_pipeline_script_reports_each_stage_and_quotes_paths():
    s = pipeline_script([["pg_dump", "--dbname", "my db"], ["gzip", "-1"]], stdout_path="/b/x; rm -rf y.partial")
    assert "{ pg_dump --dbname 'my db'; echo \"@@bigskies_rc 0 $?\" >&2; }" in s
    assert s.endswith("> '/b/x; rm -rf y.partial'")
    rcs, rest = stage_statuses("boom\n@@bigskies_pgid 77\n@@bigskies_rc 1 0\n@@bigskies_rc 0 1\n", 2)
    assert rcs == [1, 0] and rest == "boom"


# ----------------------------------------------------------------------------- real sshd
def test_runner_commands_env_and_files_with_shell_metacharacters(tmp_path, ssh_server):
    h = _host(ssh_server, tmp_path)
    d = tmp_path / "remote dir"
    canary = d / "y.sql.gz"
    name = "x; rm -rf y.sql.gz"
    with SSHRunner(h) as r:
        r.makedirs(str(d))
        canary.write_bytes(b"canary")
        assert r.run(["echo", name]).text == name + "\n"
        out = r.run(["sh", "-c", 'printf %s "$SECRET"'], env={"SECRET": "a b'c\"$x`id`"}).text
        assert out == "a b'c\"$x`id`"
        big = os.urandom(3_000_000)
        assert r.run(["cat"], input=big, env={"A": "1"}).stdout == big  # stdin after the env preamble intact
        r.write_atomic(str(d / name), b"payload\n", mode=0o600)
        assert (d / name).read_bytes() == b"payload\n" and oct((d / name).stat().st_mode & 0o777) == "0o600"
        assert name in r.listdir(str(d)) and r.exists(str(d / name)) and r.size(str(d / name)) == 8
        with r.open_read(str(d / name), 3) as f:
            assert f.read(100) == b"load\n"
        assert r.create_exclusive(str(d / "lock"), b"1") is True
        assert r.create_exclusive(str(d / "lock"), b"2") is False
        assert r.link_noreplace(str(d / "lock"), str(d / name)) is False
        assert r.sha256(str(d / name))[1] == 8
        r.remove(str(d / name))
        rc = r.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
        assert (rc.returncode, rc.text, rc.stderr) == (3, "out\n", "err\n")
    assert canary.read_bytes() == b"canary" and not (d / name).exists()


def test_become_runs_under_sudo_n_and_sudo_s_without_leaking_the_password(tmp_path, ssh_server, monkeypatch):
    with SSHRunner(_host(ssh_server, tmp_path, become=True)) as r:
        out = r.run(["sh", "-c", 'echo "$SUDO_COMMAND|$SUDO_USER"']).text
        assert out.startswith("/usr/bin/sh -c") or out.startswith("/bin/sh -c"), out
        assert out.strip().endswith("|root")
    monkeypatch.setenv("BIGSKIES_TEST_SUDO_PW", "the-sudo-password")
    h = _host(ssh_server, tmp_path, become=True, become_password_env="BIGSKIES_TEST_SUDO_PW")
    with SSHRunner(h) as r:
        # root needs no password, so sudo -S leaves the line unread: the preamble must drop it
        assert r.run(["cat"], input=b"only this").stdout == b"only this"
        assert "the-sudo-password" not in r.run(["sh", "-c", "env; cat /proc/$$/cmdline"]).text
        assert r.run(["id", "-u"]).text.strip() == "0"


def test_ssh_config_alias_and_jump_host_use_the_same_host_key_policy(tmp_path, ssh_server):
    doc = {"hosts": {"viaconf": {"connection": "ssh", "project_dir": "/tmp",
                                 "ssh": {"config_alias": ssh_server.alias, "config_file": str(ssh_server.ssh_config)}},
                     "viajump": {"connection": "ssh", "project_dir": "/tmp",
                                 "ssh": ssh_block(ssh_server, gateway=f"root@127.0.0.1:{ssh_server.port}")}}}
    inv = parse(doc, tmp_path / "inv.yaml")
    with SSHRunner(inv.hosts["viaconf"]) as r:   # known_hosts from the config's UserKnownHostsFile
        assert r.run(["echo", "ok"]).text == "ok\n"
    src = tmp_path / "bulk source"
    src.write_bytes(os.urandom(2_000_000))
    dst = tmp_path / "bulk copy"
    dst.write_bytes(b"head:")
    with SSHRunner(inv.hosts["viajump"]) as r:
        assert r.run(["echo", "ok"]).text == "ok\n"
        # bulk bytes through OpenSSH: same known_hosts, strict checking, and the jump host too
        argv = r.openssh_argv("true")
        assert f"UserKnownHostsFile={ssh_server.known_hosts}" in argv and "StrictHostKeyChecking=yes" in argv
        proxy = [a for a in argv if a.startswith("ProxyCommand=")]
        assert proxy and "StrictHostKeyChecking=yes" in proxy[0] and "-W" in proxy[0]
        assert r.fetch_to_file(str(src), str(dst), offset=5) == 2_000_000 - 5
    assert dst.read_bytes() == b"head:" + src.read_bytes()[5:]
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    doc["hosts"]["viajump"]["ssh"]["known_hosts_file"] = str(empty)
    with pytest.raises(HostKeyError, match="unknown"):
        with SSHRunner(parse(doc, tmp_path / "inv.yaml").hosts["viajump"]) as r:
            r.run(["true"])


def _accepted(srv) -> int:
    """Connections the test sshd has authenticated so far."""
    return srv.logfile.read_text(errors="replace").count("Accepted publickey")


def test_preconnect_hands_over_its_one_connection_or_its_error(tmp_path, ssh_server):
    h = _host(ssh_server, tmp_path)
    before = _accepted(ssh_server)
    r = SSHRunner(h)
    r.preconnect()
    t = r.connect()  # waits for the thread's connection instead of opening a second one
    assert t.is_active() and r.connect() is t and r.run(["echo", "ok"]).text == "ok\n"
    wait_for(lambda: r._master.client_options() != [], 10, "the OpenSSH master's socket")
    r.close()
    assert _accepted(ssh_server) == before + 2  # paramiko's and the OpenSSH master's
    # the thread's error is the first connect()'s (an unknown host key: exit 3), not a second attempt's
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    bad = SSHRunner(_host(ssh_server, tmp_path, known_hosts_file=str(empty)))
    bad.preconnect()
    _join_preconnect(h.name)
    assert bad._master.proc.wait(10) == 255  # OpenSSH's master refused the key too
    empty.write_text(ssh_server.known_hosts.read_text())  # a second attempt would now succeed
    with pytest.raises(HostKeyError, match="unknown") as e:
        bad.run(["true"])
    assert e.value.exit_code == 3
    # and every later connect()'s, whichever thread asks (a read ahead took the first: helper-50)
    with pytest.raises(HostKeyError, match="unknown"):
        bad.run(["true"])
    bad.close()
    # closed before its thread has connected: the connection it then opens is closed too
    c = SSHRunner(h)
    c.preconnect()
    c.close()
    _join_preconnect(h.name)
    assert not c.alive()


def test_preconnect_starts_an_openssh_master_that_the_bulk_stream_uses(tmp_path, ssh_server):
    before = _accepted(ssh_server)
    r = SSHRunner(_host(ssh_server, tmp_path))
    r.preconnect()
    master = r._master
    assert master is not None and oct(os.stat(master.dir).st_mode & 0o777) == "0o700"
    wait_for(lambda: master.client_options() != [], 10, "the master's socket")
    p = r.pipeline([["sh", "-c", "echo out; echo err >&2; exit 3"]])
    assert "ControlPath=" + master.path in p.proc.args  # the stream's client goes through the master
    assert p.stdout.read() == b"out\n" and p.wait() == 0
    rcs, rest = stage_statuses(p.stderr_text(), 1)
    assert rcs == [3] and rest == "err"  # the remote side's stderr and statuses come through it
    r.close()
    assert master.proc.poll() is not None and not os.path.exists(master.dir)
    assert _accepted(ssh_server) == before + 2  # paramiko and the master: the stream made no connection of its own


def test_a_killed_runs_master_folder_is_swept_by_the_next(tmp_path):
    import socket
    from bigskies_ops.hosts.connection import sweep_dead_masters

    def folder(name: str, *, listening: bool | None, age: float = 120.0):
        d = tmp_path / f"bigskies-ssh-{name}"
        d.mkdir(mode=0o700)
        s = None
        if listening is not None:  # a socket file: a live master listens on it, a killed one left it
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(d / "master"))
            if listening:
                s.listen(1)
            else:
                s.close()
        os.utime(d, (os.path.getmtime(d) - age,) * 2)
        return d, s

    dead, _ = folder("dead", listening=False)
    empty, _ = folder("empty", listening=None)
    live, sock = folder("live", listening=True)
    young, _ = folder("young", listening=False, age=0)
    other = tmp_path / "bigskies-ssh-open"
    other.mkdir(mode=0o755)  # not private: not one of ours
    os.utime(other, (os.path.getmtime(other) - 120,) * 2)
    try:
        sweep_dead_masters(str(tmp_path), "bigskies-ssh-")
        assert not dead.exists() and not empty.exists()
        assert live.exists() and young.exists() and other.exists()
    finally:
        sock.close()


def _join_preconnect(name: str) -> None:
    import threading
    for th in [th for th in threading.enumerate() if th.name == f"ssh-connect-{name}"]:
        th.join(10)


def test_fetch_told_its_offset_up_front_copies_before_run_and_run_only_watches(tmp_path, ssh_server):
    """start_fetch(offset=0) (a new file): the bytes flow at once, while the caller does
    something else; run() then waits for the end and checks the offset is the same."""
    h = _host(ssh_server, tmp_path)
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3_000_000))
    dst = tmp_path / "dst.partial"
    with SSHRunner(h) as r:
        f = r.start_fetch(str(src), str(dst), offset=0)
        wait_for(lambda: dst.exists() and dst.stat().st_size == 3_000_000, 30, "the copy to arrive before run()")
        assert f.run(0) == 3_000_000
        other = tmp_path / "other.partial"
        g = r.start_fetch(str(src), str(other), offset=0)
        with pytest.raises(ValueError, match="offset"):
            g.run(5)
        g.cancel()
    assert dst.read_bytes() == src.read_bytes()
    assert src.read_bytes().startswith(other.read_bytes())  # a cancelled copy leaves a prefix (the caller removes it)


# ----------------------------------------------------------------------------- bad inputs (CLI)
@pytest.fixture
def remote_inv(tmp_path, ssh_server):
    """An inventory with one SSH host 'prod' (no PostgreSQL needed for db.list) and a canary backup dir."""
    proj = tmp_path / "proj"
    bdir = proj / "backups"
    bdir.mkdir(parents=True)
    (bdir / "keep.sql.gz").write_bytes(b"precious")

    def make(**ssh):
        return write_inventory(tmp_path / "inv.yaml", {"prod": {
            "connection": "ssh", "project_dir": str(proj), "ssh": ssh_block(ssh_server, **ssh)}})
    return make, bdir


def _assert_unharmed(bdir, before):
    assert dir_hashes(bdir) == before


@pytest.mark.parametrize("case,code,message", [
    ("unknown", 3, "host key of [127.0.0.1]:{port} is unknown"),
    ("changed", 3, "host key CHANGED"),
    ("auth", 1, "authentication refused"),
    ("not_listening", 1, "connection refused (is sshd listening"),
])
def test_bad_connections_are_refused_with_a_clear_message(remote_inv, ssh_server, cli_env, tmp_path, case, code,
                                                          message):
    make, bdir = remote_inv
    before = dir_hashes(bdir)
    kh = tmp_path / "kh"
    if case == "unknown":
        kh.write_text("")
        inv = make(known_hosts_file=str(kh))
    elif case == "changed":
        other = tmp_path / "other_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        kt, b64 = Path(str(other) + ".pub").read_text().split()[:2]
        kh.write_text(f"[127.0.0.1]:{ssh_server.port} {kt} {b64}\n")
        inv = make(known_hosts_file=str(kh))
    elif case == "auth":
        wrong = tmp_path / "wrong_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
        inv = make(key_filename=str(wrong))
    else:
        from tests.infra.sshd import free_port
        inv = make(port=free_port())
    r = cli("db.list", "-i", str(inv), "--host", "prod", env=cli_env, timeout=60)
    assert r.returncode == code, r.stderr + r.stdout
    assert message.format(port=ssh_server.port) in r.stderr
    assert "Traceback" not in r.stderr
    if case == "changed":  # OpenSSH's fingerprint form, and the command edits the file in use
        assert __import__("re").search(r"\(got \S+ SHA256:[A-Za-z0-9+/]{43}, known_hosts has another", r.stderr)
        assert f"ssh-keygen -f {kh} -R '[127.0.0.1]:{ssh_server.port}'" in r.stderr, r.stderr
    _assert_unharmed(bdir, before)


def test_host_key_checking_off_works_and_warns_on_every_run(remote_inv, cli_env, tmp_path):
    make, bdir = remote_inv
    kh = tmp_path / "kh"
    kh.write_text("")
    inv = make(known_hosts_file=str(kh), host_key_checking=False)
    for _ in range(2):
        r = cli("db.list", "-i", str(inv), "--host", "prod", "--json", env=cli_env, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stderr.count("host key checking is OFF for prod") == 1, r.stderr
        assert json.loads(r.stdout)["backups"] == []
    assert kh.read_text() == ""  # the accepted key was not written anywhere
    # a task that opens two connections to the host (db.status, db.backup's listing after the
    # dump) still warns once: two runners in one process, against the real sshd
    prog = ("import sys; from bigskies_ops.inventory import load; from bigskies_ops.hosts.ssh import SSHRunner\n"
            "h = load(sys.argv[1]).host('prod')\n"
            "for _ in range(2):\n"
            "    with SSHRunner(h) as r: r.run(['true'])\n")
    r = subprocess.run([sys.executable, "-c", prog, str(inv)], env=cli_env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.count("host key checking is OFF for prod") == 1, r.stderr


def test_a_missing_key_file_is_a_setting_to_fix(remote_inv, cli_env, tmp_path):
    """Exit 2 and the setting's name, like a missing known_hosts_file (was exit 1, '[Errno 2]')."""
    make, bdir = remote_inv
    before = dir_hashes(bdir)
    inv = make(key_filename=str(tmp_path / "no_such_key"))
    r = cli("db.list", "-i", str(inv), "--host", "prod", env=cli_env, timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"hosts.prod: ssh.key_filename {tmp_path / 'no_such_key'} does not exist" in r.stderr
    _assert_unharmed(bdir, before)
