"""Where a command runs: the runner interface (:mod:`.runners`), its two
implementations (:mod:`.local`, :mod:`.ssh` with :mod:`.connection`, :mod:`.channels`
and :mod:`.transfer`), the shell text they send (:mod:`.shell`) and the host's compose
project (:mod:`.compose`). :func:`runner_for` picks the runner of an inventory host.
"""
from __future__ import annotations

from bigskies_ops.hosts.local import LocalRunner
from bigskies_ops.hosts.runners import Runner
from bigskies_ops.hosts.ssh import SSHRunner


def runner_for(host) -> Runner:
    """The runner of an inventory host (:class:`bigskies_ops.inventory.Host`): an
    :class:`SSHRunner` for ``connection: ssh`` (connects on first use), else a
    :class:`LocalRunner` labelled with the host's name. Never raises."""
    if host.is_remote:
        return SSHRunner(host)
    return LocalRunner(host.name)
