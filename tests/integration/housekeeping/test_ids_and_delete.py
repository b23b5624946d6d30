"""Backup ids, db.list on narrow terminals, FAILED runs and verifications, db.delete (one
backup, pulled copies, pre-restore copies), db.prune --check: on the real test cluster.
Every refusal: its message, its exit code, and nothing harmed (files, their mtimes,
database oids)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli, native_host, write_inventory
from tests.pgcheck import db_fingerprint, dir_hashes


def _state(d: Path) -> dict:
    """Every file under ``d`` with its content hash and mtime (a --check must change neither)."""
    h = dir_hashes(d) if d.exists() else {}
    return {k: (v, os.stat(d / k).st_mtime_ns) for k, v in h.items() if "/." not in k and not k.startswith(".")}


def _oids(pg_sql) -> str:
    return pg_sql("SELECT string_agg(oid::text || datname, ',' ORDER BY oid) FROM pg_database", "postgres")


def _backup(inv, env, *extra) -> dict:
    r = cli("db.backup", "-i", str(inv), "--json", *extra, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _list(inv, env, *extra) -> list[dict]:
    r = cli("db.list", "-i", str(inv), "--json", *extra, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["backups"]


@pytest.fixture
def dev(tmp_path, pg, dbname):
    bdir = tmp_path / "backups"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    return inv, bdir


def test_ids_are_stable_and_accepted_by_restore_and_verify(dev, cli_env, pg_sql, dbname):
    inv, bdir = dev
    first = _backup(inv, cli_env)
    ids = {b["name"]: b["id"] for b in _list(inv, cli_env)}
    assert len(ids[first["name"]]) == 8
    _backup(inv, cli_env, "--format", "custom")
    after = {b["name"]: b["id"] for b in _list(inv, cli_env)}
    assert after[first["name"]] == ids[first["name"]] and len(set(after.values())) == 2   # stable, unique
    out = cli("db.list", "-i", str(inv), env=cli_env).stdout
    assert out.splitlines()[0].split()[0] == "id" and "#" not in out.splitlines()[0]
    assert any(line.startswith(ids[first["name"]]) and first["name"] in line for line in out.splitlines())
    # verify and restore by a 5-character prefix
    prefix = ids[first["name"]][:5]
    r = cli("db.verify", prefix, "-i", str(inv), env=cli_env)
    assert r.returncode == 0 and first["name"] in r.stdout, r.stdout + r.stderr
    r = cli("db.restore", prefix, "--target-db", f"{dbname}_byid", "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert first["name"] in r.stdout
    pg_sql(f'DROP DATABASE "{dbname}_byid"', "postgres")
    # the old row number is no id: a clear message, exit 1, nothing touched
    files, live = _state(bdir), db_fingerprint(pg_sql, dbname)
    for task in ("db.restore", "db.verify", "db.delete"):
        r = cli(task, "2", "-i", str(inv), "--yes" if task != "db.verify" else "--json", env=cli_env)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "no such" in r.stderr + r.stdout and "ids are the first column of `db.list --host dev" \
            in r.stderr + r.stdout
        assert "(4 or more hex digits)" in r.stderr + r.stdout, r.stderr + r.stdout
        assert "Traceback" not in r.stderr
        # a hex prefix too short to be an id says how many characters it has
        r = cli(task, "b3b", "-i", str(inv), "--yes" if task != "db.verify" else "--json", env=cli_env)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "(4 or more hex digits; 'b3b' has 3)" in r.stderr + r.stdout, r.stderr + r.stdout
    assert _state(bdir) == files and db_fingerprint(pg_sql, dbname) == live


def test_failed_runs_and_failed_verifications_say_so(dev, cli_env, pg_sql, dbname):
    inv, bdir = dev
    good = _backup(inv, cli_env)
    failed = f"{dbname}_backup_20300101_000000.sql.gz"
    man = dict(good["manifest"], archive=failed, status="FAILED", sha256=None, bytes=None,
               started_at="2026-01-02T03:04:05Z", finished_at="2026-01-02T03:05:00Z",
               error="pg_dump: error: connection to server lost")
    (bdir / (failed + ".manifest.json")).write_text(json.dumps(man))
    fid = [b["id"] for b in _list(inv, cli_env) if b["name"] == failed][0]
    files, live = _state(bdir), db_fingerprint(pg_sql, dbname)
    for spec in (failed, fid):
        r = cli("db.restore", spec, "--yes", "-i", str(inv), env=cli_env)
        assert r.returncode == 1
        assert (f"backup {failed} failed at 2026-01-02T03:05:00Z: pg_dump: error: connection to server lost; "
                f"nothing to restore") in r.stderr, r.stderr
        r = cli("db.verify", spec, "-i", str(inv), env=cli_env)
        assert r.returncode == 1 and "nothing to verify" in r.stderr and "disappeared" not in r.stderr + r.stdout
    assert _state(bdir) == files and db_fingerprint(pg_sql, dbname) == live
    # a verification that FAILED shows as FAILED, not "no"
    path = bdir / good["name"]
    m = json.loads(Path(str(path) + ".manifest.json").read_text())
    (Path(str(path) + ".manifest.json")).write_text(json.dumps(dict(m, sha256="0" * 64)))
    assert cli("db.verify", good["id"], "-i", str(inv), env=cli_env).returncode == 1
    lst = {b["name"]: b for b in _list(inv, cli_env)}
    assert lst[good["name"]]["verification"] == "failed" and "sha256" in lst[good["name"]]["verification_error"]
    out = cli("db.list", "-i", str(inv), env=cli_env).stdout
    row = [line for line in out.splitlines() if good["name"] in line][0]
    assert "FAILED" in row and " no " not in row
    assert [line for line in out.splitlines() if failed in line][0].split()[0] == fid


def test_a_pulled_name_without_origin_gets_the_flag(dev, cli_env, pg_sql, dbname):
    inv, bdir = dev
    b = _backup(inv, cli_env)
    (bdir / "prod").mkdir()
    for n in (b["name"], b["name"] + ".manifest.json"):
        (bdir / n).rename(bdir / "prod" / n)
    files, live, oids = _state(bdir), db_fingerprint(pg_sql, dbname), _oids(pg_sql)
    r = cli("db.restore", b["name"], "--yes", "-i", str(inv), env=cli_env)
    assert r.returncode == 1 and "pass --origin prod" in r.stderr, r.stderr
    assert _state(bdir) == files and db_fingerprint(pg_sql, dbname) == live and _oids(pg_sql) == oids
    r = cli("db.delete", b["name"], "--check", "-i", str(inv), env=cli_env)
    assert r.returncode == 1 and "pass --origin prod" in r.stderr, r.stderr
    # db.verify: the same lookup (docs/cli.md "Ids"): the name alone is refused naming the flag
    r = cli("db.verify", b["name"], "-i", str(inv), env=cli_env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{b['name']}: that is prod/{b['name']}, a backup pulled from prod; pass --origin prod" in r.stderr
    assert "Traceback" not in r.stderr and _state(bdir) == files
    for spec in ([b["name"], "--origin", "prod"], [f"prod/{b['name']}"], [b["id"]]):
        r = cli("db.verify", *spec, "-i", str(inv), env=cli_env)
        assert r.returncode == 0, r.stderr
    # its id names it wherever it is
    r = cli("db.verify", b["id"], "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr


def _on_a_pty(args, env, columns):
    """Run the CLI with stdout on a pseudo-terminal ``columns`` wide; returns what it printed."""
    import fcntl
    import pty
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    e = dict(env, COLUMNS=str(columns), TERM="xterm")
    p = subprocess.Popen([sys.executable, "-m", "bigskies_ops", *args], env=e, cwd=REPO, stdout=slave,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    p.wait(60)
    os.close(master)
    import re
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", b"".join(chunks).decode()).replace("\r", "")


@pytest.mark.parametrize("columns", [100, 80])
def test_db_list_never_cuts_a_name_on_a_terminal(dev, cli_env, columns):
    inv, bdir = dev
    b = _backup(inv, cli_env)
    (bdir / "prod").mkdir()
    pulled = "a_rather_long_database_name_x_backup_20261101_020000.sql.gz"   # 59 characters with prod/
    (bdir / "prod" / pulled).write_bytes((bdir / b["name"]).read_bytes())
    text = _on_a_pty(["db.list", "--all", "-i", str(inv)], cli_env, columns)
    lines = text.splitlines()
    assert any(b["name"] in line and line.startswith(b["id"]) for line in lines), text
    assert any(f"prod/{pulled}" in line for line in lines), text
    assert "…" not in text and max(len(line) for line in lines) <= columns, text


def test_delete_check_then_delete_one_backup_with_its_sidecars(dev, cli_env, pg_sql, dbname):
    inv, bdir = dev
    old = _backup(inv, cli_env)
    new = _backup(inv, cli_env)
    (bdir / (old["name"] + ".roles.sql")).write_text("-- roles\n")
    files = _state(bdir)
    r = cli("db.delete", old["id"], "--check", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "CHECK MODE" in r.stdout and f"would delete {bdir / old['name']}" in r.stdout and "free " in r.stdout
    assert ".roles.sql" in r.stdout and _state(bdir) == files
    assert "3 step(s) would run" in r.stdout, r.stdout   # the three files; the bytes freed are a fact
    j = json.loads(cli("db.delete", old["id"], "--check", "--json", "-i", str(inv), env=cli_env).stdout)
    assert j["check"] is True and j["plan"]["bytes"] >= old["bytes"] and j["plan"]["id"] == old["id"]
    assert _state(bdir) == files
    # no terminal, no --yes: refused, nothing deleted
    r = cli("db.delete", old["id"], "-i", str(inv), env=cli_env)
    assert r.returncode == 3 and "pass --yes" in r.stderr and _state(bdir) == files
    r = cli("db.delete", old["id"], "--yes", "--json", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"] == "changed"
    left = sorted(_state(bdir))
    assert left == sorted([new["name"], new["name"] + ".manifest.json"])
    # the only good backup left: refused (exit 3), then deleted with --allow-last
    r = cli("db.delete", new["name"], "--yes", "-i", str(inv), env=cli_env)
    assert r.returncode == 3 and "only good backup" in r.stderr and "--allow-last" in r.stderr
    assert sorted(_state(bdir)) == left
    r = cli("db.delete", new["id"], "--yes", "--allow-last", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr
    assert _state(bdir) == {}
    # unknown id / 'latest': clear messages, no traceback
    r = cli("db.delete", "abcdef12", "--yes", "-i", str(inv), env=cli_env)
    assert r.returncode == 1 and "no such backup name or id" in r.stderr and "Traceback" not in r.stderr
    r = cli("db.delete", "latest", "--yes", "-i", str(inv), env=cli_env)
    assert r.returncode == 2 and "'latest' is not accepted" in r.stderr


def test_delete_on_a_protected_host_and_pulled_copies(tmp_path, pg, dbname, cli_env):
    src_dir, dev_dir = tmp_path / "src-backups", tmp_path / "dev-backups"
    inv = write_inventory(tmp_path / "inv.yaml", {
        "src": native_host(pg, dbname, src_dir, protected=True), "dev": native_host(pg, dbname, dev_dir)},
        defaults={"host": "src"})
    a = _backup(inv, cli_env)
    b = _backup(inv, cli_env)
    (dev_dir / "src").mkdir(parents=True)
    for n in (a["name"], a["name"] + ".manifest.json"):   # a copy pulled to dev (same name, same sha256)
        (dev_dir / "src" / n).write_bytes((src_dir / n).read_bytes())
    files = {**_state(src_dir), **{f"dev/{k}": v for k, v in _state(dev_dir).items()}}

    def now():
        return {**_state(src_dir), **{f"dev/{k}": v for k, v in _state(dev_dir).items()}}
    r = cli("db.delete", a["id"], "--yes", "-i", str(inv), env=cli_env)
    assert r.returncode == 3 and f"--force-protected --confirm {dbname}" in r.stderr and now() == files
    r = cli("db.delete", a["id"], "--check", "-i", str(inv), env=cli_env)   # a dry run needs no confirmation
    assert r.returncode == 0 and "keep the pulled copy" in r.stdout and now() == files
    # the check lists the refusal the run would hit and the flags that lift it (docs/cli.md "Dry runs")
    j = json.loads(cli("db.delete", a["id"], "--check", "--json", "-i", str(inv), env=cli_env).stdout)
    assert j["result"] == "ok" and j["would_change"] is False and now() == files
    assert [f"--force-protected --confirm {dbname}" in x for x in j["plan"]["refusals"]] == [True]
    j = json.loads(cli("db.delete", a["id"], "--check", "--json", "--force-protected", "--confirm", dbname,
                       "-i", str(inv), env=cli_env).stdout)
    assert j["result"] == "changed" and j["plan"]["refusals"] == []
    # a group holding the protected host: exit 3 (not 2, "selects 2 hosts"); its check: exit 0, the refusal
    ginv = write_inventory(tmp_path / "group.yaml", {
        "src": native_host(pg, dbname, src_dir, protected=True), "dev": native_host(pg, dbname, dev_dir)},
        groups={"both": ["src", "dev"]})
    r = cli("db.delete", a["id"], "--host", "both", "--yes", "--force-protected", "--confirm", dbname,
            "-i", str(ginv), env=cli_env)
    assert r.returncode == 3 and "group 'both' containing protected host(s) src" in r.stderr and now() == files
    r = cli("db.delete", a["id"], "--host", "both", "--check", "--json", "-i", str(ginv), env=cli_env)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["result"] == "ok" and j["plan"]["hosts"] == ["src", "dev"] and "group 'both'" in j["plan"]["refusals"][0]
    r = cli("db.prune", "--host", "both", "-i", str(ginv), env=cli_env)
    assert r.returncode == 3 and "prune on group 'both'" in r.stderr and now() == files
    r = cli("db.prune", "--host", "both", "--check", "-i", str(ginv), env=cli_env)
    assert r.returncode == 0 and "the real run would REFUSE: refused: prune on group 'both'" in r.stdout
    assert "ok (check)" in r.stdout and now() == files
    # one protected host: prune --check lists the policy's refusal with its flags, result ok
    r = cli("db.prune", "--check", "--json", "-i", str(inv), env=cli_env)
    j = json.loads(r.stdout)
    assert r.returncode == 0 and j["result"] == "ok" and j["would_change"] is False, r.stderr + r.stdout
    assert [f"prune needs --force-protected --confirm {dbname}" in x for x in j["plan"]["refusals"]] == [True]
    r = cli("db.prune", "--check", "-i", str(inv), env=cli_env)
    assert "the real run would REFUSE: refused: src is protected" in r.stdout and "ok (check)" in r.stdout
    j = json.loads(cli("db.prune", "--check", "--json", "--force-protected", "--confirm", dbname, "-i", str(inv),
                       env=cli_env).stdout)
    assert j["plan"]["refusals"] == [] and now() == files
    r = cli("db.restore", a["id"], "--host", "both", "--check", "-i", str(ginv), env=cli_env)
    assert r.returncode == 0 and "the real run would REFUSE: refused: restore on group 'both'" in r.stdout
    r = cli("db.delete", a["id"], "--yes", "--pulled-copies", "--force-protected", "--confirm", dbname,
            "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr
    assert sorted(now()) == sorted([b["name"], b["name"] + ".manifest.json"])
    # the only good backup on the protected host: both refusals, each with the flag that lifts it
    j = json.loads(cli("db.delete", b["id"], "--check", "--json", "-i", str(inv), env=cli_env).stdout)
    assert j["result"] == "ok" and len(j["plan"]["refusals"]) == 2, j
    assert "--force-protected" in j["plan"]["refusals"][0] and "--allow-last" in j["plan"]["refusals"][1]
    j = json.loads(cli("db.delete", b["id"], "--check", "--json", "--allow-last", "-i", str(inv), env=cli_env).stdout)
    assert j["result"] == "ok" and [("--force-protected" in x) for x in j["plan"]["refusals"]] == [True]
    assert sorted(now()) == sorted([b["name"], b["name"] + ".manifest.json"])


def test_delete_and_restore_check_agree_on_ids_that_name_nothing(dev, cli_env, pg_sql, dbname):
    """An id that names no backup, or several, cannot be planned: a lookup error (exit 1),
    --check or not, for db.delete and db.restore alike (docs/cli.md "Ids", "Dry runs");
    the only good backup is a refusal in the plan (exit 0, --allow-last)."""
    inv, bdir = dev
    backups = [_backup(inv, cli_env) for _ in range(3)]
    ids = [b["id"] for b in backups]
    files, oids = _state(bdir), _oids(pg_sql)
    specs = ["2", "ffff0000" if "ffff0000" not in ids else "0000ffff"]   # the old row number, an unknown id
    for spec in specs:
        for task in ("db.delete", "db.restore"):
            r = cli(task, spec, "--check", "-i", str(inv), env=cli_env)
            assert r.returncode == 1, (task, spec, r.stdout, r.stderr)
            assert "no such" in r.stderr and "Traceback" not in r.stderr and "CHECK MODE" not in r.stdout
            r = cli(task, spec, "--check", "--json", "-i", str(inv), env=cli_env)
            assert r.returncode == 1 and json.loads(r.stdout)["error"]["exit_code"] == 1
    assert _state(bdir) == files and _oids(pg_sql) == oids
    for i in ids[1:]:
        assert cli("db.delete", i, "--yes", "-i", str(inv), env=cli_env).returncode == 0
    files = _state(bdir)
    r = cli("db.delete", ids[0], "--check", "-i", str(inv), env=cli_env)
    assert r.returncode == 0 and "the real run would REFUSE: refused:" in r.stdout and "--allow-last" in r.stdout
    assert "ok (check)" in r.stdout and _state(bdir) == files


def test_drop_pre_restore_copies(dev, cli_env, pg_sql, dbname):
    inv, bdir = dev
    b = _backup(inv, cli_env)
    r = cli("db.restore", b["id"], "--yes", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr
    copies = json.loads(cli("db.list", "--pre-restore", "--json", "-i", str(inv), env=cli_env).stdout)
    [copy] = copies["pre_restore_copies"]
    oids = _oids(pg_sql)
    r = cli("db.delete", "--pre-restore", "all", "--check", "-i", str(inv), env=cli_env)
    assert r.returncode == 0 and f"would drop database '{copy['name']}'" in r.stdout and _oids(pg_sql) == oids
    r = cli("db.delete", "--pre-restore", "nope", "--yes", "-i", str(inv), env=cli_env)
    assert r.returncode == 2 and copy["name"] in r.stderr and _oids(pg_sql) == oids
    live = db_fingerprint(pg_sql, dbname)
    r = cli("db.delete", "--pre-restore", copy["name"], "--yes", "--json", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["dropped"] == [copy["name"]]
    assert copy["name"] not in pg_sql("SELECT datname FROM pg_database", "postgres").split()
    assert db_fingerprint(pg_sql, dbname) == live
    assert _state(bdir) and cli("db.list", "--pre-restore", "-i", str(inv), env=cli_env).stdout.startswith("no ")


def test_prune_check_shows_the_files_and_bytes_and_changes_nothing(tmp_path, pg, dbname, cli_env):
    bdir = tmp_path / "backups"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir, retention={
        "daily": 1, "weekly": 0, "monthly": 0})})
    first = _backup(inv, cli_env)
    m = dict(first["manifest"], kind="scheduled", started_at="2026-01-01T02:00:00Z")
    old = f"{dbname}_backup_20260101_020000.sql.gz"
    (bdir / old).write_bytes((bdir / first["name"]).read_bytes())
    (bdir / (old + ".manifest.json")).write_text(json.dumps(dict(m, archive=old)))
    m2 = dict(m, started_at="2026-01-02T02:00:00Z", archive=first["name"])
    (bdir / (first["name"] + ".manifest.json")).write_text(json.dumps(m2))
    newest = _backup(inv, cli_env)
    files = _state(bdir)
    for flag in ("--check", "--dry-run"):
        r = cli("db.prune", flag, "-i", str(inv), env=cli_env)
        assert r.returncode == 0, r.stderr
        assert f"would delete {bdir / old}" in r.stdout and "would free" in r.stdout, r.stdout
        assert _state(bdir) == files
    j = json.loads(cli("db.prune", "--check", "--json", "-i", str(inv), env=cli_env).stdout)
    size = (bdir / old).stat().st_size + (bdir / (old + ".manifest.json")).stat().st_size
    assert j["check"] is True and j["plan"]["bytes_freed"] >= size and str(bdir / old) in j["plan"]["would_delete"]
    assert _state(bdir) == files
    r = cli("db.prune", "-i", str(inv), env=cli_env)
    assert r.returncode == 0 and "freed" in r.stdout, r.stdout + r.stderr
    assert not (bdir / old).exists() and (bdir / newest["name"]).exists()


def test_pull_existing_takes_the_id_db_list_shows_on_the_ssh_host(tmp_path, pg, dbname, cli_env, ssh_server):
    """``db.list --host box`` shows ids of box's backups; ``db.pull --from box --existing ID``
    copies that one; the copy keeps its name, so it has the same id here."""
    from tests.remote_helpers import ssh_block
    box_dir, dev_dir = tmp_path / "box", tmp_path / "dev-backups"
    box = native_host(pg, dbname, "backups", connection="ssh", project_dir=str(box_dir), ssh=ssh_block(ssh_server))
    inv = write_inventory(tmp_path / "inv.yaml", {"box": box, "dev": native_host(pg, dbname, dev_dir)},
                          defaults={"host": "dev"})
    a = _backup(inv, cli_env, "--host", "box")
    _backup(inv, cli_env, "--host", "box")
    [entry] = [b for b in _list(inv, cli_env, "--host", "box") if b["name"] == a["name"]]
    r = cli("db.pull", "--from", "box", "--to", "dev", "--existing", entry["id"][:6], "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (dev_dir / "box" / a["name"]).exists()
    assert [b["id"] for b in _list(inv, cli_env, "--origin", "box")] == [entry["id"]]
    r = cli("db.pull", "--from", "box", "--to", "dev", "--existing", "beefbeef", "-i", str(inv), env=cli_env)
    assert r.returncode == 1 and "no backup with that id" in r.stderr and "Traceback" not in r.stderr
