"""``db.restore --check`` (and ``--undo --check``, ``--target-db --check``) on a real
PostgreSQL 15: the plan names the archive and its checks, the side database, the
sessions, what would be dropped and the space figures; nothing changes (database oids
and names, the backup folder's files and mtimes); exit 0 without --yes.

Also the doc/behaviour fixes of issue 18 for restore: a group holding a protected host
is refused (docs/safety.md), ``--target-db``'s "Verify with" names the new database,
``--undo`` does not call the copy it swaps back "the restored copy".
"""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from tests.conftest import cli, native_host, write_inventory
from tests.integration.restore.test_restore_safety import HeldSession, _backup, _last_error
from tests.pgcheck import db_fingerprint


def _databases(pg_sql) -> dict[str, str]:
    """name -> oid of every database (a dropped, created or renamed one changes this)."""
    rows = pg_sql("SELECT datname || '|' || oid FROM pg_database", "postgres").splitlines()
    return dict(r.rsplit("|", 1) for r in rows if r)


def _files(path: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``path`` with its size and mtime (ns)."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()} if path.exists() else {}


def _state(pg_sql, bdir):
    return _databases(pg_sql), _files(Path(bdir))


def _check(inv, env, *args):
    r = cli("db.restore", "-i", str(inv), *args, "--check", env=env)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr + r.stdout
    return r


def test_restore_check_names_the_plan_and_changes_nothing(pg, pg_sql, tmp_path, dbname, cli_env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir, backup={"keep_pre_restore": 1})})
    archive = _backup(inv, cli_env)
    r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=cli_env)  # leaves one pre-restore copy
    assert r.returncode == 0, r.stderr
    (old_copy,) = [d for d in _databases(pg_sql) if d.startswith(dbname + "_pre_")]
    held = HeldSession(pg, dbname)
    try:
        before, fp = _state(pg_sql, bdir), db_fingerprint(pg_sql, dbname)
        r = _check(inv, cli_env, "latest")
        out = r.stdout
        assert "CHECK MODE (db.restore --check): nothing is changed" in out
        assert str(archive) in out and "manifest DONE" in out and "plain" in out
        assert "check ok: archive (manifest DONE, size and sha256" in out
        assert f"create side database '{dbname}_restoring_" in out
        assert f"pid {held.backend_pid} bigskies@local held_by_test" in out
        assert f"kept as '{dbname}_pre_" in out
        assert f"drop database '{old_copy}'" in out and "keep_pre_restore = 1" in out
        assert "space on the server: about" in out and "free" in out
        assert "the real run would REFUSE" in out and "--terminate-sessions" in out  # as the real run would
        assert "ok (check): [dev]" in out  # refused: the run would change nothing
        # the same plan in JSON, with the sessions' end planned under --terminate-sessions
        r = _check(inv, cli_env, "latest", "--json", "--terminate-sessions")
        doc = json.loads(r.stdout)
        assert doc["check"] is True and doc["result"] == "changed" and doc["host"] == "dev"
        plan = doc["plan"]
        assert plan["archive"]["path"] == str(archive) and plan["archive"]["bytes"] == archive.stat().st_size
        assert plan["archive"]["manifest"] == "DONE" and plan["refusals"] == []
        assert [s["pid"] for s in plan["sessions"]] == [held.backend_pid]
        assert plan["side_db"].startswith(dbname + "_restoring_")
        assert [d["name"] for d in plan["drop"]] == [old_copy]
        assert plan["space"]["needed"] > 0 and plan["space"]["free"] > 0 and plan["missing_roles"] == []
        assert all(c["ok"] for c in plan["checks"])
        assert held.alive()  # nothing ended
        assert _state(pg_sql, bdir) == before and db_fingerprint(pg_sql, dbname) == fp
    finally:
        held.close()


