"""Offsite copies on a real S3 HTTP endpoint (moto's server on loopback, with IAM
credentials enforced): upload, verify by a stored sha256, list, fetch and restore
when the host's own backups are gone; changed objects, wrong credentials and an
unreachable target fail clearly and harm nothing."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import urllib.request

import pytest

from tests.conftest import cli, native_host, write_inventory
from tests.pgcheck import db_fingerprint, dir_hashes

BUCKET = "bigskies-offsite"
KEY_ENV, SECRET_ENV = "TEST_S3_KEY", "TEST_S3_SECRET"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket and one IAM user; auth enforced."""
    import boto3
    from moto.server import ThreadedMotoServer
    from bigskies_ops.dev.sandbox import free_port
    port = free_port()
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    ep = f"http://127.0.0.1:{port}"
    try:
        # moto keeps its accounts in the process: another module's server in this worker
        # (tests/integration/cli/test_progress.py uses this fixture) left the user behind
        urllib.request.urlopen(urllib.request.Request(ep + "/moto-api/reset", data=b"", method="POST")).read()
        boot = dict(endpoint_url=ep, region_name="us-east-1", aws_access_key_id="boot", aws_secret_access_key="boot")
        iam = boto3.client("iam", **boot)
        iam.create_user(UserName="backup")
        iam.put_user_policy(UserName="backup", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        k = iam.create_access_key(UserName="backup")["AccessKey"]
        boto3.client("s3", **boot).create_bucket(Bucket=BUCKET)
        urllib.request.urlopen(urllib.request.Request(ep + "/moto-api/reset-auth", data=b"0", method="POST",
                                                      headers={"Content-Type": "text/plain"})).read()
        client = boto3.client("s3", endpoint_url=ep, region_name="us-east-1", aws_access_key_id=k["AccessKeyId"],
                              aws_secret_access_key=k["SecretAccessKey"])
        yield {"endpoint": ep, "key": k["AccessKeyId"], "secret": k["SecretAccessKey"], "client": client}
    finally:
        try:
            urllib.request.urlopen(urllib.request.Request(ep + "/moto-api/reset-auth", data=b"inf", method="POST",
                                                          headers={"Content-Type": "text/plain"})).read()
        finally:
            srv.stop()


@pytest.fixture
def s3env(cli_env, s3):
    env = dict(cli_env)
    env[KEY_ENV], env[SECRET_ENV] = s3["key"], s3["secret"]
    return env


def _target(s3, prefix, **kw):
    return {"name": "vault", "url": f"s3://{BUCKET}/{prefix}", "endpoint": s3["endpoint"],
            "access_key_env": KEY_ENV, "secret_key_env": SECRET_ENV, **kw}


def _keys(s3, prefix):
    r = s3["client"].list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
    return sorted(o["Key"] for o in r.get("Contents", []))


def _manifest(p):
    return json.loads(open(str(p) + ".manifest.json").read())


def test_offsite_copies_verifies_records_lists_and_is_idempotent(tmp_path, pg, dbname, s3, s3env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir, offsite=[_target(s3, "t1")])})
    for fmt in ("plain", "custom"):
        assert cli("db.backup", "-i", str(inv), "--format", fmt, env=s3env).returncode == 0
    r = cli("db.offsite", "-i", str(inv), env=s3env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "changed: [dev] offsite vault: copied and verified 2" in r.stdout
    archives = sorted(n for n in os.listdir(bdir) if n.endswith((".sql.gz", ".dump")))
    assert _keys(s3, "t1") == sorted([f"t1/dev/{a}" for a in archives] + [f"t1/dev/{a}.manifest.json" for a in archives])
    for a in archives:
        m = _manifest(bdir / a)
        [rec] = m["offsite"]
        assert rec["target"] == "vault" and rec["sha256"] == m["sha256"] and rec["key"] == f"t1/dev/{a}"
        head = s3["client"].head_object(Bucket=BUCKET, Key=f"t1/dev/{a}")
        assert head["Metadata"]["sha256"] == hashlib.sha256((bdir / a).read_bytes()).hexdigest()
    r = cli("db.offsite", "-i", str(inv), env=s3env)
    assert r.returncode == 0 and "ok: [dev] offsite vault: 2 backup(s) already there" in r.stdout
    lst = json.loads(cli("db.list", "-i", str(inv), "--offsite", "vault", "--json", env=s3env).stdout)["backups"]
    assert sorted(b["name"] for b in lst) == archives and all(b["status"] == "DONE" for b in lst)
    r = cli("db.verify", "--all", "--offsite", "vault", "-i", str(inv), env=s3env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(_manifest(bdir / a)["offsite"][0]["last_check_ok"] is True for a in archives)


def test_an_object_changed_on_the_target_fails_offsite_verification(tmp_path, pg, dbname, s3, s3env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir, offsite=[_target(s3, "t2")])})
    assert cli("db.backup", "-i", str(inv), env=s3env).returncode == 0
    assert cli("db.offsite", "-i", str(inv), env=s3env).returncode == 0
    [a] = [n for n in os.listdir(bdir) if n.endswith(".sql.gz")]
    key = f"t2/dev/{a}"
    c = s3["client"]
    meta = c.head_object(Bucket=BUCKET, Key=key)["Metadata"]
    body = bytearray(c.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF                                  # bit rot / tampering, metadata kept
    c.put_object(Bucket=BUCKET, Key=key, Body=bytes(body), Metadata=meta)
    before = dir_hashes(bdir)
    r = cli("db.verify", "latest", "--offsite", "vault", "-i", str(inv), env=s3env)
    assert r.returncode == 1
    assert "object changed on the target" in r.stdout
    m = _manifest(bdir / a)
    assert m["offsite"][0]["last_check_ok"] is False
    assert {k: v for k, v in dir_hashes(bdir).items() if k == a} == {a: before[a]}  # the local archive untouched


def test_restore_from_offsite_when_the_hosts_backups_are_gone(tmp_path, pg, pg_sql, dbname, s3, s3env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir, offsite=[_target(s3, "t3")])})
    before = db_fingerprint(pg_sql, dbname)
    assert cli("db.backup", "-i", str(inv), "--format", "custom", env=s3env).returncode == 0
    assert cli("db.offsite", "-i", str(inv), env=s3env).returncode == 0
    [a] = [n for n in os.listdir(bdir) if n.endswith(".dump")]
    shutil.rmtree(bdir)                                          # the day the host is gone
    pg_sql("DELETE FROM coordinator_config_history; UPDATE users SET email = 'x' || id || '@example.org'", dbname)
    assert db_fingerprint(pg_sql, dbname) != before
    r = cli("db.restore", "latest", "--from-offsite", "vault", "-i", str(inv), "--yes", env=s3env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert db_fingerprint(pg_sql, dbname) == before
    assert (bdir / a).exists() and _manifest(bdir / a)["fetched_from"] == f"s3://{BUCKET}/t3"
    assert not [n for n in os.listdir(bdir) if n.endswith(".partial")]


def test_wrong_or_missing_credentials_fail_clearly_and_record_nothing(tmp_path, pg, dbname, s3, s3env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir, offsite=[_target(s3, "t4")])})
    assert cli("db.backup", "-i", str(inv), env=s3env).returncode == 0
    before = dir_hashes(bdir)
    bad = dict(s3env, **{SECRET_ENV: "not-the-secret"})
    r = cli("db.offsite", "-i", str(inv), env=bad)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "S3 refused our credentials" in r.stdout and f"{KEY_ENV}/{SECRET_ENV}" in r.stdout
    assert "not-the-secret" not in r.stdout + r.stderr
    missing = {k: v for k, v in s3env.items() if k != SECRET_ENV}
    r = cli("db.offsite", "-i", str(inv), env=missing)
    assert r.returncode == 2 and f"{SECRET_ENV} not set" in r.stdout
    assert dir_hashes(bdir) == before and _keys(s3, "t4") == []


