"""Signals run the cleanup; restore picks only complete backups; usage mistakes exit 2.

Found by a new-user trial: SIGTERM used to skip every ``finally`` (the private
pgpass file stayed on disk), ``restore latest`` picked a schema-only dump, and
``--undo FILE`` silently ignored FILE.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, cli
from tests.pgcheck import db_fingerprint, dir_hashes

PSQL = "/usr/lib/postgresql/15/bin/psql"
HOLDER = "bigskies-test-lock-holder"


def _hold_lock(pg, dbname, seconds):
    """A psql session holding an exclusive lock on users, so pg_dump waits."""
    return subprocess.Popen([PSQL, "-X", "-q", "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "bigskies",
                             "-d", dbname, "-c", f"BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE; "
                                                 f"SELECT pg_sleep({seconds}); COMMIT;"],
                            env=dict(os.environ, PGAPPNAME=HOLDER),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_until(cond, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _private_dirs(tmpdir) -> set[str]:
    """The product's private folders (tempfile.mkdtemp) in this test's own TMPDIR (not the
    machine's /tmp, where other test runs or xdist workers make and remove theirs)."""
    return {n for n in os.listdir(tmpdir) if n.startswith("bigskies-ops-")}


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_backup_runs_the_cleanup(local_inv, pg, dbname, pg_sql, cli_env, signum, code, tmp_path):
    inv, bdir = local_inv
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    cli_env = dict(cli_env, TMPDIR=str(tmpdir))
    assert cli("db.backup", "-i", str(inv), env=cli_env).returncode == 0
    before_files = dir_hashes(bdir)
    before_db = db_fingerprint(pg_sql, dbname)
    secrets_before = _private_dirs(tmpdir)
    assert secrets_before == set()                              # the first backup removed its folder too
    holder = _hold_lock(pg, dbname, 20)
    try:
        _wait_until(lambda: pg_sql(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.application_name = "
            f"'{HOLDER}' AND l.mode = 'AccessExclusiveLock' AND l.granted", dbname).strip() != "0", "the lock holder")
        p = subprocess.Popen([sys.executable, "-m", "bigskies_ops", "db.backup", "-i", str(inv)], env=cli_env,
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        _wait_until(lambda: _private_dirs(tmpdir) - secrets_before, "the private pgpass folder")
        _wait_until(lambda: pg_sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' "
                                   "AND wait_event_type = 'Lock'", dbname).strip() != "0",
                    "pg_dump to wait for the lock")
        p.send_signal(signum)
        out, err = p.communicate(timeout=60)
    finally:
        holder.kill()
        holder.wait()
        # a killed psql's server session sleeps on holding the lock: end it (else every later read waits 20 s)
        pg_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{HOLDER}'",
               "postgres")
    assert p.returncode == code, err
    assert f"interrupted by signal {int(signum)}; cleanup done" in err
    assert _private_dirs(tmpdir) - secrets_before == set()     # the private pgpass folder is gone
    after = dir_hashes(bdir)
    new = set(after) - set(before_files)
    assert all(n.endswith(".manifest.json") for n in new) and len(new) == 1   # only the FAILED manifest
    assert {k: after[k] for k in before_files} == before_files                # older backups untouched
    man = json.loads((bdir / new.pop()).read_text())
    assert man["status"] == "FAILED" and man["error"] == f"interrupted by signal {int(signum)}"
    assert not any(n.startswith(".lock") for n in os.listdir(bdir))
    assert db_fingerprint(pg_sql, dbname) == before_db


