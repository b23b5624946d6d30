"""``db.verify`` on real dumps: good ones pass and are recorded; truncated ones fail even
when gzip (or a TOC listing) still accepts them; the restore test's throwaway database
never survives."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from tests.conftest import cli, native_host, write_inventory
from tests.pgcheck import db_fingerprint, dir_hashes


def _manifest(path):
    with open(str(path) + ".manifest.json") as f:
        return json.load(f)


def _archives(bdir):
    return {k: v for k, v in dir_hashes(bdir).items() if not k.endswith(".manifest.json") and "/." not in k
            and not k.startswith(".")}


def _throwaway_dbs(pg_sql, dbname):
    return [r for r in pg_sql("SELECT datname FROM pg_database", "postgres").split() if "_verify_" in r]


@pytest.fixture
def setup(tmp_path, pg, dbname, cli_env):
    bdir = tmp_path / "backups"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    return inv, bdir


def _backup(inv, bdir, env, fmt="plain"):
    before = set(os.listdir(bdir)) if bdir.exists() else set()
    r = cli("db.backup", "-i", str(inv), "--format", fmt, env=env)
    assert r.returncode == 0, r.stderr
    [name] = [n for n in set(os.listdir(bdir)) - before if not n.endswith(".manifest.json")]
    return bdir / name


def test_verify_latest_passes_records_the_result_and_db_list_shows_it(setup, cli_env, pg_sql, dbname):
    inv, bdir = setup
    plain = _backup(inv, bdir, cli_env, "plain")
    custom = _backup(inv, bdir, cli_env, "custom")
    r = cli("db.verify", "--all", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "completion trailer" in r.stdout and "pg_restore full read" in r.stdout
    for p in (plain, custom):
        v = _manifest(p)["verifications"]
        assert len(v) == 1 and v[0]["ok"] is True and v[0]["error"] is None
    lst = json.loads(cli("db.list", "-i", str(inv), "--json", env=cli_env).stdout)["backups"]
    assert [b["verified"] for b in lst] == [True, True]
    assert "yes" in cli("db.list", "-i", str(inv), env=cli_env).stdout


def _truncated_plain(src, dst):
    sql = gzip.decompress(src.read_bytes())
    cut = sql[: int(len(sql) * 0.7)]
    dst.write_bytes(gzip.compress(cut))      # a perfectly valid gzip file of a dump cut short


def _truncated_custom(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * 0.8)])


@pytest.mark.parametrize("fmt,cutter,message", [
    ("plain", _truncated_plain, "truncated dump (no '-- PostgreSQL database dump complete' trailer"),
    ("custom", _truncated_custom, "pg_restore cannot read the archive"),
])
def test_truncated_dumps_fail_verification_even_when_the_container_format_accepts_them(
        setup, cli_env, pg_sql, dbname, fmt, cutter, message):
    inv, bdir = setup
    good = _backup(inv, bdir, cli_env, fmt)
    ext = ".sql.gz" if fmt == "plain" else ".dump"
    # 1. a seed-era copy (no manifest) that was cut short
    legacy = bdir / f"{dbname}_backup_20250101_020000{ext}"
    cutter(good, legacy)
    if fmt == "plain":
        gzip.decompress(legacy.read_bytes())  # gzip itself is happy with it
    # 2. a backup whose manifest agrees with the cut file's sha256 (so only the deep check can tell)
    forged = bdir / f"{dbname}_backup_20250102_020000{ext}"
    cutter(good, forged)
    import hashlib
    m = dict(_manifest(good), archive=forged.name, sha256=hashlib.sha256(forged.read_bytes()).hexdigest(),
             bytes=forged.stat().st_size, started_at="2025-01-02T02:00:00Z", verifications=[])
    (bdir / (forged.name + ".manifest.json")).write_text(json.dumps(m))
    live = db_fingerprint(pg_sql, dbname)
    archives = _archives(bdir)
    for target in (legacy, forged):
        r = cli("db.verify", target.name, "-i", str(inv), env=cli_env)
        assert r.returncode == 1, r.stdout + r.stderr
        assert message in r.stdout, r.stdout
        assert "failed verification" in r.stderr
    assert _archives(bdir) == archives
    assert db_fingerprint(pg_sql, dbname) == live
    v = _manifest(forged)["verifications"]
    assert [x["ok"] for x in v] == [False] and message in v[0]["error"]
    assert not (bdir / (legacy.name + ".manifest.json")).exists()   # nothing recorded for a legacy file
    # --adopt never adopts a broken file
    r = cli("db.verify", legacy.name, "--adopt", "-i", str(inv), env=cli_env)
    assert r.returncode == 1 and not (bdir / (legacy.name + ".manifest.json")).exists()


def test_restore_test_compares_row_counts_and_always_drops_the_throwaway_database(setup, cli_env, pg_sql, dbname):
    inv, bdir = setup
    good = _backup(inv, bdir, cli_env, "custom")
    live = db_fingerprint(pg_sql, dbname)
    r = cli("db.verify", "latest", "--restore-test", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "restore test" in r.stdout and "tables match the manifest" in r.stdout
    v = _manifest(good)["verifications"][-1]
    assert v["ok"] is True and v["restore_test"]["ok"] is True and v["restore_test"]["tables_checked"] >= 5
    assert _throwaway_dbs(pg_sql, dbname) == []
    # a manifest whose row count disagrees with the archive: the restore test must fail
    m = _manifest(good)
    for t in m["tables"]:
        if t["name"] == "users":
            t["rows"] += 1
    (bdir / (good.name + ".manifest.json")).write_text(json.dumps(m))
    r = cli("db.verify", "latest", "--restore-test", "-i", str(inv), "--json", env=cli_env)
    assert r.returncode == 1
    res = json.loads(r.stdout)["results"][0]
    assert res["ok"] is False and "public.users has" in res["error"] and "manifest says" in res["error"]
    assert _throwaway_dbs(pg_sql, dbname) == []
    assert db_fingerprint(pg_sql, dbname) == live


def test_adopt_writes_a_manifest_for_a_good_seed_era_file(setup, cli_env, pg_sql, dbname):
    inv, bdir = setup
    good = _backup(inv, bdir, cli_env, "plain")
    seed = bdir / f"{dbname}_backup_20240315_031500.sql.gz"
    seed.write_bytes(good.read_bytes())
    r = cli("db.verify", seed.name, "--adopt", "--restore-test", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr + r.stdout
    m = _manifest(seed)
    assert m["status"] == "DONE" and m["adopted"] is True and m["kind"] == "scheduled"
    assert m["started_at"] == "2024-03-15T03:15:00Z" and m["timezone_known"] is False
    assert m["origin_host"] == "dev" and m["database"] == dbname and m["format"] == "plain"
    users = [t for t in m["tables"] if t["name"] == "users"][0]
    assert users["rows"] == int(db_fingerprint(pg_sql, dbname)["tables"]["public.users"].split()[0])
    assert m["verifications"][0]["ok"] is True
    lst = json.loads(cli("db.list", "-i", str(inv), "--json", env=cli_env).stdout)["backups"]
    assert [(b["name"], b["legacy"], b["verified"]) for b in lst][-1] == (seed.name, False, True)
    assert _throwaway_dbs(pg_sql, dbname) == []


def test_sigterm_during_the_restore_test_still_drops_the_throwaway_database(setup, cli_env, pg_sql, dbname):
    import signal
    import subprocess
    import sys
    from tests.conftest import REPO, signal_when
    inv, bdir = setup
    pg_sql("CREATE TABLE bulk AS SELECT g, md5(g::text) AS h FROM generate_series(1, 400000) g", dbname)
    _backup(inv, bdir, cli_env, "custom")
    p = subprocess.Popen([sys.executable, "-m", "bigskies_ops", "db.verify", "latest", "--restore-test",
                          "-i", str(inv)], env=cli_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    out, err = signal_when(p, lambda: _throwaway_dbs(pg_sql, dbname), signal.SIGTERM, "the restore test")
    assert p.returncode == 143, err
    assert _throwaway_dbs(pg_sql, dbname) == []


def test_verify_with_restore_test_on_an_ssh_host_records_the_result_there(setup, tmp_path, pg, pg_sql, dbname,
                                                                         cli_env, ssh_server):
    """An SSH (native) host: its archive is checked here, restore-tested by its own tools over
    SSH, and the result is written into the manifest on that host."""
    from tests.remote_helpers import ssh_block
    inv, bdir = setup
    good = _backup(inv, bdir, cli_env, "plain")
    box_dir = tmp_path / "box"
    (box_dir / "backups").mkdir(parents=True)
    m = dict(_manifest(good), origin_host="box")
    (box_dir / "backups" / good.name).write_bytes(good.read_bytes())
    (box_dir / "backups" / (good.name + ".manifest.json")).write_text(json.dumps(m))
    box = native_host(pg, dbname, "backups", connection="ssh", project_dir=str(box_dir), ssh=ssh_block(ssh_server))
    inv2 = write_inventory(tmp_path / "inv2.yaml", {"box": box})
    r = cli("db.verify", "latest", "--restore-test", "-i", str(inv2), env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    v = _manifest(box_dir / "backups" / good.name)["verifications"]
    assert [x["ok"] for x in v] == [True] and v[0]["restore_test"]["ok"] is True
    assert _throwaway_dbs(pg_sql, dbname) == []


def test_verify_takes_a_pulled_backup_by_the_name_db_list_shows(setup, cli_env):
    """db.list shows a pulled backup as ``prod/NAME``; db.verify accepts that name (it said
    "no such backup"; break-it trial)."""
    inv, bdir = setup
    src = _backup(inv, bdir, cli_env, "plain")
    pulled = bdir / "prod"
    pulled.mkdir()
    for p in (src, Path(str(src) + ".manifest.json")):
        p.rename(pulled / p.name)
    r = cli("db.list", "--all", "-i", str(inv), env=cli_env)
    assert f"prod/{src.name}" in r.stdout, r.stdout
    r = cli("db.verify", f"prod/{src.name}", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert _manifest(pulled / src.name)["verifications"][-1]["ok"] is True


def test_verify_on_an_ssh_host_checks_where_the_files_are_and_copies_nothing_here(setup, tmp_path, pg, cli_env,
                                                                                dbname, ssh_server):
    """sha256, the whole gzip stream and trailer (plain), pg_restore's full read (custom) run
    on the SSH host; nothing is staged on this machine (TMPDIR stays empty, no copy note);
    a truncated archive there fails with the host named; the results are recorded there."""
    from tests.remote_helpers import ssh_block
    inv, bdir = setup
    plain = _backup(inv, bdir, cli_env, "plain")
    custom = _backup(inv, bdir, cli_env, "custom")
    box_dir = tmp_path / "box"
    (box_dir / "backups").mkdir(parents=True)
    for p in (plain, custom):
        (box_dir / "backups" / p.name).write_bytes(p.read_bytes())
        (box_dir / "backups" / (p.name + ".manifest.json")).write_text(json.dumps(dict(_manifest(p),
                                                                                      origin_host="box")))
    bad = box_dir / "backups" / f"{dbname}_backup_20250101_020000.sql.gz"   # a seed-era file cut short
    _truncated_plain(plain, bad)
    box = native_host(pg, dbname, "backups", connection="ssh", project_dir=str(box_dir), ssh=ssh_block(ssh_server))
    inv2 = write_inventory(tmp_path / "inv2.yaml", {"box": box})
    tmp = tmp_path / "tmp-here"
    tmp.mkdir()
    env = dict(cli_env, TMPDIR=str(tmp))
    # this machine's side: a staged copy would go into a temporary folder under TMPDIR
    r = cli("db.verify", "--all", "-i", str(inv2), "--json", env=env)
    assert r.returncode == 1, r.stdout + r.stderr          # the truncated one fails
    res = {x["name"]: x for x in json.loads(r.stdout)["results"]}
    assert res[plain.name]["ok"] and res[custom.name]["ok"], res
    assert "completion trailer" in res[plain.name]["checks"] and "pg_restore full read" in res[custom.name]["checks"]
    assert any("nothing copied here" in n for n in res[plain.name]["notes"])
    assert res[bad.name]["ok"] is False and "truncated dump" in res[bad.name]["error"] and "box:" in res[bad.name]["error"]
    assert "Copying" not in r.stderr and list(tmp.iterdir()) == []
    for p in (plain, custom):
        v = _manifest(box_dir / "backups" / p.name)["verifications"]
        assert [x["ok"] for x in v] == [True]
    # a changed archive on the host: its sha256 (computed there) differs from the manifest
    data = bytearray((box_dir / "backups" / custom.name).read_bytes())
    data[-100] ^= 0xFF
    (box_dir / "backups" / custom.name).write_bytes(bytes(data))
    r = cli("db.verify", custom.name, "-i", str(inv2), env=env)
    assert r.returncode == 1 and "sha256 differs from the manifest" in r.stdout, r.stdout + r.stderr
    assert list(tmp.iterdir()) == []


def test_verify_on_an_ssh_container_host_reads_the_archives_there_with_the_containers_tools(tmp_path, cli_env,
                                                                                          ssh_server, pg_container):
    """An SSH host whose PostgreSQL runs in a container: gzip on the host, pg_restore in the
    container fed from the host's file; nothing staged here; a forged (truncated, manifest
    agreeing) custom archive fails there by pg_restore."""
    import hashlib
    import uuid
    from tests.remote_helpers import PROD_PW, PROD_PW_ENV, prod_host
    db = f"v_{uuid.uuid4().hex[:10]}"
    pg_container.exec_psql(f'CREATE DATABASE "{db}"')
    try:
        pg_container.exec_psql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g", db)
        proj = tmp_path / "proj"
        proj.mkdir()
        inv = write_inventory(tmp_path / "inv.yaml", {"prod": prod_host(ssh_server, pg_container, proj, db,
                                                                        protected=False)})
        tmp = tmp_path / "tmp-here"
        tmp.mkdir()
        env = dict(cli_env, TMPDIR=str(tmp))
        env[PROD_PW_ENV] = PROD_PW
        for fmt in ("plain", "custom"):
            r = cli("db.backup", "-i", str(inv), "--format", fmt, env=env)
            assert r.returncode == 0, r.stdout + r.stderr
        bdir = proj / "backups"
        [custom] = [p for p in bdir.iterdir() if p.name.endswith(".dump")]
        forged = bdir / f"{db}_backup_20250102_020000.dump"
        _truncated_custom(custom, forged)
        m = dict(_manifest(custom), archive=forged.name, sha256=hashlib.sha256(forged.read_bytes()).hexdigest(),
                 bytes=forged.stat().st_size, started_at="2025-01-02T02:00:00Z", verifications=[])
        (bdir / (forged.name + ".manifest.json")).write_text(json.dumps(m))
        r = cli("db.verify", "--all", "-i", str(inv), "--json", env=env)
        assert r.returncode == 1, r.stdout + r.stderr
        res = {x["name"]: x for x in json.loads(r.stdout)["results"]}
        assert [x["ok"] for n, x in sorted(res.items()) if n != forged.name] == [True, True], res
        assert res[forged.name]["ok"] is False and "pg_restore cannot read the archive" in res[forged.name]["error"]
        assert list(tmp.iterdir()) == [] and "Copying" not in r.stderr
    finally:
        pg_container.exec_psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
