"""Coordinators paused around a restore.

Coordinators are compose service names (CONTRACTS.md section 4): the BIG SKIES app
services that hold database connections. Only the ones running before a restore are
stopped, and exactly those are started again, in a ``finally`` that also runs on
SIGINT/SIGTERM (:func:`coordinators_paused`). Stopping them is a compose matter
(:mod:`bigskies_ops.hosts.compose`); waiting for their server sessions to end needs a
PostgreSQL session (:mod:`bigskies_ops.pg.access`), hence a job.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

from bigskies_ops import report
from bigskies_ops.errors import BigskiesError
from bigskies_ops.hosts.compose import (Project, check_coordinators, resolved_config, running_services,
                                        start_services, stop_services)
from bigskies_ops.inventory import Host
from bigskies_ops.pg.access import PostgresAccess, lit
from bigskies_ops.signals import interrupts_unwind


@contextmanager
def coordinators_paused(runner, host: Host):
    """Stop the host's running coordinators for the ``with`` body; start the same ones
    afterwards, also on failure, Ctrl-C and SIGTERM. Yields the list that was stopped.

    Raises:
        UsageError: a coordinator is not a service of the project (exit 2), before
            anything is stopped.
        CommandError: a coordinator could not be stopped or started again.
    """
    if not host.coordinators:
        yield []
        return
    project, stopped = running_coordinators(runner, host)
    with interrupts_unwind():  # SIGTERM/SIGINT unwind through the finally; a second one cannot cut the restart
        try:
            if stopped:
                report.note(f"Stopping coordinators: {', '.join(stopped)}")
                report.step("stopping coordinators")
                stop_services(runner, host, stopped, project)
                wait_sessions_gone(runner, host)
            yield stopped
        finally:
            if stopped:
                report.note(f"Starting coordinators again: {', '.join(stopped)}")
                report.step("restarting coordinators")
                start_services(runner, host, stopped, project)


def running_coordinators(runner, host: Host) -> tuple[Project | None, list[str]]:
    """The host's coordinators that are running now, in inventory order: the ones a restore
    stops and starts again (read-only; :func:`coordinators_paused` and ``--check`` plans).
    Returns ``(project or None without coordinators, names)``.

    Raises:
        UsageError: a coordinator is not a service of the project (exit 2).
    """
    if not host.coordinators:
        return None, []
    project = resolved_config(runner, host)
    check_coordinators(host, project)
    running = running_services(runner, host, project, list(host.coordinators))
    return project, [s for s in host.coordinators if s in running]


def wait_sessions_gone(runner, host: Host, timeout: float = 10.0) -> None:
    """Give the stopped coordinators' server sessions a moment to end (a killed client's
    backend notices only when it next talks to the socket). Never raises: the restore's
    own session check decides what to do with sessions that stay."""
    from psycopg import sql as pgsql  # imported when needed, as everywhere in the package
    q = pgsql.SQL("SELECT count(*) AS n FROM pg_catalog.pg_stat_activity WHERE datname = {} "
                  "AND pid <> pg_catalog.pg_backend_pid()").format(lit(host.postgres.database))
    deadline = time.monotonic() + timeout
    try:
        with PostgresAccess(host, runner=runner) as access:
            sql = access.sql(host.postgres.maintenance_db)
            while sql.value(q) and time.monotonic() < deadline:
                time.sleep(0.3)
    except BigskiesError:
        pass


def coordinators_preflight(runner, host: Host) -> Project | None:
    """Check (before a restore touches anything) that coordinators are services of the
    project; returns the project, or None when the host has no coordinators."""
    if not host.coordinators:
        return None
    project = resolved_config(runner, host)
    check_coordinators(host, project)
    return project
