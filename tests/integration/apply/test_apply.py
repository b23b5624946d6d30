"""``inv apply``: every host converged to the inventory, in parallel, through the real CLI.

"dev" is a local host on the suite's PostgreSQL; "prodn" an SSH host on the suite's sshd
(loopback) whose PostgreSQL is that same cluster. Each test has its own crontab file
(``BIGSKIES_CRONTAB_FILE``) and pgpass files; the files' content, modes and mtimes are read
by the test itself, and the expected values are literals written here.
"""
from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

from tests.conftest import PASSWORD, PASSWORD_ENV, cli, native_host, write_inventory
from tests.integration.offsite.test_offsite import s3, s3env  # noqa: F401 - fixtures
from tests.remote_helpers import ssh_block

PG_BIN = "/usr/lib/postgresql/15/bin"


def _prodn(tmp_path: Path, pg, dbname: str, srv, **extra) -> dict:
    h = {"connection": "ssh", "project_dir": str(tmp_path / "proj"), "ssh": ssh_block(srv),
         "postgres": {"host": "127.0.0.1", "port": pg.port, "database": dbname, "user": "bigskies",
                      "password_env": PASSWORD_ENV, "bindir": PG_BIN, "passfile": "conf/pgpass"},
         "backup": {"dir": "backups"}}
    h.update(extra)
    return h


def _env(cli_env, tmp_path: Path) -> dict:
    env = dict(cli_env)
    env["BIGSKIES_CRONTAB_FILE"] = str(tmp_path / "crontab")
    env["PGPASSFILE"] = str(tmp_path / "dev.pgpass")  # dev's pgpass (a local host without postgres.passfile)
    return env


def _two_hosts(tmp_path: Path, pg, dbname: str, srv, *, dev_extra: dict | None = None) -> Path:
    (tmp_path / "metrics").mkdir(exist_ok=True)
    return write_inventory(tmp_path / "inv.yaml", {
        "dev": native_host(pg, dbname, tmp_path / "dev-backups", schedule="15 3 * * *",
                           metrics={"textfile": str(tmp_path / "metrics" / "bigskies.prom")},
                           backup={"roles": True}, **(dev_extra or {})),
        "prodn": _prodn(tmp_path, pg, dbname, srv, schedule="45 1 * * *")})


def _recap(out: str) -> dict[str, str]:
    """``{host: "ok=.. changed=.. failed=.. skipped=.. unreachable=.."}`` after APPLY RECAP."""
    lines = out.split("APPLY RECAP", 1)[1].splitlines()[1:]
    return {ln.split(" : ")[0].strip(): ln.split(" : ")[1] for ln in lines if " : " in ln}


def _items(out: str, host: str) -> dict[str, str]:
    """``{item: result}`` of one host's item lines."""
    got = {}
    for ln in out.splitlines():
        word, _, rest = ln.partition(": ")
        if rest.startswith(f"[{host}] "):
            got[rest[len(host) + 3:].split(": ")[0]] = word
    return got


