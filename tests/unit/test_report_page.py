"""``db.report``'s page (bigskies_ops.cli.report_html, a pure function): names escaped, one
point per backup run in each chart, health's band and the freshness limit drawn, nothing
that loads anything. (Chromium opens real pages in tests/integration/report.)"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from bigskies_ops.cli.report_html import render
from bigskies_ops.jobs.overview import HostOverview, Point

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)


def _pt(i: int, status: str = "DONE", bytes_: int | None = 1000, label: str | None = None, band=None) -> Point:
    return Point(id=f"{i:08x}", name=f"db_backup_2026120{i}_020000.sql.gz", status=status, kind="scheduled",
                 series="plain/full", label=label, started_at=NOW - timedelta(days=5 - i), bytes=bytes_,
                 duration_s=1.5, verification=None, offsite=[], error="boom <b>" if status == "FAILED" else None,
                 median_bytes=1000 if band else None, band=band, outside_band=False)


def _host(name: str, points: list[Point], state: str = "warning") -> HostOverview:
    return HostOverview(host=name, database="db", backup_dir="/b", state=state,
                        checks=[{"check": "freshness", "state": state, "message": "m <i>",
                                 "newest_good": points[-1].name if points else None, "age_s": 36000}],
                        max_age_hours=26, size_change_pct=50, checked_at=NOW, points=points)


def test_page_escapes_every_name_and_draws_one_point_per_run():
    evil = '"><script>x()</script>'
    pts = [_pt(1), _pt(2, label=evil), _pt(3, "FAILED", None), _pt(4, "MISSING", 900),
           _pt(5, band=(500, 1500))]
    page = render([_host(evil, pts), _host("empty", [], "critical")], NOW)
    assert "<script" not in page and "<i>" not in page and "boom <b>" not in page
    assert "boom &lt;b&gt;" in page and "m &lt;i&gt;" in page
    assert "&quot;&gt;&lt;script&gt;x()&lt;/script&gt;" in page
    for chart in ("size", "duration"):
        svg = re.search(rf'<svg class="chart chart-{chart}".*?</svg>', page, re.S).group(0)
        assert re.findall(r'data-status="(\w+)"', svg) == ["DONE", "DONE", "FAILED", "MISSING", "DONE"]
        assert svg.count('class="freshness-limit"') == 1
    assert page.count('class="band"') == 1                  # one banded point: a bar, not an area
    assert "No backups yet: empty has no backup of db in /b" in page
    assert not re.search(r'(src|href)="(?!#h\d|data:)', page)   # nothing to fetch: anchors and data: only
    assert "default-src 'none'" in page
