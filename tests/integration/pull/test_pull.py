"""Scenario 4 for real: "prod" is PostgreSQL in a podman container with no published port,
reached over a real sshd on loopback; "dev" is the native test cluster.

Data is compared by the test's own queries (tests/pgcheck.py): prod through
``podman exec -i ... psql``, dev through its unix socket. Bad inputs: a clear
message, the documented exit code, nothing harmed.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigskies_ops.inventory import parse
from bigskies_ops.jobs.pull import pull_format
from tests.conftest import PASSWORD_ENV, cli, load_bigskies, native_host, write_inventory
from tests.infra.podman import PG_BINDIR
from tests.pgcheck import db_fingerprint, dir_hashes
from tests.remote_helpers import (PROD_PW, PROD_PW_ENV, PROD_TPL, TableLock, drop_prod_db, kill_ssh_sessions,
                                  new_prod_db, pg_dump_waiting, process_gone, prod_host, prod_sql, ssh_block,
                                  wait_for, wrapped_pg_dump_bindir)


@pytest.fixture(scope="module")
def prod_template(pg_container):
    pg_container.exec_psql(f'DROP DATABASE IF EXISTS "{PROD_TPL}"')
    pg_container.exec_psql(f'CREATE DATABASE "{PROD_TPL}"')
    load_bigskies(lambda sql, db: pg_container.exec_psql(sql, db), PROD_TPL)
    yield PROD_TPL


@pytest.fixture
def prod_db(pg_container, prod_template):
    name = new_prod_db(pg_container)
    yield name
    drop_prod_db(pg_container, name)


@pytest.fixture
def env(cli_env):
    e = dict(cli_env)
    e[PROD_PW_ENV] = PROD_PW
    return e


@pytest.fixture
def world(tmp_path, pg, dbname, ssh_server, pg_container, prod_db):
    """Inventory with prod (ssh-container, protected) and dev (local native); returns a namespace."""
    class W:
        pass
    w = W()
    w.proj = tmp_path / "prod-project"
    w.proj.mkdir()
    w.prod_bdir = w.proj / "backups"
    w.dev_bdir = tmp_path / "dev-backups"
    w.prod_db, w.dev_db = prod_db, dbname
    w.prod_sql = prod_sql(pg_container)
    w.hosts = {"prod": prod_host(ssh_server, pg_container, w.proj, prod_db),
               "dev": native_host(pg, dbname, w.dev_bdir)}
    w.write = lambda: write_inventory(tmp_path / "inventory.yaml", w.hosts, defaults={"host": "dev"},
                                      groups={"production": ["prod"]})
    w.inv = w.write()
    return w


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _archives(d: Path) -> list[Path]:
    return sorted(p for p in d.glob("*") if p.suffix in (".gz", ".dump") and not p.name.endswith(".partial"))


def _change_prod(w):
    w.prod_sql("DELETE FROM coordinator_config_history; UPDATE users SET email = 'x' || id || '@changed.example';",
               w.prod_db)


# ----------------------------------------------------------------------------- scenario 4
def test_scenario_4_pull_from_prod_and_restore_on_dev_gives_prods_data(world, pg_sql, env):
    w = world
    prod_before = db_fingerprint(w.prod_sql, w.prod_db)
    dev_before = db_fingerprint(pg_sql, w.dev_db)
    w.prod_sql("UPDATE users SET email = 'prod-only-' || id || '@example.org' WHERE id % 7 = 0", w.prod_db)
    prod_before = db_fingerprint(w.prod_sql, w.prod_db)
    assert prod_before != dev_before and prod_before["tables"]["public.users"].split()[0] != "0"

    stale = w.dev_bdir / "prod" / f"{w.prod_db}_backup_20200101_000000.sql.gz.partial"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an interrupted pull")
    other = w.dev_bdir / "prod" / "otherdb_backup_20200101_000000.sql.gz.partial"
    other.write_bytes(b"another database's pull: not ours to remove")
    r = cli("db.pull", "-i", str(w.inv), "--from", "prod", "--to", "dev", "--restore", "--yes", env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert not stale.exists() and other.exists() and "a streamed pull starts over" in r.stderr
    other.unlink()
    assert db_fingerprint(pg_sql, w.dev_db) == prod_before          # dev now holds prod's data
    assert db_fingerprint(w.prod_sql, w.prod_db) == prod_before      # prod untouched
    assert not w.prod_bdir.exists() or dir_hashes(w.prod_bdir) == {}  # nothing written on prod's disk

    pulled = _archives(w.dev_bdir / "prod")
    # --restore without --format: prod's backup.format (plain), loaded while it arrived
    assert len(pulled) == 1 and pulled[0].name.startswith(f"{w.prod_db}_backup_") and pulled[0].name.endswith(".sql.gz")
    m = json.loads(Path(str(pulled[0]) + ".manifest.json").read_text())
    assert m["status"] == "DONE" and m["kind"] == "pulled" and m["origin_host"] == "prod"
    assert m["pulled_from"] == "prod" and m["pulled_at"] and m["pull_mode"] == "stream"
    # --restore: the SQL crosses SSH as it is and is compressed here while it loads (issue 21)
    assert m["format"] == "plain" and m["remote_exit_statuses"] == {"pg_dump": 0}
    assert m["compressor"].endswith("(here, while loading)") and "gzip" not in m["remote_pipeline"]
    assert m["sha256"] == _sha(pulled[0]) and m["bytes"] == pulled[0].stat().st_size
    assert m["access_mode"] == "ssh-container" and m["schema_migrations_head"]["version"] == "5"
    assert PROD_PW not in pulled[0].with_name(pulled[0].name + ".manifest.json").read_text()
    assert "Restored into dev" in r.stdout and "changed: [prod]" in r.stdout
    # the pulled backup is listed as prod's and is `latest` for a later restore
    lst = json.loads(cli("db.list", "-i", str(w.inv), "--host", "dev", "--origin", "prod", "--json", env=env).stdout)
    assert [(b["origin_host"], b["kind"], b["status"]) for b in lst["backups"]] == [("prod", "pulled", "DONE")]
    # a plain listing of dev (no backups of its own) points to them (a trial looked there)
    r = cli("db.list", "-i", str(w.inv), "--host", "dev", env=env)
    assert r.returncode == 0 and "no backups in" in r.stdout, r.stdout
    assert f"1 pulled from prod: bigskies-ops db.list --host dev --origin prod -i {w.inv}" in r.stdout, r.stdout


def test_backup_on_prod_pull_resume_and_restore_back_into_protected_prod(world, env):
    """db.backup --host prod --pull; db.list/status remotely; --existing: already present, resumed
    from a partial, a corrupt partial refused; db.restore/db.exec --host prod with protected flags."""
    w = world
    r = cli("db.backup", "-i", str(w.inv), "--host", "prod", "--format", "custom", "--pull", "--label", "nightly",
            env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    on_prod = _archives(w.prod_bdir)
    assert len(on_prod) == 1 and on_prod[0].suffix == ".dump"
    src = on_prod[0]
    data = src.read_bytes()
    m = json.loads(Path(str(src) + ".manifest.json").read_text())
    assert m["status"] == "DONE" and m["origin_host"] == "prod" and m["label"] == "nightly"
    assert m["remote_exit_statuses"] == {"pg_dump": 0} and m["sha256"] == _sha(src)
    rows = {t["name"]: t["rows"] for t in m["tables"]}
    assert rows["users"] == int(w.prod_sql("SELECT count(*) FROM users", w.prod_db))
    pdir = w.dev_bdir / "prod"
    local = pdir / src.name
    assert local.read_bytes() == data
    # the summary says where the copy is, and the restore hint names that local copy
    # (a trial saw "Pulled to" above "Backup completed" and a hint to pull it again)
    out = r.stdout
    assert out.index("Backup completed successfully") < out.index(f"   Pulled to: {local} (size and sha256 checked")
    assert f"bigskies-ops db.restore {local} --host dev -i {w.inv}" in out and "--existing" not in out, out
    lm = json.loads(Path(str(local) + ".manifest.json").read_text())
    assert lm["sha256"] == m["sha256"] and lm["pulled_from"] == f"prod:{src}" and lm["origin_host"] == "prod"

    lst = json.loads(cli("db.list", "-i", str(w.inv), "--host", "prod", "--json", env=env).stdout)
    assert [b["name"] for b in lst["backups"]] == [src.name]
    st = json.loads(cli("db.status", "-i", str(w.inv), "--host", "prod", "--json", env=env).stdout)
    assert st["access_mode"] == "ssh-container" and st["container"]["status"] == "running"
    r = cli("db.pull", "-i", str(w.inv), "--from", "prod", "--existing", env=env)
    assert r.returncode == 0 and "Already here" in r.stdout, r.stderr + r.stdout

    # an interrupted --existing pull resumes at its .partial's size; the whole file is re-hashed
    local.unlink()
    Path(str(local) + ".manifest.json").unlink()
    partial = pdir / (src.name + ".partial")
    partial.write_bytes(data[: len(data) // 2])
    r = cli("db.pull", "-i", str(w.inv), "--from", "prod", "--existing", "latest", env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert f"resuming {src.name} at byte {len(data) // 2}" in r.stderr
    assert local.read_bytes() == data and not partial.exists()
    local.unlink()
    Path(str(local) + ".manifest.json").unlink()
    partial.write_bytes(b"\0" * 100)  # wrong bytes: the whole-file re-hash must catch them
    r = cli("db.pull", "-i", str(w.inv), "--from", "prod", "--existing", src.name, env=env)
    assert r.returncode == 1 and "does not match prod's copy" in r.stderr, r.stderr
    assert not partial.exists() and not local.exists()
    r = cli("db.pull", "-i", str(w.inv), "--from", "prod", "--existing", src.name, env=env)
    assert r.returncode == 0 and local.read_bytes() == data

    # restore the pulled archive back into prod (protected): refused without the flags
    before = db_fingerprint(w.prod_sql, w.prod_db)
    _change_prod(w)
    r = cli("db.restore", str(local), "-i", str(w.inv), "--host", "prod", "--yes", env=env)
    assert r.returncode == 3 and "--force-protected --confirm" in r.stderr
    # a wrong --confirm is named as such (a trial got the same message as for a missing one)
    r = cli("db.restore", str(local), "-i", str(w.inv), "--host", "prod", "--yes", "--force-protected",
            "--confirm", "nope", env=env)
    assert r.returncode == 3 and "(--confirm nope is not the database name)" in r.stderr, r.stderr
    r = cli("db.restore", str(local), "-i", str(w.inv), "--host", "prod", "--yes", "--force-protected",
            "--confirm", w.prod_db, env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    # hints name the command that ran (python -m bigskies_ops == bigskies-ops), never `inv`
    assert "(undo: bigskies-ops db.restore --undo --host prod" in r.stdout and "inv db." not in r.stdout, r.stdout
    # ... and repeat -i FILE: without it a copied hint acts on ./inventory.yaml (break-it trial)
    assert f"  bigskies-ops db.status --host prod -i {w.inv}" in r.stdout, r.stdout
    assert db_fingerprint(w.prod_sql, w.prod_db) == before
    r = cli("db.exec", "-i", str(w.inv), "--host", "prod", "--sql", "SELECT count(*) AS n FROM users;", env=env)
    assert r.returncode == 0 and before["tables"]["public.users"].split()[0] in r.stdout, r.stderr
    # a write on the protected host is refused by PostgreSQL (read-only session): exit 3, the
    # flags to pass, and no stray "SET" in the output (the read-only rule is a session setting)
    r = cli("db.exec", "-i", str(w.inv), "--host", "prod", "--sql", "DELETE FROM users;", env=env)
    assert r.returncode == 3, r.stderr
    assert "prod is protected, so db.exec runs read-only there" in r.stderr, r.stderr
    assert f"pass --write --force-protected --confirm {w.prod_db}" in r.stderr and "SET" not in r.stdout, r.stdout
    assert db_fingerprint(w.prod_sql, w.prod_db) == before
    # db.psql -c SQL runs it and exits, like psql -c (it opened an interactive shell that
    # waited on the remote pty); so does SQL piped to db.psql; both read-only here too
    r = cli("db.psql", "-i", str(w.inv), "--host", "prod", "-c", "SELECT 6 * 7 AS the_answer;", env=env, timeout=60)
    assert r.returncode == 0 and "the_answer" in r.stdout and "42" in r.stdout, r.stderr
    r = cli("db.psql", "-i", str(w.inv), "--host", "prod", env=env, input="SELECT 7 * 6 AS piped;\n", timeout=60)
    assert r.returncode == 0 and "piped" in r.stdout and "42" in r.stdout, r.stderr
    r = cli("db.psql", "-i", str(w.inv), "--host", "prod", "-c", "DELETE FROM users;", env=env, timeout=60)
    assert r.returncode == 3 and "db.psql runs read-only there" in r.stderr, r.stderr
    r = cli("db.psql", "-i", str(w.inv), "--host", "prod", "-c", "SELECT no_such_function();", env=env, timeout=60)
    assert r.returncode == 1 and "the SQL failed (psql exit status 3): " in r.stderr, r.stderr
    assert "no_such_function" in r.stderr, r.stderr
    assert db_fingerprint(w.prod_sql, w.prod_db) == before


def test_restore_pull_uses_the_source_hosts_backup_format(tmp_path):
    ssh = {"host": "127.0.0.1"}
    doc = {"groups": {"fleet": {"hosts": ["bygroup"], "vars": {"backup": {"format": "plain"}}}},
           "hosts": {"bare": {"connection": "ssh", "project_dir": "/srv", "ssh": ssh},
                     "byhost": {"connection": "ssh", "project_dir": "/srv", "ssh": ssh, "backup": {"format": "plain"}},
                     "bygroup": {"connection": "ssh", "project_dir": "/srv", "ssh": ssh}}}
    h = parse(doc, tmp_path / "inv.yaml").hosts
    assert h["bare"].backup.format == "plain"                      # the built-in default ...
    assert pull_format(h["bare"], None, restore=True) == "plain"    # ... also for --restore (loaded while it arrives)
    assert pull_format(h["bare"], "custom", restore=True) == "custom"
    assert pull_format(h["bare"], None, restore=False) == "plain"
    assert pull_format(h["bare"], "plain", restore=True) == "plain"  # --format wins
    assert pull_format(h["byhost"], None, restore=True) == "plain"   # set in the inventory: kept
    assert pull_format(h["bygroup"], None, restore=True) == "plain"
    doc["defaults"] = {"backup": {"format": "plain"}}
    assert pull_format(parse(doc, tmp_path / "inv.yaml").hosts["bare"], None, restore=True) == "plain"


@pytest.fixture
def raw_prod(tmp_path, ssh_server):
    """An SSH host 'prod' (no PostgreSQL needed) with one 3 MB archive and its DONE manifest in
    its backup dir, and a local host 'laptop'; returns a namespace."""
    class R:
        pass
    r = R()
    r.bdir = tmp_path / "proj" / "backups"
    r.bdir.mkdir(parents=True)
    r.name = "bigskies_backup_20261129_093000.dump"
    r.data = os.urandom(3_000_000)
    (r.bdir / r.name).write_bytes(r.data)
    r.man = {"schema_version": 1, "status": "DONE", "kind": "manual", "origin_host": "prod", "database": "bigskies",
             "archive": r.name, "format": "custom", "sha256": hashlib.sha256(r.data).hexdigest(),
             "bytes": len(r.data), "started_at": "2026-11-29T09:30:00Z", "verifications": [], "offsite": []}
    (r.bdir / (r.name + ".manifest.json")).write_text(json.dumps(r.man))
    r.local = tmp_path / "laptop-backups"
    r.pdir = r.local / "prod"
    r.inv = write_inventory(tmp_path / "inv.yaml", {
        "prod": {"connection": "ssh", "project_dir": str(tmp_path / "proj"), "ssh": ssh_block(ssh_server),
                 "postgres": {"database": "bigskies"}, "backup": {"dir": "backups"}},
        "laptop": {"postgres": {"database": "bigskies"}, "backup": {"dir": str(r.local)}}})
    return r


def test_resumed_existing_pull_rehashes_the_prefix_and_catches_a_corrupted_one(raw_prod, cli_env):
    r = raw_prod
    pull = ("db.pull", "-i", str(r.inv), "--from", "prod", "--to", "laptop", "--existing", r.name)
    local, partial = r.pdir / r.name, r.pdir / (r.name + ".partial")
    half = len(r.data) // 2
    r.pdir.mkdir(parents=True)
    bad = bytearray(r.data[:half])
    bad[half // 2] ^= 0xFF  # one flipped byte in the middle of what is already here
    partial.write_bytes(bytes(bad))
    p = cli(*pull, env=cli_env)
    assert p.returncode == 1, p.stderr + p.stdout
    assert f"resuming {r.name} at byte {half}" in p.stderr
    assert "does not match prod's copy" in p.stderr and "sha256 differs" in p.stderr
    assert not partial.exists() and not local.exists()
    assert (r.bdir / r.name).read_bytes() == r.data  # the source is untouched
    # a sound prefix resumes; only the rest crosses the wire, the whole file is checked
    partial.write_bytes(r.data[:half])
    p = cli(*pull, env=cli_env)
    assert p.returncode == 0, p.stderr + p.stdout
    assert local.read_bytes() == r.data and not partial.exists()
    m = json.loads((r.pdir / (r.name + ".manifest.json")).read_text())
    assert m["sha256"] == r.man["sha256"] and m["pull_resumed_at"] == half and m["pull_mode"] == "existing"
    assert m["pulled_from"] == f"prod:{r.bdir / r.name}"
    # a .partial larger than the archive starts over
    local.unlink()
    (r.pdir / (r.name + ".manifest.json")).unlink()
    partial.write_bytes(r.data + b"extra")
    p = cli(*pull, env=cli_env)
    assert p.returncode == 0 and "larger than the archive; starting over" in p.stderr, p.stderr
    assert local.read_bytes() == r.data


def test_existing_pull_after_a_kill_at_publishing_completes_the_record(raw_prod, cli_env):
    """What a kill between the two publishing steps leaves: a DONE manifest and the complete
    .partial (now), or - from a version that renamed first - the archive without a
    manifest, listed as a legacy file (break-it trial). A rerun completes either."""
    r = raw_prod
    pull = ("db.pull", "-i", str(r.inv), "--from", "prod", "--to", "laptop", "--existing", r.name)
    local, partial, lman = r.pdir / r.name, r.pdir / (r.name + ".partial"), r.pdir / (r.name + ".manifest.json")
    r.pdir.mkdir(parents=True)
    partial.write_bytes(r.data)
    lman.write_text(json.dumps(r.man))
    p = cli(*pull, env=cli_env)
    assert p.returncode == 0, p.stderr + p.stdout
    assert local.read_bytes() == r.data and not partial.exists() and json.loads(lman.read_text())["status"] == "DONE"
    lman.unlink()
    p = cli(*pull, env=cli_env)
    assert p.returncode == 0 and "already" in (p.stdout + p.stderr).lower(), p.stderr + p.stdout
    m = json.loads(lman.read_text())
    assert m["status"] == "DONE" and m["sha256"] == r.man["sha256"] and m["pull_mode"] == "existing"
    p = cli("db.list", "-i", str(r.inv), "--host", "laptop", "--origin", "prod", env=cli_env)
    assert p.returncode == 0 and "legacy" not in p.stdout.lower(), p.stdout


def test_existing_pull_of_a_missing_or_unfinished_archive_leaves_no_trace(raw_prod, cli_env):
    r = raw_prod
    before = dir_hashes(r.bdir)
    p = cli("db.pull", "-i", str(r.inv), "--from", "prod", "--to", "laptop", "--existing", "nope.dump", env=cli_env)
    assert p.returncode == 1 and f"prod:{r.bdir / 'nope.dump'}: no such file" in p.stderr, p.stderr
    assert not r.local.exists() and dir_hashes(r.bdir) == before  # no folder, lock or empty .partial left
    (r.bdir / (r.name + ".manifest.json")).write_text(json.dumps(dict(r.man, status="FAILED")))
    before = dir_hashes(r.bdir)
    p = cli("db.pull", "-i", str(r.inv), "--from", "prod", "--to", "laptop", "--existing", r.name, env=cli_env)
    assert p.returncode == 1 and "its manifest says FAILED; refusing to pull it" in p.stderr, p.stderr
    assert not r.local.exists() and dir_hashes(r.bdir) == before


# ----------------------------------------------------------------------------- bad inputs
def test_a_side_database_that_cannot_be_created_stops_the_pull_and_keeps_the_old_database(world, pg, pg_sql, env):
    """The dump starts beside the side database's CREATE DATABASE (issue 21): when that
    CREATE fails, the pull is stopped (no archive kept, no .partial), no side database is
    left and dev is untouched. The failure is the server's own: CREATE DATABASE refuses a
    template another session is connected to (after its 5 s wait)."""
    w = world
    w.prod_sql(_FILLER, w.prod_db)  # more SQL than the hand-off holds: the pull cannot end before the CREATE fails
    before = db_fingerprint(pg_sql, w.dev_db)
    databases = set(pg_sql("SELECT datname FROM pg_database", "postgres").split())
    pg_sql("UPDATE pg_database SET datallowconn = true WHERE datname = 'template0'", "postgres")
    holder = subprocess.Popen([f"{PG_BINDIR}/psql", "-X", "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "bigskies",
                               "-d", "template0"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: pg_sql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'template0'",
                                "postgres").strip() == "1", 30, "the session on template0")
        r = cli("db.pull", "-i", str(w.inv), "--from", "prod", "--to", "dev", "--restore", "--yes", env=env)
    finally:
        holder.kill()
        holder.wait()
        pg_sql("UPDATE pg_database SET datallowconn = false WHERE datname = 'template0'", "postgres")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and 'source database "template0" is being accessed by other users' in r.stderr
    assert set(pg_sql("SELECT datname FROM pg_database", "postgres").split()) == databases  # no side database
    assert db_fingerprint(pg_sql, w.dev_db) == before
    pulled = w.dev_bdir / "prod"
    assert _archives(pulled) == [] and not list(pulled.glob("*.partial")), sorted(pulled.iterdir())
    failed = [json.loads(m.read_text()) for m in pulled.glob("*.manifest.json")]
    assert [m["status"] for m in failed] == ["FAILED"] and "could not create its side database" in failed[0]["error"]
    wait_for(lambda: "pg_dump" not in w.prod_sql("SELECT application_name FROM pg_stat_activity", "postgres"), 15,
             "the dump on prod to stop")


def test_pull_to_a_protected_host_without_flags_is_refused_and_pulls_nothing(world, pg_sql, env):
    w = world
    w.hosts["dev"]["protected"] = True
    inv = w.write()
    before = db_fingerprint(pg_sql, w.dev_db)
    r = cli("db.pull", "-i", str(inv), "--from", "prod", "--to", "dev", "--restore", "--yes", env=env)
    assert r.returncode == 3, r.stderr
    assert f"dev is protected; pull --to needs --force-protected --confirm {w.dev_db}" in r.stderr
    assert not w.dev_bdir.exists() and db_fingerprint(pg_sql, w.dev_db) == before
    # --to left out: dev is the default destination, and the same policy applies (break-it trial)
    r = cli("db.pull", "-i", str(inv), "--from", "prod", env=env)
    assert r.returncode == 3 and "dev is protected" in r.stderr, r.stderr
    assert not w.dev_bdir.exists() and db_fingerprint(pg_sql, w.dev_db) == before


@pytest.mark.parametrize("spec,message", [
    ("/etc/shadow", "--existing /etc/shadow: not a backup archive"),
    ("../../etc/passwd", "not a backup archive"),
    ("", "--existing: give 'latest' or an archive's file name"),
])
def test_existing_pull_copies_archives_only(raw_prod, cli_env, spec, message):
    r = raw_prod
    p = cli("db.pull", "-i", str(r.inv), "--from", "prod", "--to", "laptop", "--existing", spec, env=cli_env)
    assert p.returncode == 2 and message in p.stderr, p.stderr + p.stdout
    assert not r.local.exists()


def test_remote_container_missing_is_named(world, env):
    w = world
    w.hosts["prod"]["container"]["name"] = "no-such-container"
    inv = w.write()
    r = cli("db.pull", "-i", str(inv), "--from", "prod", "--to", "dev", env=env)
    assert r.returncode == 1, r.stderr
    assert "container 'no-such-container' does not exist on prod" in r.stderr
    assert _archives(w.dev_bdir / "prod") == [] and not list((w.dev_bdir / "prod").glob("*.partial"))


def test_remote_disk_full_fails_cleanly_and_harms_nothing(world, env):
    w = world
    w.prod_bdir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(w.prod_bdir)], check=True)
    try:
        before_db = db_fingerprint(w.prod_sql, w.prod_db)
        r = cli("db.backup", "-i", str(w.inv), "--host", "prod", "--skip-space-check", env=env)
        assert r.returncode == 1, r.stderr + r.stdout
        assert "prod: file system full on prod" in r.stderr
        names = os.listdir(w.prod_bdir)
        assert not [n for n in names if n.endswith(".sql.gz") or n.endswith(".partial")], names
        mans = [json.loads((w.prod_bdir / n).read_text()) for n in names if n.endswith(".manifest.json")]
        assert [m["status"] for m in mans] == ["FAILED"] and mans[0]["remote_exit_statuses"]["gzip"] != 0
        assert db_fingerprint(w.prod_sql, w.prod_db) == before_db
    finally:
        subprocess.run(["umount", str(w.prod_bdir)], check=True)


def test_remote_backup_without_room_fails_before_the_dump(world, env):
    w = world
    w.prod_bdir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(w.prod_bdir)], check=True)
    try:
        r = cli("db.backup", "-i", str(w.inv), "--host", "prod", env=env)
        assert r.returncode == 1, r.stderr + r.stdout
        assert "Traceback" not in r.stderr
        assert "not enough free space" in r.stderr and "--skip-space-check" in r.stderr
        names = os.listdir(w.prod_bdir)
        assert not [n for n in names if n.endswith(".sql.gz") or n.endswith(".partial")], names
        mans = [json.loads((w.prod_bdir / n).read_text()) for n in names if n.endswith(".manifest.json")]
        assert [(m["status"], m["phase"]) for m in mans] == [("FAILED", "space")]
    finally:
        subprocess.run(["umount", str(w.prod_bdir)], check=True)


def test_remote_pg_dump_failing_in_ssh_native_mode(tmp_path, pg, dbname, pg_sql, ssh_server, env):
    """ssh-native: the native cluster reached over SSH with a pgpass file; pg_dump dies mid-dump."""
    bindir = wrapped_pg_dump_bindir(tmp_path / "bin", '"$REAL" "$@" | head -c 20000\n'
                                    'echo "pg_dump: error: simulated failure" >&2; exit 1\n')
    dev_bdir = tmp_path / "dev-backups"
    inv = write_inventory(tmp_path / "inv.yaml", {
        "prodn": {"connection": "ssh", "project_dir": str(tmp_path / "proj"), "ssh": ssh_block(ssh_server),
                  "postgres": {"host": "127.0.0.1", "port": pg.port, "database": dbname, "user": "bigskies",
                               "password_env": PASSWORD_ENV, "bindir": str(bindir)}},
        "dev": native_host(pg, dbname, dev_bdir)})
    before = db_fingerprint(pg_sql, dbname)
    r = cli("db.pull", "-i", str(inv), "--from", "prodn", "--to", "dev", "--restore", "--yes", env=env)
    assert r.returncode == 1, r.stderr + r.stdout
    assert "simulated failure" in r.stderr
    pdir = dev_bdir / "prodn"
    assert _archives(pdir) == [] and not list(pdir.glob("*.partial"))
    m = [json.loads(p.read_text()) for p in pdir.glob("*.manifest.json")]
    assert [x["status"] for x in m] == ["FAILED"] and m[0]["remote_exit_statuses"]["pg_dump"] == 1
    assert db_fingerprint(pg_sql, dbname) == before
    # the load that followed the pull was stopped and its side database dropped
    assert [d for d in pg_sql("SELECT datname FROM pg_database", "postgres").split() if "_restoring_" in d] == []
    # the same host without the broken pg_dump: ssh-native backup on the host works
    txt = Path(inv).read_text().replace(str(bindir), PG_BINDIR)
    Path(inv).write_text(txt)
    r = cli("db.backup", "-i", str(inv), "--host", "prodn", env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert len(_archives(tmp_path / "proj" / "backups/database")) == 1


def test_connection_dropped_mid_pull_fails_and_leaves_nothing(world, pg_sql, pg_container, ssh_server, env):
    w = world
    dev_before = db_fingerprint(pg_sql, w.dev_db)
    with TableLock(pg_container, w.prod_db):
        p = subprocess.Popen(
            [os.sys.executable, "-m", "bigskies_ops", "db.pull", "-i", str(w.inv), "--from", "prod", "--to", "dev",
             "--restore", "--yes"], env=env, cwd=str(Path(__file__).resolve().parents[3]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: pg_dump_waiting(pg_container, w.prod_db), 60, "pg_dump blocked on the lock")
            # CONTRACTS s.3: while pg_dump is held, no command line on either end carries the password
            # (both ends are this machine; the remote one is sshd's child tree and the container's)
            assert not _cmdlines_with(PROD_PW)
            assert kill_ssh_sessions(ssh_server)
            out, err = p.communicate(timeout=60)
            # prod's side stops too, while the lock is still held (nothing would write to the
            # dead channel and end it with SIGPIPE): the engine client that runs pg_dump in
            # the container is gone (ssh.WRAPPER). The pg_dump inside the container itself
            # goes at its next write (access.tool_argv says why nothing of ours runs there).
            wait_for(lambda: not _engine_clients(pg_container.name, w.prod_db), 15, "prod's podman exec to stop")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert p.returncode == 1, err + out
    assert "SSH connection was lost" in err or "connection" in err.lower(), err
    pdir = w.dev_bdir / "prod"
    assert _archives(pdir) == [] and not list(pdir.glob("*.partial"))
    # our pipeline's marker lines (process group, stage statuses) are not the user's business
    assert "@@bigskies" not in err and all("@@bigskies" not in m.read_text() for m in pdir.glob("*.manifest.json"))
    assert db_fingerprint(pg_sql, w.dev_db) == dev_before
    assert [d for d in pg_sql("SELECT datname FROM pg_database", "postgres").split() if "_restoring_" in d] == []


def _engine_clients(container: str, database: str) -> list[int]:
    """Pids of ``podman exec ... CONTAINER .../pg_dump ... DATABASE`` processes on this machine."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if (argv[0].endswith("podman") and "exec" in argv and container in argv and database in argv
                    and any(a.endswith("/pg_dump") for a in argv)):
                pids.append(int(d.name))
    return pids


