"""Restore safety on a real PostgreSQL 15: long names, --target-db, connected sessions,
--undo, keep_pre_restore, protected hosts, confirmation on (and without) a terminal,
and a backup taken under concurrent writes restoring to exactly its snapshot.

Data checks use the test's own psql (tests/pgcheck.py); expected values are literals
or the test's own queries, never product output.
"""
from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import (PASSWORD_ENV, REPO, cli, drop_db_and_copies, native_host, new_db_from_template, send_when,
                            signal_when, wait_unlocked, write_inventory)
from tests.pgcheck import db_fingerprint

PSQL = "/usr/lib/postgresql/15/bin/psql"
PROMPT = b"Type 'yes' to proceed"


def _databases(pg_sql) -> set[str]:
    return {l for l in pg_sql("SELECT datname FROM pg_database", "postgres").splitlines() if l}


def _backup(inv, env, *args) -> Path:
    r = cli("db.backup", "-i", str(inv), *args, "--json", env=env)
    assert r.returncode == 0, r.stderr
    return Path(json.loads(r.stdout)["path"])


def _last_error(r) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), r.stderr
    return line


def _change(pg_sql, db):
    pg_sql("DELETE FROM coordinator_config_history WHERE id % 2 = 0; UPDATE users SET email = 'x' || id || '@example.org'", db)


def run_in_pty(args, env, *, answer: str | None = None, stdin_null: bool = False, timeout: float = 180,
               pick: str | None = None):
    """Run the CLI with a pty as its controlling terminal.

    ``stdin_null``: stdin is /dev/null and stdout a pipe, only stderr is the pty
    (a TTY heuristic looking at the controlling terminal or stderr would fire).
    ``answer``: typed when the confirmation prompt appears; ``pick``: typed when the
    interactive "Restore which backup?" question appears. Returns (exit code, pty text, stdout text).
    """
    rfd, wfd = os.pipe() if stdin_null else (None, None)
    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            os.chdir(REPO)
            if stdin_null:
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(wfd, 1)
                os.close(rfd)
            os.execve(sys.executable, [sys.executable, "-m", "bigskies_ops", *args], env)
        finally:
            os._exit(127)
    out, stdout = b"", b""
    if stdin_null:
        os.close(wfd)
    sent = picked = False
    deadline = time.monotonic() + timeout
    fds = [fd] + ([rfd] if stdin_null else [])
    try:
        while fds:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"timed out; output so far: {out.decode(errors='replace')}")
            ready, _, _ = select.select(fds, [], [], 0.5)
            for r in ready:
                try:
                    data = os.read(r, 65536)
                except OSError:  # EIO: the child closed the pty
                    data = b""
                if not data:
                    fds.remove(r)
                    continue
                if r == fd:
                    out += data
                    if pick is not None and not picked and b"Restore which backup?" in out:
                        os.write(fd, pick.encode() + b"\n")
                        picked = True
                    if answer is not None and not sent and PROMPT in out:
                        os.write(fd, answer.encode() + b"\n")
                        sent = True
                else:
                    stdout += data
    finally:
        os.close(fd)
        if stdin_null:
            os.close(rfd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace"), stdout.decode(errors="replace")


class HeldSession:
    """A psql session the test keeps connected to a database."""

    def __init__(self, pg, db: str):
        self.p = subprocess.Popen([PSQL, "-X", "-q", "-A", "-t", "-h", str(pg.socket_dir), "-p", str(pg.port),
                                   "-U", "bigskies", "-d", db, "-v", "application_name=held_by_test"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.p.stdin.write("SET application_name = 'held_by_test'; SELECT pg_backend_pid();\n")
        self.p.stdin.flush()
        self.backend_pid = int(self.p.stdout.readline())

    def alive(self) -> bool:
        """Whether the server side still answers (a terminated session makes psql exit)."""
        try:
            self.p.stdin.write("SELECT 1;\n")
            self.p.stdin.flush()
            return self.p.stdout.readline().strip() == "1"
        except OSError:
            return False

    def close(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


# ----------------------------------------------------------------------------- names
def test_sixty_character_database_name_restores_with_a_short_enough_copy_name(pg, pg_sql, tmp_path, cli_env):
    name = f"bs_long_{uuid.uuid4().hex[:8]}_" + "x" * 43
    assert len(name) == 60
    new_db_from_template(pg, name)
    try:
        inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, name, tmp_path / "b")})
        before = db_fingerprint(pg_sql, name)
        dbs = _databases(pg_sql)
        archive = _backup(inv, cli_env)
        _change(pg_sql, name)
        changed = db_fingerprint(pg_sql, name)
        r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=cli_env)
        assert r.returncode == 0, r.stderr + r.stdout
        assert db_fingerprint(pg_sql, name) == before
        (copy,) = _databases(pg_sql) - dbs
        assert len(copy.encode()) <= 63 and copy != name
        assert db_fingerprint(pg_sql, copy) == changed  # the previous database, intact
    finally:
        drop_db_and_copies(pg, name)


