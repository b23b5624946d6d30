"""Publishing a finished archive is one step: never an archive under its final name
without a DONE manifest (CONTRACTS s.2). A break-it trial interrupted ``db.backup --host
prod`` right after the rename: SIGINT left the complete archive with an EMPTY manifest (the
remote ``cat > tmp && mv`` took the dead client's EOF for the end of the data), SIGTERM
with a FAILED one."""
from __future__ import annotations

import json
import os
import signal

import pytest

from bigskies_ops import signals
from bigskies_ops.archives.manifest import publish, record_failure
from bigskies_ops.archives.catalog import latest, list_backups, read_manifest, write_manifest
from bigskies_ops.errors import Interrupted, StorageError
from bigskies_ops.inventory import parse
from bigskies_ops.hosts.local import LocalRunner
from bigskies_ops.hosts.ssh import SSHRunner
from tests.remote_helpers import ssh_block


@pytest.fixture
def fresh_signals():
    signals._received.clear()
    signals._held.clear()
    yield
    signals._received.clear()
    signals._held.clear()


def test_a_signal_during_a_deferred_step_is_raised_when_the_step_ends(fresh_signals):
    steps = []
    with pytest.raises(Interrupted) as ei:
        with signals.interrupts_unwind():
            with signals.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("after the signal")  # the step is not cut in two
            steps.append("never: raised when the step ended")
    assert steps == ["after the signal"] and ei.value.signum == signal.SIGTERM


def test_without_a_deferred_step_the_signal_is_raised_at_once(fresh_signals):
    steps = []
    with pytest.raises(Interrupted):
        with signals.interrupts_unwind():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("never")
    assert steps == []


def _finished(tmp_path):
    partial = tmp_path / "db_backup_20260101_000000.sql.gz.partial"
    partial.write_bytes(b"complete archive")
    final = str(tmp_path / "db_backup_20260101_000000.sql.gz")
    manifest = {"schema_version": 1, "status": "DONE", "archive": os.path.basename(final), "bytes": 16}
    return str(partial), final, manifest


def test_publish_renames_and_records_done(tmp_path):
    partial, final, manifest = _finished(tmp_path)
    publish(LocalRunner(), partial, final, manifest)
    assert not os.path.exists(partial) and open(final, "rb").read() == b"complete archive"
    assert read_manifest(LocalRunner(), final)["status"] == "DONE"


def test_publish_leaves_the_archive_unpublished_when_its_manifest_cannot_be_written(tmp_path):
    partial, final, manifest = _finished(tmp_path)
    os.mkdir(final + ".manifest.json")  # the manifest's rename fails
    with pytest.raises(Exception):
        publish(LocalRunner(), partial, final, manifest)
    assert not os.path.exists(final) and os.path.exists(partial)


class _DiesAtTheRename(LocalRunner):
    """What a SIGKILL or a lost connection between the two steps leaves behind."""

    def link_noreplace(self, src, dst):
        raise SystemExit("killed")


def test_stopped_between_manifest_and_rename_no_archive_without_done(tmp_path):
    """The DONE manifest comes first: stopped before the rename, the folder holds a DONE
    manifest whose archive is missing (MISSING, never `latest`) and the complete .partial;
    never an archive under its final name without a DONE manifest."""
    partial, final, manifest = _finished(tmp_path)
    manifest.update(database="db", started_at="2026-01-01T00:00:00Z")
    with pytest.raises(SystemExit):
        publish(_DiesAtTheRename(), partial, final, manifest)
    assert not os.path.exists(final) and open(partial, "rb").read() == b"complete archive"
    (b,) = list_backups(LocalRunner(), str(tmp_path))
    assert b.status == "MISSING" and latest([b], "db") is None


def test_publish_refuses_to_overwrite(tmp_path):
    partial, final, manifest = _finished(tmp_path)
    open(final, "wb").write(b"someone else's")
    with pytest.raises(StorageError, match="refusing to overwrite"):
        publish(LocalRunner(), partial, final, manifest)
    assert open(final, "rb").read() == b"someone else's"


