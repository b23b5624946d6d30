"""What a restore asks the server about the load it is about to run or has failed:
the roles of the cluster, the extensions the server can install (and the Debian/Ubuntu
package that provides one it lacks), and the object named by a failed load's errors.
"""
from __future__ import annotations

import re

from bigskies_ops.errors import ArchiveError
from bigskies_ops.pg.access import Sql


def cluster_roles(maint: Sql) -> set[str]:
    """Names of every role of ``maint``'s cluster (``pg_roles``)."""
    return {r["rolname"] for r in maint.query("SELECT rolname FROM pg_catalog.pg_roles")}


#: Debian/Ubuntu packages of extensions that are not in postgresql-15 itself (postgresql-contrib
#: ships with it); a name not listed here is named with the usual postgresql-15-NAME pattern.
EXTENSION_PACKAGES = {"postgis": "postgresql-15-postgis-3", "postgis_topology": "postgresql-15-postgis-3",
                      "postgis_raster": "postgresql-15-postgis-3", "vector": "postgresql-15-pgvector",
                      "timescaledb": "timescaledb-2-postgresql-15", "pg_cron": "postgresql-15-cron",
                      "pg_partman": "postgresql-15-partman", "pgrouting": "postgresql-15-pgrouting"}


def extension_package(name: str) -> str:
    """The Debian/Ubuntu package that provides extension ``name`` for PostgreSQL 15."""
    return EXTENSION_PACKAGES.get(name, f"postgresql-15-{name.replace('_', '-')}")


def check_extensions(maint: Sql, extensions: set[str] | None, path: str, host: str) -> None:
    """Refuse before anything is created when the archive ``path`` creates one of
    ``extensions`` that the server of ``host`` cannot install (``pg_available_extensions``).

    Raises:
        ArchiveError: naming the extension and the package that provides it.
    """
    if not extensions:
        return
    avail = {r["name"] for r in maint.query("SELECT name FROM pg_catalog.pg_available_extensions")}
    lacking = sorted(extensions - avail)
    if lacking:
        raise ArchiveError(f"{path}: the archive needs extension(s) {', '.join(lacking)}, which the server of "
                           f"{host} does not have; install the package that provides "
                           f"{'them' if len(lacking) > 1 else 'it'} on that server (on Debian/Ubuntu: "
                           f"{', '.join(sorted({extension_package(x) for x in lacking}))}). Nothing was changed")


def explain_load_error(stderr: str) -> str | None:
    """One sentence naming the object behind a failed load, from psql's/pg_restore's
    error and CONTEXT lines, or None: a missing extension (and the package to install),
    a function that failed while a table's rows were loaded (the table and the function)."""
    m = re.search(r'extension "([^"]+)" is not available|could not open extension control file "[^"]*/([^/"]+)'
                  r'\.control"', stderr)
    if m:
        name = m.group(1) or m.group(2)
        return (f"the archive needs extension {name!r}, which this server lacks: install the package that "
                f"provides it (on Debian/Ubuntu: {extension_package(name)})")
    m = re.search(r'new row for relation "([^"]+)" violates check constraint "([^"]+)"', stderr)
    if m:
        return (f"rows of table {m.group(1)} fail its CHECK constraint {m.group(2)} during the load (a constraint "
                f"that calls a function can give another answer than when the rows were written)")
    copy = re.search(r"COPY ([^,\n]+), line (\d+)", stderr) or re.search(
        r'COPY failed for table "([^"]+)"()', stderr)
    func = re.search(r'(?:SQL|PL/pgSQL) function "?([^"\s(]+)', stderr) or re.search(
        r"PL/pgSQL function ([^\s(]+)\(", stderr)
    if copy and func:
        line = f" (line {copy.group(2)} of its data)" if copy.group(2) else ""
        return (f"function {func.group(1)} failed while rows of table {copy.group(1).strip()} were loaded{line}: "
                f"a constraint, default or generated column of that table calls it")
    if copy:
        line = f" (line {copy.group(2)} of its data)" if copy.group(2) else ""
        return f"loading the rows of table {copy.group(1).strip()} failed{line}"
    return None