# ----------------------------------------------------------------------------- --target-db
def test_target_db_creates_a_new_database_and_leaves_the_original_alone(pg, pg_sql, local_inv, dbname, cli_env):
    inv, bdir = local_inv
    before = db_fingerprint(pg_sql, dbname)
    archive = _backup(inv, cli_env, "--format", "custom")
    _change(pg_sql, dbname)
    changed = db_fingerprint(pg_sql, dbname)
    target = f"{dbname}_copy"
    try:
        r = cli("db.restore", str(archive), "-i", str(inv), "--target-db", target, env=cli_env)
        assert r.returncode == 0, r.stderr + r.stdout
        assert db_fingerprint(pg_sql, target) == before
        assert db_fingerprint(pg_sql, dbname) == changed
        # refused (2) when the target exists; nothing changes
        dbs = _databases(pg_sql)
        r = cli("db.restore", str(archive), "-i", str(inv), "--target-db", target, env=cli_env)
        assert r.returncode == 2, r.stderr + r.stdout
        assert f"--target-db '{target}' already exists" in _last_error(r)
        assert _databases(pg_sql) == dbs
        assert db_fingerprint(pg_sql, target) == before
    finally:
        pg.psql("-c", f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


# A psql that loses its connection right after the server ran its CREATE DATABASE of a side
# (or throwaway) database: the statement took effect, yet psql exits 2 as on a dropped connection.
FLAKY_PSQL = r"""#!/bin/bash
case " $* " in *" -t "*) exec %(real)s/psql "$@";; esac   # queries (and the pooled session) pass through
in=$(mktemp -p %(tmp)s); cat > "$in"; %(real)s/psql "$@" < "$in"; rc=$?
if grep -Eq 'CREATE DATABASE "[^"]*_(restoring|verify)_' "$in"; then
  rm -f "$in"; echo "psql: error: server closed the connection unexpectedly" >&2; exit 2
fi
rm -f "$in"; exit $rc
"""


def test_a_side_database_created_before_psql_died_is_dropped(pg, pg_sql, tmp_path, dbname, cli_env):
    real = "/usr/lib/postgresql/15/bin"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in os.listdir(real):
        if tool != "psql":
            os.symlink(os.path.join(real, tool), bindir / tool)
    (bindir / "psql").write_text(FLAKY_PSQL % {"real": real, "tmp": tmp_path})
    (bindir / "psql").chmod(0o755)
    bdir = tmp_path / "backups"
    good = write_inventory(tmp_path / "good.yaml", {"dev": native_host(pg, dbname, bdir)})
    flaky = write_inventory(tmp_path / "flaky.yaml", {"dev": native_host(pg, dbname, bdir,
                                                                         postgres={"bindir": str(bindir)})})
    archive = _backup(good, cli_env, "--format", "custom")
    _change(pg_sql, dbname)
    changed = db_fingerprint(pg_sql, dbname)
    dbs = _databases(pg_sql)
    for task in (["db.restore", str(archive), "--yes"], ["db.verify", str(archive), "--restore-test"]):
        r = cli(*task, "-i", str(flaky), env=cli_env)
        assert r.returncode != 0, r.stdout
        assert "server closed the connection unexpectedly" in r.stdout + r.stderr, task  # verify: in its table
        assert "Traceback" not in r.stdout + r.stderr
        assert _databases(pg_sql) == dbs, task  # the database the server made is gone again
        assert db_fingerprint(pg_sql, dbname) == changed
    assert archive.exists()
    r = cli("db.verify", str(archive), "-i", str(good), env=cli_env)
    assert r.returncode == 0, r.stderr + r.stdout


# psql that, once the swap's renames have committed, says so in a file and waits: the
# restore is signalled while its psql runs, after the commit (the case it could not tell)
SLOW_SWAP_PSQL = r"""#!/bin/bash
case " $* " in *" -t "*) exec %(real)s/psql "$@";; esac
in=$(mktemp -p %(tmp)s); cat > "$in"; %(real)s/psql "$@" < "$in"; rc=$?
if [ $rc = 0 ] && grep -q 'RENAME TO' "$in" && grep -q 'COMMENT ON DATABASE' "$in"; then
  touch %(marker)s; sleep 30
fi
rm -f "$in"; exit $rc
"""


@pytest.mark.parametrize("target", [False, True])
def test_an_interrupt_while_the_swap_commits_says_the_restore_is_complete(pg, pg_sql, tmp_path, dbname, cli_env,
                                                                         target):
    """SIGINT while the psql that ran the swap's renames (or --target-db's rename) is still
    running, after they committed: exit 130, and a line that says the restore is complete
    and where the previous database is (it said "interrupted" and then tried to drop a side
    database that no longer existed)."""
    real = "/usr/lib/postgresql/15/bin"
    bindir, marker = tmp_path / "bin", tmp_path / "swapped"
    bindir.mkdir()
    for tool in os.listdir(real):
        if tool != "psql":
            os.symlink(os.path.join(real, tool), bindir / tool)
    (bindir / "psql").write_text(SLOW_SWAP_PSQL % {"real": real, "marker": marker, "tmp": tmp_path})
    (bindir / "psql").chmod(0o755)
    bdir = tmp_path / "backups"
    good = write_inventory(tmp_path / "good.yaml", {"dev": native_host(pg, dbname, bdir)})
    slow = write_inventory(tmp_path / "slow.yaml", {"dev": native_host(pg, dbname, bdir,
                                                                       postgres={"bindir": str(bindir)})})
    at_backup = db_fingerprint(pg_sql, dbname)
    archive = _backup(good, cli_env, "--format", "custom")
    _change(pg_sql, dbname)
    new = dbname + "_t"
    p = subprocess.Popen([sys.executable, "-m", "bigskies_ops", "db.restore", str(archive), "-i", str(slow), "--yes",
                          *(["--target-db", new] if target else [])],
                         env=cli_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = signal_when(p, marker.exists, signal.SIGINT, "the swap's commit")
    assert "Traceback" not in err
    assert p.returncode == 130, err
    assert "the restore had completed before the interrupt" in err, err
    assert "left behind" not in err and "could not drop" not in err, err
    wait_unlocked(good)
    if target:
        assert db_fingerprint(pg_sql, new) == at_backup
        pg_sql(f'DROP DATABASE "{new}" WITH (FORCE)', "postgres")
    else:
        assert "previous database is kept as" in err, err
        assert db_fingerprint(pg_sql, dbname) == at_backup


# ----------------------------------------------------------------------------- sessions, --undo
def test_connected_session_stops_restore_then_terminate_then_undo(pg, pg_sql, local_inv, dbname, cli_env):
    inv, bdir = local_inv
    at_backup = db_fingerprint(pg_sql, dbname)
    archive = _backup(inv, cli_env)
    _change(pg_sql, dbname)
    changed = db_fingerprint(pg_sql, dbname)
    dbs = _databases(pg_sql)
    held = HeldSession(pg, dbname)
    try:
        r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=cli_env)
        assert r.returncode == 3, r.stderr + r.stdout
        line = _last_error(r)
        assert f"pid {held.backend_pid}" in line and "held_by_test" in line and "--terminate-sessions" in line
        assert held.alive()
        assert _databases(pg_sql) == dbs  # side database gone, no copy made
        assert db_fingerprint(pg_sql, dbname) == changed

        r = cli("db.restore", str(archive), "-i", str(inv), "--yes", "--terminate-sessions", env=cli_env)
        assert r.returncode == 0, r.stderr + r.stdout
        assert not held.alive()
        assert db_fingerprint(pg_sql, dbname) == at_backup
    finally:
        held.close()
    r = cli("db.restore", "--undo", "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert db_fingerprint(pg_sql, dbname) == changed  # back to the state before the restore


def test_keep_pre_restore_bounds_the_copies(pg, pg_sql, tmp_path, dbname, cli_env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir,
                                                                     backup={"keep_pre_restore": 1})})
    archive = _backup(inv, cli_env, "--format", "custom")
    dbs = _databases(pg_sql)
    copies = []
    for i in range(2):
        pg_sql(f"UPDATE users SET email = 'round{i}-' || id || '@example.org'", dbname)
        fp = db_fingerprint(pg_sql, dbname)
        r = cli("db.restore", str(archive), "-i", str(inv), "--yes", "--json", env=cli_env)
        assert r.returncode == 0, r.stderr + r.stdout
        out = json.loads(r.stdout)
        new = out["pre_restore_copy"]
        # the swap's own copy is never the one dropped; round 1 drops round 0's, in the background
        assert out["dropping_pre_restore_copies"] == [c for c, _ in copies] and out["dropped_pre_restore_copies"] == []
        if copies:
            assert f"Dropping old pre-restore copy {copies[0][0]!r} in the background" in r.stderr
        copies.append((new, fp))
        assert db_fingerprint(pg_sql, new) == fp
        wait_unlocked(inv)
    # keep_pre_restore: 1 -> only the newest copy (of round 1) remains
    assert copies[0][0] != copies[1][0]
    assert _databases(pg_sql) - dbs == {copies[1][0]}
    assert not list(bdir.glob(".background-drop-*"))  # nothing went wrong: no warning left for the next restore


