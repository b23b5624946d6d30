"""The runner interface (bigskies_ops.hosts.runners.Runner) behaves the same on both
runners: every test runs once with a LocalRunner and once with an SSHRunner to the
suite's sshd on loopback (tests/infra/sshd.py). The sshd runs on this machine, so a
test looks at the files and processes it made through the local file system.
"""
from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from bigskies_ops.errors import CommandError, StorageError
from bigskies_ops.hosts import runner_for
from bigskies_ops.hosts.local import LocalRunner
from bigskies_ops.hosts.runners import Runner
from bigskies_ops.hosts.shell import PGID_MARK, stage_statuses
from bigskies_ops.hosts.ssh import SSHRunner
from bigskies_ops.inventory import parse
from tests.remote_helpers import ssh_block, wait_for


@pytest.fixture(params=["local", "ssh"])
def runner(request, tmp_path):
    if request.param == "local":
        host = {"connection": "local", "project_dir": str(tmp_path)}
    else:
        srv = request.getfixturevalue("ssh_server")
        host = {"connection": "ssh", "project_dir": str(tmp_path), "ssh": ssh_block(srv),
                "backup": {"dir": "backups", "stall_timeout": 20}}
    h = parse({"hosts": {"box": host}}, tmp_path / "inv.yaml").hosts["box"]
    with runner_for(h) as r:
        yield r


