"""Issue 18's health items, through the real CLI on the suite's PostgreSQL:

* a protected host's scheduled run that skips its prune exits 4, records the skip in the
  new backup's manifest, and ``db.health`` warns with the command that prunes by hand;
* the clock check is ``unknown`` (not ``ok``) when the server cannot be reached;
* the size alert compares like with like (a ``--schema-only`` or
  ``--exclude-table-data`` backup against backups made the same way);
* the ``Compressed:`` line names the compression level once.
"""
from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import cli, native_host, write_inventory


def _health(inv, env, host=None):
    r = cli("db.health", "-i", str(inv), *(["--host", host] if host else []), "--json", env=env)
    return r.returncode, json.loads(r.stdout), r


def _archives(bdir: Path) -> list[str]:
    return sorted(p.name for p in bdir.iterdir() if p.name.endswith(".sql.gz"))


def _manifest(bdir: Path, name: str) -> dict:
    return json.loads((bdir / (name + ".manifest.json")).read_text())


def test_protected_scheduled_run_skipping_its_prune_exits_4_and_health_warns(tmp_path, pg, dbname, cli_env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"prod": native_host(
        pg, dbname, bdir, protected=True, retention={"daily": 1, "weekly": 0, "monthly": 0})})
    log = tmp_path / "logs" / "run.log"
    log.parent.mkdir()
    run = ("db.scheduled-run", "-i", str(inv), "--host", "prod", "--log", str(log))
    r = cli(*run, env=cli_env)
    assert r.returncode == 4, r.stdout + r.stderr
    assert "skipped: [prod] prune: prod is protected" in r.stdout
    assert f"db.prune --host prod --force-protected --confirm {dbname}" in r.stdout
    assert "warning: scheduled run: the backup was made, but prune was skipped for safety (exit 4" in r.stderr
    [first] = _archives(bdir)
    m = _manifest(bdir, first)
    assert m["status"] == "DONE" and [s["step"] for s in m["skipped_steps"]] == ["prune"]
    # a second night: retention (daily 1) would prune the first backup, but nothing is deleted
    r = cli(*run, env=cli_env)
    assert r.returncode == 4, r.stdout + r.stderr
    archives = _archives(bdir)
    assert len(archives) == 2 and first in archives
    code, h, _ = _health(inv, cli_env)
    checks = {c["check"]: c for c in h["hosts"][0]["checks"]}
    assert checks["schedule"]["state"] == "warning", checks
    assert "skipped prune for safety (exit 4)" in checks["schedule"]["message"]
    assert f"db.prune --host prod --force-protected --confirm {dbname}" in checks["schedule"]["message"]
    assert code >= 1 and h["state"] != "ok"
    human = cli("db.health", "-i", str(inv), env=cli_env)
    assert "   warning  schedule: the scheduled run of " in human.stdout
    # with consent (as db.schedule --force-protected installs it): pruned, exit 0, health says nothing
    r = cli(*run, "--force-protected", "--confirm", dbname, env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "changed: [prod] prune: pruned" in r.stdout
    newest = _archives(bdir)[-1]
    assert "skipped_steps" not in _manifest(bdir, newest) and first not in _archives(bdir)
    _, h, _ = _health(inv, cli_env)
    assert "schedule" not in {c["check"] for c in h["hosts"][0]["checks"]}


def test_clock_is_unknown_when_the_server_cannot_be_reached(tmp_path, pg, dbname, cli_env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    assert cli("db.backup", "-i", str(inv), env=cli_env).returncode == 0
    assert cli("db.verify", "latest", "-i", str(inv), env=cli_env).returncode == 0
    code, h, _ = _health(inv, cli_env)
    assert code == 0 and {c["check"]: c["state"] for c in h["hosts"][0]["checks"]}["clock"] == "ok"
    write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir, postgres={"port": 1})})
    code, h, r = _health(inv, cli_env)
    clock = {c["check"]: c for c in h["hosts"][0]["checks"]}["clock"]
    assert clock["state"] == "unknown" and "server not reachable" in clock["message"], clock
    assert code == 3 and h["state"] == "unknown"
    human = cli("db.health", "-i", str(inv), env=cli_env)
    assert human.returncode == 3 and "   unknown  clock: server not reachable" in human.stdout
    assert "ok       clock" not in human.stdout


def _fake_earlier(bdir: Path, db: str, size: int, days, **manifest) -> None:
    """Earlier DONE backups (manifest + file of ``size`` bytes) for the size median."""
    bdir.mkdir(parents=True, exist_ok=True)
    for d in days:
        name = f"{db}_backup_{d.replace('-', '')}_020000.sql.gz"
        (bdir / name).write_bytes(b"\0" * size)
        (bdir / (name + ".manifest.json")).write_text(json.dumps({
            "schema_version": 1, "status": "DONE", "kind": "scheduled", "origin_host": "dev", "database": db,
            "format": "plain", "archive": name, "started_at": f"{d}T02:00:00Z", "sha256": "0" * 64,
            "bytes": size, "verifications": [], "offsite": [], **manifest}))


def test_size_alert_compares_like_with_like_and_the_compressed_line_names_the_level_once(tmp_path, pg, dbname,
                                                                                         cli_env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir,
                                                                     alerts={"size_change_pct": 50})})
    r = cli("db.backup", "-i", str(inv), "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    full = json.loads(r.stdout)["bytes"]
    # three earlier FULL backups of the same size: the usual history of a nightly
    _fake_earlier(bdir, dbname, full, ("2026-01-01", "2026-01-02", "2026-01-03"))
    excl = ("--exclude-table-data", "public.observations", "--exclude-table-data", "public.user*")
    for extra in (("--schema-only",), excl):
        r = cli("db.backup", "-i", str(inv), "--json", *extra, env=cli_env)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["bytes"] < full / 2                                  # far smaller than a full backup ...
        assert doc["warnings"] == [] and "size changed" not in r.stderr, (extra, r.stderr)  # ... and no alert
    # like with like: earlier backups made the same way (same excluded tables), much smaller: alert
    _fake_earlier(bdir, dbname, 1000, ("2026-01-04", "2026-01-05", "2026-01-06"),
                  excluded_table_data=["public.user*", "public.observations"])   # (same set, another order)
    r = cli("db.backup", "-i", str(inv), "--json", *excl, env=cli_env)
    assert r.returncode == 0, r.stderr
    [w] = json.loads(r.stdout)["warnings"]
    assert "backup size changed +" in w and "median 1000 B" in w.replace("1,000", "1000"), w
    # a full backup is still judged against the full ones only: within the threshold
    r = cli("db.backup", "-i", str(inv), env=cli_env)
    assert r.returncode == 0 and "size changed" not in r.stderr, r.stderr
    [line] = [ln for ln in r.stdout.splitlines() if "Compressed:" in ln]
    assert line.count("level") == 1, line
