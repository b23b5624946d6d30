"""``db.health`` (monitoring exit codes 0/1/2/3) and ``db.backup``'s size-change alert,
posted to a real webhook (a tiny HTTP server on 127.0.0.1) through apprise (the
``alerts.webhook_env`` URL is an apprise JSON target: bigskies_ops/jobs/notify.py)."""
from __future__ import annotations

import json
import os
import time

import pytest

from tests.conftest import cli, native_host, write_inventory
from tests.infra.receivers import http_receiver


@pytest.fixture
def webhook():
    """An HTTP server on 127.0.0.1 (tests/infra/receivers.py) recording every POSTed JSON body."""
    with http_receiver(status=204) as (port, rec):
        yield f"http://127.0.0.1:{port}/hook", rec


def _fake_earlier(bdir, db, size, days=("2026-01-01", "2026-01-02", "2026-01-03")):
    """Earlier DONE backups (manifests + files of ``size`` bytes) for the size median."""
    bdir.mkdir(parents=True, exist_ok=True)
    for d in days:
        name = f"{db}_backup_{d.replace('-', '')}_020000.sql.gz"
        (bdir / name).write_bytes(b"\0" * size)
        (bdir / (name + ".manifest.json")).write_text(json.dumps({
            "schema_version": 1, "status": "DONE", "kind": "scheduled", "origin_host": "dev", "database": db,
            "format": "plain", "archive": name, "started_at": f"{d}T02:00:00Z", "sha256": "0" * 64,
            "bytes": size, "verifications": [], "offsite": []}))


def test_backup_warns_and_posts_to_the_webhook_when_the_size_jumps(tmp_path, pg, dbname, cli_env, webhook):
    url, rec = webhook
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(
        pg, dbname, bdir, alerts={"size_change_pct": 50, "webhook_env": "TEST_BIGSKIES_WEBHOOK"})})
    _fake_earlier(bdir, dbname, 1_000_000)           # the usual size: 1 MB; the real dump is ~7 MB
    env = dict(cli_env, TEST_BIGSKIES_WEBHOOK=url)
    r = cli("db.backup", "-i", str(inv), "--json", env=env)
    assert r.returncode == 0, r.stderr                # a warning, never a failure
    out = json.loads(r.stdout)
    assert len(out["warnings"]) == 1 and "backup size changed +" in out["warnings"][0], r.stderr
    assert "warning: backup size changed" in r.stderr and "threshold 50%" in r.stderr
    [p] = rec.bodies()
    # alerts.webhook_env is an apprise JSON target now (jobs/notify.py): the facts are fields of its payload
    assert (p["event"], p["check"], p["step"]) == ("health_degraded", "size", "size")
    assert p["host"] == "dev" and p["database"] == dbname and p["task"] == "db.backup"
    assert "backup size changed" in p["message"] and p["archive"] == out["name"]
    assert p["median_bytes"] == 1_000_000 and p["bytes"] == out["bytes"] and p["change_pct"] > 50
    assert url not in r.stdout + r.stderr              # the URL is a secret: never printed
    # the webhook variable unset: still a good backup, and we say the alert could not be posted
    env.pop("TEST_BIGSKIES_WEBHOOK")
    _fake_earlier(bdir, dbname, 1_000_000, days=("2026-01-04", "2026-01-05", "2026-01-06"))
    r = cli("db.backup", "-i", str(inv), env=env)
    assert r.returncode == 0 and "TEST_BIGSKIES_WEBHOOK, which is not set" in r.stderr
    assert len(rec.bodies()) == 1


def test_backup_within_the_threshold_says_nothing(tmp_path, pg, dbname, cli_env, webhook):
    url, rec = webhook
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(
        pg, dbname, bdir, alerts={"size_change_pct": 50, "webhook_env": "TEST_BIGSKIES_WEBHOOK"})})
    env = dict(cli_env, TEST_BIGSKIES_WEBHOOK=url)
    assert cli("db.backup", "-i", str(inv), env=env).returncode == 0
    [first] = [n for n in os.listdir(bdir) if n.endswith(".sql.gz")]
    _fake_earlier(bdir, dbname, (bdir / first).stat().st_size)
    r = cli("db.backup", "-i", str(inv), "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["warnings"] == [] and rec.bodies() == []


def _health(inv, env, host=None):
    args = ["db.health", "-i", str(inv), "--json"] + (["--host", host] if host else [])
    r = cli(*args, env=env)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else None, r


def test_health_goes_critical_warning_ok_and_critical_again_with_the_right_exit_codes(tmp_path, pg, dbname, cli_env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    code, h, _ = _health(inv, cli_env)
    assert code == 2 and h["state"] == "critical"
    assert h["hosts"][0]["checks"][0]["message"].startswith("no good backup")
    assert cli("db.backup", "-i", str(inv), env=cli_env).returncode == 0
    code, h, _ = _health(inv, cli_env)
    assert code == 1 and h["state"] == "warning"
    states = {c["check"]: c["state"] for c in h["hosts"][0]["checks"]}
    assert states == {"freshness": "ok", "size": "ok", "verification": "warning", "clock": "ok"}
    assert cli("db.verify", "latest", "-i", str(inv), env=cli_env).returncode == 0
    code, h, r = _health(inv, cli_env)
    assert code == 0 and h["state"] == "ok", r.stdout
    fr = h["hosts"][0]["checks"][0]
    assert fr["newest_good"].startswith(dbname) and 0 <= fr["age_s"] < 600
    human = cli("db.health", "-i", str(inv), env=cli_env)
    assert human.returncode == 0 and human.stdout.startswith("OK: [dev]")
    # the newest good backup gets older than alerts.max_age_hours: critical
    write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir, alerts={"max_age_hours": 0.0003})})
    time.sleep(1.2)
    code, h, _ = _health(inv, cli_env)
    assert code == 2 and "h old (max 0.0003 h)" in h["hosts"][0]["checks"][0]["message"]


def test_health_of_all_hosts_reports_unknown_for_an_unreadable_host_and_critical_wins(tmp_path, pg, dbname, cli_env):
    from bigskies_ops.dev.sandbox import free_port
    bdir = tmp_path / "b"
    gone = {"connection": "ssh", "project_dir": "/srv/x",
            "ssh": {"host": "127.0.0.1", "port": free_port(), "user": "nobody", "connect_timeout": 3,
                    "known_hosts_file": str(tmp_path / "known_hosts")}}
    (tmp_path / "known_hosts").write_text("")
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir), "gone": gone})
    assert cli("db.backup", "-i", str(inv), "--host", "dev", env=cli_env).returncode == 0
    assert cli("db.verify", "latest", "--host", "dev", "-i", str(inv), env=cli_env).returncode == 0
    code, h, _ = _health(inv, cli_env, "gone")
    assert code == 3 and h["hosts"][0]["state"] == "unknown"
    code, h, _ = _health(inv, cli_env, "all")
    assert code == 3 and [x["state"] for x in h["hosts"]] == ["ok", "unknown"]
    write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, tmp_path / "empty"), "gone": gone})
    code, h, _ = _health(inv, cli_env, "all")
    assert code == 2 and [x["state"] for x in h["hosts"]] == ["critical", "unknown"]
    r = cli("db.health", "-i", str(tmp_path / "missing.yaml"), env=cli_env)
    assert r.returncode == 3 and "unknown:" in r.stderr
