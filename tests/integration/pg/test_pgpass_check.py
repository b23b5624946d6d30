"""``db.pgpass --check``: the lines that would change, passwords masked; nothing written
(content, mode and mtime of the file checked), exit 0; the same facts under --json."""
from __future__ import annotations

import json
import os
import stat

from tests.conftest import PASSWORD, cli, native_host, write_inventory


def test_pgpass_check_shows_masked_before_and_after_and_writes_nothing(tmp_path, pg, dbname, cli_env):
    home = tmp_path / "home"
    home.mkdir()
    env = dict(cli_env, HOME=str(home))
    env.pop("PGPASSFILE", None)
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, tmp_path / "b")})
    pgpass = home / ".pgpass"
    # absent: would create it
    r = cli("db.pgpass", "-i", str(inv), "--check", env=env)
    assert r.returncode == 0, r.stderr
    assert not pgpass.exists()
    assert r.stdout.startswith("CHECK MODE (db.pgpass --check): nothing is changed")
    assert "would create the file (mode 0600)" in r.stdout
    assert f"after:  127.0.0.1:{pg.port}:{dbname}:bigskies:********" in r.stdout
    assert "changed (check): [dev]" in r.stdout and PASSWORD not in r.stdout + r.stderr
    # present with a stale password and a too-open mode
    pgpass.write_text(f"# kept\n127.0.0.1:{pg.port}:{dbname}:bigskies:old-secret\n")
    os.chmod(pgpass, 0o644)
    before = (pgpass.read_bytes(), os.stat(pgpass).st_mtime_ns, stat.S_IMODE(os.stat(pgpass).st_mode))
    r = cli("db.pgpass", "-i", str(inv), "--check", env=env)
    assert r.returncode == 0, r.stderr
    assert f"would update the password of 127.0.0.1:{pg.port}:{dbname}:bigskies" in r.stdout
    assert f"would add 127.0.0.1:{pg.port}:postgres:bigskies" in r.stdout
    assert "would change mode 0644 -> 0600" in r.stdout
    assert f"before: 127.0.0.1:{pg.port}:{dbname}:bigskies:********" in r.stdout
    assert "old-secret" not in r.stdout and PASSWORD not in r.stdout and "# kept" not in r.stdout
    r = cli("db.pgpass", "-i", str(inv), "--check", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["result"] == "changed" and doc["check"] is True and doc["task"] == "db.pgpass"
    assert doc["host"] == "dev" and doc["would_change"] is True and doc["plan"]["path"] == str(pgpass)
    assert doc["plan"]["refusals"] == []   # every plan has refusals (docs/cli.md "Dry runs"); none here
    assert "old-secret" not in r.stdout and PASSWORD not in r.stdout
    assert (pgpass.read_bytes(), os.stat(pgpass).st_mtime_ns, stat.S_IMODE(os.stat(pgpass).st_mode)) == before
    # converged: --check says nothing would change
    assert cli("db.pgpass", "-i", str(inv), env=env).returncode == 0
    r = cli("db.pgpass", "-i", str(inv), "--check", env=env)
    assert r.returncode == 0 and "ok (check): [dev] would change nothing" in r.stdout, r.stdout
