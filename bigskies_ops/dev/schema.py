"""The BIG SKIES schema as numbered migrations: the folder's files and one bootstrap script.

The schema lives in ``configs/sql/NNN_description.sql`` (the framework's
``configs/sql/`` convention, see the database guide's "Migrations vs Backups").
This module turns that folder into SQL text; it never connects to a database.
Callers (the demo, the test suite, benchmarks) feed the text to ``psql``::

    psql -v ON_ERROR_STOP=1 -d bigskies <<< "$(bootstrap_sql('configs/sql'))"

Everything here is a pure function: the only I/O is reading the migration files.
Literals are quoted with :class:`psycopg.sql.Literal` (no connection needed). The
rows that fill the schema are :mod:`bigskies_ops.dev.sampledata`.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from bigskies_ops.pg.access import pgsql as sql

__all__ = [
    "MIGRATION_FILE_RE",
    "SCHEMA_MIGRATIONS_DDL",
    "bootstrap_sql",
    "migration_files",
    "sql_literal",
]

#: A migration file name: version digits, underscore, description, ``.sql``.
MIGRATION_FILE_RE = re.compile(r"^(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)\.sql$")
_LOOKS_LIKE_MIGRATION_RE = re.compile(r"^[0-9]+_.*\.sql$")

#: The table that records applied migrations (the guide: "Tracked in schema_migrations").
SCHEMA_MIGRATIONS_DDL = """\
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer
);
"""


def sql_literal(value: Any) -> str:
    """Quote a Python value as an SQL literal (``'O''Brien'``, ``E'C:\\\\x'``, ``NULL``)."""
    return sql.Literal(value).as_string().strip()


def migration_files(sql_dir: str | Path) -> list[tuple[int, str, Path]]:
    """List the migration files of ``sql_dir`` in the order they must be applied.

    A migration file is named ``NNN_description.sql`` (e.g. ``003_coordinator_config.sql``).
    Other files (``README.md``, unnumbered ``*_schema.sql`` files, directories) are
    ignored, but a file that starts like a migration (digits, ``_``, ends in ``.sql``)
    with an unusable description is an error rather than silently skipped.

    Args:
        sql_dir: the folder holding the files (not searched recursively).

    Returns:
        ``[(version, name, path), ...]`` sorted by version, where ``version`` is the
        integer value of the leading digits (``007`` -> 7) and ``name`` is the
        description (``003_coordinator_config.sql`` -> ``"coordinator_config"``).

    Raises:
        FileNotFoundError: ``sql_dir`` does not exist.
        NotADirectoryError: ``sql_dir`` is not a directory.
        ValueError: two files share a version (``001_a.sql`` and ``0001_b.sql``), or a
            numbered ``.sql`` file has a description outside ``[A-Za-z0-9_.-]``.
    """
    folder = Path(sql_dir)
    if not folder.exists():
        raise FileNotFoundError(f"migration folder not found: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"not a directory: {folder}")
    found: dict[int, tuple[int, str, Path]] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        match = MIGRATION_FILE_RE.match(path.name)
        if not match:
            if _LOOKS_LIKE_MIGRATION_RE.match(path.name):
                raise ValueError(f"{path}: migration file names must look like "
                                 f"NNN_description.sql with [A-Za-z0-9_.-] in the description")
            continue
        version = int(match.group("version"))
        if version in found:
            raise ValueError(f"duplicate migration version {version}: "
                             f"{found[version][2].name} and {path.name} (in {folder})")
        found[version] = (version, match.group("name"), path)
    return [found[v] for v in sorted(found)]


def bootstrap_sql(sql_dir: str | Path, *, single_transaction: bool = True) -> str:
    """One SQL script that creates ``schema_migrations`` and applies every migration.

    The script creates ``schema_migrations(version, name, checksum, applied_at,
    duration_ms)`` if it is missing, then for each file of :func:`migration_files`
    in version order: the file's text, then
    ``INSERT INTO schema_migrations(version, name, checksum) VALUES (...)`` where
    ``checksum`` is the SHA-256 (hex) of the file's bytes. It is meant for an empty
    database: it does not skip migrations that are already applied (the migrations
    job does that), so on a migrated database it fails on the first ``CREATE``.

    Args:
        sql_dir: the migration folder (see :func:`migration_files`).
        single_transaction: wrap the script in ``BEGIN;`` ... ``COMMIT;`` so a failing
            file leaves nothing behind (run it with ``psql -v ON_ERROR_STOP=1``). Pass
            False when the caller already runs it in a transaction (``psql -1``).

    Returns:
        The script (text, UTF-8 when encoded), ending with a newline.

    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: from :func:`migration_files`.
        UnicodeDecodeError (a ValueError): a migration file is not UTF-8.
    """
    parts: list[str] = []
    if single_transaction:
        parts.append("BEGIN;\n")
    parts.append(SCHEMA_MIGRATIONS_DDL)
    for version, name, path in migration_files(sql_dir):
        data = path.read_bytes()
        text = data.decode("utf-8")
        if not text.endswith("\n"):
            text += "\n"  # a trailing "-- comment" must not swallow the INSERT
        checksum = hashlib.sha256(data).hexdigest()
        parts.append(f"\n-- migration {version}: {path.name}\n")
        parts.append(text)
        parts.append(f"INSERT INTO schema_migrations(version, name, checksum) "
                     f"VALUES ({sql_literal(version)}, {sql_literal(name)}, {sql_literal(checksum)});\n")
    if single_transaction:
        parts.append("\nCOMMIT;\n")
    return "".join(parts)
