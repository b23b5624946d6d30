"""Shared fixtures: real PostgreSQL clusters, a template database with BIG SKIES data,
inventories written per test, and a CLI runner that invokes the real console script.

Everything is started here and stopped by process id at session end. Test
traffic stays on 127.0.0.1 and unix sockets inside the run folder.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from bigskies_ops.dev.sandbox import Cluster, free_port
from tests.pgcheck import native_sql

pytest_plugins = ["tests.infra.fixtures"]

# pytest imports this file as ``conftest``; test modules import ``tests.conftest``. One module
# under both names: imported twice, the module-level code below ran twice, and the second
# crontab folder (the one the environment then named) was never removed.
sys.modules.setdefault("tests.conftest", sys.modules[__name__])

# A suite started in the background (`make test &`, nohup) inherits SIGINT ignored, and so
# would every program it starts (an ignored signal stays ignored across exec): the tests
# that press Ctrl-C need it as a terminal gives it. A handler is reset to the default on exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# No test may edit this machine's crontab: db.schedule writes the user's crontab unless it is
# given a file, and a contract test's db.schedule run once left a block in root's. Every
# process the suite starts inherits a crontab file of this run's own (BIGSKIES_CRONTAB_FILE,
# jobs/schedule.py); tests that check the crontab pass their own file.
_CRONTAB_DIR = tempfile.mkdtemp(prefix="bigskies-crontab-")
os.environ["BIGSKIES_CRONTAB_FILE"] = os.path.join(_CRONTAB_DIR, "crontab")


def _real_crontab() -> str:
    r = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else ""


_CRONTAB_BEFORE = _real_crontab() if shutil.which("crontab") else ""


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when this machine's crontab changed (the suite must leave it alone)."""
    shutil.rmtree(_CRONTAB_DIR, ignore_errors=True)
    if shutil.which("crontab") and _real_crontab() != _CRONTAB_BEFORE:
        print("\nERROR: the test run changed this machine's crontab (crontab -l differs)", file=sys.stderr)
        session.exitstatus = 1

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "s3cr:et\\ p@ss#w rd"      # has : \ @ # and a space on purpose (libpq escaping)
PASSWORD_ENV = "BIGSKIES_TEST_PGPASSWORD"
TEMPLATE_DB = "bigskies_tpl"


# Seconds each module took in a `make test` run (2 cores, 2 xdist workers, a busy machine),
# from `pytest --durations` / junit times. Only used to order modules under pytest-xdist.
MODULE_SECONDS = {
    "test_stack": 406, "test_pull": 266, "test_restore_safety": 186, "test_bad_input": 152,
    "test_offsite": 140, "test_migrations": 127, "test_migrations_modes": 101, "test_main_job": 99,
    "test_container_mode": 95, "test_interrupts_and_usage": 65, "test_verify": 64, "test_secrets": 50,
    "test_restore_counts": 48, "test_schedule": 46, "test_sampledata": 44, "test_health": 43,
    "test_fleet": 31, "test_pgpass": 28, "test_inventory_cli": 25, "test_ssh": 23, "test_retention": 20,
    "test_infra": 17, "test_stream_counts": 60, "test_parload": 45, "test_parallel_load_edge_cases": 30, "test_plain_archive_edge_cases": 20,
    # tests/fidelity (issue 15): a full -n 2 run (26:46 on a machine also running other suites),
    # scaled by test_stack's 406/477 to this table's scale
    "test_fidelity_roundtrip_b": 158, "test_fidelity_roundtrip_a": 155, "test_fidelity_pull": 86,
    "test_fidelity_bad_archives": 68,
    "test_servers": 200, "test_restore_server_limits": 150, "test_ssh_host": 40, "test_runner_interface": 20,
    "test_apply": 110, "test_run_runbook": 150, "test_run_stack": 130, "test_scenario_prod_to_dev": 85,
}


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test``: ``-n 2 --dist loadfile --no-loadscope-reorder``) each
    test module is one unit of work, so its module-scoped fixtures (a compose stack, a loaded
    database, an S3 server) are set up once and its tests keep their order. Modules go out
    longest first, so the workers finish at about the same time. Serial runs keep file order."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: -MODULE_SECONDS.get(Path(str(item.fspath)).stem, 0))  # stable


