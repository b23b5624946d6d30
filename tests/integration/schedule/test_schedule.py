"""``db.schedule`` converges a marked crontab block (a file here), and every generated
line really runs as cron would run it: a bare environment, no virtualenv on PATH."""
from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest
import yaml

from bigskies_ops.jobs.schedule import monthly_expression, replace_block
from tests.conftest import PASSWORD, cli, native_host, write_inventory
from tests.pgcheck import db_fingerprint


def test_monthly_line_runs_an_hour_after_the_daily_one_on_the_first():
    assert monthly_expression("0 2 * * *") == "0 3 1 * *"
    assert monthly_expression("45 23 * * 1-5") == "45 0 1 * *"
    assert monthly_expression("*/30 * * * *") == "0 3 1 * *"


def test_replace_block_keeps_everything_outside_the_markers():
    text = "MAILTO=ops\n5 4 * * * /usr/bin/true\n"
    lines = ["# BEGIN bigskies-ops dev (managed)", "0 2 * * * X", "# END bigskies-ops dev"]
    one = replace_block(text, "dev", lines)
    assert one == text + "\n" + "\n".join(lines) + "\n"
    assert replace_block(one, "dev", lines) == one
    assert replace_block(one, "dev", None) == text + "\n"
    other = replace_block(one, "prod", ["# BEGIN bigskies-ops prod (managed)", "1 1 * * * Y",
                                        "# END bigskies-ops prod"])
    assert replace_block(other, "dev", None).count("bigskies-ops prod") == 2


def _cron_env(tmp_path):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return ["env", "-i", f"HOME={home}", "SHELL=/bin/sh", "PATH=/usr/bin:/bin"], home


def _run_as_cron(tmp_path, line: str, timeout=300):
    """Run a crontab line's command the way cron does."""
    cmd = line.split(None, 5)[5]
    envp, home = _cron_env(tmp_path)
    return subprocess.run([*envp, "/bin/sh", "-c", cmd], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          cwd=home, timeout=timeout)


@pytest.fixture
def cron_host(tmp_path, pg, dbname):
    """A host whose password comes from a passfile (cron has no environment to carry it)."""
    from bigskies_ops.dev.sandbox import free_port
    pgpass = tmp_path / "pgpass"
    esc = PASSWORD.replace("\\", "\\\\").replace(":", "\\:")
    pgpass.write_text(f"*:*:*:*:{esc}\n")
    pgpass.chmod(0o600)
    bdir = tmp_path / "backups"
    # S3 credentials from a profile in HOME (cron has no variables to name)
    (tmp_path / "home" / ".aws").mkdir(parents=True)
    (tmp_path / "home" / ".aws" / "credentials").write_text(
        "[bigskies]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = example\n")
    dead = {"name": "vault", "url": "s3://bigskies-offsite/x", "endpoint": f"http://127.0.0.1:{free_port()}",
            "profile": "bigskies"}
    h = native_host(pg, dbname, bdir, postgres={"password_env": None, "passfile": str(pgpass)},
                    schedule="15 1 * * *", offsite=[dead])
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": h})
    return inv, bdir, tmp_path / "crontab"


