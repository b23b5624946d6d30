"""``db.metrics``: the Prometheus text format (node_exporter textfile, ``--serve`` on
127.0.0.1, stdout, ``--json``) against real backups made through the CLI, parsed with
prometheus-client's own parser; the values are compared with the manifests as the test
reads them itself."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bigskies_ops.dev.sandbox import free_port
from tests.conftest import REPO, cli, native_host, write_inventory
from tests.integration.pg.test_servers import LockHolder
from tests.pgcheck import dir_hashes


def _parse(text: str) -> dict:
    """``{(metric name, frozenset of labels other than host/database): value}`` plus the
    ``host``/``database`` labels checked to be present on every bigskies_backup_ sample."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = dict(s.labels)
            if s.name.startswith("bigskies_backup_"):
                assert set(labels) >= {"host", "database"}, s
            labels.pop("database", None)
            out[(s.name, labels.pop("host", None), tuple(sorted(labels.items())))] = s.value
    return out


def _get(samples: dict, name: str, host: str = "dev", **labels):
    return samples.get((f"bigskies_backup_{name}", host, tuple(sorted(labels.items()))))


def _manifests(bdir: Path) -> dict[str, dict]:
    return {p.name[: -len(".manifest.json")]: json.loads(p.read_text()) for p in bdir.glob("*.manifest.json")}


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _backup(inv, env) -> dict:
    r = cli("db.backup", "-i", str(inv), "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def test_the_textfile_holds_the_manifests_facts_and_counts_failed_and_missing_runs(tmp_path, pg, dbname, cli_env):
    bdir, prom = tmp_path / "b", tmp_path / "textfile" / "bigskies.prom"
    prom.parent.mkdir()
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    first = _backup(inv, cli_env)
    time.sleep(1.1)  # a second archive name
    newest = _backup(inv, cli_env)
    assert cli("db.verify", "latest", "-i", str(inv), env=cli_env).returncode == 0
    # a run that FAILED for real: a table stays locked past --lock-wait-timeout
    time.sleep(1.1)
    holder = LockHolder(pg, dbname, "users")
    try:
        r = cli("db.backup", "-i", str(inv), "--lock-wait-timeout", "1", env=cli_env)
    finally:
        holder.release()
    assert r.returncode == 1, r.stdout + r.stderr
    mans = _manifests(bdir)
    failed = [n for n, m in mans.items() if m["status"] == "FAILED"]
    assert len(failed) == 1, mans.keys()
    # and a DONE backup whose archive someone deleted: MISSING
    os.unlink(bdir / first["name"])

    r = cli("db.metrics", "-i", str(inv), "--out", str(prom), env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("changed: [dev] metrics of 1 host(s) written to ") and str(prom) in r.stdout
    assert sorted(os.listdir(prom.parent)) == ["bigskies.prom"]  # the rename left no temporary file
    s = _parse(prom.read_text())
    nm = mans[newest["name"]]
    assert _get(s, "present") == 1 and _get(s, "dir_readable") == 1
    assert _get(s, "last_success_timestamp_seconds") == _ts(nm["started_at"])
    assert _get(s, "duration_seconds") == nm["duration_s"] and nm["duration_s"] > 0
    assert _get(s, "size_bytes") == (bdir / newest["name"]).stat().st_size == nm["bytes"]
    assert _get(s, "rows") == sum(t["rows"] for t in nm["tables"] if t["rows"] is not None) > 0
    [ver] = nm["verifications"]
    assert _get(s, "verified") == 1 and _get(s, "verified_timestamp_seconds") == _ts(ver["at"])
    assert 0 <= _get(s, "age_seconds") < 600
    assert _get(s, "max_age_seconds") == 26 * 3600
    assert _get(s, "failures") == 2
    assert _get(s, "archives", status="DONE") == 1 and _get(s, "archives", status="FAILED") == 1
    assert _get(s, "archives", status="MISSING") == 1
    assert _get(s, "last_failure_timestamp_seconds") == _ts(mans[failed[0]]["started_at"])
    # the last run FAILED: db.health's freshness rule says warning
    assert _get(s, "check_state", check="freshness") == 1 and _get(s, "state") >= 1
    nxt = _get(s, "next_run_timestamp_seconds")
    assert time.time() < nxt <= time.time() + 86400 and datetime.fromtimestamp(nxt).strftime("%H:%M") == "02:00"
    assert _get(s, "offsite_lag_seconds", target="x") is None  # no offsite target: no sample
    text = prom.read_text()
    assert "# HELP bigskies_backup_size_bytes " in text and "# TYPE bigskies_backup_size_bytes gauge" in text
    assert cli_env["BIGSKIES_TEST_PGPASSWORD"] not in text
    # --json: the same facts
    r = cli("db.metrics", "-i", str(inv), "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    [f] = json.loads(r.stdout)["hosts"]
    assert f["host"] == "dev" and f["database"] == dbname and f["present"] is True
    assert f["newest_good"]["name"] == newest["name"] and f["bytes"] == nm["bytes"]
    assert f["counts"] == {"DONE": 1, "FAILED": 1, "MISSING": 1, "DAMAGED": 0, "STARTED": 0, "LEGACY": 0}
    assert f["failures"] == 2
    assert f["last_run"]["status"] == "FAILED" and f["verification"]["ok"] is True
    # no --out: the same text on stdout
    r = cli("db.metrics", "-i", str(inv), env=cli_env)
    assert r.returncode == 0 and _get(_parse(r.stdout), "size_bytes") == nm["bytes"]
    # no database login is needed: with the server unreachable the facts are the same, and
    # the file is replaced by a rename (a new inode), so a reader holding the old one reads it whole
    write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir, postgres={"port": free_port()})})
    old_inode = prom.stat().st_ino
    with open(prom, "rb") as held:
        r = cli("db.metrics", "-i", str(inv), "--out", str(prom), env=cli_env)
        assert r.returncode == 0, r.stderr
        assert _parse(held.read().decode()) == s
    assert prom.stat().st_ino != old_inode and sorted(os.listdir(prom.parent)) == ["bigskies.prom"]
    s2 = _parse(prom.read_text())
    for name in ("present", "last_success_timestamp_seconds", "size_bytes", "rows", "verified", "failures"):
        assert _get(s2, name) == _get(s, name), name


