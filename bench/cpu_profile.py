"""Where scenario 4's CPU goes: a system-wide ``perf`` profile of ``db.pull --from prod --to
laptop --restore`` and of Heroku's pipe through the SSH tunnel, on the bench's database
with its memory in use (bench/run.py's setup, sshd and tunnel).

    .venv/bin/python bench/cpu_profile.py [--runs 2] [--quick] [--headroom 6]

For each run of each contender it prints the CPU seconds per process name (``postgres``,
``python``, ``ssh``, ``sshd``, ``psql``, ``pg_dump``, ``bash`` - the login shell sshd runs
each remote command through -, idle), for ours the seconds per thread of the Python
process with its top leaf functions (ISA-L, sha256, ``bytes.count`` ...), and a timeline
in 0.5 s steps of each process name's share of the samples (all CPUs). ``perf record -e cpu-clock
-a -g`` samples every CPU at 997 Hz, so a figure is samples / 997 (about +-10 ms).
A trial's instrument, not a result: the bench's ratios come from ``make bench`` only.
Needs ``perf`` (Debian: linux-perf) and the rights to sample every CPU
(``kernel.perf_event_paranoid`` <= 0, or root).
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

RATE = 997  # Hz per CPU
SHOWN = ("postgres", "python", "psql", "ssh", "sshd", "pg_dump", "pg_restore", "bash", "kernel", "idle")


def samples(script: str) -> list[tuple[float, str, str, list[str]]]:
    """``perf script -F comm,tid,time,ip,sym,dso`` text -> ``(seconds, comm, tid, frames)``
    per sample, frames leaf first as ``symbol (dso)``; time from the first sample."""
    out: list[tuple[float, str, str, list[str]]] = []
    t0 = None
    for block in script.split("\n\n"):
        lines = [line for line in block.strip("\n").split("\n") if line.strip()]
        if not lines:
            continue
        head = lines[0].split()
        if len(head) < 3:
            continue
        t = float(head[-1].rstrip(":"))
        t0 = t if t0 is None else t0
        frames = [line.strip().split(None, 1)[1] if " " in line.strip() else "?" for line in lines[1:]]
        out.append((t - t0, head[0], head[-2].split("/")[-1], frames))
    return out


def kind(comm: str) -> str:
    """The process name a sample counts under: the idle task is ``idle``, kernel threads ``kernel``."""
    if comm == "swapper":
        return "idle"
    if comm.startswith(("kworker", "kswapd", "kdamond", "ksoftirq", "migration", "rcu_")):
        return "kernel"
    return comm


def by_process(rows) -> dict[str, float]:
    """CPU seconds per process name (:func:`kind`)."""
    c = collections.Counter(kind(comm) for _, comm, _, _ in rows)
    return {k: n / RATE for k, n in c.most_common()}


def python_threads(rows, top: int = 6) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """``(tid, seconds, [(leaf function, seconds)])`` per thread of the ``python`` processes,
    busiest first."""
    per: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for _, comm, tid, frames in rows:
        if comm == "python":
            per[tid][(frames[0] if frames else "?").split(" (")[0][:48]] += 1
    out = [(tid, sum(c.values()) / RATE, [(f, n / RATE) for f, n in c.most_common(top)]) for tid, c in per.items()]
    return sorted(out, key=lambda x: -x[1])


def timeline(rows, step: float = 0.5) -> list[tuple[float, dict[str, float]]]:
    """Per ``step`` seconds: each shown process name's share (0-1) of the samples."""
    b: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for t, comm, _, _ in rows:
        b[int(t / step)][kind(comm)] += 1
    return [(k * step, {c: b[k][c] / sum(b[k].values()) for c in SHOWN}) for k in sorted(b)]


def report(name: str, rows, wall: float) -> str:
    lines = [f"== {name}: wall {wall:.2f} s, {len(rows) / RATE:.2f} CPU-s sampled ({os.cpu_count()} CPUs, from 1 s before the start)"]
    lines += [f"   {k:12s} {v:6.2f} s" for k, v in by_process(rows).items() if v >= 0.01]
    if name.startswith("ours"):
        for tid, s, leaves in python_threads(rows):
            if s >= 0.05:
                lines.append(f"   python thread {tid}: {s:.2f} s: " + ", ".join(f"{f} {v:.2f}" for f, v in leaves))
    lines.append("    t(s) " + " ".join(f"{c[:8]:>8}" for c in SHOWN))
    for t, share in timeline(rows):
        lines.append(f"   {t:5.1f} " + " ".join(f"{100 * share[c]:7.0f}%" for c in SHOWN))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small data set")
    ap.add_argument("--headroom", type=float, default=6.0, help="as bench/run.py's")
    args = ap.parse_args()
    if shutil.which("perf") is None:
        print("cpu_profile: perf is not installed (Debian: apt-get install linux-perf)", file=sys.stderr)
        return 2
    b = bench.Bench(argparse.Namespace(quick=args.quick, scale=1, runs=3, only="scenario4", workdir=None, keep=False,
                                       settle=10.0, warmup=0, headroom=args.headroom))
    try:
        b.setup()
        b.write_inventory(b.start_sshd())
        tport = b.start_tunnel()
        heroku = b.shell(f"createdb heroku_ssh && pg_dump -Fc -Z0 -h 127.0.0.1 -p {tport} -d bigskies "
                         "| pg_restore --no-owner --no-acl -d heroku_ssh")
        ours = [sys.executable, "-m", "bigskies_ops", "db.pull", "--from", "prod", "--to", "laptop", "--restore", "--yes"]
        contenders = [("ours", ours, lambda: b.prune_folder(b.base / "laptop" / "prod")),
                      ("heroku", heroku, lambda: b.sh("dropdb --if-exists -f heroku_ssh"))]
        for i in range(args.runs):
            for name, argv, prep in contenders:
                prep()
                b.starting_state()
                data = b.base / f"{name}-{i}.perf"
                perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", str(RATE), "-a", "-g", "-o",
                                         str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
                t0 = time.perf_counter()
                r = subprocess.run(argv, env=b.env, capture_output=True)
                wall = time.perf_counter() - t0
                perf.send_signal(2)
                perf.wait()
                if r.returncode != 0:
                    raise SystemExit(f"cpu_profile: {name} failed (exit {r.returncode}): {r.stderr.decode()[-1500:]}")
                script = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,tid,time,ip,sym,dso"],
                                        capture_output=True, text=True).stdout
                print(report(f"{name} run {i}", samples(script), wall), flush=True)
                data.unlink()
        b.sh("dropdb --if-exists -f heroku_ssh")
        return 0
    finally:
        b.close()


if __name__ == "__main__":
    sys.exit(main())