def test_restore_check_reports_a_corrupt_archive_as_the_run_would_refuse_it(pg, pg_sql, tmp_path, dbname, cli_env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    archive = _backup(inv, cli_env)
    bad = tmp_path / "other" / archive.name
    bad.parent.mkdir()
    bad.write_bytes(archive.read_bytes()[:-100])
    Path(str(bad) + ".manifest.json").write_bytes(Path(str(archive) + ".manifest.json").read_bytes())
    before = _state(pg_sql, bdir), _files(bad.parent)
    r = _check(inv, cli_env, str(bad), "--json")
    plan = json.loads(r.stdout)["plan"]
    assert plan["checks"][0]["ok"] is False and "differs from the manifest" in plan["checks"][0]["detail"]
    assert any("differs from the manifest" in x for x in plan["refusals"])
    assert json.loads(r.stdout)["result"] == "ok"  # refused: would change nothing
    r = _check(inv, cli_env, str(bad))
    assert "check FAILED: archive" in r.stdout and "the real run would REFUSE" in r.stdout
    # a name that names no archive cannot be planned: a lookup error, as in the run and in
    # db.delete --check (exit 1; docs/cli.md "Dry runs")
    r2 = cli("db.restore", "-i", str(inv), "no-such-archive.sql.gz", "--check", env=cli_env)
    assert r2.returncode == 1 and "no such file" in r2.stderr and "CHECK MODE" not in r2.stdout, r2.stderr
    assert (_state(pg_sql, bdir), _files(bad.parent)) == before


def test_target_db_check_then_run_names_the_new_database(pg, pg_sql, tmp_path, dbname, cli_env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    archive = _backup(inv, cli_env)
    target = dbname + "_scratch"
    before = _state(pg_sql, bdir)
    plan = json.loads(_check(inv, cli_env, str(archive), "--target-db", target, "--json").stdout)["plan"]
    assert plan["target_db"] == target and plan["database"] == target and plan["pre_restore_copy"] is None
    assert plan["side_db"].startswith(target + "_restoring_") and plan["drop"] == [] and plan["refusals"] == []
    assert _state(pg_sql, bdir) == before
    r = cli("db.restore", str(archive), "-i", str(inv), "--target-db", target, env=cli_env)
    assert r.returncode == 0, r.stderr
    verify = r.stdout.split("Verify with:", 1)[1]
    assert target in verify and "db.status" not in verify  # not a hint that inspects the main database
    cmd = verify.strip().splitlines()[0].strip()
    assert cmd.startswith(("inv db.psql", "bigskies-ops db.psql"))
    r = cli(*shlex.split(cmd)[1:], env=cli_env)  # the hint itself, as copied
    assert r.returncode == 0 and "users" in r.stdout, r.stderr + r.stdout


def test_undo_check_names_the_copy_and_the_undo_says_what_it_swapped(pg, pg_sql, tmp_path, dbname, cli_env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    r = _check(inv, cli_env, "--undo", "--json")
    plan = json.loads(r.stdout)["plan"]
    assert plan["restored_from"] is None and "no pre-restore copy" in plan["refusals"][0]
    archive = _backup(inv, cli_env)
    assert cli("db.restore", str(archive), "-i", str(inv), "--yes", env=cli_env).returncode == 0
    (copy,) = [d for d in _databases(pg_sql) if d.startswith(dbname + "_pre_")]
    before = _state(pg_sql, bdir)
    r = _check(inv, cli_env, "--undo")
    assert f"swap the pre-restore copy '{copy}'" in r.stdout and f"kept as '{dbname}_pre_" in r.stdout
    plan = json.loads(_check(inv, cli_env, "--undo", "--json").stdout)["plan"]
    assert plan["restored_from"] == copy and plan["refusals"] == []
    assert _state(pg_sql, bdir) == before
    r = cli("db.restore", "--undo", "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "the restored copy" not in r.stderr + r.stdout
    assert f"is the pre-restore copy '{copy}' again" in r.stderr


def test_protected_host_check_names_the_flags_and_a_group_is_refused(pg, pg_sql, tmp_path, dbname, cli_env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml",
                          {"prod": native_host(pg, dbname, bdir, protected=True),
                           "dev": native_host(pg, dbname, tmp_path / "d")},
                          groups={"live": ["prod"], "both": ["prod", "dev"]})
    archive = _backup(inv, cli_env, "--host", "prod")
    before, fp = _state(pg_sql, bdir), db_fingerprint(pg_sql, dbname)
    r = _check(inv, cli_env, str(archive), "--host", "prod")
    assert f"needs --force-protected --confirm {dbname}" in r.stdout and "REFUSE" in r.stdout
    # a group holding prod is refused even with the flags, even when it selects prod alone
    for group in ("live", "both"):
        r = cli("db.restore", str(archive), "-i", str(inv), "--host", group, "--yes", "--force-protected",
                "--confirm", dbname, env=cli_env)
        assert r.returncode == 3, r.stderr + r.stdout
        assert f"group '{group}' containing protected host(s) prod" in _last_error(r)
    r = _check(inv, cli_env, str(archive), "--host", "live", "--force-protected", "--confirm", dbname)
    assert "group 'live' containing protected host(s) prod" in r.stdout
    r = cli("db.restore", str(archive), "-i", str(inv), "--host", "live", "--target-db", dbname + "_t", env=cli_env)
    assert r.returncode == 3, r.stderr
    assert _state(pg_sql, bdir) == before and db_fingerprint(pg_sql, dbname) == fp
    assert os.path.exists(archive)


def test_restore_check_names_the_roles_the_archive_needs_that_are_missing(pg, pg_sql, tmp_path, dbname, cli_env):
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    role = f"r_{dbname}"
    pg_sql(f'CREATE ROLE "{role}"; GRANT SELECT ON users TO "{role}"', dbname)
    archive = _backup(inv, cli_env)
    pg_sql(f'REVOKE SELECT ON users FROM "{role}"; DROP ROLE "{role}"', dbname)
    before = _state(pg_sql, bdir)
    plan = json.loads(_check(inv, cli_env, str(archive), "--json").stdout)["plan"]
    assert plan["missing_roles"] == [role] and any(role in r for r in plan["refusals"])
    r = _check(inv, cli_env, str(archive))
    assert f"roles the archive names that are missing here: {role}" in r.stdout and "REFUSE" in r.stdout
    plan = json.loads(_check(inv, cli_env, str(archive), "--skip-missing-roles", "--json").stdout)["plan"]
    assert plan["missing_roles"] == [role] and plan["refusals"] == []
    assert _state(pg_sql, bdir) == before
    assert pg_sql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{role}'", "postgres").strip() == "0"


def test_a_maintenance_db_that_does_not_exist_is_named_as_the_key_to_fix(pg, pg_sql, tmp_path, dbname, cli_env):
    """``postgres.maintenance_db`` names a database missing on the server: the message says
    which inventory key to fix (it read like the restore's own database was missing);
    nothing is created, dropped or written."""
    bdir = tmp_path / "b"
    archive = _backup(write_inventory(tmp_path / "i.yaml", {"dev": native_host(pg, dbname, bdir)}), cli_env)
    inv = write_inventory(tmp_path / "m.yaml", {"dev": native_host(pg, dbname, bdir,
                                                                   postgres={"maintenance_db": "no_such_maint"})})
    before, state = db_fingerprint(pg_sql, dbname), _state(pg_sql, bdir)
    r = cli("db.restore", str(archive), "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 1, r.stderr
    assert _last_error(r) == ("error: database 'no_such_maint' does not exist on dev: it is postgres.maintenance_db "
                              "(where databases are created, renamed and dropped from); set that key to a database "
                              "this role may connect to")
    assert db_fingerprint(pg_sql, dbname) == before and _state(pg_sql, bdir) == state


def test_restore_check_of_an_archive_without_manifest_says_it_reads_it_whole(pg, pg_sql, tmp_path, dbname, cli_env):
    """A manifest-less archive (a copy from elsewhere) is checked by reading it to its end:
    the check's line says so instead of "manifest DONE, size and sha256" (helper-37); the
    space is not compared, and the plan says so instead of "ok" and "unknown free" (helper-40)."""
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, bdir)})
    archive = _backup(inv, cli_env)
    bare = tmp_path / "elsewhere.sql.gz"
    bare.write_bytes(archive.read_bytes())
    before = _state(pg_sql, bdir)
    out = _check(inv, cli_env, str(bare)).stdout
    assert "check ok: archive (no manifest: read to its end; readable by this host's tools)" in out, out
    assert "manifest DONE" not in out
    # the space: not compared (no database size recorded), said so once, with the free space known
    assert ("check ok: free space on the server (not checked: the backup did not record its database's size)"
            in out), out
    assert "; the room needed is not known (the backup did not record its database's size)" in out
    assert "unknown free" not in out and "unknown needed" not in out
    doc = json.loads(_check(inv, cli_env, str(bare), "--json").stdout)
    assert doc["plan"]["space"]["needed"] is None and doc["plan"]["space"]["free"] > 0
    out = _check(inv, cli_env, str(archive)).stdout
    assert "check ok: archive (manifest DONE, size and sha256; readable by this host's tools)" in out, out
    assert _state(pg_sql, bdir) == before
