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


def _rendered_bar(width: int, description: str, step: str | None, done: int, total: int, *, rate_s: float = 1.0):
    """The bar's line as rich draws it on a terminal ``width`` columns wide (a real rich
    Console writing into a string; our columns, no mocks)."""
    import io
    from rich.console import Console
    from rich.progress import Progress
    now = [100.0]
    m = output.Meter(description, clock=lambda: now[0])
    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None, legacy_windows=False)
    p = Progress(*output._meter_columns(m), console=console, auto_refresh=False)
    m.attach(p)
    report.total(m, total, estimate=True)
    m(1)
    now[0] += rate_s
    m(done)
    if step:
        m.step(step)
        now[0] += 3
    console.print(p.make_tasks_table(p.tasks))
    m.close()
    return [line for line in console.file.getvalue().splitlines() if line.strip()]


STEPS = [("pg_dump bigskies", "checking the archive"), ("pg_dump bigskies", "hashing on prod"),
         ("restoring", "building indexes and constraints"), ("restoring", "restarting coordinators"),
         ("verify bigskies_backup_20261203_142241.sql.gz", "hashing on prod"),
         ("offsite vault: bigskies_backup_20261203_142241.sql.gz", None),
         ("pull from prod", "checking size and sha256"), ("pg_dump bigskies", None)]


@pytest.mark.parametrize("width", [80, 100, 120])
@pytest.mark.parametrize("description, step", STEPS)
def test_a_bar_is_one_line_with_the_step_and_file_names_whole(width, description, step):
    """docs/cli.md "Progress": at 80-120 columns the bar keeps one line; the bar and the
    figures give up room first. The step name is never cut; a file name only where the
    line cannot hold it whole (80 columns, a long name and a step), and then in the middle."""
    lines = _rendered_bar(width, description, step, 412 * MiB, 1229 * MiB)
    assert len(lines) == 1, lines
    assert len(lines[0]) < width, lines
    whole = f"{description}: {step}" if step else description
    if width >= 100 or len(whole) + 1 + 1 + 1 + len("412.0 MiB  0:03") < width - 1:
        assert lines[0].startswith(whole), lines
        assert "…" not in lines[0]
    else:
        head, _, tail = lines[0].partition("…")
        assert tail, lines
        name = max(description.split(" "), key=len)
        assert head.split(" ")[0] == description.split(" ")[0] and name.startswith(head.split(" ")[-1])
        assert name.endswith(tail.split(":")[0]) and tail.split(":")[0].endswith(".sql.gz")
        if step:
            assert f": {step} " in lines[0], lines


def test_progress_layout_shrinks_the_bar_then_the_figures_then_cuts_file_names_in_the_middle():
    full = ["412.0 MiB of ~1.2 GiB est.  48.3 MiB/s  ETA 0:17", "412.0 MiB of ~1.2 GiB est.  ETA 0:17",
            "412.0 MiB  ETA 0:17"]
    assert output.progress_layout(120, "pg_dump app", None, full) == ("pg_dump app", output.BAR_WIDTH, 0)
    text, bar, i = output.progress_layout(80, "pg_dump app", None, full)
    assert (text, i) == ("pg_dump app", 0) and output.BAR_MIN <= bar < output.BAR_WIDTH
    name = "bigskies_backup_20261203_142241.sql.gz"
    text, bar, i = output.progress_layout(80, f"offsite vault: {name}", None, full)
    assert (text, i) == (f"offsite vault: {name}", 2)
    # narrower than 80: the file name is cut in the middle (its date and extension kept), the step never
    text, bar, i = output.progress_layout(60, f"verify {name}", "hashing on prod", ["6.6 MiB  0:03"] * 3)
    assert text.endswith(": hashing on prod") and "…" in text and text.startswith("verify bigskies_")
    assert ".sql.gz" in text and len(text) + bar + 2 + len("6.6 MiB  0:03") < 60
    assert output.fit_description("restoring", "building indexes and constraints", 60) == \
        "restoring: building indexes and constraints"


def test_a_meter_off_a_terminal_without_lines_shows_no_bytes():
    """What a job skips when nobody sees the bytes (sideload._watch_side_size polls no size)."""
    from bigskies_ops.output import Meter
    assert Meter("restoring").shows_bytes is False
    assert Meter("pull from prod", lines=True).shows_bytes is True
