"""Regenerate docs/img/report.png (the README's picture of `inv db.report`) from the demo's
sample data: `.venv/bin/python scripts/report_screenshot.py [--out-html FILE]`.

A sandbox PostgreSQL 15 (as `make demo` starts) holds the BIG SKIES schema and sample data
in three databases, one per host of a small fleet:

- prod:    fourteen real backups by `db.backup` while the data grows a little each time
           (one night it jumps, outside the size-alert band), the newest verified;
- staging: real backups, one FAILED run (pg_dump waited for a lock, `--lock-wait-timeout 1`)
           and one whose archive file was deleted afterwards (MISSING);
- laptop:  no backups yet.

The backups are made now, seconds apart; so that the charts show a fortnight of nightly runs
their manifests (and file names) are then re-dated to 02:00 on successive nights. That is
the only thing staged. `db.report` then writes the page and headless Chromium
(bigskies_ops/dev/browser.py) takes the screenshot at 1100 px. The sandbox is stopped and
removed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bigskies_ops.archives.catalog import archive_name, iso, parse_iso  # noqa: E402
from bigskies_ops.dev.browser import Browser  # noqa: E402
from bigskies_ops.dev.sampledata import sample_data_sql  # noqa: E402
from bigskies_ops.dev.schema import bootstrap_sql  # noqa: E402
from bigskies_ops.dev.sandbox import Cluster, free_port  # noqa: E402


def inv(*args: str, env: dict, ok=(0,)) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "bigskies_ops", *args], cwd=REPO, env=env, text=True,
                       capture_output=True)
    if r.returncode not in ok:
        raise SystemExit(f"inv {' '.join(args)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r


def redate(bdir: Path, nights_ago_of_newest: int, now: datetime) -> None:
    """Give the backups in ``bdir`` (oldest first) the start times of successive nights at
    02:00 UTC, the newest ``nights_ago_of_newest`` nights ago; archive and manifest renamed
    to match (the archive name carries the UTC start)."""
    mans = sorted(bdir.glob("*.manifest.json"), key=lambda p: json.loads(p.read_text())["started_at"])
    last = (now - timedelta(days=nights_ago_of_newest)).replace(hour=2, minute=0, second=0, microsecond=0)
    if last > now:
        last -= timedelta(days=1)
    for i, mp in enumerate(mans):
        m = json.loads(mp.read_text())
        at = last - timedelta(days=len(mans) - 1 - i)
        old_start, old_end = parse_iso(m["started_at"]), parse_iso(m.get("finished_at"))
        name = archive_name(m["database"], at, m["format"])
        m["started_at"] = iso(at)
        if old_end:
            m["finished_at"] = iso(at + (old_end - old_start))
        for v in m.get("verifications") or []:
            v["at"] = iso(at + timedelta(hours=1))
        old = mp.name[: -len(".manifest.json")]
        m["archive"] = name
        if (bdir / old).exists():
            (bdir / old).rename(bdir / name)
        for side in bdir.glob(old + ".*"):
            if side.name != mp.name:
                side.rename(bdir / (name + side.name[len(old):]))
        mp.unlink()
        (bdir / (name + ".manifest.json")).write_text(json.dumps(m, indent=2, sort_keys=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--png", default=str(REPO / "docs" / "img" / "report.png"))
    ap.add_argument("--out-html", help="keep the page here as well")
    ap.add_argument("--width", type=int, default=1100)
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bigskies-report-shot-"))
    os.chmod(base, 0o755)
    password = secrets.token_urlsafe(12)
    cluster = Cluster(base=base / "pg", port=free_port(), password=password)
    hosts = {"prod": "bigskies", "staging": "bigskies_staging", "laptop": "bigskies_dev"}
    lines = ["hosts:"]
    for h, db in hosts.items():
        lines += [f"  {h}:", "    connection: local",
                  f"    postgres: {{host: 127.0.0.1, port: {cluster.port}, database: {db}, user: bigskies, "
                  f"password_env: BIGSKIES_DEMO_PGPASSWORD, bindir: {cluster.bindir}}}",
                  f"    backup: {{dir: {base / 'backups' / h}}}"]
    inventory = base / "inventory.yaml"
    inventory.write_text("\n".join(lines) + "\n")
    env = dict(os.environ, BIGSKIES_INVENTORY=str(inventory), BIGSKIES_DEMO_PGPASSWORD=password)
    env.pop("BIGSKIES_DEBUG", None)
    try:
        cluster.init().start()
        for db in hosts.values():
            cluster.psql("-c", f"CREATE DATABASE {db}")
            cluster.psql(database=db, input=bootstrap_sql(REPO / "configs" / "sql") + sample_data_sql(1)
                         + "\nCREATE TABLE report_demo_growth (id serial PRIMARY KEY, note text);\n")
        grow = "INSERT INTO report_demo_growth (note) SELECT md5(random()::text) || md5(random()::text) " \
               "FROM generate_series(1, {n});"
        for i in range(14):  # prod: a fortnight, growing; night 10 doubles, night 11 is back to normal
            cluster.psql(database="bigskies", input=grow.format(n=1500 + 300 * i))
            if i == 10:
                cluster.psql(database="bigskies", input=grow.format(n=150000))
            if i == 11:
                cluster.psql(database="bigskies", input="DELETE FROM report_demo_growth WHERE id > 45000;")
            inv("db.backup", "--host", "prod", "--label", "nightly", env=env)
        inv("db.verify", "latest", "--host", "prod", env=env)
        for i in range(6):  # staging: six runs, the fifth one FAILED on a held lock
            cluster.psql(database="bigskies_staging", input=grow.format(n=800))
            if i == 4:
                locker = subprocess.Popen([f"{cluster.bindir}/psql", "-X", "-q", "-h", str(cluster.socket_dir), "-p",
                                           str(cluster.port), "-U", "bigskies", "-d", "bigskies_staging"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                locker.stdin.write("BEGIN; LOCK TABLE report_demo_growth IN ACCESS EXCLUSIVE MODE; SELECT 1;\n")
                locker.stdin.flush()
                locker.stdout.readline()
                try:
                    inv("db.backup", "--host", "staging", "--lock-wait-timeout", "1", env=env, ok=(1,))
                finally:
                    locker.stdin.write("COMMIT;\n\\q\n")
                    locker.stdin.close()
                    locker.wait(10)
            else:
                inv("db.backup", "--host", "staging", env=env)
        now = datetime.now(timezone.utc)
        redate(base / "backups" / "prod", 0, now)
        redate(base / "backups" / "staging", 1, now)  # staging's newest is a day old: past max age
        second = sorted((base / "backups" / "staging").glob("*.sql.gz"))[1]
        second.unlink()  # a DONE manifest whose archive is gone: MISSING
        page = base / "report.html"
        r = inv("db.report", "--out", str(page), env=env)
        print(r.stdout, end="")
        if a.out_html:
            shutil.copyfile(page, a.out_html)
        Path(a.png).parent.mkdir(parents=True, exist_ok=True)
        with Browser() as b:
            b.open(page.as_uri(), width=a.width, height=900)
            b.screenshot(a.png)
            problems = b.problems()
        if any(problems.values()):
            raise SystemExit(f"the page had problems in Chromium: {problems}")
        print(f"wrote {a.png}")
        return 0
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