def test_restore_latest_skips_schema_only_backups_and_list_says_what_they_hold(local_inv, dbname, pg_sql, cli_env):
    inv, bdir = local_inv
    assert cli("db.backup", "-i", str(inv), "--label", "full", env=cli_env).returncode == 0
    assert cli("db.backup", "-i", str(inv), "--schema-only", env=cli_env).returncode == 0
    lst = json.loads(cli("db.list", "-i", str(inv), "--json", env=cli_env).stdout)["backups"]
    assert [b["contents"] for b in lst] == ["schema-only", "full"]
    assert "manual (schema-only)" in cli("db.list", "-i", str(inv), env=cli_env).stdout
    before = db_fingerprint(pg_sql, dbname)
    r = cli("db.restore", "latest", "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert lst[1]["name"] in r.stdout                      # the full backup, not the newer schema-only one
    assert db_fingerprint(pg_sql, dbname) == before


def test_list_shows_verified_only_when_the_newest_verification_passed(local_inv, cli_env):
    inv, bdir = local_inv
    assert cli("db.backup", "-i", str(inv), env=cli_env).returncode == 0
    assert cli("db.verify", "latest", "-i", str(inv), env=cli_env).returncode == 0
    assert json.loads(cli("db.list", "-i", str(inv), "--json", env=cli_env).stdout)["backups"][0]["verified"] is True
    arch = next(p for p in bdir.iterdir() if p.name.endswith(".sql.gz"))
    data = bytearray(arch.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arch.write_bytes(bytes(data))
    assert cli("db.verify", arch.name, "-i", str(inv), env=cli_env).returncode == 1
    assert json.loads(cli("db.list", "-i", str(inv), "--json", env=cli_env).stdout)["backups"][0]["verified"] is False


@pytest.mark.parametrize("args,message", [
    (["db.restore", "latest", "--undo", "--yes"], "--undo swaps the newest pre-restore copy back and takes no FILE"),
    (["db.restore", "latest", "--target-db", "", "--yes"], "--target-db '': expected a database name of 1 to 63 bytes"),
    (["db.restore", "latest", "--target-db", "x" * 64, "--yes"], "expected a database name of 1 to 63 bytes"),
])
def test_conflicting_or_empty_restore_flags_are_usage_errors(local_inv, dbname, pg_sql, cli_env, args, message):
    inv, bdir = local_inv
    assert cli("db.backup", "-i", str(inv), env=cli_env).returncode == 0
    before, files = db_fingerprint(pg_sql, dbname), dir_hashes(bdir)
    r = cli(*args, "-i", str(inv), env=cli_env)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert db_fingerprint(pg_sql, dbname) == before and dir_hashes(bdir) == files


@pytest.mark.parametrize("task,option_help", [("db.restore", "do not ask for confirmation"),
                                              ("db.verify", "also restore into a throwaway database")])
def test_help_after_a_task_with_an_optional_file_shows_help(cli_env, task, option_help):
    r = cli(task, "--help", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert f"Usage: bigskies-ops [--core-opts] {task}" in r.stdout
    assert option_help in r.stdout  # each option's help, not only its name (break-it trial)


# The console script skips the interpreter's teardown after the task (bigskies_ops.cli.program):
# what must still happen at exit, and the status rules of sys.exit, are checked here.
_EXIT_PROBE = """
import atexit, sys, tempfile, threading, time
from bigskies_ops.cli.program import _exit_now
keep = tempfile.TemporaryDirectory(prefix="bigskies-exit-probe-")  # cleaned by its finalizer at exit
print(keep.name)
atexit.register(lambda: print("atexit ran"))
sys.stdout.write("unflushed " * 10000)  # still in the buffer when os._exit comes
if sys.argv[2] == "thread":  # a non-daemon thread still running: the normal exit waits for it
    threading.Thread(target=lambda: (time.sleep(0.5), print("thread done"))).start()
_exit_now({"none": None, "int": 3, "str": "bad thing"}[sys.argv[1]])
"""


@pytest.mark.parametrize("code,status", [("none", 0), ("int", 3), ("str", 1)])
@pytest.mark.parametrize("thread", ["", "thread"])
def test_fast_exit_keeps_the_status_output_and_exit_handlers(code, status, thread):
    r = subprocess.run([sys.executable, "-c", _EXIT_PROBE, code, thread], cwd=REPO, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == status, r.stderr
    tmp = r.stdout.splitlines()[0]
    assert r.stdout.count("unflushed ") == 10000 and "atexit ran" in r.stdout
    assert not os.path.exists(tmp), "TemporaryDirectory's finalizer did not run"
    assert ("thread done" in r.stdout) == bool(thread)
    assert r.stderr.strip() == ("bad thing" if code == "str" else ""), r.stderr


def test_stdout_closed_early_is_not_a_traceback(cli_env):
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write (`| head -0`): every write fails
    try:
        p = subprocess.run([sys.executable, "-m", "bigskies_ops", "--list"], cwd=REPO, env=cli_env, stdout=w,
                           stderr=subprocess.PIPE, text=True, timeout=30)
    finally:
        os.close(w)
    assert p.returncode == 1 and p.stderr == "", p.stderr


# sitecustomize (run by Python at startup, found on PYTHONPATH): the import of a module
# the task modules need pauses, so the signal surely lands while the CLI is loading
PAUSE_IMPORT = """import sys, time
class _Pause:
    def find_spec(self, name, path=None, target=None):
        if name == "bigskies_ops.hosts.runners":
            sys.meta_path.remove(self)
            sys.stderr.write("PAUSED\\n")
            sys.stderr.flush()
            time.sleep(60)
        return None
sys.meta_path.insert(0, _Pause())
"""


@pytest.mark.parametrize("how", [["-m", "bigskies_ops"], ["-c", "from bigskies_ops.entry import main; main()"]])
def test_ctrl_c_while_the_tasks_load_exits_130_without_a_traceback(tmp_path, cli_env, how):
    """SIGINT while the CLI is still importing its modules (found by a new-user trial: a
    KeyboardInterrupt traceback and death by the signal)."""
    (tmp_path / "sitecustomize.py").write_text(PAUSE_IMPORT)
    env = dict(cli_env, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), cli_env.get("PYTHONPATH")])))
    p = subprocess.Popen([sys.executable, *how, "db.list"], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = p.stderr.readline()
        assert first == "PAUSED\n", first + p.communicate(timeout=60)[1]
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert "Traceback" not in err and err == "interrupted by signal 2 while starting; nothing was done\n", err


def test_tables_show_names_as_is(local_inv, dbname, pg_sql, cli_env):
    """db.status lists a table named ``a[/b]c`` (a rich MarkupError traceback before) and
    ``t[bold]x:smile:`` (shown as ``tx`` and an emoji) by their names (break-it trial)."""
    inv, _ = local_inv
    pg_sql('CREATE TABLE "a[/b]c" (i int); CREATE TABLE "t[bold]x:smile:" (i int)', dbname)
    try:
        r = cli("db.status", "-i", str(inv), env=cli_env)
        assert r.returncode == 0, r.stderr
        assert "a[/b]c" in r.stdout and "t[bold]x:smile:" in r.stdout, r.stdout
    finally:
        pg_sql('DROP TABLE "a[/b]c"; DROP TABLE "t[bold]x:smile:"', dbname)


@pytest.mark.parametrize("args,message", [
    (("db.nosuch",), "error: no task named 'db.nosuch'"),
    (("db.backup", "--nosuchflag"), "error: db.backup: no flag --nosuchflag"),
    (("db.backup", "--label"), "error: db.backup: --label needs a value"),
    (("--nosuchcore",), "error: no flag --nosuchcore"),
])
def test_command_lines_that_do_not_parse_are_usage_errors(cli_env, args, message):
    r = cli(*args, env=cli_env)
    assert r.returncode == 2 and message in r.stderr, (r.returncode, r.stderr)


def test_the_restore_hint_works_from_where_the_backup_ran(local_inv, cli_env, tmp_path):
    """After db.backup the hint names the running command and a path valid from the current
    folder (``inv`` and a cwd-relative path did not work from outside the repo)."""
    import shlex
    inv, bdir = local_inv
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = cli("db.backup", "-i", str(inv), env=cli_env, cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    hint = r.stdout.split("To restore this backup:\n", 1)[1].splitlines()[0].strip()
    argv = shlex.split(hint)
    assert argv[:2] == ["bigskies-ops", "db.restore"], hint
    assert (elsewhere / argv[2]).is_file() and argv[2].startswith("/"), hint