def test_a_task_waits_for_the_background_drop_then_takes_the_lock(pg, pg_sql, tmp_path, dbname, cli_env):
    """A lock a restore handed to its background drop is waited for (not a conflict), and
    the warning a failed background drop left is printed by the next restore."""
    import socket
    from bigskies_ops.archives.locks import BACKGROUND_TASK, lock_path
    from bigskies_ops.jobs.background_drop import outcome_path
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    archive = _backup(inv, cli_env, "--format", "custom")
    holder = subprocess.Popen(["sleep", "3"])
    try:
        Path(lock_path(str(bdir), dbname)).write_text(json.dumps(
            {"pid": holder.pid, "host": socket.gethostname(), "task": BACKGROUND_TASK, "database": dbname}))
        Path(outcome_path(str(bdir), dbname)).write_text(json.dumps(
            {"at": "2026-12-03T10:00:00Z", "dropped": [], "warnings": ["could not drop 'x_pre_1': boom"]}))
        t0 = time.monotonic()
        r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=cli_env)
        assert r.returncode == 0, r.stderr + r.stdout
        assert f"waiting for pid {holder.pid} to finish dropping the old pre-restore copies" in r.stderr
        assert time.monotonic() - t0 > 2  # it did wait for the holder
        assert "warning: after the restore of 2026-12-03T10:00:00Z: could not drop 'x_pre_1': boom" in r.stderr
        assert not Path(outcome_path(str(bdir), dbname)).exists()  # said once
    finally:
        holder.kill()
        holder.wait()
    # a lock held by any other task is still a conflict, at once (exit 3 as before)
    other = subprocess.Popen(["sleep", "30"])
    try:
        Path(lock_path(str(bdir), dbname)).write_text(json.dumps(
            {"pid": other.pid, "host": socket.gethostname(), "task": "db.backup", "database": dbname}))
        r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=cli_env)
        assert r.returncode != 0 and f"locked by pid {other.pid}" in r.stderr + r.stdout
    finally:
        other.kill()
        other.wait()


