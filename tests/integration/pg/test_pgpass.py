"""``db.pgpass``: converge a pgpass file; libpq really uses it; a too-open one is refused.

HOME and PGPASSFILE point into the test folder, so the real ~/.pgpass is never touched.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from bigskies_ops.pg.pgpass import Entry, PgpassError, converge_text, escape, split_fields
from tests.conftest import PASSWORD, PASSWORD_ENV, cli, native_host, write_inventory
from tests.infra.podman import PG_BINDIR
from tests.remote_helpers import ssh_block


# ----------------------------------------------------------------------------- pure
def test_escaping_round_trips_colons_and_backslashes():
    assert escape("a:b\\c") == "a\\:b\\\\c"
    line = ":".join(escape(x) for x in ("h", "5432", "d:b", "u\\", PASSWORD))
    assert split_fields(line) == ["h", "5432", "d:b", "u\\", PASSWORD]
    assert split_fields("h:1:d:u:pa:ss") == ["h", "1", "d", "u", "pa:ss"]    # libpq: the rest is the password
    assert split_fields("h:1:d:u:x\\") is None


def test_converge_text_adds_updates_dedupes_and_keeps_other_entries():
    want = [Entry("db.example", "5432", "bigskies", "bigskies", "n:ew"),
            Entry("db.example", "5432", "postgres", "bigskies", "n:ew")]
    text = ("# my entries\n"
            "other:5432:*:alice:a\\:lice\n"
            "db.example:5432:bigskies:bigskies:old\n"
            "*:*:*:*:fallback\n"
            "db.example:5432:bigskies:bigskies:old-duplicate\n")
    new, changes = converge_text(text, "/p", want)
    assert new == ("# my entries\n"
                   "other:5432:*:alice:a\\:lice\n"
                   "db.example:5432:bigskies:bigskies:n\\:ew\n"
                   "db.example:5432:postgres:bigskies:n\\:ew\n"      # before the wildcard that would shadow it
                   "*:*:*:*:fallback\n")
    assert changes == ["updated the password of db.example:5432:bigskies:bigskies",
                       "removed 1 duplicate line(s) for db.example:5432:bigskies:bigskies",
                       "added db.example:5432:postgres:bigskies (before the wildcard line 4 that would shadow it)"]
    assert converge_text(new, "/p", want) == (new, [])
    assert "n:ew" not in " ".join(changes) and "old" not in " ".join(changes)


@pytest.mark.parametrize("line,why", [("just-a-host:5432", "it has 2 field(s)"),
                                      ("h:port:d:u:pw", "port field is neither a number nor *"),
                                      ("h:1:d:u:secret\\", "ends in a lone backslash")])
def test_malformed_line_is_named_by_number_without_its_content(line, why):
    with pytest.raises(PgpassError) as e:
        converge_text(f"# c\nok:1:d:u:p\n{line}\n", "/home/x/.pgpass", [Entry("h", "1", "d", "u", "p")])
    msg = str(e.value)
    assert "/home/x/.pgpass line 3 is malformed" in msg and why in msg and "not changed" in msg
    assert "secret" not in msg and "just-a-host" not in msg and e.value.exit_code == 2


# ----------------------------------------------------------------------------- real files, real libpq
@pytest.fixture
def home(tmp_path, cli_env):
    h = tmp_path / "home"
    h.mkdir()
    env = dict(cli_env, HOME=str(h))
    env.pop("PGPASSFILE", None)
    return h, env


def mode_of(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_pgpass_is_created_idempotent_and_repairs_a_too_open_mode(tmp_path, pg, dbname, home):
    h, env = home
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, tmp_path / "b")})
    pgpass = h / ".pgpass"
    pgpass.write_text("# kept\nother.example:5432:*:alice:alice-pw\n")
    os.chmod(pgpass, 0o644)
    r = cli("db.pgpass", "-i", str(inv), env=env)
    assert r.returncode == 0, r.stderr
    assert f"changed: [dev] {pgpass}: added 127.0.0.1:{pg.port}:{dbname}:bigskies" in r.stdout
    assert "mode 0644 -> 0600" in r.stdout and PASSWORD not in r.stdout + r.stderr
    esc = escape(PASSWORD)
    assert pgpass.read_text() == ("# kept\nother.example:5432:*:alice:alice-pw\n"
                                  f"127.0.0.1:{pg.port}:{dbname}:bigskies:{esc}\n"
                                  f"127.0.0.1:{pg.port}:postgres:bigskies:{esc}\n"
                                  f"127.0.0.1:{pg.port}:*:bigskies:{esc}\n")
    assert mode_of(pgpass) == 0o600
    r = cli("db.pgpass", "-i", str(inv), "--json", env=env)
    assert json.loads(r.stdout) == {"result": "ok", "host": "dev", "path": str(pgpass), "changes": []}
    os.chmod(pgpass, 0o640)
    r = cli("db.pgpass", "-i", str(inv), env=env)
    assert r.returncode == 0 and f"changed: [dev] {pgpass}: mode 0640 -> 0600" in r.stdout, r.stderr


def test_libpq_uses_the_file_and_a_too_open_one_is_refused_with_libpqs_reason(tmp_path, pg, dbname, home):
    h, env = home
    passfile = tmp_path / "secrets" / "pgpass"
    host = native_host(pg, dbname, tmp_path / "b")
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": {**host, "postgres": {**host["postgres"],
                                                                                "passfile": str(passfile)}}})
    assert cli("db.pgpass", "-i", str(inv), env=env).returncode == 0
    # a task that only has the passfile (no password variable) connects with it over TCP + scram
    no_var = write_inventory(tmp_path / "inv2.yaml", {"dev": {**host, "postgres": {
        **{k: v for k, v in host["postgres"].items() if k != "password_env"}, "passfile": str(passfile)}}})
    r = cli("db.status", "-i", str(no_var), "--json", env=env)
    assert r.returncode == 0, r.stderr
    # libpq itself only warns about a group-readable file, ignores it, and then has no password
    os.chmod(passfile, 0o640)
    raw = subprocess.run([f"{PG_BINDIR}/psql", "-X", "-w", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "bigskies",
                          "-d", dbname, "-c", "SELECT 1"], env={**env, "PGPASSFILE": str(passfile)},
                         capture_output=True, text=True)
    assert raw.returncode != 0 and "has group or world access" in raw.stderr and "no password supplied" in raw.stderr
    for task in (["db.status"], ["db.backup"], ["db.exec", "--sql", "SELECT 1"]):
        r = cli(*task, "-i", str(no_var), env=env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f'password file "{passfile}" has group or world access; permissions should be u=rw (0600)' in r.stderr
        assert "Fix: bigskies-ops db.pgpass --host dev" in r.stderr  # the command that ran
    # the failed backup keeps only its FAILED manifest (CONTRACTS.md section 2), no archive
    assert not [f for f in os.listdir(tmp_path / "b") if f.endswith((".sql.gz", ".dump", ".partial"))]


def test_malformed_pgpass_line_fails_and_leaves_the_file_untouched(tmp_path, pg, dbname, home):
    h, env = home
    pgpass = h / "custom-pgpass"
    body = b"# mine\nhost:5432:db:user:pw\nbroken-line-with-no-fields\n"
    pgpass.write_bytes(body)
    os.chmod(pgpass, 0o644)
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, tmp_path / "b")})
    r = cli("db.pgpass", "-i", str(inv), env={**env, "PGPASSFILE": str(pgpass)})
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"pgpass file {pgpass} line 3 is malformed: it has 1 field(s)" in r.stderr
    assert pgpass.read_bytes() == body and mode_of(pgpass) == 0o644


def test_pgpass_on_an_ssh_host_is_written_there(tmp_path, pg, dbname, home, ssh_server):
    h, env = home
    proj = tmp_path / "proj"
    proj.mkdir()
    host = {"connection": "ssh", "project_dir": str(proj), "ssh": ssh_block(ssh_server),
            "postgres": {"host": "127.0.0.1", "port": pg.port, "database": dbname, "user": "bigskies",
                         "password_env": PASSWORD_ENV, "passfile": "conf/pgpass", "bindir": PG_BINDIR},
            "backup": {"dir": "backups"}}
    inv = write_inventory(tmp_path / "inv.yaml", {"prod": host})
    r = cli("db.pgpass", "-i", str(inv), env=env)
    assert r.returncode == 0, r.stderr
    assert f"changed: [prod] {proj}/conf/pgpass: created the file" in r.stdout
    assert (proj / "conf" / "pgpass").read_text().splitlines()[0] == \
        f"127.0.0.1:{pg.port}:{dbname}:bigskies:{escape(PASSWORD)}"
    assert mode_of(proj / "conf" / "pgpass") == 0o600
    os.chmod(proj / "conf" / "pgpass", 0o604)
    r = cli("db.pgpass", "-i", str(inv), env=env)
    assert r.returncode == 0 and "mode 0604 -> 0600" in r.stdout, r.stderr
    assert cli("db.pgpass", "-i", str(inv), env=env).stdout.startswith("ok: [prod]")