def _snapshot(root: Path, *, folder_mtimes: bool = True) -> dict:
    """Every path under ``root``: mode, mtime, and a file's sha256 (``folder_mtimes=False``:
    not a folder's mtime, which a real run's write probe moves)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        mtime = st.st_mtime_ns if folder_mtimes or not p.is_dir() else None
        out[str(p)] = (stat.S_IMODE(st.st_mode), mtime, digest)
    return out


def _pgpass_lines(pg, dbname: str) -> list[str]:
    from bigskies_ops.pg.pgpass import escape
    return [f"127.0.0.1:{pg.port}:{d}:bigskies:{escape(PASSWORD)}" for d in (dbname, "postgres", "*")]


def test_first_apply_converges_local_and_ssh_hosts_and_a_second_changes_nothing(tmp_path, pg, dbname, ssh_server,
                                                                                 cli_env):
    inv = _two_hosts(tmp_path, pg, dbname, ssh_server)
    env = _env(cli_env, tmp_path)
    r = cli("apply", "-i", str(inv), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _items(r.stdout, "dev") == {"postgres": "ok", "backup folder": "changed", "schedule": "changed",
                                       "pgpass": "changed", "offsite": "skipped", "notifications": "skipped",
                                       "heartbeat": "skipped", "metrics textfile": "changed", "roles": "ok"}, r.stdout
    assert _items(r.stdout, "prodn") == {"ssh": "ok", "postgres": "ok", "backup folder": "changed",
                                         "schedule": "changed", "pgpass": "changed", "offsite": "skipped",
                                         "notifications": "skipped", "heartbeat": "skipped",
                                         "metrics textfile": "skipped", "roles": "skipped"}, r.stdout
    assert _recap(r.stdout) == {"dev": "ok=2 changed=4 failed=0 skipped=3 unreachable=0",
                                "prodn": "ok=2 changed=3 failed=0 skipped=5 unreachable=0"}, r.stdout
    assert "changed: [dev] schedule: crontab block written (2 lines" in r.stdout
    # the files, read here
    crontab = (tmp_path / "crontab").read_text()
    for host, when in (("dev", "15 3 * * *"), ("prodn", "45 1 * * *")):
        assert f"# BEGIN bigskies-ops {host} " in crontab and f"# END bigskies-ops {host}" in crontab
        assert any(ln.startswith(when + " ") and f"db.scheduled-run --host {host} " in ln
                   for ln in crontab.splitlines()), crontab
    for pgpass in (tmp_path / "dev.pgpass", tmp_path / "proj" / "conf" / "pgpass"):
        assert pgpass.read_text().splitlines() == _pgpass_lines(pg, dbname)
        assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600
    for folder in (tmp_path / "dev-backups", tmp_path / "proj" / "backups"):
        assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o750 and list(folder.iterdir()) == []
    prom = (tmp_path / "metrics" / "bigskies.prom").read_text()
    assert 'host="dev"' in prom and "bigskies_backup_" in prom
    # a cron run has no password variable: prodn's passfile, written by apply, serves it (and
    # apply does not warn that the variable will be missing there)
    assert "give hosts.prodn.postgres a passfile" not in r.stdout + r.stderr
    cron_env = {k: v for k, v in env.items() if k != PASSWORD_ENV}
    r = cli("db.status", "--host", "prodn", "-i", str(inv), env=cron_env)
    assert r.returncode == 0 and "not set" not in r.stdout + r.stderr, r.stdout + r.stderr
    before = _snapshot(tmp_path, folder_mtimes=False)
    # the second apply: nothing to do, no file touched (the folders' write probes move their mtimes)
    r = cli("apply", "-i", str(inv), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _recap(r.stdout) == {"dev": "ok=6 changed=0 failed=0 skipped=3 unreachable=0",
                                "prodn": "ok=5 changed=0 failed=0 skipped=5 unreachable=0"}, r.stdout
    assert _snapshot(tmp_path, folder_mtimes=False) == before
    # a loosened folder and pgpass mode are put back
    (tmp_path / "dev-backups").chmod(0o777)
    (tmp_path / "dev.pgpass").chmod(0o644)
    r = cli("apply", "-i", str(inv), "--host", "dev", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "changed: [dev] backup folder: " in r.stdout and "mode 0777 -> 0750" in r.stdout
    assert "changed: [dev] pgpass: " in r.stdout and "mode 0644 -> 0600" in r.stdout
    assert stat.S_IMODE((tmp_path / "dev-backups").stat().st_mode) == 0o750
    # a host whose schedule the inventory no longer declares keeps its block (a backup schedule
    # is never removed by leaving a key out), converged to the default time db.schedule uses
    inv = write_inventory(tmp_path / "inv.yaml", {
        "dev": native_host(pg, dbname, tmp_path / "dev-backups"),
        "prodn": _prodn(tmp_path, pg, dbname, ssh_server, schedule="45 1 * * *")})
    r = cli("apply", "-i", str(inv), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    crontab = (tmp_path / "crontab").read_text()
    assert "# BEGIN bigskies-ops dev " in crontab and "# BEGIN bigskies-ops prodn " in crontab
    dev_block = crontab[crontab.index("# BEGIN bigskies-ops dev "):crontab.index("# END bigskies-ops dev")]
    assert "\n0 2 * * * " in dev_block, dev_block
    r = cli("apply", "-i", str(inv), "--host", "dev", env=env)
    assert "ok: [dev] schedule: crontab block up to date" in r.stdout and r.returncode == 0, r.stdout


def test_check_changes_nothing_and_diff_shows_the_files_with_the_password_masked(tmp_path, pg, dbname, ssh_server,
                                                                                  cli_env):
    from bigskies_ops.pg.pgpass import escape
    inv = _two_hosts(tmp_path, pg, dbname, ssh_server)
    env = _env(cli_env, tmp_path)
    (tmp_path / "crontab").write_text("# the operator's own line\n0 5 * * * /usr/bin/true\n")
    before = _snapshot(tmp_path)
    r = cli("apply", "-i", str(inv), "--check", "--diff", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _snapshot(tmp_path) == before  # no file, folder, mode, mtime or crontab changed
    assert r.stdout.startswith("CHECK MODE (apply --check): nothing is changed")
    assert f"changed: [dev] backup folder: {tmp_path / 'dev-backups'} would be created (0750)" in r.stdout
    assert "changed: [prodn] schedule: crontab block would be written (2 lines" in r.stdout
    assert f"changed: [dev] metrics textfile: {tmp_path / 'metrics' / 'bigskies.prom'} would be written" in r.stdout
    assert "changed: [dev] pgpass: " in r.stdout and "would change: created the file" in r.stdout
    # the diffs: the crontab block, the pgpass lines with the password masked
    assert "    +# BEGIN bigskies-ops dev " in r.stdout and "    +# END bigskies-ops prodn" in r.stdout
    assert f"    +127.0.0.1:{pg.port}:{dbname}:bigskies:********" in r.stdout
    assert f"    +++ {tmp_path / 'dev.pgpass'} (after)" in r.stdout
    for secret in (PASSWORD, escape(PASSWORD)):
        assert secret not in r.stdout + r.stderr
    assert _recap(r.stdout) == {"dev": "ok=2 changed=4 failed=0 skipped=3 unreachable=0",
                                "prodn": "ok=2 changed=3 failed=0 skipped=5 unreachable=0"}
    # --json: one document; the item lines on stderr
    r = cli("apply", "-i", str(inv), "--check", "--diff", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["task"] == "apply" and doc["check"] is True and doc["result"] == "changed"
    dev = doc["hosts"][0]
    assert dev["host"] == "dev" and dev["result"] == "changed" and dev["exit_code"] == 0
    assert dev["recap"] == {"ok": 2, "changed": 4, "failed": 0, "skipped": 3, "unreachable": 0}
    sched = next(i for i in dev["items"] if i["item"] == "schedule")
    assert set(sched) >= {"item", "result", "reason", "diff"} and "+# BEGIN bigskies-ops dev" in sched["diff"]
    assert "changed: [dev] schedule:" in r.stderr and PASSWORD not in r.stdout + r.stderr
    assert _snapshot(tmp_path) == before
    # the real run with --diff: the same diffs, then the check of a converged host plans nothing
    r = cli("apply", "-i", str(inv), "--diff", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"    +127.0.0.1:{pg.port}:postgres:bigskies:********" in r.stdout
    assert PASSWORD not in r.stdout + r.stderr and escape(PASSWORD) not in r.stdout + r.stderr
    assert (tmp_path / "crontab").read_text().startswith("# the operator's own line\n0 5 * * * /usr/bin/true\n")
    r = cli("apply", "-i", str(inv), "--check", env=env)
    assert r.returncode == 0 and "changed=0" in r.stdout and "changed=1" not in r.stdout, r.stdout


def test_an_unreachable_ssh_host_is_reported_and_the_others_still_converge(tmp_path, pg, dbname, ssh_server, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", {
        "dev": native_host(pg, dbname, tmp_path / "dev-backups"),
        "far": _prodn(tmp_path, pg, dbname, ssh_server, ssh=ssh_block(ssh_server, port=1, connect_timeout=3))})
    env = _env(cli_env, tmp_path)
    r = cli("apply", "-i", str(inv), env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "unreachable: [far] ssh: " in r.stdout and _items(r.stdout, "far") == {"ssh": "unreachable"}
    assert _recap(r.stdout) == {"dev": "ok=1 changed=2 failed=0 skipped=6 unreachable=0",
                                "far": "ok=0 changed=0 failed=0 skipped=0 unreachable=1"}, r.stdout
    assert r.stderr.strip().splitlines()[-1] == "error: 1 of 2 host(s) failed or unreachable: far (unreachable: ssh)"
    assert (tmp_path / "dev-backups").is_dir() and (tmp_path / "dev.pgpass").is_file()
    assert "Traceback" not in r.stderr
    # --check: no plan for far, exit 1; --json: one document
    r = cli("apply", "-i", str(inv), "--check", "--json", env=env)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["result"] == "failed" and doc["check"] is True
    far = next(h for h in doc["hosts"] if h["host"] == "far")
    assert far["result"] == "unreachable" and far["exit_code"] == 1
    assert far["recap"] == {"ok": 0, "changed": 0, "failed": 0, "skipped": 0, "unreachable": 1}
    assert [i["item"] for i in far["items"]] == ["ssh"] and far["items"][0]["result"] == "unreachable"
    assert next(h for h in doc["hosts"] if h["host"] == "dev")["recap"]["changed"] == 0


def test_a_pgpass_file_that_cannot_be_written_fails_that_item_only(tmp_path, pg, dbname, cli_env):
    # the tests run as root: a mode would not stop a write; a path under a regular file does (ENOTDIR)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    inv = write_inventory(tmp_path / "inv.yaml", {
        "dev": native_host(pg, dbname, tmp_path / "dev-backups", schedule="15 3 * * *",
                           postgres={"passfile": str(blocker / "pgpass")})})
    env = _env(cli_env, tmp_path)
    before = _snapshot(tmp_path)
    r = cli("apply", "-i", str(inv), "--check", env=env)
    assert r.returncode == 0, r.stdout + r.stderr  # a plan was made: what would fail does not change the exit code
    assert (f"failed: [dev] pgpass: would fail: cannot write the pgpass file {blocker / 'pgpass'}: {blocker} is "
            f"not a folder") in r.stdout, r.stdout
    assert _recap(r.stdout)["dev"] == "ok=1 changed=2 failed=1 skipped=5 unreachable=0"
    assert _snapshot(tmp_path) == before
    r = cli("apply", "-i", str(inv), env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"failed: [dev] pgpass: cannot write the pgpass file {blocker / 'pgpass'}: {blocker} is not a folder" \
        in r.stdout
    assert _recap(r.stdout)["dev"] == "ok=1 changed=2 failed=1 skipped=5 unreachable=0"
    assert r.stderr.strip().splitlines()[-1] == "error: 1 of 1 host(s) failed or unreachable: dev (failed: pgpass)"
    # the other items converged
    assert (tmp_path / "dev-backups").is_dir() and "# BEGIN bigskies-ops dev " in (tmp_path / "crontab").read_text()
    assert blocker.read_text() == "a file, not a folder\n"


def test_a_protected_hosts_schedule_needs_the_flags_db_schedule_needs(tmp_path, pg, dbname, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", {
        "prod": native_host(pg, dbname, tmp_path / "prod-backups", schedule="15 3 * * *", protected=True),
        "lab": native_host(pg, dbname, tmp_path / "lab-backups", protected=True)})
    env = _env(cli_env, tmp_path)
    before = _snapshot(tmp_path)
    r = cli("apply", "-i", str(inv), env=env)
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"refused: prod is protected; prune needs --force-protected --confirm {dbname}" in r.stderr
    assert "nothing was changed" in r.stderr and _snapshot(tmp_path) == before
    r = cli("apply", "-i", str(inv), "--force-protected", "--confirm", "wrong", "--json", env=env)
    assert r.returncode == 3 and json.loads(r.stdout)["error"]["exit_code"] == 3 and _snapshot(tmp_path) == before
    # --check: the refusal is the schedule item's, exit 0, nothing changed
    r = cli("apply", "-i", str(inv), "--check", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "failed: [prod] schedule: would be refused: refused: prod is protected" in r.stdout
    assert _snapshot(tmp_path) == before
    # a protected host declaring no schedule: nothing apply does there is destructive, no flags
    r = cli("apply", "-i", str(inv), "--host", "lab", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipped: [lab] schedule: no schedule declared" in r.stdout and (tmp_path / "lab-backups").is_dir()
    # with the flags: the block carries the consent, as db.schedule's does
    r = cli("apply", "-i", str(inv), "--force-protected", "--confirm", dbname, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"--host prod -i {inv} " in (tmp_path / "crontab").read_text()
    assert f"--force-protected --confirm {dbname}" in (tmp_path / "crontab").read_text()
    r = cli("apply", "-i", str(inv), "--force-protected", "--confirm", dbname, env=env)
    assert r.returncode == 0 and "changed=0" in _recap(r.stdout)["prod"], r.stdout
    # converged: the flags are for what apply changes, so a plain apply (and --check) passes now
    for extra in ([], ["--check"]):
        r = cli("apply", "-i", str(inv), *extra, env=env)
        assert r.returncode == 0, (extra, r.stdout + r.stderr)
        assert "ok: [prod] schedule: crontab block up to date" in r.stdout and "changed=0" in _recap(r.stdout)["prod"]
    # a changed schedule needs them again, and the block is left as it was
    block = (tmp_path / "crontab").read_text()
    inv = write_inventory(tmp_path / "inv.yaml", {
        "prod": native_host(pg, dbname, tmp_path / "prod-backups", schedule="20 4 * * *", protected=True),
        "lab": native_host(pg, dbname, tmp_path / "lab-backups", protected=True)})
    r = cli("apply", "-i", str(inv), env=env)
    assert r.returncode == 3 and "prod is protected" in r.stderr, r.stdout + r.stderr
    assert (tmp_path / "crontab").read_text() == block


def test_unknown_host_is_a_usage_error(tmp_path, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": {"connection": "local"}})
    r = cli("apply", "-i", str(inv), "--host", "nope", "--json", env=cli_env)
    assert r.returncode == 2 and "unknown host or group 'nope'" in r.stderr and "Traceback" not in r.stderr
    assert json.loads(r.stdout) == {"result": "failed", "task": "apply", "host": "nope", "error": {
        "exit_code": 2, "message": json.loads(r.stdout)["error"]["message"]}}


def test_offsite_targets_are_probed_reachable_and_writable_and_left_as_they_were(tmp_path, pg, dbname, s3, s3env):
    from tests.integration.offsite.test_offsite import BUCKET, _target
    down = {"name": "down", "url": f"s3://{BUCKET}/down", "endpoint": "http://127.0.0.1:1",
            "access_key_env": "TEST_S3_KEY", "secret_key_env": "TEST_S3_SECRET"}
    s3["client"].put_object(Bucket=BUCKET, Key="apply/dev/old.sql.gz", Body=b"an archive already there")
    inv = write_inventory(tmp_path / "inv.yaml", {
        "dev": native_host(pg, dbname, tmp_path / "dev-backups", offsite=[_target(s3, "apply"), down])})
    env = _env(s3env, tmp_path)

    def objects():
        r = s3["client"].list_objects_v2(Bucket=BUCKET)
        return sorted((o["Key"], o["ETag"], o["LastModified"]) for o in r.get("Contents", []))
    before = objects()
    r = cli("apply", "-i", str(inv), "--check", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok: [dev] offsite vault: vault (s3://bigskies-offsite/apply at " in r.stdout
    assert "1 object(s) listed (no probe written under --check)" in r.stdout
    assert "failed: [dev] offsite down: would fail: offsite target down (s3://bigskies-offsite/down at " \
           "http://127.0.0.1:1) is unreachable (listing)" in r.stdout, r.stdout
    assert objects() == before
    r = cli("apply", "-i", str(inv), env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "reachable and writable (a probe object written and deleted)" in r.stdout
    assert "failed: [dev] offsite down: offsite target down (s3://bigskies-offsite/down at http://127.0.0.1:1) " \
           "is unreachable (upload of down/dev/.bigskies-apply-probe-" in r.stdout, r.stdout
    assert objects() == before  # the probe is gone, nothing else touched
    assert r.stderr.strip().splitlines()[-1] == "error: 1 of 1 host(s) failed or unreachable: dev (failed: offsite down)"


def test_notification_heartbeat_and_metrics_faults_are_failed_items_and_nothing_is_sent(tmp_path, pg, dbname,
                                                                                        cli_env):
    """The variables set and their URLs readable (inventory.check's rule); a metrics folder that does
    not exist. Nothing is sent: the URLs point at a closed port, so a send would fail the item."""
    inv = write_inventory(tmp_path / "inv.yaml", {
        "good": native_host(pg, dbname, tmp_path / "g", notify={"urls_env": ["TEST_APPLY_URL"]},
                            postgres={"passfile": str(tmp_path / "good.pgpass")},
                            heartbeat={"url_env": "TEST_APPLY_HB"}),
        "bad": native_host(pg, dbname, tmp_path / "b", notify={"urls_env": ["TEST_APPLY_URL", "TEST_APPLY_BADURL"]},
                           postgres={"passfile": str(tmp_path / "bad.pgpass")},
                           heartbeat={"url_env": "TEST_APPLY_UNSET"},
                           metrics={"textfile": str(tmp_path / "no-such-folder" / "x.prom")})})
    env = _env(cli_env, tmp_path)
    env.update({"TEST_APPLY_URL": "json://127.0.0.1:1/hook", "TEST_APPLY_HB": "http://127.0.0.1:1/ping",
                "TEST_APPLY_BADURL": "not a url at all"})
    env.pop("TEST_APPLY_UNSET", None)
    r = cli("apply", "-i", str(inv), env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ok: [good] notifications: TEST_APPLY_URL set, URL(s) readable (nothing sent)" in r.stdout
    assert "ok: [good] heartbeat: TEST_APPLY_HB set, URL(s) readable (nothing sent)" in r.stdout
    assert ("failed: [bad] notifications: hosts.bad.notify.urls_env[1]: the URL in TEST_APPLY_BADURL is not a "
            "notification URL apprise can read") in r.stdout, r.stdout
    assert "failed: [bad] heartbeat: variable TEST_APPLY_UNSET (hosts.bad.heartbeat.url_env) is not set here" \
        in r.stdout
    assert (f"failed: [bad] metrics textfile: the folder {tmp_path / 'no-such-folder'} does not exist "
            f"(node_exporter's textfile folder") in r.stdout
    assert "not a url at all" not in r.stdout + r.stderr and not (tmp_path / "no-such-folder").exists()
    assert _recap(r.stdout) == {"good": "ok=3 changed=2 failed=0 skipped=4 unreachable=0",
                                "bad": "ok=1 changed=2 failed=3 skipped=3 unreachable=0"}, r.stdout
    assert r.stderr.strip().splitlines()[-1] == ("error: 1 of 2 host(s) failed or unreachable: bad (failed: "
                                                 "notifications, heartbeat, metrics textfile)")


def test_ssh_container_hosts_check_the_container_and_skip_what_needs_the_database(tmp_path, ssh_server, pg_container,
                                                                                   podman_env, cli_env):
    from tests.remote_helpers import PROD_PW, PROD_PW_ENV, prod_host
    inv = write_inventory(tmp_path / "inv.yaml", {
        "prod": prod_host(ssh_server, pg_container, tmp_path / "proj", "postgres", protected=False,
                          backup={"roles": True}),
        "gone": prod_host(ssh_server, pg_container, tmp_path / "proj2", "postgres", protected=False,
                          backup={"roles": True}, container={"name": "bs-no-such-container"})})
    env = {**_env(cli_env, tmp_path), "CONTAINERS_CONF": podman_env["CONTAINERS_CONF"], PROD_PW_ENV: PROD_PW}
    r = cli("apply", "-i", str(inv), env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert _items(r.stdout, "prod") == {"ssh": "ok", "container": "ok", "postgres": "ok", "backup folder": "changed",
                                        "schedule": "skipped", "pgpass": "skipped", "offsite": "skipped",
                                        "notifications": "skipped", "heartbeat": "skipped",
                                        "metrics textfile": "skipped", "roles": "ok"}, r.stdout
    assert "skipped: [prod] pgpass: container access: the password goes into the container by name" in r.stdout
    gone = _items(r.stdout, "gone")
    assert gone["container"] == "failed" and gone["postgres"] == "skipped" and gone["roles"] == "skipped", r.stdout
    assert "container 'bs-no-such-container' does not exist on gone" in r.stdout
    assert "skipped: [gone] roles: not checked: the container item failed" in r.stdout
    assert gone["backup folder"] == "changed"  # the items that need no database still converge
    assert _recap(r.stdout)["gone"] == "ok=1 changed=1 failed=1 skipped=8 unreachable=0"
    assert (tmp_path / "proj" / "backups").is_dir() and (tmp_path / "proj2" / "backups").is_dir()
    assert r.stderr.strip().splitlines()[-1] == ("error: 1 of 2 host(s) failed or unreachable: gone (failed: "
                                                 "container)")