def test_a_host_with_no_backups_yet_says_present_0_without_a_last_success(tmp_path, pg, dbname, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, tmp_path / "never-made")},
                          defaults={"schedule": "30 4 * * *"})
    prom = tmp_path / "m.prom"
    r = cli("db.metrics", "-i", str(inv), "--out", str(prom), env=cli_env)
    assert r.returncode == 0, r.stderr
    s = _parse(prom.read_text())
    assert _get(s, "present") == 0 and _get(s, "dir_readable") == 1
    for absent in ("last_success_timestamp_seconds", "age_seconds", "size_bytes", "rows", "duration_seconds",
                   "verified_timestamp_seconds", "last_failure_timestamp_seconds"):
        assert _get(s, absent) is None, absent
    assert _get(s, "verified") == 0 and _get(s, "failures") == 0
    assert _get(s, "check_state", check="freshness") == 2 and _get(s, "state") == 2  # critical, as db.health says
    nxt = _get(s, "next_run_timestamp_seconds")
    assert datetime.fromtimestamp(nxt).strftime("%H:%M") == "04:30"
    assert not (tmp_path / "never-made").exists()  # reading made no folder


def test_a_metrics_path_in_a_folder_that_does_not_exist_is_refused_and_writes_nothing(tmp_path, pg, dbname, cli_env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    _backup(inv, cli_env)
    before = dir_hashes(tmp_path)
    for extra in ([], ["--json"]):
        r = cli("db.metrics", "-i", str(inv), "--out", str(tmp_path / "nope" / "m.prom"), *extra, env=cli_env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"error: --out {tmp_path / 'nope' / 'm.prom'}: the folder {tmp_path / 'nope'} does not exist" \
            in r.stderr and "nothing was written" in r.stderr and "Traceback" not in r.stderr
        if extra:
            doc = json.loads(r.stdout)
            assert doc["result"] == "failed" and doc["task"] == "db.metrics" and doc["error"]["exit_code"] == 2
    assert dir_hashes(tmp_path) == before and not (tmp_path / "nope").exists()
    r = cli("db.metrics", "-i", str(inv), "--serve", "70000", env=cli_env)
    assert r.returncode == 2 and "--serve: expected a TCP port from 1 to 65535, got '70000'" in r.stderr
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = cli("db.metrics", "-i", str(inv), "--serve", str(port), env=cli_env)
    assert r.returncode == 2 and f"error: --serve {port}: cannot listen on 127.0.0.1:{port}: " in r.stderr, r.stderr
    assert "stopped serving" not in r.stderr  # it never served
    # a name node_exporter would never read: refused as the inventory's metrics.textfile is
    r = cli("db.metrics", "-i", str(inv), "--out", str(tmp_path / "m.txt"), env=cli_env)
    assert r.returncode == 2 and f"error: --out {tmp_path / 'm.txt'}: node_exporter's textfile collector reads " \
        "only *.prom files" in r.stderr, r.stderr
    r = cli("db.metrics", "-i", str(inv), "--serve", "9188", "--out", str(tmp_path / "m.prom"), env=cli_env)
    assert r.returncode == 2 and "cannot be combined with --out or --json" in r.stderr
    assert dir_hashes(tmp_path) == before


def _scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200
        return _parse(resp.read().decode())


def test_serve_answers_every_scrape_afresh_on_127_0_0_1_and_stops_on_ctrl_c(tmp_path, pg, dbname, cli_env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    port = free_port()
    # a background shell ignores SIGINT: let the child take Ctrl-C as a terminal would
    p = subprocess.Popen([sys.executable, "-m", "bigskies_ops", "db.metrics", "-i", str(inv), "--serve", str(port)],
                         env=cli_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = p.stderr.readline()
        assert line.strip() == (f"serving the backup metrics of dev on http://127.0.0.1:{port}/metrics "
                                f"(Ctrl-C stops)"), line
        url = f"http://127.0.0.1:{port}/metrics"
        s = _scrape(url)
        assert _get(s, "present") == 0 and _get(s, "archives", status="DONE") == 0
        b = _backup(inv, cli_env)
        s = _scrape(url)  # no restart: the scrape read the new manifest
        assert _get(s, "present") == 1 and _get(s, "archives", status="DONE") == 1
        assert _get(s, "size_bytes") == (bdir / b["name"]).stat().st_size
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert f"stopped serving on 127.0.0.1:{port}" in err and "Traceback" not in err
    import socket
    with socket.socket() as sk:  # nothing listens any more
        assert sk.connect_ex(("127.0.0.1", port)) != 0


def test_the_scheduled_run_refreshes_the_textfile_and_a_failed_write_does_not_fail_it(tmp_path, pg, dbname, cli_env):
    bdir, tdir = tmp_path / "b", tmp_path / "textfile"
    tdir.mkdir()
    prom = tdir / "bigskies.prom"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)},
                          defaults={"metrics": {"textfile": "textfile/bigskies.prom"}})  # relative: the inventory's folder
    log = tmp_path / "logs" / "run.log"
    r = cli("db.scheduled-run", "-i", str(inv), "--log", str(log), env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ok: [dev] metrics textfile {prom} refreshed" in r.stdout
    s = _parse(prom.read_text())
    [name] = [n for n in os.listdir(bdir) if n.endswith(".sql.gz")]
    assert _get(s, "present") == 1 and _get(s, "size_bytes") == (bdir / name).stat().st_size
    assert sorted(os.listdir(tdir)) == ["bigskies.prom"]
    # the textfile's folder is gone: the run still succeeds, one warning line names the cause
    os.unlink(prom)
    tdir.rmdir()
    time.sleep(1.1)
    r = cli("db.scheduled-run", "-i", str(inv), "--log", str(log), env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "metrics" in ln]
    assert len(warn) == 1 and warn[0].startswith("warning: metrics textfile not refreshed: ") \
        and f"dev: metrics.textfile {prom}: the folder {tdir} does not exist" in warn[0], r.stderr
    assert not tdir.exists()
    # inventory.check names the missing folder as a warning, and refuses a name node_exporter would skip
    r = cli("inventory.check", "-i", str(inv), env=cli_env)
    assert "metrics.textfile" in r.stdout + r.stderr
    write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)},
                    defaults={"metrics": {"textfile": "textfile/bigskies.txt"}})
    r = cli("inventory.check", "-i", str(inv), env=cli_env)
    assert r.returncode == 2 and "hosts.dev.metrics.textfile: node_exporter's textfile collector reads only *.prom" \
        in r.stderr, r.stderr


