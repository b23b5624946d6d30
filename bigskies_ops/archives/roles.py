"""The cluster's roles beside a backup, and creating the missing ones before a restore.

A database dump (pg_dump) holds no roles: they belong to the cluster. With
``backup.roles: true`` a backup also writes ``pg_dumpall --roles-only
--no-role-passwords`` to ``<archive>.roles.sql`` (mode 0600, recorded in the
manifest as ``roles_file`` and ``roles_sha256``). ``db.restore --roles`` creates the
roles of that file that do not exist on the target cluster (with their attributes,
comments, settings and memberships) and never alters a role that exists; so after
the guide's scenario 3 (purge, up, restore) the application's roles are back.
Passwords are never dumped: set them again (the guide's ``update-pgpass.sh``).
"""
from __future__ import annotations

import hashlib
import posixpath
import re

from bigskies_ops import report
from bigskies_ops.pg.access import PostgresAccess, lit
from bigskies_ops.errors import ArchiveError, PostgresError

ROLES_SUFFIX = ".roles.sql"
_IDENT = r'(?:"(?:[^"]|"")*"|[^\s;"]+)'
_ROLE_STMT = re.compile(rf"^(?:CREATE ROLE|ALTER ROLE|COMMENT ON ROLE) ({_IDENT})[\s;]")
_GRANT = re.compile(rf"^GRANT ({_IDENT}) TO ({_IDENT})(?:[\s;])")


def roles_path(archive: str) -> str:
    return archive + ROLES_SUFFIX


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def dump_roles(access: PostgresAccess) -> bytes:
    """``pg_dumpall --roles-only --no-role-passwords`` of the host's cluster.

    Raises:
        PostgresError: pg_dumpall failed.
    """
    r = access.run_tool("pg_dumpall", ["--roles-only", "--no-role-passwords",
                                       "--database", access.host.postgres.maintenance_db])
    if b"CREATE ROLE" not in r.stdout:
        raise PostgresError("pg_dumpall --roles-only wrote no CREATE ROLE statement")
    return r.stdout


def write_roles(runner, archive_path: str, data: bytes, manifest: dict) -> str:
    """Write the roles file beside the archive (0600) and record it in ``manifest``."""
    path = roles_path(archive_path)
    runner.write_atomic(path, data, mode=0o600)
    manifest["roles_file"] = posixpath.basename(path)
    manifest["roles_sha256"] = hashlib.sha256(data).hexdigest()
    return path


def missing_roles_script(text: str, existing: set[str]) -> tuple[str, list[str]]:
    """From a roles dump, the statements that create the roles not in ``existing``.

    Keeps ``CREATE ROLE``/``ALTER ROLE``/``COMMENT ON ROLE`` of each missing role and the
    ``GRANT role TO member`` lines whose member is a missing role. Pure function.

    Returns:
        (SQL script, names of the roles it creates, in dump order).
    """
    create: list[str] = []
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith("CREATE ROLE "):
            m = _ROLE_STMT.match(line)
            if m and _unquote(m.group(1)) not in existing:
                create.append(_unquote(m.group(1)))
    new = set(create)
    for line in text.splitlines():
        m = _ROLE_STMT.match(line)
        if m and _unquote(m.group(1)) in new:
            out.append(line)
            continue
        g = _GRANT.match(line)
        if g and _unquote(g.group(2)) in new:
            out.append(line)
    return ("\n".join(out) + "\n") if out else "", create


def roles_to_create(access: PostgresAccess, archive_path: str) -> tuple[str, list[str]]:
    """What :func:`create_missing_roles` would run, read-only: ``(SQL script, names of the
    roles of <archive>.roles.sql missing on the host's cluster)``.

    Raises:
        ArchiveError: the archive has no roles file (back up with ``backup.roles: true``),
            or its sha256 differs from the manifest's.
    """
    from bigskies_ops.archives.catalog import read_manifest
    from bigskies_ops.hosts.local import LocalRunner
    lr = LocalRunner()
    path = roles_path(archive_path)
    if not lr.exists(path):
        raise ArchiveError(f"{path}: no roles file beside the archive (take backups with backup.roles: true)")
    data = lr.read_bytes(path)
    man = read_manifest(lr, archive_path) or {}
    if man.get("roles_sha256") and hashlib.sha256(data).hexdigest() != man["roles_sha256"]:
        raise ArchiveError(f"{path}: sha256 differs from the manifest (file changed or corrupt)")
    sql = access.sql(access.host.postgres.maintenance_db)
    existing = {r["rolname"] for r in sql.query("SELECT rolname FROM pg_catalog.pg_roles")}
    return missing_roles_script(data.decode("utf-8"), existing)


def create_missing_roles(access: PostgresAccess, archive_path: str) -> list[str]:
    """Create the roles of ``<archive>.roles.sql`` missing on the host's cluster
    (:func:`roles_to_create`).

    Raises:
        ArchiveError: the archive has no roles file (back up with ``backup.roles: true``),
            or its sha256 differs from the manifest's.
        PostgresError: creating a role failed (nothing is created: one transaction).
    """
    script, created = roles_to_create(access, archive_path)
    if not created:
        report.note("Roles: every role of the backup exists already (none altered)")
        return []
    access.sql(access.host.postgres.maintenance_db).execute(script, single_transaction=True)
    report.note(f"Roles created (missing here, existing ones not altered): {', '.join(created)}")
    return created


__all__ = ["ROLES_SUFFIX", "roles_path", "dump_roles", "write_roles", "missing_roles_script",
           "create_missing_roles", "roles_to_create", "lit"]
