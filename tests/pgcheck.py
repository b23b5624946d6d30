"""Independent checks used by tests: never through product code (CONTRACTS.md section 7).

Data is compared by the test's own psql queries: per-table row count and md5 of
the ordered rows, sequence values, large objects. "Nothing harmed" compares
these checksums and the sha256 list of the backup folder before and after.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Callable

TABLES_Q = ("SELECT format('%I.%I', schemaname, tablename) FROM pg_catalog.pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")


def db_fingerprint(run_sql: Callable[[str, str], str], database: str) -> dict:
    """``{"tables": {name: "count md5"}, "sequences": {...}, "large_objects": "n md5"}``.

    ``run_sql(sql, database)`` must return psql's unaligned, tuples-only output.
    """
    tables = [t for t in run_sql(TABLES_Q, database).splitlines() if t.strip()]
    out: dict = {"tables": {}, "sequences": {}, "large_objects": None}
    if tables:
        q = " UNION ALL ".join(
            f"SELECT {i} || '|' || count(*) || '|' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') "
            f"FROM {name} t" for i, name in enumerate(tables))
        for line in run_sql(q, database).splitlines():
            if line.strip():
                i, n, md5 = line.split("|")
                out["tables"][tables[int(i)]] = f"{n} {md5}"
    for line in run_sql("SELECT format('%I.%I', schemaname, sequencename) || '|' || coalesce(last_value::text, 'null') "
                        "FROM pg_catalog.pg_sequences ORDER BY 1", database).splitlines():
        if line.strip():
            k, v = line.split("|")
            out["sequences"][k] = v
    out["large_objects"] = run_sql(
        "SELECT count(*) || ' ' || coalesce(md5(string_agg(md5(lo_get(oid)), ',' ORDER BY oid)), '') "
        "FROM pg_catalog.pg_largeobject_metadata", database).strip()
    return out


def dir_hashes(path: str | Path) -> dict[str, str]:
    """sha256 of every file below ``path`` (relative names), for "no backup harmed"."""
    out = {}
    base = Path(path)
    if not base.exists():
        return out
    for p in sorted(base.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(base))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def native_sql(socket_dir: str, port: int, user: str = "bigskies") -> Callable[[str, str], str]:
    """A ``run_sql`` for a native cluster over its unix socket (trust auth)."""
    def run(sql: str, database: str) -> str:
        r = subprocess.run(["/usr/lib/postgresql/15/bin/psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                            "-h", socket_dir, "-p", str(port), "-U", user, "-d", database, "-c", sql],
                           capture_output=True, text=True, env={**os.environ, "PGPASSWORD": ""})
        if r.returncode != 0:
            raise AssertionError(f"test psql failed: {r.stderr}")
        return r.stdout
    return run