def test_an_ssh_hosts_manifests_are_read_over_ssh_and_an_unreachable_one_is_dir_readable_0(tmp_path, pg, dbname,
                                                                                          cli_env, ssh_server):
    from tests.remote_helpers import ssh_block
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    b = _backup(inv, cli_env)
    # the same folder seen as an SSH host's (sshd on loopback), its server unreachable: no login needed
    ssh_dev = {"connection": "ssh", "project_dir": str(tmp_path), "ssh": ssh_block(ssh_server),
               "postgres": {"host": "127.0.0.1", "port": free_port(), "database": dbname},
               "backup": {"dir": "b"}}
    down = {"connection": "ssh", "project_dir": "/srv", "ssh": ssh_block(ssh_server, port=free_port()),
            "postgres": {"database": dbname}}
    inv2 = write_inventory(tmp_path / "inv2.yaml", {"dev": ssh_dev, "down": down})
    prom = tmp_path / "fleet.prom"
    r = cli("db.metrics", "-i", str(inv2), "--host", "all", "--out", str(prom), env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr  # the file was written; the unreadable host is in it
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "cannot read the backups of down" in warn[0] and "dir_readable 0" in warn[0], r.stderr
    s = _parse(prom.read_text())
    assert _get(s, "present") == 1 and _get(s, "size_bytes") == b["bytes"] == (bdir / b["name"]).stat().st_size
    assert _get(s, "dir_readable", "down") == 0 and _get(s, "state", "down") == 3
    assert _get(s, "present", "down") is None and _get(s, "next_run_timestamp_seconds", "down") is not None
