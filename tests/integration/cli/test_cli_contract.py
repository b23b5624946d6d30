"""The command-line contract every task follows (docs/cli.md "Flags", "Exit codes",
"JSON output"), checked for every task of the Collection with the real program:

- ``-h`` and ``--help`` print the task's help and exit 0 (``db.list -h`` used to fail with
  "Flag <Argument: host (h)> needed value", ``docker.logs --help`` ran the task);
- each flag that takes a value, given a malformed value, exits 0-3 without a traceback,
  and a typed flag (a number) exits 2 naming the flag (``db.restore --jobs abc`` ended in
  a ValueError traceback);
- output into a pipe whose reader has gone (``| head -1``) is not a BrokenPipeError traceback;
- an unknown task or flag gets a did-you-mean and exit 2, under ``inv`` and ``bigskies-ops``;
- every task with ``--json`` prints one JSON document on stdout when it fails
  (``db.backup --host prd --json`` printed nothing on stdout).

Nothing real is touched: the throwaway inventory's only host is an SSH host on a port where
nothing listens (127.0.0.1:1), the working folder and HOME are the test's own folder. The
runs are independent subprocesses, run a few at a time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

INV_BIN = str(Path(sys.executable).parent / "inv")
PW_ENV = "BIGSKIES_CONTRACT_PW"
#: malformed values given to every flag that takes one
BAD = ["abc", "", "-1", "1e999", "x" * 5000]
#: flags that take a number: a malformed value is a usage error (exit 2) naming the flag
TYPED = {"jobs", "timeout", "migrations-timeout", "wait", "lock-wait-timeout", "lock-timeout", "tail"}
TYPED_IN_TASK = {("db.migrate", "to"), ("db.migrate", "baseline")}
PROBLEMS = ("Traceback", "BrokenPipeError", "Exception ignored")
WORKERS = 3


def _tasks() -> tuple[dict[str, list], dict[str, dict]]:
    """({task name: its arguments}, {task name: {flag: help text}}) from the Collection that
    ``inv`` and ``bigskies-ops`` run. The help texts are copied first: Invoke's
    ``Task.arg_opts`` pops each one as it builds the arguments."""
    from bigskies_ops.cli import ns
    names = sorted(ns.task_names)
    helps = {name: dict(ns[name].help) for name in names}
    return {name: ns[name].get_arguments(ignore_unknown_help=True) for name in names}, helps


TASKS, HELP_TEXTS = _tasks()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """(folder, env): an inventory whose one host cannot be reached, used by default."""
    d = tmp_path_factory.mktemp("contract")
    inv = {"hosts": {"far": {
        "connection": "ssh", "project_dir": "/srv/app",
        "ssh": {"host": "127.0.0.1", "port": 1, "user": "nobody"},
        "postgres": {"host": "127.0.0.1", "port": 1, "database": "app", "user": "app", "password_env": PW_ENV},
        "backup": {"dir": "/srv/app/backups"},
        "compose": {"file": "docker-compose.yml"}}}}
    (d / "inventory.yaml").write_text(yaml.safe_dump(inv))
    env = dict(os.environ)
    for k in ("BIGSKIES_INVENTORY", "PGPASSFILE", "PGSERVICEFILE"):
        env.pop(k, None)
    env.update({PW_ENV: "x", "HOME": str(d), "COLUMNS": "100",
                "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")})
    return d, env


def _run(sandbox, argv: list[str], *, closed_stdout: bool = False, inv: bool = False):
    """Run ``bigskies-ops ARGV`` (or ``inv ARGV``, which finds tasks.py through --search-root)
    in the sandbox folder; with ``closed_stdout``, stdout is a pipe whose reader is already
    gone (``| head`` that has exited: every write fails)."""
    d, env = sandbox
    cmd = [INV_BIN, "--search-root", str(REPO), *argv] if inv else [sys.executable, "-m", "bigskies_ops", *argv]
    if not closed_stdout:
        return subprocess.run(cmd, cwd=d, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120)
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run(cmd, cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=w, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(w)


def _all(sandbox, runs, *, closed_stdout: bool = False) -> list:
    """Run ``bigskies-ops ARGV`` for every argv of ``runs``, a few at a time, each in its own
    process forked from one that has already imported the program (tests/integration/cli/
    forkrun.py: the ~0.5 s of imports once, not 300 times); the results in the same order,
    as ``subprocess.CompletedProcess``."""
    d, env = sandbox
    batch = d / f"batch-{os.getpid()}-{id(runs)}.json"
    batch.write_text(json.dumps({"cwd": str(d), "env": env, "workers": WORKERS,
                                 "runs": [{"argv": a, "closed_stdout": closed_stdout} for a in runs]}))
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("forkrun.py")), str(batch)], cwd=d, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(Path(str(batch) + ".out").read_text())
    return [subprocess.CompletedProcess(a, o["rc"], o["stdout"], o["stderr"]) for a, o in zip(runs, out)]


def _flag(arg) -> str:
    return "--" + arg.names[0]


def test_every_task_is_listed_with_its_whole_first_line(sandbox):
    r = _run(sandbox, ["--list", "--list-format", "json"])
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    listed = {f"{c['name']}.{t['name']}": t["help"] for c in doc["collections"] for t in c["tasks"]}
    listed.update({t["name"]: t["help"] for t in doc["tasks"]})  # top-level tasks (apply, run)
    assert sorted(listed) == sorted(TASKS)
    # --list shows a docstring's first line: a sentence cut there (db.psql's) reads as cut
    cut = {name: h for name, h in listed.items() if not (h or "").endswith(".")}
    assert not cut, cut


def test_h_and_help_print_the_help_of_every_task(sandbox):
    runs = [[name, flag] for name in TASKS for flag in ("-h", "--help")]
    runs += [["docker.logs", "--follow", "--help"], ["db.restore", "latest", "-h"]]
    bad = []
    for argv, r in zip(runs, _all(sandbox, runs)):
        usage = f"Usage: bigskies-ops [--core-opts] {argv[0]} "
        if r.returncode != 0 or usage not in r.stdout or "Options:" not in r.stdout or r.stderr:
            bad.append((argv, r.returncode, r.stdout[:200], r.stderr[-300:]))
        # every flag's own text is printed (a regression once showed the flags without them)
        shown = " ".join(r.stdout.split())
        bad += [(argv, flag, text[:60]) for flag, text in HELP_TEXTS[argv[0]].items()
                if " ".join(text.split())[:40] not in shown]
    assert not bad, bad
    for argv in (["db.list", "-h"], ["docker.logs", "--help"]):  # the console script itself, exec'd
        r = _run(sandbox, argv)
        assert r.returncode == 0 and f"Usage: bigskies-ops [--core-opts] {argv[0]} " in r.stdout, r.stderr
    r = _run(sandbox, ["db.list", "-h"], inv=True)  # Invoke's own inv runs the same tasks
    assert r.returncode == 0 and "Usage: inv[oke] [--core-opts] db.list " in r.stdout, r.stderr


def test_a_malformed_value_is_never_a_traceback_and_a_wrong_type_names_the_flag(sandbox):
    runs, typed = [], []
    for name, args in TASKS.items():
        for i, arg in enumerate(a for a in args if a.takes_value):
            is_typed = arg.names[0] in TYPED or (name, arg.names[0]) in TYPED_IN_TASK
            # typed flags get every malformed value; the others one each, in turn (a lean matrix)
            values = BAD if is_typed else [BAD[(len(runs) + i) % len(BAD)]]
            for v in values:
                argv = [name, v] if arg.positional else [name, _flag(arg), v]
                runs.append(argv)
                typed.append(_flag(arg) if is_typed else None)
    assert sum(1 for t in typed if t) >= 5 * 9  # the nine typed flags of today's tasks at least
    bad = []
    for argv, flag, r in zip(runs, typed, _all(sandbox, runs)):
        out = r.stdout + r.stderr
        shown = [a if len(a) < 20 else a[:8] + "..." for a in argv]
        if any(p in out for p in PROBLEMS) or not 0 <= r.returncode <= 3:
            bad.append((shown, r.returncode, r.stderr[-400:]))
        elif flag and (r.returncode != 2 or f"{flag}: expected" not in r.stderr):
            bad.append((shown, "typed", r.returncode, r.stderr[-400:]))
    assert not bad, bad



def test_output_into_a_pipe_closed_early_is_not_a_traceback(sandbox):
    runs = [["--list"], ["--help"], ["inventory.show"], ["inventory.show", "--json"], ["inventory.check"],
            ["inventory.check", "--json"], ["db.list", "--json"]]
    runs += [[name, "--help"] for name in TASKS]
    results = _all(sandbox, runs, closed_stdout=True)
    results += [_run(sandbox, argv, closed_stdout=True, inv=True)
                for argv in (["--list"], ["db.list", "--help"], ["inventory.show"])]
    bad = [(argv, r.returncode, r.stderr[-400:]) for argv, r in zip(runs + [["inv"]] * 3, results)
           if any(p in r.stderr for p in PROBLEMS) or r.returncode not in (0, 1)]
    assert not bad, bad
    # and through a real `| head -1`, as typed
    d, env = sandbox
    for cmd, first in ((f"{INV_BIN} --search-root {REPO} --list | head -1", "Available tasks:\n"),
                       (f"{sys.executable} -m bigskies_ops --list | head -1", "Subcommands:\n")):
        r = subprocess.run(["sh", "-c", cmd], cwd=d, env=env, capture_output=True, text=True, timeout=60)
        assert r.stdout == first and r.stderr == "", (cmd, r.stdout, r.stderr)


@pytest.mark.parametrize("inv", [False, True], ids=["bigskies-ops", "inv"])
def test_an_unknown_task_or_flag_gets_a_did_you_mean_and_exit_2(sandbox, inv):
    cmd = "inv" if inv else "bigskies-ops"
    for argv, message in (
            (["db.lst"], "error: no task named 'db.lst'; did you mean db.list?"),
            (["backup"], "error: no task named 'backup'; did you mean db.backup?"),
            (["db.list", "--jsn"], "error: db.list: no flag --jsn; did you mean --json?"),
            (["db.list", "--host"], "error: db.list: --host needs a value"),
            (["nosuchthing"], "error: no task named 'nosuchthing' "),
            (["--nosuch"], "error: no flag --nosuch "),                 # a core flag: exit 2 for inv too
            # a switch given a value: not "no task named 'yes'" (Invoke splits --json=yes)
            (["db.list", "--json=yes"], "error: db.list: --json takes no value"),
            (["db.list", "--json="], "error: db.list: --json takes no value"),
            (["db.verify", "--json=1"], "error: db.verify: --json takes no value"),
            (["db.delete", "-y=1", "abcd"], "error: db.delete: -y takes no value")):
        r = _run(sandbox, argv, inv=inv)
        assert r.returncode == 2 and message in r.stderr, (argv, r.returncode, r.stderr)
        assert f"({cmd} " in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert r.stdout == ""


def test_every_task_with_json_prints_one_document_when_it_fails(sandbox):
    runs, hosts = [], []
    for name, args in TASKS.items():
        names = {a.names[0] for a in args}
        if "json" not in names:
            continue
        if "host" in names:
            runs.append([name, "--host", "nosuch", "--json"])
            hosts.append("nosuch")
        elif "from" in names:
            runs.append([name, "--from", "nosuch", "--json"])
            hosts.append("nosuch")
        else:
            runs.append([name, "-i", "missing.yaml", "--json"])
            hosts.append(None)
    assert len(runs) >= 20
    # failures past the parser and the inventory: a wrong type, an unreachable host
    runs += [["db.restore", "latest", "--jobs", "abc", "--yes", "--json"], ["db.backup", "--json"],
             ["db.status", "--host", "far", "--json"]]
    hosts += [None, None, "far"]
    bad = []
    for argv, host, r in zip(runs, hosts, _all(sandbox, runs)):
        try:
            doc = json.loads(r.stdout)
        except ValueError:
            bad.append((argv, r.returncode, "stdout is not one JSON document", r.stdout[:300], r.stderr[-300:]))
            continue
        if r.returncode == 0:
            bad.append((argv, "exit 0"))
        elif doc.get("result") == "failed" and "error" in doc and "task" in doc:  # the common failure document
            want = {"result": "failed", "task": argv[0], "host": host,
                    "error": {"message": doc["error"].get("message"), "exit_code": r.returncode}}
            if doc != want or not doc["error"]["message"] or doc["error"]["message"].startswith("error:"):
                bad.append((argv, doc, want))
        elif not (doc.get("result") in ("failed", "skipped") or "hosts" in doc):  # a task's own report
            bad.append((argv, r.returncode, doc))
    assert not bad, bad


#: tasks that change something (issue 18: "--check on every task that changes something"):
#: each has --check (-C), a dry run that changes nothing and exits 0 (docs/cli.md "Dry runs").
#: A new task that changes something belongs here; db.exec/db.psql run the user's SQL (their
#: writes are guarded by the read-only default on protected hosts) and db.scheduled-run is
#: what cron runs (its steps each have --check).
CHANGING = {"db.backup", "db.restore", "db.pull", "db.prune", "db.offsite", "db.delete", "db.migrate", "db.pgpass",
            "db.schedule", "docker.purge", "docker.up", "docker.down", "docker.restart", "docker.build",
            "scenario.before-risky-change", "scenario.fresh-start", "scenario.complete-reset",
            "scenario.prod-to-dev", "scenario.recover-corruption", "apply", "run"}


def test_every_task_that_changes_something_has_check():
    missing = sorted(name for name in CHANGING if "check" not in {a.name for a in TASKS[name]})
    assert not missing, f"no --check on {missing}"
    shorts = {name: [n for a in TASKS[name] if a.name == "check" for n in a.names] for name in CHANGING}
    assert all(names == ["check", "C"] for names in shorts.values()), shorts


def test_check_on_an_unreachable_host_is_one_clear_error_not_a_traceback(sandbox):
    """--check reads the host to plan: when it cannot, the error is one line (exit 1/2/3), and
    --json still gives one document."""
    runs = [[name, "--check", "--json"] for name in sorted(CHANGING) if name != "db.pull"]
    runs.append(["db.pull", "--from", "far", "--check", "--json"])
    for argv, r in zip(runs, _all(sandbox, runs)):
        assert not any(p in r.stdout + r.stderr for p in PROBLEMS), (argv, r.stderr)
        assert r.returncode in (0, 1, 2, 3), (argv, r.returncode, r.stderr)
        doc = json.loads(r.stdout)
        assert doc["result"] in ("ok", "changed", "failed"), (argv, doc)
