"""Run the console script ``bigskies-ops`` many times, fast: ``python forkrun.py BATCH.json``.

Each run is a child process forked from this one after it has imported the program (and
the libraries the tasks load on first use), then given its own working folder, environment,
stdin (/dev/null), stdout and stderr, and ``sys.argv``, and running
:func:`bigskies_ops.cli.program.main` as ``python -m bigskies_ops`` does. What a run costs is
then the task's own work, not the ~0.5 s of imports: the contract test
(test_cli_contract.py) makes ~300 runs. BATCH.json: ``{"cwd", "env", "workers", "runs":
[{"argv": [...], "closed_stdout": bool}, ...]}``; the results (``{"rc", "stdout", "stderr"}``
per run, in order) are written to BATCH.json + ".out".
"""
from __future__ import annotations

import json
import os
import sys
import tempfile


def _child(run: dict, cwd: str, env: dict, out: str, err: str) -> None:
    import signal
    signal.alarm(120)  # a run that hangs ends (SIGALRM, exit -14) instead of holding the batch
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    fd_in = os.open(os.devnull, os.O_RDONLY)
    if run.get("closed_stdout"):  # a reader that has gone (``| head`` after its line): writes fail
        r, fd_out = os.pipe()
        os.close(r)
    else:
        fd_out = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    fd_err = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for fd, target in ((fd_in, 0), (fd_out, 1), (fd_err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.argv = ["bigskies-ops", *run["argv"]]
    code = 1
    try:
        from bigskies_ops.cli.program import main
        main()  # exits through os._exit, or sys.exit while a non-daemon thread runs
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # an escaped exception is what the test looks for: show it
        import traceback
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(code)


def main(batch_path: str) -> None:
    batch = json.loads(open(batch_path).read())
    # what the tasks import on first use, imported once here (before any fork)
    import bigskies_ops.cli.program  # noqa: F401
    for mod in ("yaml", "rich.console", "rich.table", "rich.progress", "fabric", "paramiko", "psycopg"):
        try:
            __import__(mod)
        except ImportError:
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    tmp = tempfile.mkdtemp(prefix="forkrun-")
    runs, results = batch["runs"], [None] * len(batch["runs"])
    running: dict[int, int] = {}

    def reap() -> None:
        pid, status = os.wait()
        i = running.pop(pid)
        with open(f"{tmp}/{i}.out", errors="replace") as o, open(f"{tmp}/{i}.err", errors="replace") as e:
            results[i] = {"rc": os.waitstatus_to_exitcode(status), "stdout": o.read(), "stderr": e.read()}

    for i, run in enumerate(runs):
        while len(running) >= batch.get("workers", 2):
            reap()
        open(f"{tmp}/{i}.out", "w").close()
        pid = os.fork()
        if pid == 0:
            _child(run, batch["cwd"], batch["env"], f"{tmp}/{i}.out", f"{tmp}/{i}.err")
        running[pid] = i
    while running:
        reap()
    with open(batch_path + ".out", "w") as f:
        json.dump(results, f)
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