def _procs_with(word: str) -> list[int]:
    """pids of processes whose command line contains ``word``."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if word.encode() in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def test_runner_for_gives_the_kind_the_inventory_says_and_both_declare_the_whole_interface(runner):
    assert isinstance(runner, SSHRunner if runner.is_remote else LocalRunner)
    assert runner.name == ("ssh" if runner.is_remote else "local")
    assert runner.label == "box"
    declared = {n for n, v in vars(Runner).items() if callable(v) and not n.startswith("_")}
    missing = {n for n in declared if getattr(type(runner), n) is getattr(Runner, n)
               and n not in ("script", "check_result", "fetch_to_file", "close")}
    assert not missing, f"{type(runner).__name__} does not implement {sorted(missing)}"


def test_run_returns_stdout_stderr_and_status_and_check_raises_with_them(runner):
    assert runner.run(["echo", "x; rm -rf y"]).text == "x; rm -rf y\n"
    assert runner.run(["sh", "-c", 'printf %s "$SECRET"'], env={"SECRET": "a b'c\"$x"}).text == "a b'c\"$x"
    data = os.urandom(1_000_000)
    assert runner.run(["cat"], input=data).stdout == data
    r = runner.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (r.returncode, r.text, r.stderr, r.ok) == (3, "out\n", "err\n", False)
    with pytest.raises(CommandError, match="exit 3") as e:
        runner.run(["sh", "-c", "echo boom >&2; exit 3"])
    assert e.value.returncode == 3 and "boom" in str(e.value)


def test_popen_streams_stdout_takes_stdin_and_collects_stderr(runner):
    p = runner.popen(["cat"], stdin=True)
    p.stdin.write(b"hello ")
    p.stdin.write(b"world")
    p.stdin.close()
    assert p.stdout.read() == b"hello world"
    assert p.wait(30) == 0 and p.poll() == 0
    q = runner.popen(["sh", "-c", 'echo "$V"; echo oops >&2; exit 4'], env={"V": "v 1"})
    assert q.stdout.read() == b"v 1\n"
    assert q.wait(30) == 4 and "oops" in q.stderr_text()


def test_pipeline_reports_the_status_of_each_stage(runner, tmp_path):
    out = tmp_path / "out file"
    p = runner.pipeline([["sh", "-c", "echo partial; echo why >&2; exit 3"], ["gzip", "-1"]], stdout_path=str(out))
    assert p.wait(30) == 0  # the shell's status is the last stage's: the point of the markers
    rcs, rest = stage_statuses(p.stderr_text(), 2)
    assert rcs == [3, 0] and rest.strip() == "why"
    assert subprocess.run(["gzip", "-dc", str(out)], capture_output=True).stdout == b"partial\n"
    src = tmp_path / "in file"
    src.write_bytes(b"abc\n")
    q = runner.pipeline([["cat"], ["tr", "a-z", "A-Z"]], stdin_path=str(src), env={"X": "1"})
    assert q.stdout.read() == b"ABC\n"
    assert q.wait(30) == 0 and stage_statuses(q.stderr_text(), 2)[0] == [0, 0]


def test_killing_a_pipeline_stops_every_stage(runner):
    word = f"{uuid.uuid4().int % 10**6}.5"  # a sleep the test can find
    p = runner.pipeline([["sleep", word], ["cat"]])
    wait_for(lambda: PGID_MARK in p.stderr_text() and _procs_with(word), 20, "the pipeline to start")
    p.kill()
    wait_for(lambda: not _procs_with(word), 20, "every stage to stop")


def test_script_gets_its_arguments_as_positional_parameters(runner):
    r = runner.script('printf "%s|" "$@"; cat', "a b", "c;d", "$x", input=b"in")
    assert r.text == "a b|c;d|$x|in"
    assert runner.script("exit 5", check=False).returncode == 5
    with pytest.raises(CommandError):
        runner.script("exit 5")


def test_sha256_is_computed_on_the_host_and_equals_hashlib(runner, tmp_path):
    f = tmp_path / "archive.dump"
    data = os.urandom(3 * (1 << 20) + 17)
    f.write_bytes(data)
    assert runner.sha256(str(f)) == (hashlib.sha256(data).hexdigest(), len(data))
    (tmp_path / "empty").write_bytes(b"")
    assert runner.sha256(str(tmp_path / "empty")) == (hashlib.sha256(b"").hexdigest(), 0)
    with pytest.raises(StorageError):
        runner.sha256(str(tmp_path / "missing"))


def test_file_operations(runner, tmp_path):
    d = tmp_path / "a dir" / "sub"
    runner.makedirs(str(d), mode=0o750)
    assert d.is_dir() and stat.S_IMODE(d.stat().st_mode) == 0o750
    runner.makedirs(str(d))  # an existing folder is fine
    assert runner.listdir(str(tmp_path / "missing")) == []
    f = str(d / "x; y.json")
    runner.write_atomic(f, b'{"a": 1}', mode=0o600)
    assert Path(f).read_bytes() == b'{"a": 1}' and stat.S_IMODE(os.stat(f).st_mode) == 0o600
    runner.write_atomic(f, b"second")
    assert runner.read_bytes(f) == b"second" and runner.size(f) == 6 and runner.exists(f)
    assert [n for n in runner.listdir(str(d)) if not n.startswith(".tmp-")] == ["x; y.json"]
    with runner.open_read(f, 2) as r:
        assert r.read(100) == b"cond"
    w = str(d / "w")
    with runner.open_write(w) as out:
        out.write(b"one")
    with runner.open_write(w, append=True) as out:
        out.write(b"two")
    assert Path(w).read_bytes() == b"onetwo"
    with runner.open_write(w) as out:
        out.write(b"3")
    assert Path(w).read_bytes() == b"3"
    runner.rename(w, str(d / "renamed"))
    assert not Path(w).exists() and (d / "renamed").read_bytes() == b"3"
    assert runner.link_noreplace(str(d / "renamed"), f) is False and (d / "renamed").exists()
    assert runner.link_noreplace(str(d / "renamed"), str(d / "published")) is True
    assert not (d / "renamed").exists() and (d / "published").read_bytes() == b"3"
    lock = str(d / "lock")
    assert runner.create_exclusive(lock, b"pid 1") is True
    assert runner.create_exclusive(lock, b"pid 2") is False and Path(lock).read_bytes() == b"pid 1"
    runner.remove(lock)
    runner.remove(lock)  # a missing file is fine
    assert not runner.exists(lock)
    (d / "dangling").symlink_to(d / "nowhere")
    assert runner.exists(str(d / "dangling"))
    # a symlink's size is its target's on both (an archive linked into the backup folder
    # is compared with its manifest's byte count; ssh ran `stat` without -L)
    (d / "link").symlink_to(d / "published")
    assert runner.size(str(d / "link")) == 1
    with pytest.raises(OSError):
        runner.size(str(d / "nowhere"))
    with pytest.raises(OSError):
        runner.read_bytes(str(d / "nowhere"))
    free = runner.free_bytes(str(d))
    assert isinstance(free, int) and free > 0 and runner.free_bytes(str(d / "nowhere")) is None
    priv = runner.make_private_dir()
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o700
    Path(priv, "secret").write_text("x")
    runner.remove_tree(priv)
    assert not os.path.exists(priv)


def test_probe_and_is_cached_answer_exists_size_and_contents(runner, tmp_path):
    m = tmp_path / "b.dump.manifest.json"
    m.write_bytes(b'{"status": "DONE"}')
    paths = [str(m), str(tmp_path / "b.dump")]
    runner.probe(paths, read=1)
    assert runner.is_cached(str(m))
    assert runner.exists(str(m)) and not runner.exists(str(tmp_path / "b.dump"))
    assert runner.read_bytes(str(m)) == b'{"status": "DONE"}' and runner.size(str(m)) == 18
    runner.remove(str(m))  # a change drops what was learnt
    assert not runner.exists(str(m))


def test_fetch_copies_the_file_here_from_an_offset(runner, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(2_000_000))
    dst = tmp_path / "dst.partial"
    dst.write_bytes(src.read_bytes()[:5])
    seen = []
    assert runner.fetch_to_file(str(src), str(dst), 5, progress=lambda n, _: seen.append(n)) == 2_000_000 - 5
    assert dst.read_bytes() == src.read_bytes() and (not seen or seen[-1] <= 2_000_000)
    other = tmp_path / "other.partial"
    f = runner.start_fetch(str(src), str(other), offset=0)
    assert f.run(0) == 2_000_000 and other.read_bytes() == src.read_bytes()
    g = runner.start_fetch(str(src), str(tmp_path / "third"), offset=0)
    with pytest.raises(ValueError, match="offset"):
        g.run(7)
    g.cancel()


def test_pid_alive_hostname_and_alive(runner):
    assert runner.pid_alive(os.getpid()) and runner.pid_alive(1)
    p = subprocess.Popen(["true"])
    p.wait()
    assert not runner.pid_alive(p.pid)
    assert runner.hostname == socket.gethostname()
    runner.run(["true"])
    assert runner.alive()
