"""The host's compose project: coordinator services that hold database connections.

Coordinators are compose service names (CONTRACTS.md section 4). Only the ones
running before a restore are stopped, and exactly those are started again, in a
``finally`` that also runs on SIGINT/SIGTERM (:func:`coordinators_paused`).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from .errors import CommandError, UsageError
from .inventory import Host


def compose_argv(host: Host, *args: str) -> list[str]:
    """``<compose command> -f FILE [-p PROJECT] ARGS...`` for the host's project."""
    c = host.compose
    if c is None:
        raise UsageError(f"hosts.{host.name}: no compose: block in the inventory")
    argv = [*c.command_argv, "-f", c.file]
    if c.project_name:
        argv += ["-p", c.project_name]
    return argv + list(args)


def running_services(runner, host: Host) -> set[str]:
    """Names of the project's services whose containers are running."""
    r = runner.run(compose_argv(host, "ps", "--services", "--filter", "status=running"), check=False)
    if r.returncode != 0:
        raise CommandError(f"{' '.join(compose_argv(host, 'ps'))} failed: {r.stderr.strip()[-300:]}")
    return {line.strip() for line in r.text.splitlines() if line.strip()}


def stop_services(runner, host: Host, services: list[str]) -> None:
    if services:
        runner.run(compose_argv(host, "stop", *services))


def start_services(runner, host: Host, services: list[str]) -> None:
    if services:
        runner.run(compose_argv(host, "start", *services))


class _Terminated(BaseException):
    pass


@contextmanager
def coordinators_paused(runner, host: Host, notify=print):
    """Stop the host's running coordinators for the ``with`` body; start the same ones
    afterwards, also on failure, Ctrl-C and SIGTERM. Yields the list that was stopped."""
    if not host.coordinators:
        yield []
        return
    running = running_services(runner, host)
    stopped = [s for s in host.coordinators if s in running]
    old = None
    if threading.current_thread() is threading.main_thread():
        def on_term(signum, frame):
            raise _Terminated()
        old = signal.signal(signal.SIGTERM, on_term)
    try:
        if stopped:
            notify(f"Stopping coordinators: {', '.join(stopped)}")
            stop_services(runner, host, stopped)
        yield stopped
    finally:
        if stopped:
            notify(f"Starting coordinators again: {', '.join(stopped)}")
            start_services(runner, host, stopped)
        if old is not None:
            signal.signal(signal.SIGTERM, old)