def test_schedule_converges_the_block_ok_when_unchanged_and_removes_it(cron_host, cli_env):
    inv, bdir, crontab = cron_host
    crontab.write_text("MAILTO=ops@example.org\n5 4 * * * /usr/bin/true\n")
    r = cli("db.schedule", "-i", str(inv), "--crontab-file", str(crontab), "--check", env=cli_env)
    assert r.returncode == 0 and "would change the crontab" in r.stdout
    assert crontab.read_text() == "MAILTO=ops@example.org\n5 4 * * * /usr/bin/true\n"
    r = cli("db.schedule", "-i", str(inv), "--crontab-file", str(crontab), env=cli_env)
    assert r.returncode == 0 and r.stdout.startswith("changed: [dev]"), r.stdout + r.stderr
    text = crontab.read_text()
    assert text.startswith("MAILTO=ops@example.org\n5 4 * * * /usr/bin/true\n")
    block = [ln for ln in text.splitlines() if "db.scheduled-run" in ln]
    assert [ln.split()[:5] for ln in block] == [["15", "1", "*", "*", "*"], ["15", "2", "1", "*", "*"]]
    assert all(ln.split()[5].startswith("/") for ln in block)      # absolute interpreter, never PATH
    assert "--monthly" in block[1] and ">> " in block[0] and block[0].endswith("2>&1")
    r = cli("db.schedule", "-i", str(inv), "--crontab-file", str(crontab), env=cli_env)
    assert r.returncode == 0 and r.stdout.startswith("ok: [dev]") and crontab.read_text() == text
    # BIGSKIES_CRONTAB_FILE is the same setting
    r = cli("db.schedule", "-i", str(inv), env=dict(cli_env, BIGSKIES_CRONTAB_FILE=str(crontab)))
    assert r.returncode == 0 and r.stdout.startswith("ok: [dev]")
    # a new time in the inventory: changed, still one block
    raw = yaml.safe_load(inv.read_text())
    raw["hosts"]["dev"]["schedule"] = "30 3 * * *"
    inv.write_text(yaml.safe_dump(raw))
    r = cli("db.schedule", "-i", str(inv), "--crontab-file", str(crontab), env=cli_env)
    assert r.returncode == 0 and r.stdout.startswith("changed: [dev]")
    assert crontab.read_text().count("# BEGIN bigskies-ops dev") == 1 and "30 3 * * *" in crontab.read_text()
    r = cli("db.schedule", "-i", str(inv), "--crontab-file", str(crontab), "--remove", env=cli_env)
    assert r.returncode == 0 and r.stdout.startswith("changed: [dev]")
    assert crontab.read_text() == "MAILTO=ops@example.org\n5 4 * * * /usr/bin/true\n\n"
    r = cli("db.schedule", "-i", str(inv), "--crontab-file", str(crontab), "--remove", env=cli_env)
    assert r.returncode == 0 and r.stdout.startswith("ok: [dev]")


