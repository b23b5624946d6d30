"""Bad input: each case gets a one-line error naming the problem, the documented exit
code (CONTRACTS.md s.5: 1 failed, 2 usage/inventory, 3 refused) and "nothing harmed"
(s.7): the live database's fingerprint and the backup folder's sha256 list are the
same before and after. Checks go through the test's own psql (tests/pgcheck.py).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bigskies_ops.pg.tools import bump_custom_header_minor
from bigskies_ops.dev.sandbox import free_port
from tests.conftest import (PASSWORD, PASSWORD_ENV, REPO, cli, native_host, new_db_from_template,
                            drop_db_and_copies, write_inventory)
from tests.pgcheck import db_fingerprint, dir_hashes

PSQL = "/usr/lib/postgresql/15/bin/psql"


# ----------------------------------------------------------------------------- helpers
def _env() -> dict:
    env = dict(os.environ)
    env[PASSWORD_ENV] = PASSWORD
    env.pop("BIGSKIES_INVENTORY", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    return env


def _databases(pg_sql) -> list[str]:
    return pg_sql("SELECT datname FROM pg_database ORDER BY 1", "postgres").split()


def _error_line(r) -> str:
    """The one error line; anything before it on stderr must be a notice, not a traceback."""
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert lines, f"no error message (exit {r.returncode}); stdout: {r.stdout}"
    assert "Traceback" not in r.stderr, r.stderr
    assert lines[-1].startswith("error: "), r.stderr
    return lines[-1]


class State:
    """Before/after snapshot for "nothing harmed"."""

    def __init__(self, pg_sql, db: str | None, bdir: Path):
        self.pg_sql, self.db, self.bdir = pg_sql, db, bdir
        self.fp = db_fingerprint(pg_sql, db) if db else None
        self.files = dir_hashes(bdir)
        self.dbs = _databases(pg_sql)

    def assert_unchanged(self, *, allow_failed_manifest: bool = False) -> list[dict]:
        """Live database and database list identical; backup folder identical, except
        (``allow_failed_manifest``) new FAILED manifests with no archive beside them."""
        if self.db:
            assert db_fingerprint(self.pg_sql, self.db) == self.fp
        assert _databases(self.pg_sql) == self.dbs
        after = dir_hashes(self.bdir)
        new = {k: v for k, v in after.items() if k not in self.files}
        assert {k: after.get(k) for k in self.files} == self.files, "an existing file changed or vanished"
        failed = []
        for name in new:
            assert allow_failed_manifest and name.endswith(".manifest.json"), f"unexpected new file {name}"
            m = json.loads((self.bdir / name).read_text())
            assert m["status"] == "FAILED", m
            assert not (self.bdir / name[: -len(".manifest.json")]).exists(), "file under the final name"
            failed.append(m)
        assert not [n for n in after if n.endswith(".partial") or "/.tmp-" in n or n.startswith(".")], after
        return failed


@pytest.fixture(scope="module")
def archives(pg, tmp_path_factory):
    """One real plain and one real custom backup (with manifests) of a BIG SKIES database."""
    d = tmp_path_factory.mktemp("seed")
    name = f"bs_seed_{uuid.uuid4().hex[:6]}"
    new_db_from_template(pg, name)
    try:
        inv = write_inventory(d / "inv.yaml", {"dev": native_host(pg, name, d / "b")})
        out = {}
        for fmt, ext in (("plain", ".sql.gz"), ("custom", ".dump")):
            r = cli("db.backup", "-i", str(inv), "--format", fmt, env=_env())
            assert r.returncode == 0, r.stderr
            (p,) = [p for p in (d / "b").iterdir() if p.name.endswith(ext)]
            out[fmt] = p
        yield out
    finally:
        drop_db_and_copies(pg, name)


def _seed_older_backup(archives, bdir: Path) -> Path:
    """Put an "older backup" (archive + manifest) into ``bdir``."""
    bdir.mkdir(parents=True, exist_ok=True)
    src = archives["plain"]
    shutil.copy2(src, bdir / src.name)
    shutil.copy2(str(src) + ".manifest.json", bdir / (src.name + ".manifest.json"))
    return bdir / src.name


# ----------------------------------------------------------------------------- inventory faults (2)
INV_FAULTS = {
    "unknown host": ("--host nope", None, "unknown host or group 'nope'"),
    "missing inventory": ("", "MISSING", "file not found"),
    "malformed yaml": ("", "hosts:\n  dev:\n    connection: local\n   postgres: [\n", "line 4"),
    "unknown key": ("", {"prot": 5432}, "hosts.dev.postgres.prot: unknown key (did you mean 'port'?)"),
    "literal password": ("", {"password": "hunter2"}, "hosts.dev.postgres.password: literal secrets are not allowed"),
}


@pytest.mark.parametrize("case", list(INV_FAULTS))
def test_inventory_faults_exit_2(case, pg, pg_sql, dbname, tmp_path, archives, cli_env):
    extra_args, spec, expect = INV_FAULTS[case]
    bdir = tmp_path / "backups"
    _seed_older_backup(archives, bdir)
    host = native_host(pg, dbname, bdir)
    inv = tmp_path / "inventory.yaml"
    if isinstance(spec, dict):
        host["postgres"].update(spec)
    if spec == "MISSING":
        inv = tmp_path / "nowhere" / "inventory.yaml"
    elif isinstance(spec, str):
        inv.write_text(spec)
    else:
        write_inventory(inv, {"dev": host})
    before = State(pg_sql, dbname, bdir)
    r = cli("db.backup", "-i", str(inv), *extra_args.split(), env=cli_env)
    assert r.returncode == 2, r.stdout + r.stderr
    line = _error_line(r)
    assert expect in line
    if case == "malformed yaml":
        assert "malformed YAML" in line and "column" in line
    before.assert_unchanged()


# ----------------------------------------------------------------------------- cannot reach the server (1)
@pytest.mark.parametrize("case", ["unreachable", "wrong password"])
def test_server_unreachable_or_wrong_password_exit_1(case, pg, pg_sql, dbname, tmp_path, archives, cli_env):
    bdir = tmp_path / "backups"
    _seed_older_backup(archives, bdir)
    env = dict(cli_env)
    if case == "unreachable":
        host = native_host(pg, dbname, bdir, postgres={"port": free_port()})
        expect = "is unreachable at 127.0.0.1:"
    else:
        host = native_host(pg, dbname, bdir)
        env[PASSWORD_ENV] = "not-the-password"
        expect = f"authentication failed for user 'bigskies' at 127.0.0.1:{pg.port} (check {PASSWORD_ENV})"
    inv = write_inventory(tmp_path / "inventory.yaml", {"dev": host})
    before = State(pg_sql, dbname, bdir)
    r = cli("db.backup", "-i", str(inv), env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    line = _error_line(r)
    assert expect in line
    assert "not-the-password" not in r.stdout + r.stderr
    before.assert_unchanged()


@pytest.mark.parametrize("case", ["nonexistent", "stopped"])
def test_container_not_running_exit_1(case, pg_sql, tmp_path, archives, cli_env, podman_env, pg_base_image):
    name = f"bs-gone-{uuid.uuid4().hex[:8]}"
    if case == "stopped":
        subprocess.run(["podman", "create", "--name", name, "--network", "none", pg_base_image, "/bin/true"],
                       env=podman_env, check=True, capture_output=True)
    try:
        bdir = tmp_path / "backups"
        _seed_older_backup(archives, bdir)
        inv = write_inventory(tmp_path / "inventory.yaml", {"dev": {
            "connection": "local", "container": {"name": name, "engine_command": "podman"},
            "postgres": {"database": "bigskies", "user": "bigskies", "bindir": "/usr/lib/postgresql/15/bin"},
            "backup": {"dir": str(bdir)}}})
        before = State(pg_sql, None, bdir)
        env = dict(cli_env, CONTAINERS_CONF=podman_env["CONTAINERS_CONF"])
        for task in ("db.backup", "db.status"):
            r = cli(task, "-i", str(inv), env=env)
            assert r.returncode == 1, r.stdout + r.stderr
            line = _error_line(r)
            assert f"container {name!r}" in line
            assert ("does not exist" if case == "nonexistent" else "is not running") in line
        before.assert_unchanged()
    finally:
        if case == "stopped":
            subprocess.run(["podman", "rm", "-f", name], env=podman_env, capture_output=True)


# ----------------------------------------------------------------------------- pg_dump failing mid-stream
def _find_pg_dump(dbname: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"/pg_dump") and b"--snapshot" in argv and dbname.encode() in argv:
                return int(p)
        time.sleep(0.1)
    raise AssertionError("pg_dump never started")


class TableLock:
    """A psql session the test holds open with ACCESS EXCLUSIVE on one table."""

    def __init__(self, pg, dbname: str, table: str):
        self.p = subprocess.Popen([PSQL, "-X", "-q", "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "bigskies",
                                   "-d", dbname], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.p.stdin.write(f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;\n\\echo locked\n")
        self.p.stdin.flush()
        assert self.p.stdout.readline().strip() == "locked"

    def release(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.write("ROLLBACK;\n\\q\n")
                self.p.stdin.close()
            except OSError:
                pass
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def _start_cli(*args, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bigskies_ops", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_pg_dump_killed_mid_stream_and_second_backup_refused_by_lock(pg, pg_sql, local_inv, archives, cli_env,
                                                                    dbname):
    inv, bdir = local_inv
    older = _seed_older_backup(archives, bdir)
    before = State(pg_sql, dbname, bdir)
    lock = TableLock(pg, dbname, "users")
    first = None
    try:
        first = _start_cli("db.backup", "-i", str(inv), env=cli_env)
        pid = _find_pg_dump(dbname)
        # pg_dump is now blocked on our lock and holds the (host, database) lock: a second run is refused
        second = cli("db.backup", "-i", str(inv), env=cli_env)
        assert second.returncode == 1, second.stdout + second.stderr
        line = _error_line(second)
        assert f"is locked by pid {first.pid} on {socket.gethostname()}" in line
        assert "task db.backup, since 20" in line
        os.kill(pid, signal.SIGKILL)
        out, err = first.communicate(timeout=60)
    finally:
        lock.release()
        if first is not None and first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 1, out + err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "pg_dump" in line and "signal 9" in line, err
    (m,) = before.assert_unchanged(allow_failed_manifest=True)
    assert m["phase"] == "dump" and "signal 9" in m["error"] and "stderr_tail" in m
    assert m["database"] == dbname and not m.get("sha256")
    assert older.exists()


def test_pg_dump_cannot_read_a_table(pg, pg_sql, dbname, tmp_path, archives, cli_env):
    role = f"bs_reader_{uuid.uuid4().hex[:6]}"
    esc = PASSWORD.replace("'", "''")
    # on stdin, not psql -c: test_secrets.py (maybe on another xdist worker) reads every argv on the machine
    pg.psql(database="postgres", input=f"CREATE ROLE {role} LOGIN PASSWORD '{esc}';")
    try:
        pg_sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}; "
               f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}; "
               f"REVOKE SELECT ON public.coordinator_config_history FROM {role}", dbname)
        bdir = tmp_path / "backups"
        older = _seed_older_backup(archives, bdir)
        inv = write_inventory(tmp_path / "inventory.yaml",
                              {"dev": native_host(pg, dbname, bdir, postgres={"user": role})})
        before = State(pg_sql, dbname, bdir)
        r = cli("db.backup", "-i", str(inv), "--format", "custom", env=cli_env)
        assert r.returncode == 1, r.stdout + r.stderr
        line = _error_line(r)
        assert "permission denied for table coordinator_config_history" in line
        (m,) = before.assert_unchanged(allow_failed_manifest=True)
        assert m["phase"] == "dump"
        assert "permission denied for table coordinator_config_history" in m["stderr_tail"]
        assert older.exists()
    finally:
        pg_sql(f"DROP OWNED BY {role}", dbname)
        pg_sql(f"DROP ROLE {role}", "postgres")


def test_backup_folder_without_room_for_the_backup_fails_before_the_dump(pg, pg_sql, dbname, tmp_path, cli_env):
    bdir = tmp_path / "full"
    bdir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(bdir)], check=True)
    try:
        inv = write_inventory(tmp_path / "inventory.yaml", {"dev": native_host(pg, dbname, bdir)})
        before = State(pg_sql, dbname, bdir)
        r = cli("db.backup", "-i", str(inv), env=cli_env)
        assert r.returncode == 1, r.stdout + r.stderr
        line = _error_line(r)
        assert "not enough free space" in line and "--skip-space-check" in line and "KiB free" in line
        failed = before.assert_unchanged(allow_failed_manifest=True)
        assert [m["phase"] for m in failed] == ["space"]
    finally:
        subprocess.run(["umount", str(bdir)], check=True)


def test_backup_folder_on_a_full_filesystem(pg, pg_sql, dbname, tmp_path, cli_env):
    bdir = tmp_path / "full"
    bdir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(bdir)], check=True)
    try:
        inv = write_inventory(tmp_path / "inventory.yaml", {"dev": native_host(pg, dbname, bdir)})
        before = State(pg_sql, dbname, bdir)
        # past the check (it cannot foresee everything: other writers): the write itself fails
        r = cli("db.backup", "-i", str(inv), "--skip-space-check", env=cli_env)
        assert r.returncode == 1, r.stdout + r.stderr
        line = _error_line(r)
        assert "file system full" in line or "No space left on device" in line
        failed = before.assert_unchanged(allow_failed_manifest=True)
        assert [m["phase"] for m in failed] == ["write"]
        assert "file system full" in failed[0]["error"]
    finally:
        subprocess.run(["umount", str(bdir)], check=True)


# ----------------------------------------------------------------------------- restore of bad archives (1)
def _truncate(p: Path, frac: float = 0.5) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * frac)])


def _make_bad(case: str, archives, bdir: Path) -> tuple[str, str]:
    """Build the bad archive in ``bdir``; return (argument for db.restore, expected message part)."""
    plain, custom = archives["plain"], archives["custom"]
    if case == "missing file":
        return str(bdir / "bs_backup_20260101_000000.sql.gz"), "no such file"
    if case == "truncated gz (legacy)":
        p = bdir / plain.name
        shutil.copy2(plain, p)
        _truncate(p)
        return str(p), "truncated gzip file"
    if case == "truncated gz (manifest)":
        p = bdir / plain.name
        shutil.copy2(plain, p)
        shutil.copy2(str(plain) + ".manifest.json", str(p) + ".manifest.json")
        _truncate(p)
        return str(p), "differs from the manifest"
    if case == "corrupt gz (manifest sha)":
        p = bdir / plain.name
        shutil.copy2(plain, p)
        shutil.copy2(str(plain) + ".manifest.json", str(p) + ".manifest.json")
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
        return str(p), "sha256 differs from the manifest"
    if case in ("plain, manifest sha of other bytes", "custom, manifest sha of other bytes"):
        # a whole, loadable archive whose manifest records another sha256 (the file was
        # replaced by one of the same size): only the digest tells, and it is compared
        # beside the checks and the side database's CREATE, so it must be confirmed
        # before the load (without that the restore would succeed)
        src = plain if case.startswith("plain") else custom
        p = bdir / src.name
        shutil.copy2(src, p)
        m = json.loads(Path(str(src) + ".manifest.json").read_text())
        m["sha256"] = "0" * 64
        Path(str(p) + ".manifest.json").write_text(json.dumps(m))
        return str(p), "sha256 differs from the manifest"
    if case == "truncated custom":
        p = bdir / custom.name
        shutil.copy2(custom, p)
        _truncate(p)
        return str(p), "pg_restore cannot read the archive"
    if case == "not a dump":
        p = bdir / "notes_backup_20260101_000000.sql.gz"
        p.write_text("these are my notes, not a database dump\n" * 50)
        return str(p), "not a PostgreSQL dump"
    if case == "newer pg_dump":
        p = bdir / custom.name
        p.write_bytes(bump_custom_header_minor(custom.read_bytes()))
        return str(p), "newer"
    if case == "a folder":
        p = bdir / "bs_backup_20260101_000000.sql.gz"
        p.mkdir()
        return str(p), "Is a directory"
    raise AssertionError(case)


RESTORE_CASES = ["missing file", "truncated gz (legacy)", "truncated gz (manifest)", "corrupt gz (manifest sha)",
                 "plain, manifest sha of other bytes", "custom, manifest sha of other bytes", "truncated custom", "not a dump", "newer pg_dump", "a folder"]


@pytest.mark.parametrize("case", RESTORE_CASES)
def test_restore_of_a_bad_archive_exit_1_database_untouched(case, pg_sql, local_inv, dbname, archives, cli_env):
    inv, bdir = local_inv
    bdir.mkdir()
    arg, expect = _make_bad(case, archives, bdir)
    before = State(pg_sql, dbname, bdir)
    r = cli("db.restore", arg, "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 1, r.stdout + r.stderr
    line = _error_line(r)
    assert expect in line
    if case == "newer pg_dump":
        # names both versions: the archive's format and the local pg_restore
        assert "1.15" in line and "pg_restore 15." in line
    before.assert_unchanged()


def test_an_inventory_that_is_not_utf8_text_exit_2(tmp_path, cli_env):
    inv = tmp_path / "inv.yaml"
    inv.write_bytes(b"\xff\xfehosts: {}\n")
    for task in ("inventory.check", "db.list"):
        r = cli(task, "-i", str(inv), env=cli_env)
        assert r.returncode == 2, r.stderr
        assert "not UTF-8 text" in _error_line(r)


@pytest.mark.parametrize("argv, flag", [
    (["docker.up", "--timeout", "abc"], "--timeout"),
    (["docker.up", "--migrations-timeout", "1m"], "--migrations-timeout"),
    (["docker.restart", "--timeout", "abc"], "--timeout"),
    (["scenario.fresh-start", "--timeout", "abc"], "--timeout"),
    (["db.scheduled-run", "--wait", "abc"], "--wait"),
])
def test_a_number_of_seconds_that_is_not_a_number_exit_2_before_anything_runs(argv, flag, local_inv, dbname, pg_sql,
                                                                              cli_env):
    inv, bdir = local_inv
    bdir.mkdir()
    before = State(pg_sql, dbname, bdir)
    r = cli(*argv, "-i", str(inv), env=cli_env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{flag}: expected a number of seconds" in _error_line(r)
    before.assert_unchanged()


# ----------------------------------------------------------------------------- locks
def test_stale_lock_is_replaced_with_a_notice(local_inv, dbname, pg_sql, cli_env):
    inv, bdir = local_inv
    bdir.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = bdir / f".lock-{dbname}"
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "task": "db.backup",
                                "since": "2026-01-01T00:00:00Z"}))
    r = cli("db.backup", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr
    assert f"removed stale lock of pid {dead.pid} (db.backup, since 2026-01-01T00:00:00Z)" in r.stderr
    assert not lock.exists()
    assert len([p for p in os.listdir(bdir) if p.endswith(".sql.gz")]) == 1
