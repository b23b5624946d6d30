"""Progress on a terminal (CONTRACTS.md section 5, issue 18): backup, restore and pull show a
total (an estimate says "est.") and an ETA, and name the finishing steps while they run;
with stderr not a terminal nothing is animated; fleet runs print a line per host as each
finishes, before the recap. The real CLI runs as a subprocess; its stderr is a
pseudo-terminal (python pty) where a terminal is wanted."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

from tests.conftest import REPO, cli
from tests.integration.offsite.test_offsite import s3, s3env  # noqa: F401 - fixtures
from tests.integration.pull.test_pull import _archives, env, prod_db, prod_template, raw_prod, world  # noqa: F401,F811

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_terminal(args, env: dict, timeout: float = 300) -> tuple[int, str, str]:
    """Run ``python -m bigskies_ops ARGS`` with stderr on a pseudo-terminal (160 columns) and
    stdout on a pipe; return (exit code, stdout, everything written to the terminal)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    e = dict(env, COLUMNS="160", TERM="xterm-256color")
    e.pop("NO_COLOR", None)
    p = subprocess.Popen([sys.executable, "-m", "bigskies_ops", *args], env=e, cwd=REPO, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=slave, close_fds=True)
    os.close(slave)
    term = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            r, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                raise AssertionError(f"timed out; terminal so far: {term.decode(errors='replace')}")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            term += chunk
        out = p.stdout.read().decode()
        p.wait(timeout=30)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    return p.returncode, out, term.decode(errors="replace")


def _grow(pg, database: str, mb: int = 40) -> None:
    """A table of ``mb`` MB of incompressible-ish text: a dump that takes a moment."""
    pg.psql("-c", f"SET ROLE bigskies; CREATE TABLE big AS SELECT g, md5(g::text) || md5((g * 7)::text) AS t "
                  f"FROM generate_series(1, {mb * 1_000_000 // 80}) g", database=database)


def test_backup_and_restore_on_a_terminal_show_a_total_an_eta_and_the_finishing_steps(local_inv, pg, dbname,
                                                                                      cli_env):
    inv, bdir = local_inv
    _grow(pg, dbname)
    rc, out, term = run_on_terminal(["db.backup", "-i", str(inv), "--host", "dev", "--format", "plain"], cli_env)
    assert rc == 0, term
    text = ANSI.sub("", term)
    assert re.search(r"of ~[\d.]+ [KMG]iB est\.", text), text   # first backup: the database's size
    assert re.search(r"ETA \d+:\d\d", text), text
    for step in ("checking the archive", "counting rows", "writing the manifest"):
        assert f"pg_dump {dbname}: {step}" in text, step
    assert "Backup completed successfully" in out and "\x1b[" not in out

    rc, out, term = run_on_terminal(["db.backup", "-i", str(inv), "--host", "dev", "--format", "plain"], cli_env)
    assert rc == 0, term
    first = json.loads(sorted(bdir.glob("*.manifest.json"))[0].read_text())
    from bigskies_ops.output import total_text
    assert f"of {total_text(first['raw_bytes'], True)}" in ANSI.sub("", term)  # the last backup's SQL bytes

    archive = _archives(bdir)[-1]
    rc, out, term = run_on_terminal(["db.restore", str(archive), "-i", str(inv), "--host", "dev", "--yes"], cli_env)
    assert rc == 0, term
    text = ANSI.sub("", term)
    from bigskies_ops.text import human_bytes
    assert f"of {human_bytes(archive.stat().st_size)}" in text, text   # the archive's size: no "est."
    assert re.search(r"ETA \d+:\d\d", text), text
    for step in ("checking row counts", "swapping"):
        assert f"restoring: {step}" in text, step


def test_with_stderr_not_a_terminal_nothing_is_animated_and_json_stays_clean(local_inv, cli_env):
    inv, bdir = local_inv
    r = cli("db.backup", "-i", str(inv), "--host", "dev", env=cli_env)
    assert r.returncode == 0, r.stderr
    for stream in (r.stdout, r.stderr):
        assert "\r" not in stream and "\x1b" not in stream
    assert "est." not in r.stderr and "ETA" not in r.stderr   # a quick run: no step lines either
    archive = _archives(bdir)[-1]
    r = cli("db.restore", str(archive), "-i", str(inv), "--host", "dev", "--yes", "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"] == "changed"
    assert "\r" not in r.stderr and "\x1b" not in r.stderr


def test_existing_pull_on_a_terminal_shows_the_remote_size_and_its_steps(raw_prod, cli_env):
    r = raw_prod
    rc, out, term = run_on_terminal(["db.pull", "-i", str(r.inv), "--from", "prod", "--to", "laptop", "--existing",
                                     r.name], cli_env)
    assert rc == 0, term
    text = ANSI.sub("", term)
    from bigskies_ops.text import human_bytes
    assert f"of {human_bytes(len(r.data))}" in text and "ETA" in text, text
    for step in ("hashing", "checking size and sha256", "writing the manifest"):
        assert f"pull from prod: {step}" in text, step
    assert (r.pdir / r.name).read_bytes() == r.data


def test_a_fleet_backup_prints_each_host_as_it_finishes_then_the_recap(world, env):
    w = world
    r = cli("db.backup", "-i", str(w.inv), "--host", "prod,dev", env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    head, recap = r.stdout.split("Recap:")
    done = [line for line in head.splitlines() if line.startswith("changed: [")]
    assert sorted(line.split()[1] for line in done) == ["[dev]", "[prod]"]
    assert all(re.search(r"backup \S+ written \([\d.]+ [KMG]?i?B\) \[\d+\.\d s\]$", line) for line in done), done
    assert [line.split()[1] for line in recap.strip().splitlines()] == ["[prod]", "[dev]"]
    r = cli("db.backup", "-i", str(w.inv), "--host", "prod,dev", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [h["host"] for h in doc["hosts"]] == ["prod", "dev"] and all(h["seconds"] > 0 for h in doc["hosts"])


def test_verify_and_offsite_on_a_terminal_show_bytes_against_each_archives_size(tmp_path, pg, dbname, s3, s3env):
    from tests.conftest import native_host, write_inventory
    from tests.integration.offsite.test_offsite import _target
    from bigskies_ops.text import human_bytes
    _grow(pg, dbname, 20)
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir, offsite=[_target(s3, "p1")])})
    assert cli("db.backup", "-i", str(inv), "--format", "plain", env=s3env).returncode == 0
    [archive] = _archives(bdir)
    size = human_bytes(archive.stat().st_size)
    rc, out, term = run_on_terminal(["db.verify", "latest", "-i", str(inv), "--restore-test"], s3env)
    assert rc == 0, term
    text = ANSI.sub("", term)
    assert f"verify {archive.name}" in text and f"of {size}" in text and re.search(r"ETA \d+:\d\d", text), text
    assert f"restore test {archive.name}: checking row counts" in text
    rc, out, term = run_on_terminal(["db.offsite", "-i", str(inv)], s3env)
    assert rc == 0, term
    text = ANSI.sub("", term)
    assert f"offsite vault: {archive.name}" in text and f"of {size}" in text, text
    assert ": reading the copy back (sha256)" in text   # (the description is cut at the front to fit)
