"""`make demo`: the main job on real data, with the real output a user would see.

A sandbox PostgreSQL 15 cluster (in a temp folder, 127.0.0.1 only, password auth)
is filled with the BIG SKIES schema (configs/sql) and sample data, then the real
`inv` tasks back it up, list, verify, break the data, and restore it. The cluster
is stopped by its process id at the end; the backups stay in backups/demo/.
"""
from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bigskies_ops.dev.sampledata import sample_data_sql  # noqa: E402
from bigskies_ops.dev.schema import bootstrap_sql  # noqa: E402
from bigskies_ops.dev.sandbox import Cluster, free_port  # noqa: E402

INV = str(Path(sys.executable).parent / "inv")


def banner(text: str) -> None:
    print(f"\n\033[1m### {text}\033[0m" if sys.stdout.isatty() else f"\n### {text}", flush=True)


def step(args: list[str], env: dict, expect: int = 0) -> subprocess.CompletedProcess:
    print(f"$ inv {shlex.join(args)}", flush=True)
    r = subprocess.run([INV, *args], cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    sys.stdout.write(r.stdout)
    sys.stdout.flush()
    if r.returncode != expect:
        raise SystemExit(f"demo step failed: inv {shlex.join(args)} exited {r.returncode} (expected {expect})")
    return r


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="bigskies-demo-"))
    os.chmod(base, 0o755)
    password = secrets.token_urlsafe(12) + ":\\@# x"   # characters that need escaping, on purpose
    cluster = Cluster(base=base / "pg", port=free_port(), password=password)
    backups = REPO / "backups" / "demo"
    shutil.rmtree(backups, ignore_errors=True)
    inventory = base / "inventory.yaml"
    inventory.write_text(f"""\
# The demo's inventory: one local host whose PostgreSQL is a sandbox cluster.
defaults:
  host: sandbox
hosts:
  sandbox:
    connection: local
    postgres:
      host: 127.0.0.1
      port: {cluster.port}
      database: bigskies
      user: bigskies
      password_env: BIGSKIES_DEMO_PGPASSWORD     # the NAME of a variable, never the password
    backup:
      dir: {backups}
      format: plain
    migrations:
      dir: {REPO / "configs" / "sql"}
""")
    env = dict(os.environ, BIGSKIES_INVENTORY=str(inventory), BIGSKIES_DEMO_PGPASSWORD=password, COLUMNS="120")
    try:
        banner(f"Starting a sandbox PostgreSQL on 127.0.0.1:{cluster.port} (data in {base})")
        t = time.monotonic()
        cluster.init().start()
        cluster.psql("-c", "CREATE DATABASE bigskies")
        cluster.psql(database="bigskies", input=bootstrap_sql(REPO / "configs" / "sql"))
        cluster.psql(database="bigskies", input=sample_data_sql(1) + "\nANALYZE;\n")  # row estimates for db.status
        print(f"BIG SKIES schema (configs/sql, recorded in schema_migrations) and sample data loaded "
              f"in {time.monotonic() - t:.1f} s")

        banner("1. Check the inventory and look at the database")
        step(["inventory.check"], env)
        step(["db.status"], env)

        # the guide's format last, so `latest` below is the default .sql.gz (the main job)
        banner("2. Back up (the custom format for pg_restore, then the guide's .sql.gz)")
        step(["db.backup", "--format", "custom"], env)
        step(["db.backup", "--label", "demo"], env)

        banner("3. List the backups")
        step(["db.list"], env)

        banner("4. Verify the newest backup end to end")
        step(["db.verify", "latest"], env)

        banner("5. An accident: coordinator configuration history is deleted")
        step(["db.exec", "--sql", "DELETE FROM coordinator_config_history; "
                                  "SELECT count(*) AS history_rows FROM coordinator_config_history;"], env)

        banner("6. Restore the newest backup (a side database is restored, checked, then swapped in)")
        step(["db.restore", "latest", "--yes"], env)
        step(["db.exec", "--sql", "SELECT count(*) AS history_rows FROM coordinator_config_history;"], env)
        step(["db.list", "--pre-restore"], env)

        banner("7. Bad input is refused and harms nothing")
        step(["db.restore", "no_such_backup.sql.gz", "--yes"], env, expect=1)
        step(["db.backup", "--host", "prod"], env, expect=2)

        banner("Done")
        print(f"Backups are in {backups.relative_to(REPO)}/ ; the sandbox cluster is stopped and removed.")
        print("Next: `. .venv/bin/activate`, copy inventory.yaml, point it at your own stack, run `inv db.backup`.")
        return 0
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
