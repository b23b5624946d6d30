"""``inv run RUNBOOK`` on a real PostgreSQL 15: a runbook that backs up, verifies and
restores into a new database (register, when, ignore_errors), the copy compared by the
test's own psql; a failed step stops the run; ``--check`` changes nothing; ``--json``.

Every bad input of issue 20 for runbooks: the message names the step and the field, the
exit code is 2 (usage) or 3 (safety), and nothing changed (database oids and names, the
backup folder's files and their mtimes).
"""
from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from tests.conftest import cli, native_host, write_inventory
from tests.pgcheck import db_fingerprint


def _databases(pg_sql) -> dict[str, str]:
    """name -> oid of every database (a dropped, created or renamed one changes this)."""
    rows = pg_sql("SELECT datname || '|' || oid FROM pg_database", "postgres").splitlines()
    return dict(r.rsplit("|", 1) for r in rows if r)


def _files(path: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``path`` with its size and mtime (ns); {} when it does not exist."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()} if path.exists() else {}


@pytest.fixture
def setup(tmp_path, pg, dbname):
    """(inventory, backup dir, write(name, yaml) -> path): host ``dev`` on the test cluster,
    host ``prod`` (protected, same cluster and database), runbooks beside the inventory."""
    bdir = tmp_path / "backups"
    inv = write_inventory(tmp_path / "inventory.yaml",
                          {"dev": native_host(pg, dbname, bdir),
                           "prod": native_host(pg, dbname, tmp_path / "prod-backups", protected=True)},
                          defaults={"host": "dev"}, groups={"everything": ["dev", "prod"]})
    (tmp_path / "runbooks").mkdir()

    def write(name: str, text: str) -> Path:
        p = tmp_path / "runbooks" / f"{name}.yaml"
        p.write_text(textwrap.dedent(text))
        return p
    return inv, bdir, write


def _run(inv, env, *args):
    r = cli("run", "-i", str(inv), *args, env=env)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    return r


COPY = """
    description: back up, verify, restore the backup into a new database
    params:
      target: {type: str, help: the new database}
      verify: {type: bool, default: true}
    steps:
      - name: Back up
        task: db.backup
        args: {label: "runbook test on {{ host }}"}
        register: pre
      - name: Verify it
        task: db.verify
        args: {archive: "{{ pre.archive }}"}
        when: params.verify
        register: checked
      - name: Restore a backup that does not exist
        task: db.restore
        args: {archive: no_such_backup.sql.gz, target_db: "{{ params.target }}"}
        ignore_errors: true
        register: bad
      - name: Restore into the new database
        task: db.restore
        args: {archive: "{{ pre.archive }}", target_db: "{{ params.target }}"}
        when: [bad is failed, checked is succeeded]
        register: copy
      - name: Only when the copy failed
        task: db.backup
        when: copy is failed
"""


def test_a_runbook_backs_up_verifies_and_restores_into_a_new_database(setup, pg, pg_sql, dbname, cli_env):
    inv, bdir, write = setup
    write("copy", COPY)
    target = f"{dbname}_copy"
    before = db_fingerprint(pg_sql, dbname)
    r = _run(inv, cli_env, "copy", "--set", f"target={target}")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "TASK [Back up] (db.backup on dev) ***" in out
    assert "TASK [Restore into the new database] (db.restore on dev) ***" in out
    assert "failed: [dev] " in out and "no_such_backup.sql.gz" in out and "...ignoring" in out
    assert f"changed: [dev] '{target}' restored from " in out
    assert "skipped: [dev] condition 'copy is failed' is false" in out
    assert "RUNBOOK RECAP" in out
    assert "dev : ok=0 changed=3 failed=0 skipped=1 unreachable=0 ignored=1" in out, out
    # one new archive with its manifest; the copy equals the source (the test's own psql)
    archives = [p.name for p in bdir.iterdir() if p.name.endswith(".sql.gz")]
    assert len(archives) == 1, archives
    assert db_fingerprint(pg_sql, target) == before
    pg_sql(f'DROP DATABASE "{target}"', "postgres")


def test_json_is_one_document_with_each_host_and_step(setup, pg_sql, dbname, cli_env):
    inv, bdir, write = setup
    write("copy", COPY)
    target = f"{dbname}_json"
    r = _run(inv, cli_env, "copy", "--set", f"target={target}", "--set", "verify=false", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert "TASK [Back up]" in r.stderr  # step lines go to stderr under --json
    assert doc["result"] == "changed" and doc["task"] == "run" and doc["runbook"] == "copy" and doc["check"] is False
    (h,) = doc["hosts"]
    assert h["host"] == "dev" and h["result"] == "changed" and h["exit_code"] == 0
    assert h["recap"] == {"ok": 0, "changed": 1, "failed": 0, "skipped": 3, "unreachable": 0, "ignored": 1}
    assert [s["result"] for s in h["steps"]] == ["changed", "skipped", "failed", "skipped", "skipped"]
    assert h["steps"][0]["facts"]["archive"].startswith(str(bdir))
    assert h["steps"][1]["reason"] == "condition 'params.verify' is false"
    assert h["steps"][3]["reason"] == "condition 'checked is succeeded' is false"
    assert h["steps"][2]["ignored"] is True
    assert target not in _databases(pg_sql)


def test_a_failed_step_stops_the_run_and_later_steps_do_not_run(setup, pg_sql, cli_env):
    inv, bdir, write = setup
    write("stop", """
        steps:
          - task: db.verify
            args: {archive: no_such_backup}
          - task: db.backup
    """)
    r = _run(inv, cli_env, "stop")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "failed: [dev] no_such_backup: no such file or backup id" in r.stdout
    assert "db.backup on dev" not in r.stdout
    assert "dev : ok=0 changed=0 failed=1 skipped=0 unreachable=0 ignored=0" in r.stdout
    assert not bdir.exists()
    assert r.stderr.strip().splitlines()[-1].startswith("error: runbook stop stopped")


def test_check_changes_nothing_and_lists_the_refusals(setup, pg_sql, dbname, cli_env):
    inv, bdir, write = setup
    write("copy", COPY)
    write("onprod", """
        description: restore onto the protected host
        steps:
          - task: db.backup
            register: pre
          - task: db.restore
            host: prod
            args: {archive: "{{ pre.archive }}"}
    """)
    _run(inv, cli_env, "copy", "--set", f"target={dbname}_x", "--check")  # warm-up: nothing there yet
    state = (_databases(pg_sql), _files(bdir))
    r = _run(inv, cli_env, "copy", "--set", f"target={dbname}_x", "--check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "CHECK MODE (run copy --check)" in r.stdout
    assert "  would dump database" in r.stdout and "changed (check): [dev] would change (above)" in r.stdout
    r2 = _run(inv, cli_env, "onprod", "--check", "--json")
    assert r2.returncode == 0, r2.stderr
    doc = json.loads(r2.stdout)
    assert doc["check"] is True and doc["result"] == "ok"  # a refused plan changes nothing (docs/cli.md)
    assert any("step 2 ('db.restore'): refused: prod is protected; restore needs --force-protected --confirm"
               in x for x in doc["refusals"]), doc["refusals"]
    steps = doc["hosts"][0]["steps"]
    assert steps[1]["plan"]["archive"]["path"] is None  # the archive step 1 would write: not here yet
    assert (_databases(pg_sql), _files(bdir)) == state


# ------------------------------------------------------------------ bad inputs: nothing changed
BAD = {
    "unknown_task": ("""
        steps:
          - task: db.backup
          - name: Tidy up
            task: db.prun
        """, 2, "step 2 ('Tidy up'): task: unknown task 'db.prun' (did you mean 'db.prune'?)"),
    "unknown_host": ("""
        steps:
          - task: db.backup
          - task: db.backup
            host: prd
        """, 2, "step 2 ('db.backup'): host: unknown host or group 'prd' (did you mean 'prod'?)"),
    "wrong_type": ("""
        steps:
          - task: db.backup
          - task: db.restore
            args: {archive: latest, roles: "yes please"}
        """, 2, "step 2 ('db.restore'): args.roles: expected a bool, got str 'yes please'"),
    "unknown_argument": ("""
        steps:
          - task: db.backup
            args: {lable: x}
        """, 2, "step 1 ('db.backup'): args.lable: db.backup has no argument 'lable' (did you mean 'label'?)"),
    "when_unknown_step": ("""
        steps:
          - task: db.backup
            register: pre
          - task: db.verify
            when: prey is succeeded
        """, 2, "step 2 ('db.verify'): when: 'prey': no earlier step registers 'prey' (did you mean 'pre'?)"),
    "cycle": ("""
        steps:
          - task: db.verify
            args: {archive: "{{ second.archive }}"}
            register: first
          - task: db.backup
            args: {label: "{{ first.name }}"}
            register: second
        """, 2, "step 1 ('db.verify'): args.archive: 'second.archive' is registered by step 2, which runs later: "
                "facts flow forward only (a cycle)"),
    "duplicate_register": ("""
        steps:
          - task: db.backup
            register: pre
          - task: db.backup
            register: pre
        """, 2, "step 2 ('db.backup'): register: 'pre' is registered by step 1 ('db.backup') already"),
    "protected": ("""
        steps:
          - name: Harmless backup first
            task: db.backup
          - name: Restore production
            task: db.restore
            host: prod
            args: {archive: latest}
        """, 3, "step 2 ('Restore production'): refused: prod is protected; restore needs --force-protected "
                "--confirm"),
    "malformed_yaml": ("steps:\n  - task: db.backup\n    args: {label: [x}\n", 2, "not valid YAML at line 3"),
    "empty_steps": ("description: nothing\nsteps: []\n", 2, "steps: expected a non-empty list of steps"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_runbook_names_the_step_and_field_and_changes_nothing(case, setup, pg_sql, dbname, cli_env):
    inv, bdir, write = setup
    text, code, message = BAD[case]
    write(case, text)
    state = (_databases(pg_sql), _files(bdir), db_fingerprint(pg_sql, dbname))
    r = _run(inv, cli_env, case, "--yes", "--json")
    assert r.returncode == code, r.stdout + r.stderr
    assert message in r.stderr, r.stderr
    assert "TASK [" not in r.stdout + r.stderr  # nothing ran: the file is checked before step 1
    doc = json.loads(r.stdout)
    assert doc["result"] == "failed" and doc["error"]["exit_code"] == code and message in doc["error"]["message"]
    assert (_databases(pg_sql), _files(bdir), db_fingerprint(pg_sql, dbname)) == state
    assert not bdir.exists()


def test_a_runbook_not_found_lists_the_runbooks_found(setup, cli_env):
    inv, bdir, write = setup
    write("copy", COPY)
    r = _run(inv, cli_env, "cpy")
    assert r.returncode == 2
    assert "runbook 'cpy' not found" in r.stderr and "(did you mean 'copy'?)" in r.stderr
    assert "runbooks found: copy" in r.stderr
    r = _run(inv, cli_env, "--list")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^copy +back up, verify, restore the backup into a new database$", r.stdout, re.M), r.stdout


def test_a_destructive_runbook_without_a_terminal_or_yes_is_refused_before_step_1(setup, pg_sql, dbname, cli_env):
    inv, bdir, write = setup
    write("replace", """
        steps:
          - task: db.backup
            register: pre
          - task: db.restore
            args: {archive: "{{ pre.archive }}"}
    """)
    state = (_databases(pg_sql), _files(bdir))
    r = _run(inv, cli_env, "replace")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "step 2 ('db.restore'): restore on dev" in r.stdout
    assert "confirmation needed and no terminal to ask on; pass --yes" in r.stderr
    assert (_databases(pg_sql), _files(bdir)) == state


def test_unknown_param_and_a_group_run_each_host(setup, pg_sql, dbname, cli_env, tmp_path):
    inv, bdir, write = setup
    write("copy", COPY)
    r = _run(inv, cli_env, "copy", "--set", "targt=x")
    assert r.returncode == 2 and "no parameter 'targt' (did you mean 'target'?)" in r.stderr
    write("two", """
        steps:
          - task: db.backup
            args: {label: "for {{ host }}"}
    """)
    r = _run(inv, cli_env, "two", "--host", "everything", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [h["host"] for h in doc["hosts"]] == ["dev", "prod"]
    assert all(h["result"] == "changed" for h in doc["hosts"])
    assert len([p for p in bdir.iterdir() if p.name.endswith(".sql.gz")]) == 1
    assert len([p for p in (tmp_path / "prod-backups").iterdir() if p.name.endswith(".sql.gz")]) == 1


def test_an_unreachable_ssh_host_counts_as_unreachable(setup, pg, cli_env, tmp_path):
    inv, bdir, write = setup
    far = {"connection": "ssh", "project_dir": "/srv/app", "ssh": {"host": "127.0.0.1", "port": 1, "user": "nobody",
                                                                   "connect_timeout": 5},
           "postgres": {"host": "127.0.0.1", "port": 1, "database": "app", "user": "app"},
           "backup": {"dir": "/srv/app/backups"}}
    inv = write_inventory(tmp_path / "inventory.yaml", {"dev": native_host(pg, "postgres", bdir), "far": far},
                          defaults={"host": "dev"})
    write("far", """
        steps:
          - task: db.backup
            host: far
            ignore_errors: true
          - task: db.backup
            host: far
          - task: db.backup
    """)
    r = _run(inv, cli_env, "far", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    h = json.loads(r.stdout)["hosts"][0]
    assert [s["result"] for s in h["steps"]] == ["unreachable", "unreachable"]
    assert h["recap"] == {"ok": 0, "changed": 0, "failed": 0, "skipped": 0, "unreachable": 1, "ignored": 1}
    assert "unreachable: [far] " in r.stderr and "...ignoring" in r.stderr
    assert not bdir.exists()


def test_a_destructive_runbook_asks_once_on_a_terminal(setup, pg_sql, dbname, cli_env):
    from tests.integration.restore.test_restore_safety import run_in_pty
    inv, bdir, write = setup
    write("replace", """
        steps:
          - task: db.backup
            register: pre
          - name: Put it back
            task: db.restore
            args: {archive: "{{ pre.archive }}", terminate_sessions: true}
    """)
    state = (_databases(pg_sql), _files(bdir))
    code, text, _ = run_in_pty(["run", "-i", str(inv), "replace"], cli_env, answer="no")
    assert code == 3 and "step 2 ('Put it back'): restore on dev" in text, text
    assert "aborted: you did not type 'yes'; nothing was changed" in text
    assert (_databases(pg_sql), _files(bdir)) == state
    before = db_fingerprint(pg_sql, dbname)
    code, text, _ = run_in_pty(["run", "-i", str(inv), "replace"], cli_env, answer="yes")
    assert code == 0, text
    assert text.count("Type 'yes' to proceed") == 1  # once, for the run; the restore step does not ask again
    assert "dev : ok=0 changed=2 failed=0" in text
    assert db_fingerprint(pg_sql, dbname) == before
    assert [n for n in _databases(pg_sql) if n.startswith(dbname) and n != dbname]  # the pre-restore copy


def test_a_rollback_step_undoes_the_restore_when_a_later_step_failed(setup, pg_sql, dbname, cli_env):
    inv, bdir, write = setup
    write("rollback", """
        steps:
          - task: db.backup
            register: pre
          - name: Replace the database with the backup
            task: db.restore
            args: {archive: "{{ pre.archive }}", terminate_sessions: true}
            register: restored
          - name: A check that fails
            task: db.verify
            args: {archive: no_such_backup}
            ignore_errors: true
            register: checked
          - name: Roll back
            task: db.restore
            args: {undo: true, terminate_sessions: true}
            when: [checked is failed, restored is changed]
    """)
    pg_sql("CREATE TABLE after_backup (x int); INSERT INTO after_backup VALUES (42)", dbname)
    r = _run(inv, cli_env, "rollback", "--yes", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    steps = json.loads(r.stdout)["hosts"][0]["steps"]
    assert [s["result"] for s in steps] == ["changed", "changed", "failed", "changed"]
    copy = steps[1]["facts"]["pre_restore_copy"]
    assert steps[3]["facts"]["restored_from"] == copy
    # the table made after the backup is back (the undo swapped the replaced database in again)
    assert pg_sql("SELECT x FROM after_backup", dbname).strip() == "42"
    assert steps[3]["facts"]["previous_kept_as"] in _databases(pg_sql)


# ------------------------------------------------------------------ a new user's trial: refused before step 1
def test_a_step_needing_compose_on_a_host_without_one_is_refused_before_the_backup(setup, pg_sql, dbname, cli_env):
    inv, bdir, write = setup
    state = (_databases(pg_sql), db_fingerprint(pg_sql, dbname))
    message = ("step 2 ('Stop everything'): host: dev has no compose: block in the inventory (hosts.dev.compose); "
               "docker.down needs the compose stack")
    r = _run(inv, cli_env, "fresh-start")
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "TASK [" not in r.stdout + r.stderr
    r = cli("scenario.fresh-start", "-i", str(inv), env=cli_env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not bdir.exists() and (_databases(pg_sql), db_fingerprint(pg_sql, dbname)) == state


def test_a_target_db_that_exists_is_refused_before_the_backup(setup, pg_sql, dbname, cli_env):
    inv, bdir, write = setup
    write("copy", COPY)
    taken = f"{dbname}_taken"
    pg_sql(f'CREATE DATABASE "{taken}"', "postgres")
    state = (_databases(pg_sql), db_fingerprint(pg_sql, dbname))
    # step 3 is the first restore into params.target
    message = (f"step 3 ('Restore a backup that does not exist'): args.target_db: database '{taken}' already exists "
               f"on dev; restore into a new name (--set a new one) or drop it first (from params.target: --set "
               f"target=...)")
    for extra in ((), ("--check",)):  # --check validates identically
        r = _run(inv, cli_env, "copy", "--set", f"target={taken}", *extra)
        assert r.returncode == 2, r.stdout + r.stderr
        assert message in r.stderr, r.stderr
        assert "TASK [" not in r.stdout + r.stderr
    assert not bdir.exists() and (_databases(pg_sql), db_fingerprint(pg_sql, dbname)) == state
    r = _run(inv, cli_env, "copy", "--set", "target=")
    assert r.returncode == 2 and ("args.target_db: expected a database name of 1 to 63 bytes, got '' "
                                  "(from params.target: --set target=...)") in r.stderr, r.stderr
    assert not bdir.exists()
    pg_sql(f'DROP DATABASE "{taken}"', "postgres")


def test_list_marks_a_broken_runbook_and_gives_its_error_a_field_of_its_own(setup, cli_env):
    inv, bdir, write = setup
    write("copy", COPY)
    write("broken", "description: half done\nsteps: [{task: 42}]\n")
    r = _run(inv, cli_env, "--list")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^broken +BROKEN: step 1: task: expected a task name \(a string\), got 42$", r.stdout, re.M)
    r = _run(inv, cli_env, "--list", "--json")
    found = {x["name"]: x for x in json.loads(r.stdout)["runbooks"]}
    assert found["broken"]["error"] == "step 1: task: expected a task name (a string), got 42"
    assert found["broken"]["description"] == "" and found["copy"]["error"] is None


def test_a_scenarios_check_names_the_command_the_user_typed(setup, cli_env):
    inv, bdir, write = setup
    r = cli("scenario.before-risky-change", "-i", str(inv), "--check", env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "CHECK MODE (scenario.before-risky-change --check): nothing is changed" in r.stdout
    assert "run before-risky-change" not in r.stdout and not bdir.exists()


def test_an_interrupt_prints_the_steps_that_finished_and_how_to_restore_after_a_destructive_step(
        tmp_path, pg, pg_sql, dbname, cli_env):
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO
    bdir = tmp_path / "backups"
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "999_never_applied.sql").write_text("SELECT 1;\n")
    inv = write_inventory(tmp_path / "inventory.yaml",
                          {"dev": native_host(pg, dbname, bdir, migrations={"dir": str(tmp_path / "migrations")})})
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "slow.yaml").write_text(textwrap.dedent("""
        steps:
          - name: Back up
            task: db.backup
            register: pre
          - name: Replace the database with the backup
            task: db.restore
            args: {archive: "{{ pre.archive }}", terminate_sessions: true}
          - name: Wait for a migration that never comes
            task: wait.migrations
            args: {timeout: 120}
    """))
    before = set(_databases(pg_sql))
    # SIGINT is sent to this child only (not the process group): the test process and others are untouched
    p = subprocess.Popen([sys.executable, "-m", "bigskies_ops", "run", "-i", str(inv), "slow", "--yes"], env=cli_env,
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not any(n.startswith(f"{dbname}_pre_") for n in set(_databases(pg_sql)) - before):
            assert time.monotonic() < deadline and p.poll() is None, "the restore step did not finish"
            time.sleep(0.2)
        time.sleep(3)  # step 3 polls schema_migrations every second
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, out + err
    assert "Traceback" not in out + err
    (archive,) = [q for q in bdir.iterdir() if q.name.endswith(".sql.gz")]
    assert ("INTERRUPTED by signal 2 in step 3 ('Wait for a migration that never comes', wait.migrations on dev); "
            "it did not finish and the steps after it did not run") in out, out + err
    assert "  step 1 ('Back up', db.backup on dev): changed: backup " in out
    assert f"      archive: {archive}" in out
    assert ("A destructive step ran (step 2, db.restore on dev): the data from before it is in "
            f"{archive} (written by step 1). To restore it:") in out
    assert f" db.restore {archive} --host dev --roles -i {inv}" in out
    assert "dev : ok=0 changed=2 failed=1 skipped=0 unreachable=0 ignored=0" in out
    assert "interrupted by signal 2; cleanup done" in err
    for name in set(_databases(pg_sql)) - before:
        pg_sql(f'DROP DATABASE IF EXISTS "{name}"', "postgres")
