"""Pure parts of db.metrics: when a cron expression fires next, the samples of one host's
facts, and the inventory's ``metrics`` block."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from bigskies_ops.errors import InventoryError
from bigskies_ops.inventory import parse
from bigskies_ops.jobs.metrics import samples
from bigskies_ops.jobs.schedule import next_fire

AFTER = datetime(2026, 12, 3, 15, 20, 30)  # a Thursday


@pytest.mark.parametrize("expr, expected", [
    ("0 2 * * *", datetime(2026, 12, 4, 2, 0)),
    ("@hourly", datetime(2026, 12, 3, 16, 0)),
    ("@daily", datetime(2026, 12, 4, 0, 0)),
    ("*/15 * * * *", datetime(2026, 12, 3, 15, 30)),
    ("21 15 * * *", datetime(2026, 12, 3, 15, 21)),        # strictly after: the next minute
    ("20 15 * * *", datetime(2026, 12, 4, 15, 20)),
    ("0 3 1 * *", datetime(2027, 1, 1, 3, 0)),             # the monthly restore test's line
    ("30 4 * * mon-fri", datetime(2026, 12, 4, 4, 30)),
    ("0 0 * * 7", datetime(2026, 12, 6, 0, 0)),            # 7 is Sunday
    ("0 0 13 * 5", datetime(2026, 12, 4, 0, 0)),           # day of month OR day of week (crontab(5))
    ("0 2 * jan,jul sun", datetime(2027, 1, 3, 2, 0)),
    ("0 0 29 2 *", datetime(2028, 2, 29, 0, 0)),
    ("0 0 30 2 *", None),                                   # never
])
def test_next_fire_follows_crontab_5(expr, expected):
    assert next_fire(expr, AFTER) == expected


def test_next_fire_refuses_a_value_out_of_range():
    with pytest.raises(ValueError):
        next_fire("61 * * * *", AFTER)


def test_an_unreadable_folder_exports_only_that_and_the_schedule():
    got = samples({"readable": False, "next_run_at": "2026-12-04T02:00:00Z", "max_age_s": 93600})
    assert [(n, v) for n, _, v in got] == [("dir_readable", 0.0), ("state", 3.0),
                                           ("next_run_timestamp_seconds", 1796349600.0), ("max_age_seconds", 93600.0)]


def test_absent_facts_leave_their_samples_out():
    got = {n for n, _, _ in samples({"readable": True, "present": False, "verification": None, "offsite": [
        {"target": "s3", "lag_s": None}], "failures": 0, "counts": {"DONE": 0}, "checks": [], "state": "critical"})}
    assert got == {"dir_readable", "present", "verified", "failures", "archives", "state"}


def _inv(metrics):
    return parse({"hosts": {"dev": {"metrics": metrics}}}, Path("/tmp/inv/inventory.yaml"))


def test_the_textfile_resolves_against_the_inventory_folder_and_must_end_in_prom():
    assert _inv({"textfile": "m/bigskies.prom"}).hosts["dev"].metrics.textfile == "/tmp/inv/m/bigskies.prom"
    assert _inv({}).hosts["dev"].metrics.textfile is None
    with pytest.raises(InventoryError, match=r"hosts.dev.metrics.textfile: node_exporter's textfile collector"):
        _inv({"textfile": "m/bigskies.txt"})
    with pytest.raises(InventoryError, match=r"hosts.dev.metrics.textfil: unknown key \(did you mean 'textfile'"):
        _inv({"textfil": "m/bigskies.prom"})


def test_loading_the_tasks_does_not_import_the_heavy_libraries():
    """Every task start (a cron run of db.backup, ``db.pull --existing``, ``--help``) must not
    pay for libraries only some tasks use: prometheus_client (db.metrics, a textfile), psycopg
    (SQL composition, pg.access.pgsql: ~0.1 s; a function default once loaded it), Fabric and
    paramiko (SSH hosts), boto3 (S3 offsite), apprise (notifications), rich."""
    import subprocess
    import sys
    heavy = ["prometheus_client", "psycopg", "fabric", "paramiko", "boto3", "apprise", "rich"]
    r = subprocess.run([sys.executable, "-c", "import sys, bigskies_ops.cli, bigskies_ops.jobs.monitoring; "
                        f"print([m for m in {heavy!r} if m in sys.modules])"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_psycopg_is_imported_beside_the_restore_checks():
    """``preload_psycopg`` (called first by ``db.restore``) imports psycopg on a thread of its own,
    so the restore's first SQL composition (``pgsql``) finds it loaded instead of importing it
    on the critical path; a failed import says nothing there, and the first real use raises it."""
    import subprocess
    import sys
    code = ("import sys, threading; from bigskies_ops.pg.access import preload_psycopg, pgsql; "
            "assert 'psycopg' not in sys.modules; preload_psycopg(); "
            "t = [t for t in threading.enumerate() if t.name == 'psycopg-import']; "
            "assert len(t) == 1, t; t[0].join(30); "
            "print('psycopg.sql' in sys.modules, pgsql.Identifier('x').as_string(None))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == ["True", '"x"'], r.stdout + r.stderr
    broken = ("import sys; sys.modules['psycopg'] = None; from bigskies_ops.pg.access import preload_psycopg, pgsql; "
              "preload_psycopg(); import threading; [t.join(30) for t in threading.enumerate() "
              "if t.name == 'psycopg-import']\ntry:\n    pgsql.SQL\nexcept ImportError as e:\n    print('raised', e.name)")
    r = subprocess.run([sys.executable, "-c", broken], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "raised psycopg" and r.stderr == "", r.stdout + r.stderr
