"""The docker-compose stack on real podman + podman-compose: lifecycle tasks, the data
volume, coordinators around a restore (also on SIGTERM), roles, scenarios, bad inputs.

One compose project (tests/infra/compose_stack.py) serves the module; every name
carries a random suffix and everything is removed at teardown (checked). Data is
compared with the test's own psql (tests/pgcheck.py) through ``podman exec``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, cli, write_inventory
from tests.infra import compose_stack as cs
from tests.infra.podman import PG_BINDIR
from tests.pgcheck import db_fingerprint, dir_hashes

pytest_plugins = ["tests.infra.fixtures"]

DB = "bigskies"


# ------------------------------------------------------------------ helpers
class Stack:
    def __init__(self, root: Path, suffix: str, env: dict):
        self.root, self.suffix, self.env = root, suffix, env
        self.n = cs.names(suffix)
        self.backups = root / "backups"
        self.inv = root / "inventory.yaml"

    def host(self, **over) -> dict:
        h = {"connection": "local", "project_dir": str(self.root / "project"),
             "container": {"name": self.n["postgres"], "engine_command": "podman"},
             "compose": {"command": "podman-compose", "file": "docker-compose.yml", "volume": "postgres_data",
                         "project_name": self.n["project"]},
             "coordinators": ["bootstrap", "datastore"],
             "postgres": {"database": DB, "user": "bigskies", "bindir": PG_BINDIR},
             "backup": {"dir": str(self.backups), "roles": True},
             "migrations": {"dir": str(REPO / "configs" / "sql")}}
        for k, v in over.items():
            h[k] = {**h[k], **v} if isinstance(v, dict) and isinstance(h.get(k), dict) else v
        return h

    def inventory(self, name: str = "inventory.yaml", **over) -> Path:
        return write_inventory(self.root / name, {"stack": self.host(**over)})

    def cli(self, *args, inv: Path | None = None, timeout: float = 300):
        return cli(*args, "-i", str(inv or self.inv), env=self.env, timeout=timeout)

    def psql(self, sql: str, database: str = DB) -> str:
        r = cs.podman(self.env, "exec", "-i", self.n["postgres"], f"{PG_BINDIR}/psql", "-X", "-q", "-A", "-t",
                      "-v", "ON_ERROR_STOP=1", "-U", "bigskies", "-d", database, "-c", sql)
        if r.returncode != 0:
            raise AssertionError(f"test psql failed: {r.stderr}")
        return r.stdout

    def fingerprint(self) -> dict:
        return db_fingerprint(self.psql, DB)

    def state(self, service: str) -> str:
        r = cs.podman(self.env, "ps", "-a", "--filter", f"label=com.docker.compose.project={self.n['project']}",
                      "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.Names}}")
        names = r.stdout.split()
        if not names:
            return "absent"
        return cs.podman(self.env, "inspect", "--format", "{{.State.Status}}", names[0]).stdout.strip()

    def volume_exists(self) -> bool:
        return cs.podman(self.env, "volume", "inspect", self.n["volume"]).returncode == 0

    def sessions(self) -> set[tuple[str, str]]:
        out = self.psql("SELECT DISTINCT application_name || '|' || usename FROM pg_stat_activity "
                        f"WHERE datname = '{DB}' AND application_name IN ('bootstrap', 'datastore')", "postgres")
        return {tuple(line.split("|")) for line in out.split()}

    def wait_sessions(self, want: set, timeout: float = 40) -> set:
        deadline = time.monotonic() + timeout
        got: set = set()
        while time.monotonic() < deadline:
            try:
                got = self.sessions()
            except AssertionError:
                got = set()
            if want <= got:
                return got
            time.sleep(0.5)
        raise AssertionError(f"coordinator sessions {want} not in pg_stat_activity of {DB!r}; got {got}")

    def harmless(self):
        """(fingerprint, backup folder hashes, volume exists, service states) for "nothing harmed".

        The independent podman calls run side by side (each waits mostly on podman itself)."""
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(5) as ex:
            fp = ex.submit(self.fingerprint)
            vol = ex.submit(self.volume_exists)
            states = {s: ex.submit(self.state, s) for s in ("postgres", "bootstrap", "datastore")}
            files = dir_hashes(self.backups)
            return (fp.result(), files, vol.result(), {s: f.result() for s, f in states.items()})


COORD_SESSIONS = {("bootstrap", "bigskies"), ("datastore", "bigskies_datastore")}


def _setup_data(st: Stack) -> None:
    from bigskies_ops.dev.sampledata import sample_data_sql
    r = subprocess.run(["podman", "exec", "-i", st.n["postgres"], f"{PG_BINDIR}/psql", "-X", "-q",
                        "-v", "ON_ERROR_STOP=1", "-U", "bigskies", "-d", DB],
                       input=sample_data_sql(1).encode(), env=st.env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    st.psql("CREATE ROLE bigskies_datastore LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO bigskies_datastore;"
            " COMMENT ON ROLE bigskies_datastore IS 'datastore coordinator'")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, podman_env, pg_base_image, cli_env_module):
    suffix = uuid.uuid4().hex[:8]
    root = tmp_path_factory.mktemp(f"stack{suffix}")
    os.chmod(root, 0o755)
    cs.write_project(root / "project", suffix, REPO / "configs" / "sql")
    env = {**cli_env_module, "CONTAINERS_CONF": podman_env["CONTAINERS_CONF"]}
    old_conf = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = podman_env["CONTAINERS_CONF"]  # in-process library calls
    st = Stack(root, suffix, env)
    st.inventory()
    try:
        r = st.cli("docker.up", "--wait-migrations", "--timeout", "90")
        st.first_up = r
        assert r.returncode == 0, r.stdout + r.stderr
        _setup_data(st)
        st.wait_sessions(COORD_SESSIONS)
        yield st
    finally:
        left = cs.teardown(podman_env, st.n["project"], images=(st.n["image"],))
        if old_conf is None:
            os.environ.pop("CONTAINERS_CONF", None)
        else:
            os.environ["CONTAINERS_CONF"] = old_conf
        assert not any(left.values()), f"left behind: {left}"


@pytest.fixture(scope="module")
def cli_env_module():
    env = dict(os.environ)
    env.pop("BIGSKIES_INVENTORY", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    return env


# ------------------------------------------------------------------ lifecycle
def test_up_waited_for_postgres_and_the_bootstrap_migrations(stack):
    out = stack.first_up.stdout + stack.first_up.stderr
    assert "Waiting for PostgreSQL" in out and "schema_migrations at 5 (005_observations.sql)" in out
    assert stack.psql("SELECT max(version) FROM schema_migrations").strip() == "5"
    r = stack.cli("docker.ps", "--json")
    assert r.returncode == 0, r.stderr
    rows = {s["service"]: s for s in json.loads(r.stdout)["services"]}
    assert {k: v["state"] for k, v in rows.items()} == {"postgres": "running", "bootstrap": "running",
                                                        "datastore": "running"}
    assert rows["postgres"]["containers"] == [stack.n["postgres"]]
    assert rows["bootstrap"]["coordinator"] and not rows["postgres"]["coordinator"]


def test_volume_shows_real_name_size_and_creation_time(stack):
    r = stack.cli("db.volume", "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["name"] == f"bsst{stack.suffix}_postgres_data" and v["exists"] is True
    assert v["key"] == "postgres_data" and v["project"] == f"bsst{stack.suffix}"
    assert v["size_bytes"] > 10_000_000 and v["created_at"].endswith("Z")
    assert v["warnings"] == []
    human = stack.cli("db.volume")
    assert f"Name: bsst{stack.suffix}_postgres_data" in human.stdout and "Exists: yes" in human.stdout


def test_volume_warns_when_the_data_directory_is_a_bind_mount(stack, tmp_path):
    from bigskies_ops.hosts import compose as cmp
    from bigskies_ops.stack import lifecycle as stk
    from bigskies_ops.inventory import parse
    inv = parse({"hosts": {"stack": stack.host()}}, stack.inv)
    project = cmp.Project("p", {"postgres": {"container_name": stack.n["postgres"],
                                             "volumes": ["./pgdata:/var/lib/postgresql"]}},
                          {"postgres_data": {"name": "p_postgres_data"}})
    warnings = stk._data_dir_warnings(stk.runner_for(inv.hosts["stack"]), inv.hosts["stack"], project,
                                      "postgres_data")
    assert len(warnings) == 1, warnings
    assert "/var/lib/postgresql/data" in warnings[0] and "bind mount of ./pgdata" in warnings[0]
    assert "Volume Not Persisting" in warnings[0]


def test_data_survives_down_build_and_up(stack):
    before = stack.fingerprint()
    r = stack.cli("docker.down")
    assert r.returncode == 0, r.stderr
    assert {s: stack.state(s) for s in ("postgres", "bootstrap", "datastore")} == \
        {"postgres": "absent", "bootstrap": "absent", "datastore": "absent"}
    assert stack.volume_exists()
    r = stack.cli("docker.build")
    assert r.returncode == 0, r.stderr
    assert stack.n["image"] in r.stdout
    label = cs.podman(stack.env, "image", "inspect", "--format", "{{index .Labels \"org.bigskies.role\"}}",
                      stack.n["image"]).stdout.strip()
    assert label == "coordinator"
    r = stack.cli("docker.up")
    assert r.returncode == 0, r.stderr
    assert stack.fingerprint() == before
    stack.wait_sessions(COORD_SESSIONS)
    # up on a running stack, and on one whose coordinator was stopped, is a success (as Docker's
    # compose up -d): podman-compose's own exit codes 125 ("name already in use") are not the outcome
    (datastore,) = cs.podman(stack.env, "ps", "--filter", f"label=com.docker.compose.project={stack.n['project']}",
                             "--filter", "label=com.docker.compose.service=datastore",
                             "--format", "{{.Names}}").stdout.split()
    cs.podman(stack.env, "stop", "-t", "1", datastore)
    assert stack.state("datastore") == "exited"
    r = stack.cli("docker.up")
    assert r.returncode == 0, r.stdout + r.stderr
    assert {s: stack.state(s) for s in ("postgres", "bootstrap", "datastore")} == \
        {"postgres": "running", "bootstrap": "running", "datastore": "running"}
    assert stack.fingerprint() == before
    stack.wait_sessions(COORD_SESSIONS)
    r = stack.cli("docker.restart")
    assert r.returncode == 0, r.stderr
    assert stack.fingerprint() == before


def test_logs_of_one_service(stack):
    r = stack.cli("docker.logs", "bootstrap", "--tail", "50")
    assert r.returncode == 0, r.stderr
    assert "migrations done" in r.stdout


def test_logs_without_a_service_show_every_service(stack):
    """docker.logs [SERVICE]: SERVICE is optional (Invoke made it required: "did not receive
    required positional arguments"); -h prints the help instead of running."""
    r = stack.cli("docker.logs", "--tail", "50")
    assert r.returncode == 0, r.stderr
    assert "migrations done" in r.stdout                     # the bootstrap service's lines among all
    r = stack.cli("docker.logs", "-h")
    assert r.returncode == 0 and "docker.logs [--options]" in r.stdout and "migrations done" not in r.stdout


# ------------------------------------------------------------------ coordinators around a restore
def test_restore_stops_and_restarts_coordinators_and_they_reconnect(stack):
    r = stack.cli("db.backup", "--label", "before coordinator restore")
    assert r.returncode == 0, r.stderr
    archive = sorted(p for p in os.listdir(stack.backups) if p.endswith(".sql.gz"))[-1]
    before = stack.fingerprint()
    stack.psql("DELETE FROM coordinator_config_history; UPDATE users SET email = 'x' || id || '@example.org'")
    assert stack.fingerprint() != before
    r = stack.cli("db.restore", "--file", archive, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Stopping coordinators: bootstrap, datastore" in r.stderr
    assert "Starting coordinators again: bootstrap, datastore" in r.stderr
    assert stack.fingerprint() == before
    stack.wait_sessions(COORD_SESSIONS)
    assert stack.state("bootstrap") == stack.state("datastore") == "running"


def test_sigterm_mid_restore_starts_the_coordinators_again(stack):
    r = stack.cli("db.backup", "--label", "sigterm test")
    assert r.returncode == 0, r.stderr
    archive = sorted(p for p in os.listdir(stack.backups) if p.endswith(".sql.gz"))[-1]
    stack.psql("UPDATE users SET email = 'sigterm' || id || '@example.org'")
    before = stack.fingerprint()
    # A test session holds a lock on the database object (COMMENT ON DATABASE takes
    # ShareUpdateExclusive until commit): new connections still work, but the restore's
    # rename blocks, exactly while its coordinators are stopped.
    holder = subprocess.Popen(["podman", "exec", "-i", stack.n["postgres"], f"{PG_BINDIR}/psql", "-X", "-q",
                               "-U", "bigskies", "-d", "postgres"], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=stack.env)
    holder.stdin.write(f"BEGIN; COMMENT ON DATABASE {DB} IS 'held by the test'; SELECT 1;\n".encode())
    holder.stdin.flush()
    proc = subprocess.Popen([sys.executable, "-m", "bigskies_ops", "db.restore", "--file", archive, "--yes",
                             "-i", str(stack.inv)], env=stack.env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            waiting = stack.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                 "AND query LIKE 'ALTER DATABASE%RENAME%'", "postgres").strip()
            if waiting == "1":
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.3)
        else:
            raise AssertionError("the restore never reached the swap")
        assert stack.state("bootstrap") == stack.state("datastore") == "exited"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        holder.stdin.write(b"ROLLBACK;\n\\q\n")
        holder.stdin.close()
        holder.wait(30)
    assert proc.returncode == 143, err
    assert "Starting coordinators again: bootstrap, datastore" in err and "interrupted by signal 15; cleanup done" in err
    assert stack.state("bootstrap") == stack.state("datastore") == "running"
    stack.wait_sessions(COORD_SESSIONS)
    assert stack.fingerprint() == before  # the swap never happened
    left = stack.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'bigskies\\_restoring\\_%'", "postgres")
    assert left.strip() == "0"


# ------------------------------------------------------------------ purge, up, restore (scenario 3)
def test_purge_takes_a_backup_first_then_the_volume_is_gone_and_restore_brings_data_back(stack):
    before = stack.fingerprint()
    r = stack.cli("docker.purge", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "This will be lost:" in r.stdout and stack.n["volume"] in r.stdout
    assert not stack.volume_exists()
    assert {s: stack.state(s) for s in ("postgres", "bootstrap", "datastore")} == \
        {"postgres": "absent", "bootstrap": "absent", "datastore": "absent"}
    mans = [json.loads((stack.backups / m).read_text()) for m in os.listdir(stack.backups)
            if m.endswith(".manifest.json")]
    pre = [m for m in mans if m["kind"] == "pre-purge"]
    assert len(pre) == 1 and pre[0]["status"] == "DONE" and pre[0]["roles_file"] == pre[0]["archive"] + ".roles.sql"
    roles = stack.backups / pre[0]["roles_file"]
    assert oct(roles.stat().st_mode & 0o777) == "0o600"
    assert "CREATE ROLE bigskies_datastore;" in roles.read_text() and "PASSWORD" not in roles.read_text()

    r = stack.cli("docker.up", "--wait-migrations")
    assert r.returncode == 0, r.stderr
    assert stack.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'bigskies_datastore'").strip() == "0"
    r = stack.cli("db.restore", "--file", pre[0]["archive"], "--roles", "--yes", "--terminate-sessions")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Roles created" in r.stderr and "bigskies_datastore" in r.stderr
    assert stack.fingerprint() == before
    assert stack.psql("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles "
                      "WHERE rolname = 'bigskies_datastore'").strip() == "datastore coordinator"
    stack.wait_sessions(COORD_SESSIONS)  # datastore logs in as the restored role


def in_order(text: str, *parts: str) -> None:
    """Every part is in ``text``, each after the one before (a runbook's step order)."""
    at = -1
    for p in parts:
        i = text.find(p, at + 1)
        assert i != -1, f"{p!r} not found after position {at} in:\n{text}"
        at = i


def recap(text: str) -> str:
    """The recap line of host ``stack`` (``ok=.. changed=.. ...``)."""
    return next(line.split(" : ", 1)[1] for line in text[text.index("RUNBOOK RECAP"):].splitlines()
                if line.startswith("stack "))


def test_scenario_complete_reset_runs_its_runbook_and_brings_back_a_working_stack(stack):
    before = stack.fingerprint()
    created = cs.podman(stack.env, "volume", "inspect", "--format", "{{.CreatedAt}}", stack.n["volume"]).stdout
    r = stack.cli("scenario.complete-reset", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    # the runbook's steps in order: the pre-purge backup is checked before anything is purged
    in_order(r.stdout, "TASK [Check the backups save the roles] (check.roles-saved on stack)",
             "TASK [Back up before the purge] (db.backup on stack)",
             "TASK [Check the pre-purge backup can be restored] (check.restorable on stack)", "verified, its roles file",
             "TASK [Purge containers and the data volume] (docker.purge on stack)",
             "TASK [Rebuild images] (docker.build on stack)", "TASK [Start fresh] (docker.up on stack)",
             "TASK [Restore the pre-purge backup with its roles] (db.restore on stack)", "changed: [stack]",
             "TASK [Restore the pre-purge backup without roles]", "skipped: [stack]", "RUNBOOK RECAP")
    assert recap(r.stdout) == "ok=2 changed=5 failed=0 skipped=1 unreachable=0 ignored=0", r.stdout
    assert cs.podman(stack.env, "volume", "inspect", "--format", "{{.CreatedAt}}",
                     stack.n["volume"]).stdout != created
    assert stack.fingerprint() == before
    stack.wait_sessions(COORD_SESSIONS)


def test_scenario_fresh_start_keeps_the_data(stack):
    before = stack.fingerprint()
    r = stack.cli("scenario.fresh-start")
    assert r.returncode == 0, r.stdout + r.stderr
    in_order(r.stdout, "TASK [Back up the current state] (db.backup on stack)", "TASK [Stop everything] (docker.down",
             "TASK [Rebuild images] (docker.build", "TASK [Start; the database persists in its volume] (docker.up",
             "TASK [Verify the data is intact] (check.row-counts on stack)", "tables intact", "RUNBOOK RECAP")
    assert recap(r.stdout) == "ok=1 changed=4 failed=0 skipped=0 unreachable=0 ignored=0", r.stdout
    assert stack.fingerprint() == before


# ------------------------------------------------------------------ bad input
def _bad(stack, args, inv, code, *needles):
    """Run ``args``: exit ``code``, every needle in the output (stderr, or the failed step's
    line of a runbook on stdout), and nothing harmed."""
    before = stack.harmless()
    r = stack.cli(*args, inv=inv)
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    for n in needles:
        assert n in r.stderr + r.stdout, r.stdout + r.stderr
    assert stack.harmless() == before
    return r


def test_compose_file_missing_is_exit_2(stack):
    inv = stack.inventory("inv-nofile.yaml", compose={"file": "nope-compose.yml"})
    _bad(stack, ["docker.purge", "--yes"], inv, 2, "compose file", "nope-compose.yml", "not found")


def test_compose_command_not_installed_is_exit_2(stack):
    inv = stack.inventory("inv-nocmd.yaml", compose={"command": "podman-compose-not-installed"})
    _bad(stack, ["docker.down"], inv, 2, "podman-compose-not-installed", "is not installed")


def test_coordinator_that_is_not_a_service_is_exit_2_and_nothing_restored(stack):
    inv = stack.inventory("inv-coord.yaml", coordinators=["bootstrap", "scheduler"])
    _bad(stack, ["db.restore", "--file", "latest", "--yes"], inv, 2, "scheduler", "is not a service",
         "bootstrap, datastore, postgres")


def test_purge_check_is_a_dry_run(stack):
    before = stack.harmless()
    r = stack.cli("docker.purge", "--check", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    plan = doc["plan"]
    assert doc["check"] is True and plan["volume"] == f"bsst{stack.suffix}_postgres_data"
    assert plan["volume_exists"] is True and f"bsst{stack.suffix}-postgres" in plan["containers"]
    # sizes are bytes (docs/cli.md "JSON output"), the same figure as db.volume's size_bytes
    vol = json.loads(stack.cli("db.volume", "--json").stdout)
    assert isinstance(plan["volume_size_bytes"], int) and plan["volume_size_bytes"] > 0, plan
    # read a moment apart on a live server (its WAL and stats files move): the same figure within 1 %
    assert abs(plan["volume_size_bytes"] - vol["size_bytes"]) <= vol["size_bytes"] // 100, (plan, vol)
    assert stack.harmless() == before


def test_purge_on_a_protected_host_is_refused(stack):
    inv = stack.inventory("inv-prot.yaml", protected=True)
    _bad(stack, ["docker.purge", "--yes"], inv, 3, "protected", "--force-protected --confirm bigskies")


def test_purge_without_backup_needs_confirmation_even_with_a_terminal_on_stdout(stack):
    """stdout/stderr on a pty (a TTY heuristic would fire), stdin not a terminal: refused."""
    import pty
    before = stack.harmless()
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([sys.executable, "-m", "bigskies_ops", "docker.purge", "--no-backup",
                              "-i", str(stack.inv)], env=stack.env, cwd=REPO, stdin=subprocess.DEVNULL,
                             stdout=slave, stderr=slave)
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:
                break
            if not b:
                break
            chunks.append(b)
        rc = p.wait(120)
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    out = b"".join(chunks).decode(errors="replace")
    assert rc == 3, out
    assert "WITHOUT a backup" not in out or "pass --yes" in out
    assert "pass --yes" in out and "NO backup will be taken" in out
    assert stack.harmless() == before


def test_purge_when_the_pre_purge_backup_fails_purges_nothing(stack, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    inv = stack.inventory("inv-badbackup.yaml", backup={"dir": str(blocker / "backups")})
    _bad(stack, ["docker.purge", "--yes"], inv, 1, "pre-purge backup failed, nothing was purged")


def test_scenarios_refuse_before_purging_when_the_restore_would_miss_its_roles(stack):
    # backups that save no roles: refused before even the pre-purge backup (exit 3, nothing changes)
    inv = stack.inventory("inv-noroles.yaml", backup={"roles": False})
    r = _bad(stack, ["scenario.complete-reset", "--yes"], inv, 3,
             "backup.roles is false", "nothing was purged", "backup.roles: true", "--no-roles")
    assert "failed: [stack] scenario.complete-reset restores with the cluster's roles" in r.stdout, r.stdout
    assert "TASK [Back up before the purge]" not in r.stdout and "failed=1" in recap(r.stdout), r.stdout
    # an archive named for scenario 5 without its roles file: refused before the coordinators stop
    r = stack.cli("db.backup", "--json", inv=inv)
    assert r.returncode == 0, r.stderr
    archive = json.loads(r.stdout)["path"]
    assert not Path(archive + ".roles.sql").exists()
    r = _bad(stack, ["scenario.recover-corruption", "--archive", archive, "--yes"], stack.inv, 3,
             f"{archive} has no roles file", "nothing was purged", "db.backup --host stack")
    assert "TASK [Check the named archive can be restored]" in r.stdout, r.stdout
    assert "TASK [Stop the coordinators]" not in r.stdout, r.stdout


def test_postgres_never_ready_times_out_with_its_last_log_lines(stack, podman_env):
    suffix = uuid.uuid4().hex[:8]
    message = f"FATAL: test-{suffix} data directory has wrong ownership"
    root = stack.root / f"broken{suffix}"
    cs.write_broken_project(root, suffix, message)
    inv = write_inventory(stack.root / "inv-broken.yaml", {"broken": {
        "connection": "local", "project_dir": str(root),
        "container": {"name": f"bsbr{suffix}-postgres", "engine_command": "podman"},
        "compose": {"command": "podman-compose", "project_name": f"bsbr{suffix}"},
        "postgres": {"bindir": PG_BINDIR}, "backup": {"dir": str(root / "b")}}})
    try:
        t0 = time.monotonic()
        r = stack.cli("docker.up", "--timeout", "4", inv=inv)
        assert r.returncode == 1, r.stderr
        assert "did not accept connections within 4 s" in r.stderr and message in r.stderr
        assert time.monotonic() - t0 < 60
    finally:
        left = cs.teardown(podman_env, f"bsbr{suffix}")
    assert not any(left.values()), left


# ------------------------------------------------------------------ scenarios 1 and 5
def test_scenario_before_risky_change_backs_up_restarts_and_says_how_to_go_back(stack):
    n = len([p for p in os.listdir(stack.backups) if p.endswith(".sql.gz")])
    r = stack.cli("scenario.before-risky-change", "--restart", "bootstrap")
    assert r.returncode == 0, r.stdout + r.stderr
    in_order(r.stdout, "TASK [Check the service to restart exists] (check.service on stack)",
             "ok: [stack] 'bootstrap' is a service", "TASK [Back up the database] (db.backup on stack)",
             "TASK [Make the change (restart the service)] (docker.restart on stack)",
             "changed: [stack] service 'bootstrap' restarted",
             "TASK [Check PostgreSQL accepts connections] (wait.postgres on stack)", "ok: [stack] PostgreSQL accepts",
             "TASK [Say how to go back] (message on stack)",
             "If something breaks, restore: bigskies-ops db.restore",  # the command that ran
             "RUNBOOK RECAP")
    assert len([p for p in os.listdir(stack.backups) if p.endswith(".sql.gz")]) == n + 1
    stack.wait_sessions(COORD_SESSIONS)


def test_scenario_recover_corruption_recreates_the_volume_and_restores(stack):
    before = stack.fingerprint()
    created = cs.podman(stack.env, "volume", "inspect", "--format", "{{.CreatedAt}}", stack.n["volume"]).stdout
    r = stack.cli("scenario.recover-corruption", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    in_order(r.stdout, "TASK [Check the backups save the roles]", "TASK [Check the named archive can be restored]",
             "skipped: [stack] condition 'params.archive' is false",
             "TASK [Stop the coordinators] (coordinators.stop on stack)", "changed: [stack] stopped bootstrap, datastore",
             "TASK [Try to back up (it may fail on a corrupt database)] (db.backup on stack)",
             "TASK [Say the backup failed]", "skipped: [stack] condition 'bk is failed' is false",
             "TASK [Choose the archive to restore] (backup.choose on stack)",
             "TASK [Check the archive to restore] (check.restorable on stack)",
             "TASK [Delete the data volume] (docker.purge on stack)", "TASK [Start fresh] (docker.up on stack)",
             "TASK [Wait for the bootstrap migrations] (wait.migrations on stack)",
             "TASK [Restore the last good backup with its roles] (db.restore on stack)", "RUNBOOK RECAP")
    assert recap(r.stdout) == "ok=4 changed=5 failed=0 skipped=3 unreachable=0 ignored=0", r.stdout
    # the archive chosen is the backup just taken
    taken = r.stdout[r.stdout.index("TASK [Try to back up"):r.stdout.index("TASK [Say the backup failed]")]
    name = taken.split("changed: [stack] backup ", 1)[1].split()[0]
    assert f"the newest good backup: {stack.backups / name}" in r.stdout, r.stdout
    assert cs.podman(stack.env, "volume", "inspect", "--format", "{{.CreatedAt}}",
                     stack.n["volume"]).stdout != created
    assert stack.fingerprint() == before
    stack.wait_sessions(COORD_SESSIONS)


def test_scenario_recover_corruption_restores_the_last_good_backup_when_the_backup_fails(stack):
    """The guide's "try to backup (might fail); if it fails, restore from the last known good":
    a session holds a lock no dump can wait out (lock_wait_timeout 1 s), so the backup step
    fails, the run goes on (ignore_errors) and restores the backup taken before the change."""
    r = stack.cli("db.backup", "--json")
    assert r.returncode == 0, r.stderr
    good = json.loads(r.stdout)["path"]
    before = stack.fingerprint()
    stack.psql("CREATE TABLE made_after_the_good_backup (x int); INSERT INTO made_after_the_good_backup VALUES (1)")
    inv = stack.inventory("inv-lockwait.yaml", backup={"lock_wait_timeout": 1})
    holder = subprocess.Popen(["podman", "exec", "-i", stack.n["postgres"], f"{PG_BINDIR}/psql", "-X", "-q",
                               "-U", "bigskies", "-d", DB, "-c",
                               "BEGIN; LOCK TABLE public.schema_migrations IN ACCESS EXCLUSIVE MODE; "
                               "SELECT pg_sleep(600); COMMIT;"],
                              env=stack.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while stack.psql("SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted "
                         "AND relation = 'public.schema_migrations'::regclass").strip() != "1":
            assert time.monotonic() < deadline and holder.poll() is None, "the lock was never taken"
            time.sleep(0.2)
        backups = {p for p in os.listdir(stack.backups) if p.endswith(".sql.gz")}
        r = stack.cli("scenario.recover-corruption", "--yes", inv=inv)
    finally:
        holder.kill()
        holder.wait(30)
    assert r.returncode == 0, r.stdout + r.stderr
    in_order(r.stdout, "TASK [Try to back up (it may fail on a corrupt database)]", "failed: [stack]", "...ignoring",
             "TASK [Say the backup failed]", "the backup failed (", "restoring the last known good backup",
             "TASK [Choose the archive to restore]", f"the newest good backup: {good}",
             "TASK [Restore the last good backup with its roles]", "RUNBOOK RECAP")
    assert "ignored=1" in recap(r.stdout) and "failed=0" in recap(r.stdout), r.stdout
    assert {p for p in os.listdir(stack.backups) if p.endswith(".sql.gz")} == backups  # no new archive
    assert stack.fingerprint() == before  # the good backup's data, without the later table
    stack.wait_sessions(COORD_SESSIONS)
