"""``db.status``: is the server up, how is it reached, how big is the database, which tables."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from bigskies_ops.archives.catalog import iso
from bigskies_ops.pg.access import PostgresAccess
from bigskies_ops.text import printable
from bigskies_ops.pg.admin import migration_head
from bigskies_ops.errors import PostgresError
from bigskies_ops.inventory import Host
from bigskies_ops.hosts.compose import inspect_failure


# Go's time.Time as the engines print {{.State.StartedAt}}: podman its String() form
# ("2026-12-03 15:32:12.258084757 +0000 UTC"), docker RFC 3339 with nanoseconds
# ("2026-12-03T15:32:12.258084757Z", or "+01:00").
_ENGINE_TIME_RE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.\d+)?\s*"
                             r"(Z|[+-]\d\d:?\d\d)?(?:\s+\S+)?$")


def engine_time(text: str | None) -> str | None:
    """A container engine's time stamp as UTC ISO-8601 (``2026-12-03T15:32:12Z``, seconds).

    Args:
        text: ``{{.State.StartedAt}}`` from podman (``2026-12-03 15:32:12.258084757 +0000
            UTC``) or docker (``2026-12-03T15:32:12.258084757Z``); a missing offset is UTC.

    Returns:
        the ISO string; None for Go's zero time (``0001-01-01 ...``: never started),
        an empty or an unreadable value. Pure.
    """
    m = _ENGINE_TIME_RE.match((text or "").strip())
    if not m or m.group(1) == "0001":
        return None
    try:
        dt = datetime(*(int(m.group(i)) for i in range(1, 7)), tzinfo=timezone.utc)
    except ValueError:
        return None
    off = m.group(7)
    if off and off != "Z":
        sign = 1 if off[0] == "+" else -1
        hh, mm = int(off[1:3]), int(off[-2:])
        dt -= sign * timedelta(hours=hh, minutes=mm)
    return iso(dt)


def container_state(access: PostgresAccess) -> dict | None:
    """``{"name", "status", "started_at"}`` from ``<engine> inspect``; None in native mode.
    ``started_at``: UTC ISO-8601 (:func:`engine_time`), None when never started.

    Raises:
        PostgresError: the container does not exist, or the engine itself cannot be
            reached (its daemon is down: said so, not blamed on the container;
            :func:`bigskies_ops.hosts.compose.inspect_failure`).
    """
    c = access.host.container
    if not c:
        return None
    r = access.runner.run([*c.engine_argv, "inspect", "--format", "{{.State.Status}}|{{.State.StartedAt}}", c.name],
                          check=False)
    if r.returncode != 0:
        raise PostgresError(inspect_failure(access.host, c.name, r.stderr))
    status, _, started = r.text.strip().partition("|")
    return {"name": c.name, "status": status, "started_at": engine_time(started)}


def status(host: Host) -> dict:
    """Collect the facts ``db.status`` shows (also its ``--json``).

    Returns:
        dict with host, access_mode, container, connection (never a password: only
        where it comes from), server (version, start time UTC, uptime seconds),
        database (name, size in bytes), tables (schema, name, row estimate, bytes),
        schema_migrations_head.

    Raises:
        PostgresError: container missing or stopped, server unreachable, auth failed.
    """
    pg = host.postgres
    with PostgresAccess(host) as access:
        cstate = container_state(access)
        if cstate and cstate["status"] != "running":
            raise PostgresError(f"container {cstate['name']!r} is not running on {host.name} (state {cstate['status']})")
        sql = access.sql(pg.database)
        server = sql.query(
            "SELECT current_setting('server_version') AS version, "
            "to_char(pg_postmaster_start_time() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS started_at, "
            "extract(epoch FROM now() - pg_postmaster_start_time())::bigint AS uptime_s, "
            "pg_database_size(current_database()) AS size_bytes, current_user AS user")[0]
        tables = sql.query(
            "SELECT n.nspname AS schema, c.relname AS name, "
            "CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END AS rows_estimate, pg_total_relation_size(c.oid) AS bytes "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema') "
            "AND n.nspname !~ '^pg_toast' ORDER BY 1, 2")
        head = migration_head(sql)
    # names shown as text: a SQL_ASCII database's bytes that are not UTF-8 appear as \xNN
    tables = [{**t, "schema": printable(t["schema"]), "name": printable(t["name"])} for t in tables]
    source = (f"environment variable {pg.password_env}" if pg.password_env
              else f"passfile {pg.passfile}" if pg.passfile else "libpq defaults (~/.pgpass, trust or peer)")
    return {
        "host": host.name, "access_mode": host.access_mode, "container": cstate,
        "connection": {"host": pg.host or pg.socket_dir or ("container socket" if host.container else "default socket"),
                       "port": pg.port, "database": pg.database, "user": pg.user, "password_from": source},
        "server": {"version": server["version"], "started_at": server["started_at"], "uptime_s": server["uptime_s"]},
        "database": {"name": pg.database, "size_bytes": server["size_bytes"]},
        "tables": tables, "schema_migrations_head": head,
    }
