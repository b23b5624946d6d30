"""The guide's "Common Scenarios" as runbooks, and the checks they make before a
destructive step.

The scenarios themselves are YAML files in ``runbooks/`` (docs/runbooks.md), run by the
runbook engine (:mod:`bigskies_ops.stack.runbook`) like any runbook a team writes; the
``scenario.*`` tasks (``bigskies_ops/cli/scenario.py``) only map their flags to the
runbooks' params. What stays here are the checks those runbooks call as actions
(:mod:`bigskies_ops.stack.scenario_actions`): the way back exists before anything is
deleted.

| guide | runbook | task |
|---|---|---|
| Scenario 1: Before Risky Changes | ``runbooks/before-risky-change.yaml`` | ``scenario.before-risky-change`` |
| Scenario 2: Fresh Start (Keep Data) | ``runbooks/fresh-start.yaml`` | ``scenario.fresh-start`` |
| Scenario 3: Complete Reset | ``runbooks/complete-reset.yaml`` | ``scenario.complete-reset`` |
| Scenario 4: Test with Production Data | ``runbooks/prod-to-dev.yaml`` | ``scenario.prod-to-dev`` |
| Scenario 5: Database Corruption | ``runbooks/recover-corruption.yaml`` | ``scenario.recover-corruption`` |
"""
from __future__ import annotations

from bigskies_ops import output, report
from bigskies_ops.errors import SafetyError
from bigskies_ops.inventory import Host
from bigskies_ops.hosts import runner_for
from bigskies_ops.hosts.local import LocalRunner

#: scenario task name (after ``scenario.``) -> runbook name (``runbooks/NAME.yaml``)
RUNBOOKS = {"before-risky-change": "before-risky-change", "fresh-start": "fresh-start",
            "complete-reset": "complete-reset", "prod-to-dev": "prod-to-dev",
            "recover-corruption": "recover-corruption"}


def _refuse(what: str, host: Host, fix: str) -> SafetyError:
    return SafetyError(f"{what}; nothing was purged. {fix}")


def roles_setting_check(host: Host, roles: bool, task: str) -> None:
    """Before anything: a scenario that restores WITH roles needs backups that save them.

    Raises:
        SafetyError (exit 3): ``roles`` and ``backup.roles`` is off for ``host``.
    """
    if roles and not host.backup.roles:
        raise _refuse(f"{task} restores with the cluster's roles, but {host.name}'s backups do not save them "
                      f"(backup.roles is false), so the restore after the purge would miss them", host,
                      f"Set backup.roles: true for {host.name} in the inventory (the default for hosts with a "
                      f"compose block), or pass --no-roles to restore without them.")


def outside_the_volume(runner, host: Host, archive: str, *, task: str) -> None:
    """The archive a scenario restores after deleting the data volume does not lie inside
    that volume (``backup.dir`` under its mount point: the purge would delete the way back
    with the data; ``docker.purge`` refuses such a pre-purge backup for the same reason).
    Read-only; nothing to check without a ``compose:`` block or when the volume is absent.

    Raises:
        SafetyError: it does (exit 3)."""
    import posixpath
    from bigskies_ops.hosts import compose as cmp
    if host.compose is None:
        return
    project = cmp.resolved_config(runner, host)
    name = project.volume_name(host.compose.volume) or host.compose.volume
    info = cmp.engine_json(runner, host, "volume", "inspect", name)
    mnt = ((info[0] if info else {}) if isinstance(info, list) else (info or {})).get("Mountpoint")
    if mnt and (posixpath.normpath(archive) + "/").startswith(posixpath.normpath(mnt) + "/"):
        raise _refuse(f"{task} would restore {archive}, which lies inside the data volume {name} "
                      f"({mnt}) that the purge deletes", host,
                      f"Set backup.dir for {host.name} to a folder outside the volume and take a backup there.")


def restore_files_ready(runner, host: Host, archive: str, *, roles: bool, task: str):
    """The read-only part of :func:`restore_ready` (also a scenario's ``--check``): ``archive``
    lies outside the data volume (:func:`outside_the_volume`), is a finished backup in its
    folder on ``runner``'s machine and, with ``roles``, its roles file is there with the
    sha256 its manifest records. Returns its catalog entry.

    Raises:
        SafetyError: what is missing or differs (exit 3).
    """
    import hashlib
    import posixpath
    from bigskies_ops.archives.catalog import read_manifest, scan_dir
    from bigskies_ops.archives.roles import roles_path
    outside_the_volume(runner, host, archive, task=task)
    folder, name = posixpath.split(archive)
    b = next((x for x in scan_dir(runner, folder or ".") if x.name == name), None)
    if b is None or b.status not in ("DONE", "LEGACY"):
        raise _refuse(f"{task} would restore {archive}, which is "
                      f"{'missing' if b is None else 'not a finished backup (status ' + b.status + ')'}",
                      host, f"Take a backup first: {output.hint(f'db.backup --host {host.name}')}.")
    if roles:
        rp = roles_path(archive)
        want = (read_manifest(runner, archive) or {}).get("roles_sha256")
        if not runner.exists(rp):
            raise _refuse(f"{task} restores with roles, but {archive} has no roles file "
                          f"({posixpath.basename(rp)})", host,
                          f"Set backup.roles: true for {host.name} and take a backup "
                          f"({output.hint(f'db.backup --host {host.name}')}), or pass --no-roles.")
        got = hashlib.sha256(runner.read_bytes(rp)).hexdigest()
        if want and got != want:
            raise _refuse(f"{task}: the roles file of {archive} does not match its manifest (sha256 "
                          f"{got[:12]}..., recorded {want[:12]}...)", host,
                          f"Take a new backup ({output.hint(f'db.backup --host {host.name}')}) or pass --no-roles.")
    return b


def restore_ready(host: Host, archive: str, *, roles: bool, task: str) -> None:
    """Before the first destructive step of a scenario that purges and then restores
    ``archive``: check everything that restore needs is there and sound: the archive
    (manifest DONE, size and sha256 as recorded, readable by pg_restore/the plain-SQL
    checks: :func:`bigskies_ops.jobs.verify.verify_backup`, which records the verification)
    and, with ``roles``, its roles file (present, sha256 as recorded).

    Refusing is exit 3 (CONTRACTS.md s.5 "refused for safety"): nothing failed and
    nothing changed; the tool declined a destructive step whose way back is missing.

    Raises:
        SafetyError: something is missing or does not verify (the message says what
            and what to run).
    """
    import posixpath
    from bigskies_ops.jobs.verify import verify_backup
    runner = runner_for(host) if host.is_remote else LocalRunner()
    try:
        b = restore_files_ready(runner, host, archive, roles=roles, task=task)
        # last: it records its result in the manifest (a refusal above changes nothing)
        res = verify_backup(host, b, task=task)
        if not res.ok:
            raise _refuse(f"{task} would restore {archive}, which does not verify: {res.error}", host,
                          f"Check it with {output.hint(f'db.verify {archive} --host {host.name}')}; take a new "
                          f"backup or name another archive.")
        report.note(f"checked before purging: {posixpath.basename(archive)} verified"
                    + (", its roles file present" if roles else ""))
    finally:
        runner.close()
