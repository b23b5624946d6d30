"""The safety policy: one function decides, one table documents it (docs/safety.md).

CONTRACTS.md section 4. A destructive action (restore, purge, prune, migrate,
pull --to, exec/psql writes) on a ``protected`` host needs
``--force-protected --confirm DBNAME``; destructive tasks refuse a group that
contains a protected host; confirmations are prompted only on a TTY, otherwise
they are an error naming the flag to pass. All refusals exit 3.
"""
from __future__ import annotations

import sys
from typing import Callable, TextIO

from bigskies_ops.errors import SafetyError
from bigskies_ops.inventory import Host

DESTRUCTIVE = ("restore", "restore --undo", "purge", "prune", "migrate", "pull --to", "delete",
               "delete --pre-restore", "exec --write", "psql --write")


def check_destructive(hosts: list[Host] | Host, action: str, *, database: str | None = None,
                      force_protected: bool = False, confirm: str | None = None, group: str | None = None) -> None:
    """Refuse ``action`` unless the policy allows it.

    Args:
        hosts: the host (or hosts) the action would change.
        action: a name from :data:`DESTRUCTIVE` (used in the message).
        database: the database that would change (what ``--confirm`` must repeat).
        force_protected, confirm: the ``--force-protected`` and ``--confirm`` flags.
        group: the ``--host`` value when it named a group, ``all`` or a list rather than
            one host (:func:`group_selector`): a group holding a protected host is refused
            even when it selects that host alone (docs/safety.md).

    Raises:
        SafetyError: (exit 3) a protected host without both flags, or a group holding one.
    """
    hosts = [hosts] if isinstance(hosts, Host) else list(hosts)
    protected = [h for h in hosts if h.protected]
    if not protected:
        return
    if len(hosts) > 1 or group:
        where = f"group {group!r}" if group else "a group"
        raise SafetyError(f"refused: {action} on {where} containing protected host(s) "
                          f"{', '.join(h.name for h in protected)}; run it on one host at a time "
                          f"(--host {protected[0].name}, with --force-protected --confirm DBNAME)")
    h = protected[0]
    db = database or h.postgres.database
    if not force_protected or confirm != db:
        wrong = f" (--confirm {confirm} is not the database name)" if confirm is not None and confirm != db else ""
        raise SafetyError(f"refused: {h.name} is protected; {action} needs --force-protected --confirm {db}{wrong}")


def group_selector(host_names, selector: str | None) -> str | None:
    """``selector`` (a ``--host`` value) when it names something other than exactly one of
    ``host_names`` (a group, ``all``, a comma list), else None: what :func:`check_destructive`
    takes as ``group``."""
    if not selector or selector.strip() in host_names:
        return None
    return selector


def is_tty(stream: TextIO | None = None) -> bool:
    s = stream or sys.stdin
    try:
        return s.isatty()
    except (AttributeError, ValueError):
        return False


def confirm_or_refuse(question: str, *, yes: bool, flag: str = "--yes",
                      ask: Callable[[str], str] | None = None) -> None:
    """Ask the user to type ``yes`` (only on a TTY); ``yes=True`` skips the question.

    Raises:
        SafetyError: no TTY and no ``flag`` given, or the answer was not ``yes``.
    """
    if yes:
        return
    if not (is_tty(sys.stdin) and is_tty(sys.stdout)):
        raise SafetyError(f"refused: confirmation needed and no terminal to ask on; pass {flag}")
    answer = (ask or input)(f"{question} Type 'yes' to proceed: ")
    if answer.strip() != "yes":
        raise SafetyError("aborted: you did not type 'yes'; nothing was changed")