def test_unreachable_target_fails_then_the_next_run_catches_up(tmp_path, pg, dbname, s3, s3env):
    from bigskies_ops.dev.sandbox import free_port
    bdir = tmp_path / "b"
    dead = dict(_target(s3, "t5"), endpoint=f"http://127.0.0.1:{free_port()}")
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir, offsite=[dead])})
    assert cli("db.backup", "-i", str(inv), env=s3env).returncode == 0
    before = dir_hashes(bdir)
    r = cli("db.offsite", "-i", str(inv), env=s3env)
    assert r.returncode == 1 and "unreachable" in r.stdout and "retried on the next run" in r.stdout
    assert dir_hashes(bdir) == before
    write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir, offsite=[_target(s3, "t5")])})
    r = cli("db.offsite", "-i", str(inv), env=s3env)
    assert r.returncode == 0 and "copied and verified 1" in r.stdout


def _fake_backups(bdir, days, size=2000, origin="dev"):
    bdir.mkdir(parents=True, exist_ok=True)
    for i, day in enumerate(days):
        name = f"bigskies_backup_{day.replace('-', '')}_020000.dump"
        data = os.urandom(size) if i == 0 else (f"{day}".encode() * (size // 10))[:size]
        (bdir / name).write_bytes(data)
        (bdir / (name + ".manifest.json")).write_text(json.dumps({
            "schema_version": 1, "status": "DONE", "kind": "scheduled", "origin_host": origin,
            "database": "bigskies", "format": "custom", "archive": name, "started_at": f"{day}T02:00:00Z",
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "verifications": [], "offsite": []}))


def test_large_archives_go_up_in_multipart_and_remote_retention_matches_the_policy(tmp_path, s3, monkeypatch):
    from bigskies_ops import inventory
    from bigskies_ops.jobs import offsite
    monkeypatch.setenv(KEY_ENV, s3["key"])
    monkeypatch.setenv(SECRET_ENV, s3["secret"])
    bdir = tmp_path / "b"
    _fake_backups(bdir, ["2026-11-20", "2026-11-21", "2026-11-22"], size=11 << 20)
    inv = inventory.parse({"hosts": {"dev": {"backup": {"dir": str(bdir)}, "offsite": [_target(s3, "t6")],
                                             "retention": {"daily": 2, "weekly": 0, "monthly": 0}}}},
                          tmp_path / "inv.yaml")
    [res] = offsite.upload(inv.hosts["dev"], multipart_threshold=5 << 20)
    assert res.error is None, res.error
    assert res.uploaded == ["bigskies_backup_20261121_020000.dump", "bigskies_backup_20261122_020000.dump"]
    head = s3["client"].head_object(Bucket=BUCKET, Key="t6/dev/bigskies_backup_20261122_020000.dump")
    assert "-" in head["ETag"]                                  # multipart: the ETag is no digest
    [v] = offsite.verify_remote(inv.hosts["dev"], "vault", "latest", False)
    assert v.ok, v.error
    # a newer backup arrives: the target keeps 2 days, exactly like the policy says
    _fake_backups(bdir / "x", ["2026-11-23"], size=1000)
    for n in os.listdir(bdir / "x"):
        shutil.move(str(bdir / "x" / n), str(bdir / n))
    [res] = offsite.upload(inv.hosts["dev"], multipart_threshold=5 << 20)
    assert res.uploaded == ["bigskies_backup_20261123_020000.dump"]
    assert res.pruned == ["bigskies_backup_20261121_020000.dump"]
    assert _keys(s3, "t6") == ["t6/dev/bigskies_backup_20261122_020000.dump",
                               "t6/dev/bigskies_backup_20261122_020000.dump.manifest.json",
                               "t6/dev/bigskies_backup_20261123_020000.dump",
                               "t6/dev/bigskies_backup_20261123_020000.dump.manifest.json"]


def test_ssh_target_on_an_inventory_host_gets_verified_copies_and_catches_changes(tmp_path, pg, dbname, cli_env,
                                                                                 ssh_server):
    from tests.remote_helpers import ssh_block
    bdir = tmp_path / "b"
    root = tmp_path / "box" / "offsite"
    box = {"connection": "ssh", "project_dir": str(tmp_path / "box"), "ssh": ssh_block(ssh_server)}
    inv = write_inventory(tmp_path / "inv.yaml", {
        "dev": native_host(pg, dbname, bdir, offsite=[{"name": "box", "url": f"ssh://backupbox{root}"}]),
        "backupbox": box}, defaults={"host": "dev"})
    assert cli("db.backup", "-i", str(inv), env=cli_env).returncode == 0
    r = cli("db.offsite", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    [a] = [n for n in os.listdir(bdir) if n.endswith(".sql.gz")]
    assert sorted(os.listdir(root / "dev")) == sorted([a, a + ".manifest.json", a + ".sha256"])
    assert (root / "dev" / (a + ".sha256")).read_text().strip() == hashlib.sha256((bdir / a).read_bytes()).hexdigest()
    assert _manifest(bdir / a)["offsite"][0]["url"] == f"ssh://backupbox{root}/dev/{a}"
    lst = json.loads(cli("db.list", "-i", str(inv), "--offsite", "box", "--json", env=cli_env).stdout)["backups"]
    assert [b["name"] for b in lst] == [a]
    assert cli("db.verify", "latest", "--offsite", "box", "-i", str(inv), env=cli_env).returncode == 0
    h = json.loads(cli("db.health", "-i", str(inv), "--json", env=cli_env).stdout)["hosts"][0]
    [off] = [c for c in h["checks"] if c["check"] == "offsite box"]
    assert off["state"] == "ok" and off["lag_s"] == 0 and off["newest_offsite"] == a
    data = bytearray((root / "dev" / a).read_bytes())
    data[100] ^= 0xFF
    (root / "dev" / a).write_bytes(bytes(data))
    r = cli("db.verify", "latest", "--offsite", "box", "-i", str(inv), env=cli_env)
    assert r.returncode == 1 and "object changed on the target" in r.stdout


def test_an_ssh_hosts_archives_stream_to_s3_and_the_copy_is_recorded_on_that_host(tmp_path, s3, s3env, ssh_server):
    from tests.remote_helpers import ssh_block
    pdir = tmp_path / "prod"
    _fake_backups(pdir / "backups", ["2026-11-27", "2026-11-28"], origin="prod")
    inv = write_inventory(tmp_path / "inv.yaml", {"prod": {
        "connection": "ssh", "project_dir": str(pdir), "ssh": ssh_block(ssh_server), "backup": {"dir": "backups"},
        "offsite": [_target(s3, "t7")]}})
    r = cli("db.offsite", "-i", str(inv), env=s3env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "copied and verified 2" in r.stdout
    assert _keys(s3, "t7") == ["t7/prod/bigskies_backup_20261127_020000.dump",
                               "t7/prod/bigskies_backup_20261127_020000.dump.manifest.json",
                               "t7/prod/bigskies_backup_20261128_020000.dump",
                               "t7/prod/bigskies_backup_20261128_020000.dump.manifest.json"]
    m = _manifest(pdir / "backups" / "bigskies_backup_20261128_020000.dump")
    assert m["offsite"][0]["target"] == "vault" and m["offsite"][0]["key"] == "t7/prod/bigskies_backup_20261128_020000.dump"
    r = cli("db.offsite", "-i", str(inv), env=s3env)
    assert r.returncode == 0 and "2 backup(s) already there" in r.stdout


def test_restore_from_offsite_onto_an_ssh_host_fetches_to_the_control_machine(tmp_path, pg, pg_sql, dbname, s3,
                                                                              s3env, ssh_server):
    from tests.remote_helpers import ssh_block
    bdir = tmp_path / "b"
    local = native_host(pg, dbname, bdir, offsite=[_target(s3, "t8")])
    inv = write_inventory(tmp_path / "inv.yaml", {"box": local})
    before = db_fingerprint(pg_sql, dbname)
    assert cli("db.backup", "-i", str(inv), "--format", "plain", env=s3env).returncode == 0
    assert cli("db.offsite", "-i", str(inv), env=s3env).returncode == 0
    shutil.rmtree(bdir)
    # the same name is now an SSH host (native tools over SSH) whose own disk is empty
    remote = native_host(pg, dbname, "backups", connection="ssh", project_dir=str(tmp_path / "box"),
                         ssh=ssh_block(ssh_server), offsite=[_target(s3, "t8")])
    write_inventory(tmp_path / "inv.yaml", {"box": remote})
    pg_sql("DELETE FROM coordinator_config_history", dbname)
    r = cli("db.restore", "latest", "--from-offsite", "vault", "-i", str(inv), "--yes", env=s3env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert db_fingerprint(pg_sql, dbname) == before
    fetched = tmp_path / "offsite-fetched" / "box"
    assert [n for n in os.listdir(fetched) if n.endswith(".sql.gz")]


def test_offsite_check_names_uploads_and_remote_prunes_and_changes_nothing(tmp_path, pg, dbname, s3, s3env):
    """``db.offsite --check``: what would go up and what the target's retention would delete
    there, with the bytes; no object, no manifest, no file changes."""
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(
        pg, dbname, bdir, offsite=[_target(s3, "tc")], retention={"daily": 1, "weekly": 0, "monthly": 0})})

    def backup(day):
        r = cli("db.backup", "-i", str(inv), "--json", env=s3env)
        assert r.returncode == 0, r.stderr
        name = json.loads(r.stdout)["name"]
        m = _manifest(bdir / name)
        (bdir / (name + ".manifest.json")).write_text(json.dumps(dict(m, kind="scheduled",
                                                                      started_at=f"2026-11-{day}T02:00:00Z")))
        return name
    first = backup("01")
    assert cli("db.offsite", "-i", str(inv), env=s3env).returncode == 0
    second = backup("02")
    keys, local = _keys(s3, "tc"), dir_hashes(bdir)
    r = cli("db.offsite", "--check", "-i", str(inv), env=s3env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"would upload {second} to vault" in r.stdout and f"would delete {first} on vault" in r.stdout, r.stdout
    assert "freed there" in r.stdout
    j = json.loads(cli("db.offsite", "--check", "--json", "-i", str(inv), env=s3env).stdout)
    [t] = j["plan"]["targets"]
    assert j["check"] is True and t["would_upload"] == [second] and t["would_prune_remote"] == [first]
    assert t["would_upload_bytes"] == (bdir / second).stat().st_size
    assert t["would_free_bytes"] == (bdir / first).stat().st_size
    assert _keys(s3, "tc") == keys and dir_hashes(bdir) == local
    r = cli("db.offsite", "-i", str(inv), env=s3env)                  # the real run does what --check said
    assert r.returncode == 0, r.stdout + r.stderr
    assert _keys(s3, "tc") == sorted([f"tc/dev/{second}", f"tc/dev/{second}.manifest.json"])
    # the target's listing shows ids, and they name the copy there
    from bigskies_ops.archives.catalog import backup_id
    out = cli("db.list", "--offsite", "vault", "-i", str(inv), env=s3env).stdout
    assert any(line.startswith(backup_id(second)) and second in line for line in out.splitlines()), out
    r = cli("db.verify", backup_id(second)[:5], "--offsite", "vault", "-i", str(inv), env=s3env)
    assert r.returncode == 0 and second in r.stdout, r.stdout + r.stderr


def test_a_damaged_archive_is_not_copied_offsite_the_others_are_and_the_run_fails(tmp_path, pg, dbname, s3, s3env):
    """An archive changed after its run is not uploaded; the good one is; the run fails (exit 1)
    naming it, since that backup is left without an offsite copy. A same-size change (status
    still DONE: only the sha256 sees it) and a truncation (DAMAGED) alike; nothing local is touched."""
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir, offsite=[_target(s3, "t9")])})
    names = []
    for _ in range(3):
        r = cli("db.backup", "-i", str(inv), "--json", env=s3env)
        assert r.returncode == 0, r.stderr
        names.append(json.loads(r.stdout)["name"])
        time.sleep(1.1)  # archive names carry the second
    flipped, truncated, good = names
    data = bytearray((bdir / flipped).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bdir / flipped).write_bytes(bytes(data))                       # same size: listed DONE
    (bdir / truncated).write_bytes((bdir / truncated).read_bytes()[:-10])  # DAMAGED
    local = dir_hashes(bdir)
    r = cli("db.offsite", "--check", "-i", str(inv), env=s3env)   # the size is enough to tell; the sha256 is not read
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{truncated}: local archive's size differs from its manifest; not copied (run db.verify)" in r.stdout
    assert f"would upload {truncated}" not in r.stdout and f"would upload {good}" in r.stdout, r.stdout
    r = cli("db.offsite", "-i", str(inv), env=s3env)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert f"{flipped}: local archive differs from its manifest; not copied (run db.verify)" in out
    assert f"{truncated}: local archive's size differs from its manifest; not copied (run db.verify)" in out
    assert f"   copied and verified 1 ({good}), 0 already there, pruned 0 on the target" in r.stdout, out
    assert (f"failed: [dev] offsite vault: 2 archive(s) differ from their manifests and were not copied "
            f"({flipped}, {truncated}): run db.verify, then db.delete them (a new backup gets its own copy; "
            f"this fails every run until they are deleted)\n") in r.stdout, out
    assert "Traceback" not in out
    assert _keys(s3, "t9") == sorted([f"t9/dev/{good}", f"t9/dev/{good}.manifest.json"])
    assert _manifest(bdir / good).get("offsite")
    after = dir_hashes(bdir)                                  # only the good one's manifest records a copy
    assert {k for k in after.keys() | local.keys() if after.get(k) != local.get(k)} == {good + ".manifest.json"}
    j = json.loads(cli("db.offsite", "--json", "-i", str(inv), env=s3env).stdout)
    [t] = j["targets"]
    assert j["result"] == "failed" and t["ok"] is False and len(t["skipped"]) == 2 and t["uploaded"] == []
    assert t["already_offsite"] == 1


def test_an_archive_damaged_after_its_offsite_copy_counts_as_copied_and_says_where_the_good_one_is(
        tmp_path, pg, dbname, s3, s3env):
    """Truncated locally after it went offsite: the copy there has the manifest's size, so the
    run does not fail (helper-46); it names the copy to check and restore from."""
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir, offsite=[_target(s3, "t8")])})
    r = cli("db.backup", "-i", str(inv), "--json", env=s3env)
    assert r.returncode == 0, r.stderr
    name = json.loads(r.stdout)["name"]
    assert cli("db.offsite", "-i", str(inv), env=s3env).returncode == 0
    keys = _keys(s3, "t8")
    (bdir / name).write_bytes((bdir / name).read_bytes()[:-10])
    r = cli("db.offsite", "-i", str(inv), env=s3env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{name}: local archive's size differs from its manifest; the copy on vault has the recorded size" in r.stdout
    assert "ok: [dev] offsite vault: 1 backup(s) already there" in r.stdout, r.stdout
    assert _keys(s3, "t8") == keys
    [t] = json.loads(cli("db.offsite", "--json", "-i", str(inv), env=s3env).stdout)["targets"]
    assert t["ok"] is True and t["damaged"] == [] and t["already_offsite"] == 1