def test_a_bad_cron_expression_is_an_inventory_error(tmp_path, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": {"connection": "local", "schedule": "every night"}})
    crontab = tmp_path / "crontab"
    r = cli("db.schedule", "-i", str(inv), "--crontab-file", str(crontab), env=cli_env)
    assert r.returncode == 2 and "hosts.dev.schedule: expected a cron expression with 5 fields" in r.stderr
    assert not crontab.exists()


@pytest.mark.parametrize("expr, field", [("61 2 * * *", "minute field '61'"),
                                         ("0 2 * * 8", "day of week field '8'"),
                                         ("*/0 * * * *", "minute field '*/0'")])
@pytest.mark.parametrize("task", ["db.schedule", "db.schedule --check", "inventory.check"])
def test_a_cron_field_out_of_range_is_refused_by_schedule_and_check(tmp_path, cli_env, expr, field, task):
    """Values crontab(5) (and `crontab -n`) refuse are an inventory error, exit 2, naming the
    host, the field and its value; the crontab file is not written."""
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": {"connection": "local", "schedule": expr}})
    crontab = tmp_path / "crontab"
    args = task.split() + ["-i", str(inv)] + (["--crontab-file", str(crontab)] if task != "inventory.check" else [])
    r = cli(*args, env=cli_env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"hosts.dev.schedule: {expr!r}: {field}:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not crontab.exists()


def test_generated_lines_run_under_cron_backup_prune_offsite_then_monthly_restore_test(cron_host, cli_env, pg_sql,
                                                                                      dbname):
    inv, bdir, crontab = cron_host
    assert cli("db.schedule", "-i", str(inv), "--crontab-file", str(crontab), env=cli_env).returncode == 0
    daily, monthly = [ln for ln in crontab.read_text().splitlines() if "db.scheduled-run" in ln]
    log = inv.parent / "logs" / "bigskies-ops-dev.log"
    live = db_fingerprint(pg_sql, dbname)

    r = _run_as_cron(inv.parent, daily)
    assert r.returncode == 1, r.stdout + r.stderr           # the offsite target is down: reported as failure
    text = log.read_text()
    assert "changed: [dev] backup:" in text and "ok: [dev] prune: nothing to prune" in text
    assert "failed: [dev] offsite vault:" in text and "unreachable" in text and "retried on the next run" in text
    # the line's `>> log 2>&1` is what writes the log (docs/cli.md "JSON output", db.scheduled-run
    # --help): each line once, nothing left for cron to mail
    assert text.count("changed: [dev] backup:") == 1 and text.count("ok: [dev] prune:") == 1, text
    assert r.stdout == "" and r.stderr == ""
    [m] = [json.loads((bdir / n).read_text()) for n in os.listdir(bdir) if n.endswith(".manifest.json")]
    assert m["status"] == "DONE" and m["kind"] == "scheduled" and m["offsite"] == []   # the backup itself succeeded

    r = _run_as_cron(inv.parent, monthly)
    assert r.returncode == 0, log.read_text()
    assert "ok: [dev] verify latest --restore-test:" in log.read_text()
    [m] = [json.loads((bdir / n).read_text()) for n in os.listdir(bdir) if n.endswith(".manifest.json")]
    assert m["verifications"][-1]["ok"] is True and m["verifications"][-1]["restore_test"]["ok"] is True
    assert db_fingerprint(pg_sql, dbname) == live
    assert not [d for d in pg_sql("SELECT datname FROM pg_database", "postgres").split() if "_verify_" in d]


def test_a_line_that_relies_on_the_virtualenv_being_on_path_fails_under_cron(cron_host, cli_env):
    inv, bdir, crontab = cron_host
    assert cli("db.schedule", "-i", str(inv), "--crontab-file", str(crontab), env=cli_env).returncode == 0
    daily = [ln for ln in crontab.read_text().splitlines() if "db.scheduled-run" in ln][0]
    fields = daily.split(None, 5)
    relative = " ".join(fields[:5]) + " python -m bigskies_ops" + fields[5].split("-m bigskies_ops", 1)[1]
    assert _run_as_cron(inv.parent, relative).returncode != 0
    assert not bdir.exists() or not [n for n in os.listdir(bdir) if n.endswith(".sql.gz")]


def test_two_scheduled_runs_never_overlap(cron_host, cli_env):
    inv, bdir, crontab = cron_host
    assert cli("db.schedule", "-i", str(inv), "--crontab-file", str(crontab), env=cli_env).returncode == 0
    daily = [ln for ln in crontab.read_text().splitlines() if "db.scheduled-run" in ln][0]
    logdir = inv.parent / "logs"
    # a first run is still going (a live process holds the run lock)
    first = subprocess.Popen(["sleep", "120"])
    try:
        (logdir / ".lock-schedule-dev").write_text(json.dumps(
            {"pid": first.pid, "host": socket.gethostname(), "task": "db.scheduled-run", "since": "2026-11-29T02:00:00Z"}))
        r = _run_as_cron(inv.parent, daily)
        assert r.returncode == 1
        text = (logdir / "bigskies-ops-dev.log").read_text()
        assert "another scheduled run of dev is still running" in text and f"pid {first.pid}" in text
        assert "runs never overlap" in text
        assert not bdir.exists() or os.listdir(bdir) == []             # the second run did nothing
    finally:
        first.kill()
        first.wait()
    # the first run is gone (its lock is stale): the next run proceeds and says so
    r = _run_as_cron(inv.parent, daily)
    text = (logdir / "bigskies-ops-dev.log").read_text()
    assert "removed stale lock" in text and "changed: [dev] backup:" in text


def test_protected_hosts_need_consent_once_when_scheduling(tmp_path, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", {"prod": {"connection": "local", "protected": True}})
    crontab = tmp_path / "crontab"
    r = cli("db.schedule", "-i", str(inv), "--crontab-file", str(crontab), env=cli_env)
    assert r.returncode == 3 and "--force-protected --confirm bigskies" in r.stderr and not crontab.exists()
    r = cli("db.schedule", "-i", str(inv), "--crontab-file", str(crontab), "--force-protected", "--confirm",
            "bigskies", env=cli_env)
    assert r.returncode == 0
    assert all("--force-protected --confirm bigskies" in ln for ln in crontab.read_text().splitlines()
               if "db.scheduled-run" in ln)
