"""The safety policy's group rule and the pure parts of --check plans (issue 18):
a --host naming a group, ``all`` or a list that holds a protected host is refused even
when it selects that host alone (docs/safety.md); pre-restore copies beyond the keep
count; the pull's mode decision."""
from __future__ import annotations

import pytest

from bigskies_ops.errors import SafetyError
from bigskies_ops.inventory import Host, PostgresSettings
from bigskies_ops.jobs.swap import beyond_keep
from bigskies_ops.safety import check_destructive, group_selector

PROD = Host(name="prod", protected=True, postgres=PostgresSettings(database="bigskies"))
DEV = Host(name="dev", postgres=PostgresSettings(database="bigskies"))


@pytest.mark.parametrize("selector,group", [
    (None, None), ("prod", None), (" prod ", None), ("live", "live"), ("all", "all"), ("prod,dev", "prod,dev")])
def test_group_selector_tells_a_host_from_a_group(selector, group):
    assert group_selector({"prod": PROD, "dev": DEV}, selector) == group


def test_a_group_holding_a_protected_host_is_refused_even_alone_and_with_the_flags():
    with pytest.raises(SafetyError, match="group 'live' containing protected host.s. prod"):
        check_destructive([PROD], "restore", force_protected=True, confirm="bigskies", group="live")
    with pytest.raises(SafetyError, match="a group containing protected"):
        check_destructive([PROD, DEV], "restore", force_protected=True, confirm="bigskies")
    check_destructive([PROD], "restore", force_protected=True, confirm="bigskies")  # the host by name: allowed
    check_destructive([DEV], "restore", group="laptops")  # no protected host in the group


@pytest.mark.parametrize("keep,dropped", [(0, ["new", "b", "a"]), (1, ["b", "a"]), (2, ["a"]), (5, [])])
def test_copies_beyond_keep_are_the_oldest(keep, dropped):
    copies = [{"name": "new"}, {"name": "b"}, {"name": "a"}]  # newest first
    assert [c["name"] for c in beyond_keep(copies, keep)] == dropped


@pytest.mark.parametrize("existing,fmt,restore,mode", [
    ("latest", None, True, ("existing", None, "after the pull")),
    (None, None, True, ("stream", "plain", "while arriving")),
    (None, "custom", True, ("stream", "custom", "after the pull")),
    (None, None, False, ("stream", "plain", None)),
])
def test_pull_mode_is_the_runs_and_the_checks_one_decision(existing, fmt, restore, mode):
    from bigskies_ops.jobs.pull import pull_mode
    assert pull_mode(DEV, existing, fmt, restore) == mode
