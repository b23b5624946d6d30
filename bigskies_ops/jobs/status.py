"""``db.status``: is the server up, how is it reached, how big is the database, which tables."""
from __future__ import annotations

from bigskies_ops.pg.access import PostgresAccess
from bigskies_ops.text import printable
from bigskies_ops.pg.admin import migration_head
from bigskies_ops.errors import PostgresError
from bigskies_ops.inventory import Host
from bigskies_ops.hosts.compose import inspect_failure


def container_state(access: PostgresAccess) -> dict | None:
    """``{"name", "status", "started_at"}`` from ``<engine> inspect``; None in native mode.

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
    return {"name": c.name, "status": status, "started_at": started}


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
