"""``db.backup --host <ssh host>`` runs the same engine as a local backup: ``--verbose`` and
``backup.roles`` behave the same whatever the host, and a streamed ``db.pull`` writes the
roles file beside the pulled archive.

"prodn" is an SSH host on the suite's sshd (loopback) whose PostgreSQL is the test
cluster itself (native access); its backup folder is therefore readable by the test.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import stat
from pathlib import Path

from tests.conftest import PASSWORD_ENV, cli, native_host, write_inventory
from tests.remote_helpers import ssh_block


def _ssh_inventory(tmp_path: Path, pg, dbname: str, ssh_server, **backup) -> Path:
    return write_inventory(tmp_path / "inv.yaml", {
        "prodn": {"connection": "ssh", "project_dir": str(tmp_path / "proj"), "ssh": ssh_block(ssh_server),
                  "postgres": {"host": "127.0.0.1", "port": pg.port, "database": dbname, "user": "bigskies",
                               "password_env": PASSWORD_ENV, "bindir": "/usr/lib/postgresql/15/bin"},
                  "backup": {"dir": "backups", "format": "plain", **backup}},
        "dev": native_host(pg, dbname, tmp_path / "dev-backups")}, defaults={"host": "dev"})


def _archive(folder: Path) -> tuple[Path, dict]:
    [archive] = [p for p in folder.iterdir() if p.name.endswith((".sql.gz", ".dump"))]
    return archive, json.loads(Path(str(archive) + ".manifest.json").read_text())


def _roles_file_recorded(archive: Path, m: dict) -> Path:
    roles = archive.with_name(archive.name + ".roles.sql")
    assert m["roles_file"] == roles.name, m
    data = roles.read_bytes()
    assert m["roles_sha256"] == hashlib.sha256(data).hexdigest()
    assert stat.S_IMODE(roles.stat().st_mode) == 0o600
    assert b"CREATE ROLE bigskies;" in data and b"PASSWORD" not in data
    return roles


def test_verbose_backup_on_an_ssh_host_keeps_pg_dumps_messages_out_of_the_dump(tmp_path, pg, dbname, ssh_server,
                                                                                 cli_env):
    inv = _ssh_inventory(tmp_path, pg, dbname, ssh_server)
    r = cli("db.backup", "-i", str(inv), "--host", "prodn", "--verbose", env=cli_env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "Traceback" not in r.stderr and "Backup completed successfully" in r.stdout
    archive, m = _archive(tmp_path / "proj" / "backups")
    assert m["status"] == "DONE" and "--verbose" in m["argv"] and m["remote_exit_statuses"] == {"pg_dump": 0, "gzip": 0}
    assert "pg_dump: " in (m["stderr_tail"] or ""), m["stderr_tail"]  # its messages: in the manifest only
    sql = gzip.decompress(archive.read_bytes())
    assert b"pg_dump: " not in sql and b"-- PostgreSQL database dump complete" in sql[-400:]


def test_roles_of_an_ssh_host_are_written_beside_its_archive_and_pulled_with_it(tmp_path, pg, dbname, ssh_server,
                                                                                   cli_env):
    inv = _ssh_inventory(tmp_path, pg, dbname, ssh_server, roles=True)
    r = cli("db.backup", "-i", str(inv), "--host", "prodn", "--format", "custom", "--pull", env=cli_env)
    assert r.returncode == 0, r.stderr + r.stdout
    archive, m = _archive(tmp_path / "proj" / "backups")
    assert m["status"] == "DONE" and m["format"] == "custom"
    roles = _roles_file_recorded(archive, m)
    # --pull brings the roles file with the archive: the local copy's manifest names it too
    local, lm = _archive(tmp_path / "dev-backups" / "prodn")
    assert _roles_file_recorded(local, lm).read_bytes() == roles.read_bytes()


def test_a_streamed_pull_writes_the_sources_roles_beside_the_pulled_archive(tmp_path, pg, dbname, ssh_server,
                                                                             cli_env):
    inv = _ssh_inventory(tmp_path, pg, dbname, ssh_server, roles=True)
    r = cli("db.pull", "-i", str(inv), "--from", "prodn", "--to", "dev", env=cli_env)
    assert r.returncode == 0, r.stderr + r.stdout
    archive, m = _archive(tmp_path / "dev-backups" / "prodn")
    assert m["status"] == "DONE" and m["pull_mode"] == "stream"
    _roles_file_recorded(archive, m)
    assert not (tmp_path / "proj" / "backups").exists()  # nothing written on the source's disk
