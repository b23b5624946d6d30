"""``inventory.ping``: per host, in parallel, what a backup needs, through the real CLI.

"dev" is a local host on the suite's PostgreSQL; "prodn" an SSH host on the suite's sshd
(loopback) whose PostgreSQL is that same cluster (native access). Failing cases each name
the failing check in the output and exit 1; nothing is left behind in the backup folders.
Expected values are literals written here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import PASSWORD_ENV, cli, native_host, write_inventory
from tests.remote_helpers import ssh_block


def _prodn(tmp_path: Path, pg, dbname: str, srv, **ssh) -> dict:
    return {"connection": "ssh", "project_dir": str(tmp_path / "proj"), "ssh": ssh_block(srv, **ssh),
            "postgres": {"host": "127.0.0.1", "port": pg.port, "database": dbname, "user": "bigskies",
                         "password_env": PASSWORD_ENV, "bindir": "/usr/lib/postgresql/15/bin"},
            "backup": {"dir": "backups"}}


def _lines(out: str, host: str) -> dict[str, str]:
    """``{check: state}`` of one host's block in the human output."""
    got, inside = {}, False
    for ln in out.splitlines():
        if ln.startswith(("ok: [", "failed: [")):
            inside = f"[{host}]" in ln
            continue
        if inside and ln.startswith("   "):
            state, name = ln.split()[:2]
            got[name.rstrip(":")] = state
    return got