def test_a_signal_held_by_publish_leaves_the_done_backup_as_it_is(tmp_path):
    """record_failure after publish's held signal: the DONE manifest stays DONE, the archive stays."""
    partial, final, manifest = _finished(tmp_path)
    publish(LocalRunner(), partial, final, manifest)
    with pytest.raises(Interrupted):
        record_failure(Interrupted(signal.SIGINT), manifest, 0.0, LocalRunner(), final, partial, None, None)
    assert read_manifest(LocalRunner(), final)["status"] == "DONE" and os.path.exists(final)
    # the same interruption before the DONE manifest was written: recorded as FAILED
    final2 = final.replace("000000", "000001")
    m2 = dict(manifest, status="STARTED", archive=os.path.basename(final2))
    write_manifest(LocalRunner(), final2, m2)
    with pytest.raises(Interrupted):
        record_failure(Interrupted(signal.SIGINT), m2, 0.0, LocalRunner(), final2, final2 + ".partial", None, None)
    assert json.load(open(final2 + ".manifest.json"))["status"] == "FAILED"


def test_remote_atomic_write_keeps_the_old_file_when_the_data_ends_early(tmp_path, ssh_server):
    """The remote side of write_atomic sees EOF when the client dies mid-send; it checks the
    byte count before the rename (the old file stays, no temp file is left)."""
    doc = {"hosts": {"prod": {"connection": "ssh", "project_dir": str(tmp_path / "proj"),
                              "ssh": ssh_block(ssh_server)}}}
    host = parse(doc, tmp_path / "inv.yaml").hosts["prod"]
    target = tmp_path / "m.json"
    with SSHRunner(host) as r:
        r.write_atomic(str(target), b'{"status": "DONE"}')
        assert target.read_bytes() == b'{"status": "DONE"}'
        # what a dead client leaves: fewer bytes than the count the command line carries
        res = r.script(SSHRunner.WRITE_SCRIPT, str(tmp_path), "640", str(target), "18", input=b"", check=False)
        assert res.returncode != 0
        res = r.script(SSHRunner.WRITE_SCRIPT, str(tmp_path), "640", str(target), "18", input=b'{"sta', check=False)
        assert res.returncode != 0
    assert target.read_bytes() == b'{"status": "DONE"}'
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_the_next_backup_settles_what_killed_runs_left(local_inv, dbname, cli_env):
    """Under the lock, `db.backup` publishes a run's complete .partial whose DONE manifest was
    written (killed while publishing), marks a STARTED run FAILED and removes its .partial,
    and leaves a .partial without a manifest alone (an offsite download in progress)."""
    from tests.conftest import cli
    inv, bdir = local_inv
    bdir.mkdir(parents=True, exist_ok=True)
    done = f"{dbname}_backup_20260101_000000.sql.gz"
    (bdir / (done + ".partial")).write_bytes(b"x" * 100)
    write_manifest(LocalRunner(), str(bdir / done), {"schema_version": 1, "status": "DONE", "database": dbname,
                                                   "archive": done, "bytes": 100,
                                                   "started_at": "2026-01-01T00:00:00Z"})
    started = f"{dbname}_backup_20260101_000001.sql.gz"
    (bdir / (started + ".partial")).write_bytes(b"half")
    write_manifest(LocalRunner(), str(bdir / started), {"schema_version": 1, "status": "STARTED",
                                                      "database": dbname, "archive": started,
                                                      "started_at": "2026-01-01T00:00:01Z"})
    fetching = bdir / f"{dbname}_backup_20260101_000002.sql.gz.partial"
    fetching.write_bytes(b"download in progress")
    r = cli("db.backup", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert (bdir / done).read_bytes() == b"x" * 100 and not (bdir / (done + ".partial")).exists()
    assert f"published {done}" in r.stdout + r.stderr
    assert not (bdir / (started + ".partial")).exists()
    assert read_manifest(LocalRunner(), str(bdir / started))["status"] == "FAILED"
    assert fetching.read_bytes() == b"download in progress"