# ----------------------------------------------------------------------------- protected host
def test_protected_host_needs_force_protected_and_confirm(pg, pg_sql, tmp_path, dbname, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", {"prod": native_host(pg, dbname, tmp_path / "b", protected=True)})
    at_backup = db_fingerprint(pg_sql, dbname)
    archive = _backup(inv, cli_env)
    _change(pg_sql, dbname)
    changed = db_fingerprint(pg_sql, dbname)
    dbs = _databases(pg_sql)
    for extra in ([], ["--force-protected"], ["--force-protected", "--confirm", "wrong_db"],
                  ["--confirm", dbname]):
        r = cli("db.restore", str(archive), "-i", str(inv), "--yes", *extra, env=cli_env)
        assert r.returncode == 3, (extra, r.stderr + r.stdout)
        assert f"prod is protected; restore needs --force-protected --confirm {dbname}" in _last_error(r)
    r = cli("db.restore", "--undo", "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 3 and "--force-protected" in _last_error(r)
    assert _databases(pg_sql) == dbs and db_fingerprint(pg_sql, dbname) == changed
    r = cli("db.restore", str(archive), "-i", str(inv), "--yes", "--force-protected", "--confirm", dbname,
            env=cli_env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert db_fingerprint(pg_sql, dbname) == at_backup


# ----------------------------------------------------------------------------- confirmation
def test_no_terminal_no_yes_is_refused_even_with_a_controlling_pty(pg_sql, local_inv, dbname, cli_env):
    inv, bdir = local_inv
    _backup(inv, cli_env)
    _change(pg_sql, dbname)
    changed = db_fingerprint(pg_sql, dbname)
    dbs = _databases(pg_sql)
    # plain pipes
    r = cli("db.restore", "latest", "-i", str(inv), env=cli_env)
    assert r.returncode == 3, r.stderr + r.stdout
    assert "pass --yes" in _last_error(r)
    # stdin /dev/null, stdout a pipe, stderr + controlling terminal a pty
    rc, tty_text, _ = run_in_pty(["db.restore", "latest", "-i", str(inv)], cli_env, stdin_null=True)
    assert rc == 3, tty_text
    assert "pass --yes" in tty_text and PROMPT.decode() not in tty_text
    assert _databases(pg_sql) == dbs and db_fingerprint(pg_sql, dbname) == changed


@pytest.mark.parametrize("answer", ["no", "yes"])
def test_prompt_on_a_terminal_yes_proceeds_anything_else_aborts(answer, pg_sql, local_inv, dbname, cli_env):
    inv, bdir = local_inv
    at_backup = db_fingerprint(pg_sql, dbname)
    _backup(inv, cli_env)
    _change(pg_sql, dbname)
    changed = db_fingerprint(pg_sql, dbname)
    dbs = _databases(pg_sql)
    rc, text, _ = run_in_pty(["db.restore", "latest", "-i", str(inv)], cli_env, answer=answer)
    assert PROMPT.decode() in text
    if answer == "yes":
        assert rc == 0, text
        assert db_fingerprint(pg_sql, dbname) == at_backup
        assert len(_databases(pg_sql) - dbs) == 1  # the pre-restore copy
    else:
        assert rc == 3, text
        assert "aborted: you did not type 'yes'; nothing was changed" in text
        assert _databases(pg_sql) == dbs and db_fingerprint(pg_sql, dbname) == changed


# ----------------------------------------------------------------------------- snapshot under writes
def test_backup_under_concurrent_writes_restores_exactly_its_snapshot(pg, pg_sql, local_inv, dbname, cli_env):
    inv, bdir = local_inv
    pg_sql("CREATE TABLE w_orders (id bigserial PRIMARY KEY, batch int NOT NULL, at timestamptz DEFAULT now());"
           "CREATE TABLE w_lines (id bigserial PRIMARY KEY, order_id bigint NOT NULL REFERENCES w_orders(id),"
           " note text)", dbname)
    writer = subprocess.Popen([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(pg.socket_dir), "-p",
                               str(pg.port), "-U", "bigskies", "-d", dbname],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    stop = threading.Event()
    batches = [0]

    def write():
        i = 0
        while not stop.is_set():
            i += 1
            writer.stdin.write(
                f"BEGIN; WITH o AS (INSERT INTO w_orders (batch) SELECT {i} FROM generate_series(1, 50) RETURNING id)"
                f" INSERT INTO w_lines (order_id, note) SELECT id, 'batch {i}' FROM o; COMMIT;\n")
            writer.stdin.flush()
            batches[0] = i
            time.sleep(0.002)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    try:
        while batches[0] < 20:
            time.sleep(0.05)
        archive = _backup(inv, cli_env)
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(10)
        writer.stdin.close()
        writer.wait(30)
    m = json.loads(Path(str(archive) + ".manifest.json").read_text())
    rows = {t["name"]: t["rows"] for t in m["tables"] if t["schema"] == "public"}
    assert rows["w_orders"] == rows["w_lines"] > 0
    final = int(pg_sql("SELECT count(*) FROM w_orders", dbname))
    assert final > rows["w_orders"], "no writes happened after the snapshot; the test proves nothing"
    target = f"{dbname}_snap"
    try:
        r = cli("db.restore", str(archive), "-i", str(inv), "--target-db", target, env=cli_env)
        assert r.returncode == 0, r.stderr + r.stdout
        fp = db_fingerprint(pg_sql, target)
        got = {k.split(".", 1)[1]: int(v.split()[0]) for k, v in fp["tables"].items() if k.startswith("public.")}
        assert got == rows  # every table: exactly the manifest's count, taken in the dump's snapshot
        assert pg_sql("SELECT count(*) FROM w_orders o LEFT JOIN w_lines l ON l.order_id = o.id "
                      "WHERE l.id IS NULL", target).strip() == "0"
    finally:
        pg.psql("-c", f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


def test_no_file_on_a_terminal_offers_a_numbered_list(pg_sql, local_inv, dbname, cli_env):
    inv, bdir = local_inv
    at_backup = db_fingerprint(pg_sql, dbname)
    older = _backup(inv, cli_env, "--format", "custom")
    _change(pg_sql, dbname)
    newer = _backup(inv, cli_env)
    pg_sql("TRUNCATE coordinator_config_history", dbname)
    # 1 = newest: the list is newest first, so 2 is the older, unchanged state
    rc, text, _ = run_in_pty(["db.restore", "-i", str(inv)], cli_env, pick="2", answer="yes")
    assert rc == 0, text
    assert newer.name in text and older.name in text and f"Backup file: {older}" in text.replace("\r\n", " ")
    assert db_fingerprint(pg_sql, dbname) == at_backup


def _restore_proc(archive, inv, env, *extra):
    return subprocess.Popen([sys.executable, "-m", "bigskies_ops", "db.restore", str(archive), "-i", str(inv), "--yes",
                             *extra], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _side_dbs(pg_sql, db: str) -> list[str]:
    return [n for n in pg_sql("SELECT datname FROM pg_database", "postgres").split() if n.startswith(db + "_restoring_")]


def test_an_interrupt_while_sessions_are_ended_leaves_the_database_taking_connections(pg, pg_sql, local_inv, dbname,
                                                                                      cli_env):
    """--terminate-sessions closes the database to new connections while its sessions end
    (up to 15 s); a Ctrl-C meanwhile left it closed: every connection then failed with
    "database ... is not currently accepting connections" (break-it trial). A stopped
    backend outlives pg_terminate_backend, so the signal surely lands in that wait."""
    inv, bdir = local_inv
    archive = _backup(inv, cli_env, "--format", "custom")
    _change(pg_sql, dbname)
    changed = db_fingerprint(pg_sql, dbname)
    held = HeldSession(pg, dbname)
    os.kill(held.backend_pid, signal.SIGSTOP)
    closed = f"SELECT NOT datallowconn FROM pg_database WHERE datname = '{dbname}'"
    p = _restore_proc(archive, inv, cli_env, "--terminate-sessions")
    try:
        send_when(p, lambda: pg_sql(closed, "postgres").strip() == "t", signal.SIGINT, "the closed database")
        time.sleep(0.5)
    finally:  # the backend ends now (its pg_terminate_backend was waiting); a stopped one would hold up any DROP
        os.kill(held.backend_pid, signal.SIGCONT)
        held.close()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    assert pg_sql(f"SELECT datallowconn FROM pg_database WHERE datname = '{dbname}'", "postgres").strip() == "t"
    wait_unlocked(inv)
    assert db_fingerprint(pg_sql, dbname) == changed and _side_dbs(pg_sql, dbname) == []


def test_an_interrupt_while_the_side_database_is_created_leaves_none_behind(pg, pg_sql, local_inv, dbname, cli_env):
    """A signal while the server runs CREATE DATABASE of the side database: our DROP ran
    before the server's CREATE finished, and an empty, unlabelled side database stayed
    (break-it trial: 3 of 12 Ctrl-Cs in the first second). A lock on template0 held by the
    test keeps the CREATE waiting while the signal arrives."""
    inv, bdir = local_inv
    archive = _backup(inv, cli_env, "--format", "custom")
    _change(pg_sql, dbname)
    changed = db_fingerprint(pg_sql, dbname)
    lock = HeldSession(pg, "postgres")
    lock.p.stdin.write("BEGIN; COMMENT ON DATABASE template0 IS 'held by a test';\n")
    lock.p.stdin.flush()
    waiting = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
               f"AND query LIKE 'CREATE DATABASE %{dbname}_restoring_%'")
    p = _restore_proc(archive, inv, cli_env)
    try:
        send_when(p, lambda: pg_sql(waiting, "postgres").strip() == "1", signal.SIGINT, "the waiting CREATE")
        time.sleep(1)  # the signal has landed; the CREATE still waits
    finally:
        lock.p.stdin.write("ROLLBACK;\n")
        lock.close()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    wait_unlocked(inv)
    # a CREATE whose psql is gone still runs on the server: the check waits for it to end
    running = (f"SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE DATABASE %{dbname}_restoring_%' "
               f"AND state <> 'idle' AND pid <> pg_backend_pid()")
    deadline = time.monotonic() + 60
    while pg_sql(running, "postgres").strip() != "0" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _side_dbs(pg_sql, dbname) == []
    assert db_fingerprint(pg_sql, dbname) == changed


def test_a_pulled_archive_is_checked_when_written_and_a_later_change_is_still_caught(local_inv, cli_env,
                                                                                    monkeypatch):
    """db.pull --restore checks the pulled file on disk (size, sha256 read back, versions) as
    soon as the pull has finished it, while the load still builds its indexes (issue 21);
    its errors and the pull's still stop the restore before any swap, and the file is
    proved unchanged after the load (followed.WrittenArchiveCheck on a real plain archive)."""
    from bigskies_ops.archives.integrity import ArchiveInfo
    from bigskies_ops.errors import ArchiveError, StorageError
    from bigskies_ops.inventory import load
    from bigskies_ops.jobs.followed import FollowedArchive, WrittenArchiveCheck
    from bigskies_ops.pg.access import PostgresAccess
    inv, _bdir = local_inv
    monkeypatch.setenv(PASSWORD_ENV, cli_env[PASSWORD_ENV])
    path = _backup(inv, cli_env)
    good = path.read_bytes()

    def followed(result):
        return FollowedArchive(growing=None, start=lambda: None, result=result)

    with PostgresAccess(load(inv).host("dev")) as access:
        info = WrittenArchiveCheck(access, followed(lambda: str(path))).result()
        assert isinstance(info, ArchiveInfo) and info.format == "plain" and info.path == str(path)
        info.confirm_unchanged()
        with open(path, "ab") as f:  # written to after its check, during the load
            f.write(b"\0")
        with pytest.raises(ArchiveError, match="changed while it was restored"):
            info.confirm_unchanged()
        # damaged before its check: refused, as the check after the load refused it
        with pytest.raises(ArchiveError, match="differs from the manifest"):
            WrittenArchiveCheck(access, followed(lambda: str(path))).result()

        def failed_pull():
            raise StorageError("the pull failed: remote pg_dump exit status 1")
        with pytest.raises(StorageError, match="remote pg_dump exit status 1"):
            WrittenArchiveCheck(access, followed(failed_pull)).result()
    path.write_bytes(good)