def _cmdlines_with(secret: str) -> list[str]:
    hits = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if secret.encode() in cmd:
                hits.append(cmd.replace(b"\0", b" ").decode(errors="replace"))
    return hits


def test_stalled_transfer_times_out_with_a_clear_error(world, pg_container, env):
    w = world
    w.hosts["prod"]["backup"] = {"dir": "backups", "stall_timeout": 3}
    inv = w.write()
    with TableLock(pg_container, w.prod_db):
        t0 = time.monotonic()
        r = cli("db.pull", "-i", str(inv), "--from", "prod", "--to", "dev", env=env, timeout=120)
        took = time.monotonic() - t0
    assert r.returncode == 1, r.stderr
    assert "for 3 s (backup.stall_timeout)" in r.stderr and took < 60
    assert _archives(w.dev_bdir / "prod") == [] and not list((w.dev_bdir / "prod").glob("*.partial"))


def test_file_name_with_shell_metacharacters_stays_literal_on_both_sides(world, env):
    w = world
    w.prod_bdir.mkdir()
    name = "x; rm -rf y.sql.gz"
    payload = gzip.compress(b"-- not really a dump\n" * 1000)
    (w.prod_bdir / name).write_bytes(payload)
    (w.prod_bdir / "y.sql.gz").write_bytes(b"remote canary")
    local = w.dev_bdir / "prod"
    local.mkdir(parents=True)
    (local / "y.sql.gz").write_bytes(b"local canary")
    r = cli("db.pull", "-i", str(w.inv), "--from", "prod", "--existing", name, env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert (local / name).read_bytes() == payload
    assert (w.prod_bdir / "y.sql.gz").read_bytes() == b"remote canary"
    assert (local / "y.sql.gz").read_bytes() == b"local canary"
    assert (w.prod_bdir / name).read_bytes() == payload


def _psql_session(argv, env, script):
    """Run ``argv`` on a pseudo-terminal; ``script`` is a list of (wait for these bytes, then
    send these bytes). Returns (exit status, everything the terminal showed)."""
    import pty
    import select
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
                         cwd=str(Path(__file__).resolve().parents[3]))
    os.close(slave)
    out = b""
    steps = list(script)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            if steps and steps[0][0] in out:
                out = out.replace(steps[0][0], b"<seen>", 1)
                time.sleep(0.3)
                os.write(master, steps.pop(0)[1])
            if p.poll() is not None:
                break
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        os.close(master)
    return p.returncode, out.decode(errors="replace"), steps