@pytest.fixture(scope="session")
def run_root():
    """A folder for this test run that the ``postgres`` OS user can traverse."""
    d = Path(tempfile.mkdtemp(prefix="bigskies-tests-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def load_bigskies(run_sql_input, database: str) -> None:
    """Apply configs/sql (recorded in schema_migrations) and the sample data."""
    from bigskies_ops.dev.sampledata import sample_data_sql
    from bigskies_ops.dev.schema import bootstrap_sql
    run_sql_input(bootstrap_sql(REPO / "configs" / "sql"), database)
    run_sql_input(sample_data_sql(1), database)
    run_sql_input("SELECT lo_from_bytea(0, convert_to('bigskies large object ' || repeat('x', 5000), 'UTF8'));",
                  database)


@pytest.fixture(scope="session")
def pg(run_root):
    """A native PostgreSQL 15 cluster: socket trust, TCP scram with :data:`PASSWORD`,
    and a template database holding the BIG SKIES schema and sample data."""
    c = Cluster(base=run_root / "pg", port=free_port(), password=PASSWORD).init().start()
    try:
        c.psql("-c", f'CREATE DATABASE "{TEMPLATE_DB}"')
        load_bigskies(lambda sql, db: c.psql(database=db, input=sql), TEMPLATE_DB)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def pg_sql(pg):
    return native_sql(str(pg.socket_dir), pg.port)


def new_db_from_template(pg, name: str) -> None:
    # FILE_COPY: copy the files (fsync is off) instead of WAL-logging every block (PG 15's default)
    pg.psql("-c", f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}" STRATEGY FILE_COPY')


def drop_db_and_copies(pg, name: str) -> None:
    """Drop ``name`` and every database derived from it (pre-restore copies, side databases)."""
    like = name.replace('"', '""')
    rows = pg.psql("-A", "-t", "-c",
                   "SELECT datname FROM pg_database WHERE datname = $$%s$$ OR starts_with(datname, left($$%s$$, 20))"
                   % (like, like)).splitlines()
    for r in rows:
        if r.strip():
            pg.psql("-c", 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % r.replace('"', '""'))


@pytest.fixture
def dbname(pg):
    """A fresh copy of the BIG SKIES template database, dropped (with its copies) afterwards."""
    name = f"bs_{uuid.uuid4().hex[:10]}"
    new_db_from_template(pg, name)
    yield name
    drop_db_and_copies(pg, name)


def wait_unlocked(inventory: Path | str, timeout: float = 120) -> None:
    """Wait until no (host, database) lock is held in the backup folders of ``inventory``'s
    local hosts: a restore hands its lock to the process that drops old pre-restore copies
    after it returns (bigskies_ops.jobs.background_drop); a test reading the databases
    right after a restore waits for that process first, as the next task would."""
    from bigskies_ops.inventory import load
    folders = [Path(h.backup.dir) for h in load(inventory).hosts.values() if not h.is_remote]
    deadline = time.monotonic() + timeout
    while held := [p for d in folders if d.is_dir() for p in d.glob(".lock-*")]:
        assert time.monotonic() < deadline, f"still locked after {timeout} s: {held}"
        time.sleep(0.1)


def send_when(p: subprocess.Popen, ready, sig: int, what: str, timeout: float = 120) -> None:
    """Send ``sig`` to ``p`` once ``ready()`` is true (polled every 50 ms while ``p`` runs,
    up to ``timeout`` s). Fails, naming ``what``, when ``p`` ended or the time ran out first."""
    deadline = time.monotonic() + timeout
    while not ready() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not ready():
        raise AssertionError(f"{what} never came" + (f": {p.communicate()[1]}" if p.poll() is not None else ""))
    p.send_signal(sig)


def signal_when(p: subprocess.Popen, ready, sig: int, what: str, timeout: float = 120) -> tuple[str, str]:
    """:func:`send_when`, then ``(stdout, stderr)`` once ``p`` has ended; ``p`` never
    outlives the call."""
    try:
        send_when(p, ready, sig, what, timeout)
        return p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def write_inventory(path: Path, hosts: dict, *, defaults: dict | None = None, groups: dict | None = None) -> Path:
    doc: dict = {}
    if defaults:
        doc["defaults"] = defaults
    if groups:
        doc["groups"] = groups
    doc["hosts"] = hosts
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def native_host(pg, database: str, backup_dir: str | Path, **extra) -> dict:
    """Inventory entry for a local host whose PostgreSQL is the test cluster over TCP + scram."""
    h = {"connection": "local",
         "postgres": {"host": "127.0.0.1", "port": pg.port, "database": database, "user": "bigskies",
                      "password_env": PASSWORD_ENV, "bindir": "/usr/lib/postgresql/15/bin"},
         "backup": {"dir": str(backup_dir)}}
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(h.get(k), dict):
            h[k] = {**h[k], **v}
        else:
            h[k] = v
    return h


@pytest.fixture
def cli_env():
    env = dict(os.environ)
    env[PASSWORD_ENV] = PASSWORD
    env.pop("BIGSKIES_INVENTORY", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    return env


def backed_up_once(tmp_path: Path, pg, dbname: str, env: dict) -> tuple[Path, Path, str, dict]:
    """A local host ``dev`` on the test cluster (folder ``tmp_path/backups``), backed up once
    by the real CLI: (inventory, backup folder, the ``.sql.gz`` archive's name, its manifest)."""
    bdir = tmp_path / "backups"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    r = cli("db.backup", "-i", str(inv), env=env)
    assert r.returncode == 0, r.stderr
    [name] = [p for p in os.listdir(bdir) if p.endswith(".sql.gz")]
    return inv, bdir, name, json.loads((bdir / (name + ".manifest.json")).read_text())


def cli(*args: str, env: dict, cwd: str | Path | None = None, input: str | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real console entry point ``python -m bigskies_ops ARGS`` (same Collection as ``inv``)."""
    return subprocess.run([sys.executable, "-m", "bigskies_ops", *args], env=env, cwd=cwd or REPO,
                          input=input, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def local_inv(tmp_path, pg, dbname):
    """(inventory path, backup dir) for one local native host ``dev`` on the test cluster."""
    bdir = tmp_path / "backups"
    inv = write_inventory(tmp_path / "inventory.yaml", {"dev": native_host(pg, dbname, bdir)})
    return inv, bdir
