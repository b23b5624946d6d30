"""``inv apply``'s recap and exit codes from item results (pure; the real runs are in
tests/integration/apply/test_apply.py)."""
from __future__ import annotations

from bigskies_ops.jobs.apply import HostApply, exit_code, overall
from bigskies_ops.jobs.apply_items import Item


def _host(*results: str, check: bool = False, unreachable: bool = False) -> HostApply:
    return HostApply("h", check, [Item(f"i{n}", r, "why") for n, r in enumerate(results)], unreachable)


def test_items_are_counted_by_result():
    h = _host("ok", "changed", "changed", "skipped", "failed")
    assert h.recap() == {"ok": 1, "changed": 2, "failed": 1, "skipped": 1, "unreachable": 0}
    assert h.result == "failed" and h.exit_code == 1 and h.failed_items() == ["i4"]


def test_an_unreachable_host_counts_only_unreachable():
    h = _host("unreachable", unreachable=True)
    assert h.recap() == {"ok": 0, "changed": 0, "failed": 0, "skipped": 0, "unreachable": 1}
    assert h.result == "unreachable" and h.exit_code == 1


def test_check_mode_exits_1_only_for_an_unreachable_host():
    assert _host("failed", "changed", check=True).exit_code == 0
    assert _host("unreachable", check=True, unreachable=True).exit_code == 1
    assert exit_code([_host("changed"), _host("ok")]) == 0
    assert exit_code([_host("changed"), _host("failed", check=True)]) == 0
    assert exit_code([_host("changed"), _host("failed")]) == 1


def test_the_run_word():
    assert overall([_host("ok"), _host("ok", "skipped")]) == "ok"
    assert overall([_host("ok"), _host("changed")]) == "changed"
    assert overall([_host("changed"), _host("unreachable", unreachable=True)]) == "failed"


def test_json_items_carry_the_diff_only_when_asked():
    it = Item("schedule", "changed", "written", diff=["--- a", "+++ b"])
    assert it.to_json() == {"item": "schedule", "result": "changed", "reason": "written"}
    assert it.to_json(with_diff=True)["diff"] == "--- a\n+++ b\n"
    assert Item("x", "ok", "y").to_json(with_diff=True)["diff"] == ""


def test_a_pgpass_password_change_shows_in_the_masked_diff():
    """The masked lines of a changed password are equal: the after side says (changed)."""
    from bigskies_ops.jobs.apply_items import _masked_pgpass, unified
    before = ["# mine", "h:5432:db:u:old\\:pw", "h:5432:other:u:same"]
    after = ["# mine", "h:5432:db:u:new", "h:5432:other:u:same"]
    b, a = _masked_pgpass(before, after)
    assert b == ["# mine", "h:5432:db:u:********", "h:5432:other:u:********"]
    assert a == ["# mine", "h:5432:db:u:******** (changed)", "h:5432:other:u:********"]
    diff = unified(b, a, "pgpass")
    assert "-h:5432:db:u:********" in diff and "+h:5432:db:u:******** (changed)" in diff
    assert not any("old" in x or "new" in x for x in diff)