def test_reachable_local_and_ssh_hosts_pass_every_check(tmp_path, pg, dbname, ssh_server, cli_env):
    (tmp_path / "proj" / "backups").mkdir(parents=True)
    (tmp_path / "dev-backups").mkdir()
    inv = write_inventory(tmp_path / "inv.yaml", {
        "dev": native_host(pg, dbname, tmp_path / "dev-backups"),
        "prodn": _prodn(tmp_path, pg, dbname, ssh_server)})
    r = cli("inventory.ping", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _lines(r.stdout, "dev") == {"password": "ok", "postgres": "ok", "versions": "ok", "backup_dir": "ok",
                                       "free_space": "ok"}, r.stdout
    assert _lines(r.stdout, "prodn") == {"ssh": "ok", "password": "ok", "postgres": "ok", "versions": "ok",
                                         "backup_dir": "ok", "free_space": "ok"}, r.stdout
    assert "PING RECAP" in r.stdout and "prodn : ok=6 warning=0 failed=0 skipped=0" in r.stdout
    assert "pg_dump 15." in r.stdout and "host key known" in r.stdout
    # the write probe leaves nothing behind
    assert list((tmp_path / "proj" / "backups").iterdir()) == [] and list((tmp_path / "dev-backups").iterdir()) == []
    # --json: one document, per host its checks with state and message
    r = cli("inventory.ping", "-i", str(inv), "--host", "prodn", "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["result"] == "ok" and [h["host"] for h in doc["hosts"]] == ["prodn"]
    checks = {c["check"]: c for c in doc["hosts"][0]["checks"]}
    assert checks["free_space"]["free_bytes"] > 0 and checks["postgres"]["state"] == "ok"
    assert all(c["message"] for c in checks.values())


def test_failing_checks_are_each_named_and_exit_1(tmp_path, pg, dbname, ssh_server, cli_env):
    empty_known = tmp_path / "known_hosts_empty"
    empty_known.write_text("")
    bdir = tmp_path / "ok-backups"
    bdir.mkdir()
    inv = write_inventory(tmp_path / "inv.yaml", {
        "wrongport": native_host(pg, dbname, bdir, postgres={"port": 1}),
        "nopw": native_host(pg, dbname, bdir, postgres={"password_env": "BIGSKIES_TEST_UNSET_PW"}),
        # sysfs refuses new files even to root (the suite runs as root, so a chmod would not do)
        "rodir": native_host(pg, dbname, "/sys/kernel"),
        "newkey": _prodn(tmp_path, pg, dbname, ssh_server, known_hosts_file=str(empty_known)),
    }, groups={"mixed": ["wrongport", "nopw"]})
    env = dict(cli_env)
    env.pop("BIGSKIES_TEST_UNSET_PW", None)
    before = sorted(os.listdir(bdir))
    r = cli("inventory.ping", "-i", str(inv), env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert _lines(r.stdout, "wrongport")["postgres"] == "failed"
    assert "PostgreSQL on wrongport is unreachable at 127.0.0.1:1" in r.stdout
    assert _lines(r.stdout, "nopw")["password"] == "failed"
    assert "variable BIGSKIES_TEST_UNSET_PW (hosts.nopw.postgres.password_env) is not set" in r.stdout
    assert _lines(r.stdout, "rodir")["backup_dir"] == "failed" and "/sys/kernel is not writable" in r.stdout
    assert _lines(r.stdout, "newkey")["ssh"] == "failed" and f"host key of [127.0.0.1]:{ssh_server.port} is unknown" in r.stdout
    assert _lines(r.stdout, "newkey")["postgres"] == "skipped"
    # the one error line names every failing host and check
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: 4 of 4 host(s) failed:"), err
    for part in ("wrongport (postgres", "nopw (password", "rodir (backup_dir", "newkey (ssh"):
        assert part in err, err
    assert sorted(os.listdir(bdir)) == before and empty_known.read_text() == ""  # nothing written, no key learnt
    # a group; --json: one document, the failure facts per host, exit 1
    r = cli("inventory.ping", "-i", str(inv), "--host", "mixed", "--json", env=env)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["result"] == "failed"
    by_host = {h["host"]: h for h in doc["hosts"]}
    assert set(by_host) == {"wrongport", "nopw"}
    assert by_host["wrongport"]["failed_checks"] == ["postgres"] and by_host["nopw"]["failed_checks"] == ["password"]


def test_unknown_host_is_a_usage_error(tmp_path, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": {"connection": "local"}})
    r = cli("inventory.ping", "-i", str(inv), "--host", "nope", env=cli_env)
    assert r.returncode == 2 and "unknown host or group 'nope'" in r.stderr and "Traceback" not in r.stderr


def test_ssh_container_host_checks_the_container_and_the_tools_inside_it(tmp_path, ssh_server, pg_container,
                                                                          podman_env, cli_env):
    from tests.remote_helpers import PROD_PW, PROD_PW_ENV, prod_host
    (tmp_path / "proj" / "backups").mkdir(parents=True)
    inv = write_inventory(tmp_path / "inv.yaml", {
        "prod": prod_host(ssh_server, pg_container, tmp_path / "proj", "postgres"),
        "gone": prod_host(ssh_server, pg_container, tmp_path / "proj", "postgres",
                          container={"name": "bs-no-such-container"})})
    env = {**cli_env, "CONTAINERS_CONF": podman_env["CONTAINERS_CONF"], PROD_PW_ENV: PROD_PW}
    r = cli("inventory.ping", "-i", str(inv), env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert _lines(r.stdout, "prod") == {"ssh": "ok", "password": "ok", "container": "ok", "postgres": "ok",
                                        "versions": "ok", "backup_dir": "ok", "free_space": "ok"}, r.stdout
    assert f"container '{pg_container.name}' is running" in r.stdout and "(ssh-container)" in r.stdout
    gone = _lines(r.stdout, "gone")
    assert gone["container"] == "failed" and gone["postgres"] == "skipped", r.stdout
    assert "container 'bs-no-such-container' does not exist on gone" in r.stdout
    assert r.stderr.strip().splitlines()[-1] == "error: 1 of 2 host(s) failed: gone (container)"
    assert list((tmp_path / "proj" / "backups").iterdir()) == []


def test_passfile_hosts_need_an_entry_for_their_database_and_user(tmp_path, pg, dbname, cli_env):
    from bigskies_ops.pg.pgpass import escape
    from tests.conftest import PASSWORD
    good, other, missing = tmp_path / "good.pgpass", tmp_path / "other.pgpass", tmp_path / "missing.pgpass"
    good.write_text(f"127.0.0.1:{pg.port}:*:bigskies:{escape(PASSWORD)}\n")
    other.write_text("db.example.org:5432:*:alice:alice-pw\n")
    for f in (good, other):
        f.chmod(0o600)

    def host(passfile):
        h = native_host(pg, dbname, tmp_path / "b")
        h["postgres"] = {**{k: v for k, v in h["postgres"].items() if k != "password_env"}, "passfile": str(passfile)}
        return h
    inv = write_inventory(tmp_path / "inv.yaml", {"good": host(good), "other": host(other),
                                                  "missing": host(missing)})
    r = cli("inventory.ping", "-i", str(inv), env=cli_env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert _lines(r.stdout, "good")["password"] == "ok" and _lines(r.stdout, "good")["postgres"] == "ok", r.stdout
    assert _lines(r.stdout, "other")["password"] == "failed"
    assert f"passfile {other} has no entry for 127.0.0.1:{pg.port}:{dbname}:bigskies" in r.stdout
    assert "db.pgpass --host other" in r.stdout and "alice-pw" not in r.stdout
    assert _lines(r.stdout, "missing")["password"] == "failed" and f"passfile {missing} (hosts.missing" in r.stdout
    assert r.stderr.strip().splitlines()[-1] == "error: 2 of 3 host(s) failed: other (password); missing (password)"
