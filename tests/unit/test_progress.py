"""Progress arithmetic (bigskies_ops.output, bigskies_ops.jobs.dump): totals, estimates, ETA."""
from __future__ import annotations

import pytest

from bigskies_ops import output, report
from bigskies_ops.jobs.dump import dump_estimate

MiB = 1 << 20


@pytest.mark.parametrize("last, size, dbsize, measure, want", [
    ({"raw_bytes": 50 * MiB, "bytes": 9 * MiB}, 9 * MiB, 80 * MiB, "raw", (50 * MiB, "last backup")),
    ({"raw_bytes": 50 * MiB, "bytes": 9 * MiB}, 9 * MiB, 80 * MiB, "archive", (9 * MiB, "last backup")),
    ({"bytes": 9 * MiB}, None, 80 * MiB, "archive", (9 * MiB, "last backup")),
    ({"raw_bytes": None}, 9 * MiB, 80 * MiB, "raw", (80 * MiB, "database size")),  # a custom last backup
    (None, None, 80 * MiB, "raw", (80 * MiB, "database size")),
    (None, None, None, "archive", (None, "")),
])
def test_the_estimate_comes_from_the_last_backup_of_the_same_kind_else_the_database_size(last, size, dbsize,
                                                                                          measure, want):
    assert dump_estimate(last, size, dbsize, measure) == want


def test_an_estimate_says_so_and_a_passed_estimate_makes_the_bar_indeterminate():
    assert output.total_text(int(1.2 * (1 << 30)), True) == "~1.2 GiB est."
    assert output.total_text(3 * MiB, False) == "3.0 MiB"
    assert output.amount_text(MiB, 4 * MiB, True) == "1.0 MiB of ~4.0 MiB est."
    assert output.amount_text(5 * MiB, 4 * MiB, True) == "5.0 MiB (over the ~4.0 MiB est.)"
    assert output.bar_total(MiB, 4 * MiB, True) == 4 * MiB
    assert output.bar_total(5 * MiB, 4 * MiB, True) is None   # never sits at 100%
    assert output.bar_total(5 * MiB, 4 * MiB, False) == 5 * MiB
    assert output.bar_total(5, None, False) is None


@pytest.mark.parametrize("done, total, rate, want", [
    (25, 100, 5.0, 15.0), (0, 100, None, None), (100, 100, 5.0, 0.0), (120, 100, 5.0, None), (5, None, 1.0, None),
])
def test_eta_is_what_is_left_at_the_rate_so_far(done, total, rate, want):
    assert output.eta_seconds(done, total, rate) == want


def test_clock_text():
    assert [output.clock(s) for s in (None, 0, 65, 3723)] == ["--:--", "0:00", "1:05", "1:02:03"]


def test_a_meter_shows_amount_rate_eta_and_then_the_running_step():
    now = [100.0]
    m = output.Meter("pg_dump app", clock=lambda: now[0])
    report.total(m, 100 * MiB, estimate=True)
    m(10 * MiB)
    now[0] += 1
    m(20 * MiB)
    assert m.status_text(now[0]) == "20.0 MiB of ~100.0 MiB est.  10.0 MiB/s  ETA 0:08"
    m(120 * MiB)
    assert "over the ~100.0 MiB est." in m.status_text(now[0]) and "ETA" not in m.status_text(now[0])
    m.step("hashing")
    now[0] += 3
    assert m.status_text(now[0]).endswith("(over the ~100.0 MiB est.)  0:03") and m._describe() == "pg_dump app: hashing"
    m.close()


def test_a_plain_function_is_not_told_a_total():
    seen = []
    report.total(seen.append, 5)
    assert seen == []


def test_off_a_terminal_a_step_gets_a_line_only_when_it_runs_long(monkeypatch):
    lines = []
    monkeypatch.setattr(output, "note", lines.append)
    monkeypatch.setattr(output, "STEP_LINE_AFTER", 0.05)
    m = output.Meter("restoring")
    m.step("swapping")
    m.step("checking row counts")  # the first ended before its time: no line
    import time
    time.sleep(0.3)
    m.close()
    assert lines == ["restoring: checking row counts (still running after 0.05 s)"]
