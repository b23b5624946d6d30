"""An archive whose size on disk no longer matches its manifest (truncated or changed after
it was written) is DAMAGED: listed as such, never ``latest``, never a good backup for
retention or db.health, and refused by name with both sizes. Real dumps, real CLI; the
expected statuses and reasons are literals."""
from __future__ import annotations

import json
import os
import re
import time

from tests.conftest import backed_up_once, cli, native_host, write_inventory
from tests.pgcheck import dir_hashes


def _two_backups(tmp_path, pg, dbname, cli_env):
    """(inventory, folder, older intact archive name, newer damaged archive name)."""
    inv, bdir, newer, man = backed_up_once(tmp_path, pg, dbname, cli_env)
    older = f"{dbname}_backup_20260101_020000.sql.gz"  # the same dump, an older run
    (bdir / older).write_bytes((bdir / newer).read_bytes())
    (bdir / (older + ".manifest.json")).write_text(json.dumps(dict(
        man, archive=older, kind="scheduled", started_at="2026-01-01T02:00:00Z", finished_at="2026-01-01T02:00:09Z")))
    data = (bdir / newer).read_bytes()
    (bdir / newer).write_bytes(data[:len(data) // 2])  # truncated after the run: its manifest says DONE
    return inv, bdir, older, newer, len(data)


def test_a_truncated_archive_is_damaged_never_latest_and_never_a_good_backup(tmp_path, pg, dbname, cli_env):
    inv, bdir, older, newer, size = _two_backups(tmp_path, pg, dbname, cli_env)
    before = dir_hashes(bdir)

    r = cli("db.list", "-i", str(inv), "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    status = {b["name"]: (b["status"], b["bytes"]) for b in json.loads(r.stdout)["backups"]}
    assert status == {newer: ("DAMAGED", size // 2), older: ("DONE", size)}
    r = cli("db.list", "-i", str(inv), env=cli_env)
    row = next(line for line in r.stdout.splitlines() if newer in line)
    assert " damaged " in row and " yes " not in row

    # a restore's latest passes over it, naming it, and plans the older intact one
    r = cli("db.restore", "latest", "-i", str(inv), "--check", env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"not taken as latest: {newer} is damaged: {size // 2} bytes on disk, {size} in its manifest" in r.stderr
    assert f"would restore {bdir / older} " in r.stdout and newer not in r.stdout
    # db.verify latest takes it (finding damage is its job): exit 1, both sizes
    r = cli("db.verify", "latest", "-i", str(inv), env=cli_env)
    assert r.returncode == 1 and f"size {size // 2} bytes differs from the manifest's {size}" in r.stdout + r.stderr

    # asked for by id, it fails the archive check with both sizes; nothing harmed
    bid = next(b["id"] for b in json.loads(cli("db.list", "-i", str(inv), "--json", env=cli_env).stdout)["backups"]
               if b["name"] == newer)
    r = cli("db.restore", bid, "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"size {size // 2} bytes differs from the manifest's {size} (truncated or changed)" in r.stderr

    # retention: left alone, and the intact one is the newest good backup
    r = cli("db.prune", "-i", str(inv), "--dry-run", "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    reasons = {d["name"]: (d["action"], d["reasons"]) for d in json.loads(r.stdout)["plan"]["decisions"]}
    assert reasons[newer] == ("keep", ["status DAMAGED: left alone"])
    assert reasons[older][0] == "keep" and "newest good backup" in reasons[older][1]

    # db.verify --all verifies it too and fails (exit 1) naming it; db.list then says FAILED
    r = cli("db.verify", "--all", "-i", str(inv), env=cli_env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"size {size // 2} bytes differs from the manifest's {size}" in r.stdout + r.stderr
    listed = {b["name"]: b for b in json.loads(cli("db.list", "-i", str(inv), "--json", env=cli_env).stdout)["backups"]}
    assert listed[newer]["verification"] == "failed" and listed[older]["verification"] == "passed"
    row = next(line for line in cli("db.list", "-i", str(inv), env=cli_env).stdout.splitlines() if newer in line)
    assert " damaged " in row and " FAILED " in row

    # --check of a restore of it: the refusal is the last word, not "would swap"
    r = cli("db.restore", bid, "-i", str(inv), "--check", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert re.search(r"ok \(check\): \[dev\] would change nothing: the real run would be refused "
                     r"\(\d+ reasons? above\)$", r.stdout.rstrip()), r.stdout

    # the archives are untouched so far (db.verify recorded its results in the manifests)
    after = dir_hashes(bdir)
    assert {k: after[k] for k in after if k.endswith(".gz")} == {k: before[k] for k in before if k.endswith(".gz")}

    # db.health: the newest run is damaged (named), the newest good one is the older
    r = cli("db.health", "-i", str(inv), "--json", env=cli_env)
    fresh = next(c for c in json.loads(r.stdout)["hosts"][0]["checks"] if c["check"] == "freshness")
    assert fresh["state"] == "critical"  # the intact copy is dated 2026-01-01: far beyond max_age_hours
    assert fresh["newest_good"] == older
    assert fresh["message"].endswith(f"; 1 newer archive(s) damaged, newest {newer} (size differs from its manifest)")
    # nothing intact left: "no good backup" still names the damaged ones
    (bdir / older).write_bytes(b"")
    r = cli("db.health", "-i", str(inv), "--json", env=cli_env)
    fresh = next(c for c in json.loads(r.stdout)["hosts"][0]["checks"] if c["check"] == "freshness")
    assert r.returncode == 2 and fresh["state"] == "critical" and fresh["message"].startswith("no good backup")
    assert fresh["message"].endswith(f"; 2 newer archive(s) damaged, newest {newer} (size differs from its manifest)")


def test_health_warns_when_the_newest_run_is_damaged(tmp_path, pg, dbname, cli_env):
    bdir = tmp_path / "backups"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    assert cli("db.backup", "-i", str(inv), env=cli_env).returncode == 0
    [first] = [p for p in os.listdir(bdir) if p.endswith(".sql.gz")]
    time.sleep(1.1)  # manifests' start times have whole seconds
    assert cli("db.backup", "-i", str(inv), env=cli_env).returncode == 0
    [newest] = [p for p in os.listdir(bdir) if p.endswith(".sql.gz") and p != first]
    with open(bdir / newest, "ab") as f:
        f.write(b"\0")  # changed after the run
    r = cli("db.health", "-i", str(inv), "--json", env=cli_env)
    fresh = next(c for c in json.loads(r.stdout)["hosts"][0]["checks"] if c["check"] == "freshness")
    assert fresh["state"] == "warning", fresh
    assert fresh["message"].startswith(f"the newest backup {newest} is damaged (")
    assert fresh["newest_good"] == first


def test_a_manifest_whose_size_is_not_a_count_is_damaged_and_refused_by_name(tmp_path, pg, dbname, cli_env):
    inv, bdir, older, newer, size = _two_backups(tmp_path, pg, dbname, cli_env)
    (bdir / newer).write_bytes((bdir / older).read_bytes())  # intact again
    mp = bdir / (newer + ".manifest.json")
    mp.write_text(json.dumps(dict(json.loads(mp.read_text()), bytes=str(size))))  # "6899158": not a count
    listed = {b["name"]: b for b in json.loads(cli("db.list", "-i", str(inv), "--json", env=cli_env).stdout)["backups"]}
    assert listed[newer]["status"] == "DAMAGED"
    r = cli("db.restore", "latest", "-i", str(inv), "--check", env=cli_env)
    assert r.returncode == 0 and f"{newer} is damaged: {size} bytes on disk, '{size}' in its manifest" in r.stderr
    r = cli("db.restore", listed[newer]["id"], "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 1 and f"its manifest's size is not a byte count ('{size}'): manifest damaged" in r.stderr


def test_a_dangling_symlink_in_an_archives_place_is_listed_missing_not_an_error(tmp_path, pg, dbname, cli_env):
    """helper-38: db.list failed (exit 1) when an archive's name was a symlink to nothing.
    With its manifest it is MISSING; a legacy-named one is not an archive and not listed."""
    inv, bdir, newer, _man = backed_up_once(tmp_path, pg, dbname, cli_env)
    kept = bdir.parent / "moved-away.sql.gz"
    os.replace(bdir / newer, kept)
    os.symlink(bdir.parent / "nowhere.sql.gz", bdir / newer)
    legacy = f"{dbname}_backup_20250101_000000.sql.gz"
    os.symlink(bdir.parent / "nowhere-either.sql.gz", bdir / legacy)
    before = dir_hashes(bdir)
    r = cli("db.list", "-i", str(inv), "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert {b["name"]: b["status"] for b in json.loads(r.stdout)["backups"]} == {newer: "MISSING"}
    r = cli("db.list", "-i", str(inv), env=cli_env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert dir_hashes(bdir) == before and kept.exists()