def test_psql_on_prod_gets_a_real_terminal_and_is_read_only(world, env):
    w = world
    rc, text, left = _psql_session(
        [os.sys.executable, "-m", "bigskies_ops", "db.psql", "-i", str(w.inv), "--host", "prod"], env,
        [(b"=#", b"\\pset pager off\nSELECT 6 * 7 AS the_answer;\nDELETE FROM users;\n\\q\n")])
    assert left == [], text
    assert "the_answer" in text and "42" in text, text
    assert "read-only transaction" in text, text
    assert rc == 0, text


def test_psql_on_prod_ctrl_c_cancels_the_query_and_the_exit_status_comes_back(world, env):
    """The remote shell around psql (it removes the private files when psql ends) must not
    end on Ctrl-C: psql cancels the query and the session goes on. A psql that cannot
    connect exits 2, and so does db.psql (it returned 0 for SSH hosts)."""
    w = world
    argv = [os.sys.executable, "-m", "bigskies_ops", "db.psql", "-i", str(w.inv), "--host", "prod"]
    rc, text, left = _psql_session(argv, env, [
        (b"=#", b"\\pset pager off\nSELECT pg_sleep(60);\n"),
        (b"pg_sleep", b"\x03"),
        (b"canceling statement due to user request", b"SELECT 6 * 7 AS the_answer;\n"),
        (b"42", b"\\q\n")])
    assert left == [], text
    assert rc == 0, text
    w.hosts["prod"]["postgres"]["database"] = "no_such_database"
    w.write()
    rc, text, _ = _psql_session(argv, env, [])
    assert rc == 2 and "no_such_database" in text, text


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def test_a_killed_existing_pull_takes_its_ssh_client_along(raw_prod, cli_env):
    """The OpenSSH client writes the .partial itself: when the tool is SIGKILLed it must not
    live on and append to a file that a rerun resumes, checks and publishes (break-it trial)."""
    r = raw_prod
    big = "bigskies_backup_20261129_094500.dump"
    data = os.urandom(64 << 20)
    (r.bdir / big).write_bytes(data)
    man = dict(r.man, archive=big, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (r.bdir / (big + ".manifest.json")).write_text(json.dumps(man))
    p = subprocess.Popen([sys.executable, "-m", "bigskies_ops", "db.pull", "-i", str(r.inv), "--from", "prod", "--to", "laptop",
                          "--existing", big], env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ssh = None
    deadline = time.monotonic() + 30
    while ssh is None and time.monotonic() < deadline and p.poll() is None:
        for c in _children(p.pid):
            try:
                cmd = Path(f"/proc/{c}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"/ssh") for a in cmd) and b"--pdeathsig" not in cmd:  # exec'd into ssh
                ssh = c
                os.kill(c, signal.SIGSTOP)  # a slow link: the copy is still going when we die
                break
        time.sleep(0.002)
    assert ssh is not None, "the ssh client was not seen"
    p.kill()
    p.wait()
    try:
        wait_for(lambda: process_gone(ssh), 10, "the ssh client to die with the tool")
    finally:
        try:
            os.kill(ssh, signal.SIGKILL)
        except ProcessLookupError:
            pass
    partial = r.pdir / (big + ".partial")
    size = partial.stat().st_size if partial.exists() else 0
    time.sleep(0.5)
    assert (partial.stat().st_size if partial.exists() else 0) == size  # nobody writes any more
    # the rerun resumes what is there and publishes exactly the archive
    p2 = cli("db.pull", "-i", str(r.inv), "--from", "prod", "--to", "laptop", "--existing", big, env=cli_env)
    assert p2.returncode == 0, p2.stderr + p2.stdout
    assert hashlib.sha256((r.pdir / big).read_bytes()).hexdigest() == man["sha256"]


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_pull_restore_at_once_even_while_pg_dump_waits(world, pg_sql, pg_container, env, signum,
                                                                       code):
    """Ctrl-C / SIGTERM during ``db.pull --restore`` stop the pull too, at once: before, the
    tool waited for the whole dump and published it (break-it trial: exit 130 after 13 s
    with a DONE archive). Here pg_dump waits for a lock and sends nothing at all."""
    w = world
    dev_before = db_fingerprint(pg_sql, w.dev_db)
    with TableLock(pg_container, w.prod_db):
        p = subprocess.Popen(
            [sys.executable, "-m", "bigskies_ops", "db.pull", "-i", str(w.inv), "--from", "prod", "--to", "dev",
             "--restore", "--yes"], env=env, cwd=str(Path(__file__).resolve().parents[3]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background make test ignores it
        try:
            wait_for(lambda: pg_dump_waiting(pg_container, w.prod_db), 60, "pg_dump blocked on the lock")
            t0 = time.monotonic()
            p.send_signal(signum)
            out, err = p.communicate(timeout=60)
            took = time.monotonic() - t0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == code, err + out
        assert took < 15, f"took {took:.1f} s to stop"
    pdir = w.dev_bdir / "prod"
    assert _archives(pdir) == [] and not list(pdir.glob("*.partial"))
    assert [json.loads(m.read_text())["status"] for m in pdir.glob("*.manifest.json")] == ["FAILED"]
    assert db_fingerprint(pg_sql, w.dev_db) == dev_before
    assert [d for d in pg_sql("SELECT datname FROM pg_database", "postgres").split() if "_restoring_" in d] == []


def test_a_reader_gone_from_stderr_or_stdout_does_not_fail_the_pull(raw_prod, cli_env):
    """Progress and result lines that nobody reads any more (``2>&1 | head -1``, a closed
    pipe) do not fail the copy: it was failed as "writing the .partial failed: Broken pipe"."""
    r = raw_prod
    rd, wr = os.pipe()
    os.close(rd)  # every write to this pipe fails with EPIPE
    try:
        p = subprocess.run([sys.executable, "-m", "bigskies_ops", "db.pull", "-i", str(r.inv), "--from", "prod",
                            "--to", "laptop", "--existing", r.name], env=cli_env, stdout=wr, stderr=wr, timeout=120)
    finally:
        os.close(wr)
    assert p.returncode == 0
    assert (r.pdir / r.name).read_bytes() == r.data
    assert json.loads((r.pdir / (r.name + ".manifest.json")).read_text())["status"] == "DONE"


def test_a_rerun_marks_the_interrupted_pulls_manifest_failed(world, env):
    """A pull killed mid-stream leaves a .partial and a STARTED manifest; the next streamed
    pull removes the .partial and records that run as FAILED (it was listed as 'started'
    for ever). A pull that cannot even connect leaves no manifest (as db.backup)."""
    w = world
    pdir = w.dev_bdir / "prod"
    pdir.mkdir(parents=True)
    old = f"{w.prod_db}_backup_20261129_080000.sql.gz"
    (pdir / (old + ".partial")).write_bytes(b"\x1f\x8b half a dump")
    (pdir / (old + ".manifest.json")).write_text(json.dumps({"schema_version": 1, "status": "STARTED",
                                                            "archive": old, "database": w.prod_db,
                                                            "phase": "dump", "kind": "manual"}))
    r = cli("db.pull", "-i", str(w.inv), "--from", "prod", "--to", "dev", env=env)
    assert r.returncode == 0, r.stderr
    assert not (pdir / (old + ".partial")).exists()
    m = json.loads((pdir / (old + ".manifest.json")).read_text())
    assert m["status"] == "FAILED" and "interrupted" in m["error"]
    listed = cli("db.list", "-i", str(w.inv), "--host", "dev", "--json", env=env)
    assert "started" not in {b["status"].lower() for b in json.loads(listed.stdout)["backups"]}
    # cannot connect (sshd refuses: wrong port): no new manifest at all
    before = sorted(p.name for p in pdir.iterdir())
    w.hosts["prod"]["ssh"] = dict(w.hosts["prod"]["ssh"], port=1)
    r = cli("db.pull", "-i", str(w.write()), "--from", "prod", "--to", "dev", env=env)
    assert r.returncode == 1, r.stderr
    assert sorted(p.name for p in pdir.iterdir()) == before


# ----------------------------------------------------------------------------- the SQL handed to the load
# db.pull --restore hands prod's SQL to the load in memory, at most handoff.HANDOFF_BYTES
# (16 MiB) unread. These dumps carry ~48 MB of rows, so the pull really waits for the load
# (and, when the load has failed, must stop waiting).
_FILLER = ("CREATE TABLE handoff_filler (id int PRIMARY KEY, pad text NOT NULL); "
           "INSERT INTO handoff_filler SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 400000) g;")


def test_a_pull_larger_than_the_handoff_restores_every_row(world, pg_sql, env):
    w = world
    w.prod_sql(_FILLER, w.prod_db)
    prod_before = db_fingerprint(w.prod_sql, w.prod_db)
    r = cli("db.pull", "-i", str(w.inv), "--from", "prod", "--to", "dev", "--restore", "--yes", env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert db_fingerprint(pg_sql, w.dev_db) == prod_before
    m = json.loads(Path(str(_archives(w.dev_bdir / "prod")[0]) + ".manifest.json").read_text())
    assert m["status"] == "DONE" and _rows(m, "handoff_filler") == 400000


def _rows(manifest: dict, table: str) -> int:
    return next(t["rows"] for t in manifest["tables"] if (t["schema"], t["name"]) == ("public", table))


def test_a_load_that_fails_early_does_not_hold_the_pull_back(world, pg_sql, env):
    """The load stops at a role dev lacks, before any row; the ~48 MB after it must still
    reach the kept archive (the pull no longer waits for a reader), dev is untouched."""
    w = world
    role = f"handoff_owner_{w.prod_db[-6:]}"
    w.prod_sql(f'CREATE ROLE "{role}"', "postgres")
    try:
        w.prod_sql(_FILLER + f' ALTER TABLE handoff_filler OWNER TO "{role}";', w.prod_db)
        dev_before = db_fingerprint(pg_sql, w.dev_db)
        dbs_before = pg_sql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database", "postgres")
        r = cli("db.pull", "-i", str(w.inv), "--from", "prod", "--to", "dev", "--restore", "--yes", env=env,
                timeout=240)
        assert r.returncode == 3, r.stderr + r.stdout                     # refused (CONTRACTS.md section 5)
        assert role in r.stderr and "Nothing was changed" in r.stderr and "Traceback" not in r.stderr
        assert db_fingerprint(pg_sql, w.dev_db) == dev_before            # the old database is in place
        assert pg_sql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database", "postgres") == dbs_before
        pulled = _archives(w.dev_bdir / "prod")                           # the whole dump is kept, checked
        assert len(pulled) == 1, pulled
        m = json.loads(Path(str(pulled[0]) + ".manifest.json").read_text())
        assert m["status"] == "DONE" and m["sha256"] == _sha(pulled[0])
        assert _rows(m, "handoff_filler") == 400000
        with gzip.open(pulled[0], "rb") as f:
            assert sum(1 for line in f if line.startswith(b"400000\t")) == 1  # the last row made it
    finally:
        w.prod_sql(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER; DROP OWNED BY "{role}";', w.prod_db)
        w.prod_sql(f'DROP ROLE "{role}"', "postgres")


def test_a_lost_pull_stops_a_load_that_waits_for_a_lock(world, pg, pg_sql, ssh_server, env):
    """The load waits for a lock held in the side database while the pull, held back by the
    full handoff, still has rows to send; then the connection drops. The command ends at
    once (parload.ABORT_GRACE), not when the lock is released (found by a break trial)."""
    w = world
    w.prod_sql("CREATE FUNCTION handoff_gate(i int) RETURNS boolean LANGUAGE plpgsql AS "
               "$$BEGIN IF i = 1000 THEN PERFORM pg_advisory_lock(4242); PERFORM pg_advisory_unlock(4242); "
               "END IF; RETURN true; END$$; " + _FILLER.replace("pad text NOT NULL)", "pad text NOT NULL, "
                                                                 "CHECK (public.handoff_gate(id)))"), w.prod_db)
    dev_before = db_fingerprint(pg_sql, w.dev_db)
    p = subprocess.Popen([sys.executable, "-m", "bigskies_ops", "db.pull", "-i", str(w.inv), "--from", "prod", "--to",
                          "dev", "--restore", "--yes"], env=env, cwd=str(Path(__file__).resolve().parents[3]),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    holder = None
    side = lambda: [d for d in pg_sql("SELECT datname FROM pg_database", "postgres").split() if "_restoring_" in d]  # noqa: E731
    try:
        wait_for(side, 60, "the side database")
        holder = subprocess.Popen(["/usr/lib/postgresql/15/bin/psql", "-X", "-h", str(pg.socket_dir), "-p", str(pg.port),
                                   "-U", "bigskies", "-d", side()[0], "-c", "SELECT pg_advisory_lock(4242), pg_sleep(600)"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        waiting = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                   "AND datname LIKE '%\\_restoring\\_%'")
        wait_for(lambda: pg_sql(waiting, "postgres").strip() == "1", 60, "the load to wait for the lock")
        time.sleep(3)  # the handoff fills: the pull waits for the load
        assert p.poll() is None and holder.poll() is None
        assert kill_ssh_sessions(ssh_server)
        out, err = p.communicate(timeout=60)  # the lock is held for 600 s
    finally:
        for proc in (p, holder):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert p.returncode == 1, err + out
    assert "SSH connection was lost" in err and "Traceback" not in err, err
    assert db_fingerprint(pg_sql, w.dev_db) == dev_before
    assert side() == []
    pdir = w.dev_bdir / "prod"
    assert _archives(pdir) == [] and not list(pdir.glob("*.partial"))
