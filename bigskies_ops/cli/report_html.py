"""``db.report``'s page: one self-contained HTML file (inline CSS, charts as inline SVG, no
script, no external asset, nothing fetched: a Content-Security-Policy of ``default-src
'none'`` says so to the browser too).

Pure: :func:`render` takes the hosts' overviews (:mod:`bigskies_ops.jobs.overview`) and
returns the text. Every name that comes from a host, an archive, a manifest or a label is
HTML-escaped (labels are free text). Times are UTC.
"""
from __future__ import annotations

import html
from datetime import datetime, timedelta

from bigskies_ops.archives.catalog import iso
from bigskies_ops.jobs.health import worst
from bigskies_ops.jobs.monitoring import BAD_STATUSES
from bigskies_ops.jobs.overview import HostOverview, Point
from bigskies_ops.text import human_bytes

STATE_WORD = {"ok": "OK", "warning": "WARNING", "critical": "CRITICAL", "unknown": "UNKNOWN"}

CSS = """
:root{--ok:#1a7f37;--ok-bg:#dafbe1;--warning:#9a6700;--warning-bg:#fff8c5;--critical:#cf222e;
--critical-bg:#ffebe9;--unknown:#57606a;--unknown-bg:#eaeef2;--fg:#1f2328;--muted:#59636e;--line:#d0d7de}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);
background:#f6f8fa}
header,main{max-width:1200px;margin:0 auto;padding:12px 16px}
h1{font-size:1.35rem;margin:8px 0 2px}
h2{font-size:1.15rem;margin:0;overflow-wrap:anywhere}
h3{font-size:.95rem;margin:14px 0 4px}
.muted{color:var(--muted)}
.fleet{display:flex;flex-wrap:wrap;gap:6px;margin:10px 0;padding:0;list-style:none}
.fleet a{display:inline-block;padding:3px 10px;border-radius:12px;text-decoration:none;font-weight:600;
border:1px solid currentColor;overflow-wrap:anywhere}
.host{background:#fff;border:1px solid var(--line);border-left:8px solid var(--unknown);border-radius:8px;
padding:12px 16px;margin:14px 0}
.host.ok{border-left-color:var(--ok)}.host.warning{border-left-color:var(--warning)}
.host.critical{border-left-color:var(--critical)}
.head{display:flex;flex-wrap:wrap;align-items:center;gap:8px 12px}
.badge{padding:2px 10px;border-radius:12px;font-weight:700;font-size:.85rem;letter-spacing:.03em}
.ok .badge,.fleet .ok{color:var(--ok);background:var(--ok-bg)}
.warning .badge,.fleet .warning{color:var(--warning);background:var(--warning-bg)}
.critical .badge,.fleet .critical{color:var(--critical);background:var(--critical-bg)}
.unknown .badge,.fleet .unknown{color:var(--unknown);background:var(--unknown-bg)}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;margin:10px 0}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0;overflow-wrap:anywhere}
ul.checks,ul.problems{margin:4px 0;padding-left:0;list-style:none}
ul.checks li,ul.problems li{padding:2px 0;overflow-wrap:anywhere}
.st{display:inline-block;min-width:5.5em;font-weight:600;font-size:.85rem}
.st.ok{color:var(--ok)}.st.warning{color:var(--warning)}.st.critical,.st.failed{color:var(--critical)}
.st.unknown{color:var(--unknown)}.st.missing,.st.damaged{color:#bc4c00}
.empty{padding:10px 12px;background:var(--unknown-bg);border-radius:6px;font-weight:600}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,360px),1fr));gap:10px 18px}
figure{margin:0}figcaption{font-weight:600;font-size:.9rem;margin:4px 0}
svg.chart{width:100%;height:auto;display:block;background:#fff}
.legend{font-size:.8rem;color:var(--muted);display:flex;flex-wrap:wrap;gap:2px 12px;margin:4px 0 0}
.sw{display:inline-block;width:11px;height:11px;border-radius:6px;vertical-align:-1px;margin-right:3px}
@media (max-width:560px){header,main{padding:8px}.host{padding:10px;border-left-width:6px}
dl.facts{grid-template-columns:1fr}dl.facts dt{margin-top:4px}body{font-size:14px}}
"""

# chart geometry, in viewBox units (the SVG scales to the page's width)
W, H = 480, 210
ML, MR, MT, MB = 64, 14, 14, 40
POINT_FILL = {"DONE": "#1f6feb", "FAILED": "#cf222e", "MISSING": "#ffffff", "DAMAGED": "#ffffff", "STARTED": "#ffffff",
              "LEGACY": "#8c959f"}
POINT_STROKE = {"DONE": "#0b3d91", "FAILED": "#82071e", "MISSING": "#bc4c00", "DAMAGED": "#bc4c00", "STARTED": "#8c959f",
                "LEGACY": "#57606a"}


def esc(s) -> str:
    """HTML-escape any text (also for attribute values: quotes are escaped)."""
    return html.escape("" if s is None else str(s), quote=True)


def _t(dt: datetime | None) -> str:
    """A UTC time for people: ``2026-12-03 02:00 UTC``."""
    return dt.strftime("%Y-%m-%d %H:%M UTC") if dt else "-"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 3600:.1f} h" if seconds < 72 * 3600 else f"{seconds / 86400:.1f} days"


def _secs(v: float) -> str:
    if v >= 3600:
        return f"{v / 3600:.1f} h"
    if v >= 60:
        return f"{v / 60:.1f} min"
    return f"{v:.1f} s"


def _f(v: float) -> str:
    return f"{v:.1f}"


def _band(ov: HostOverview, pts: list[Point], X, Y) -> list[str]:
    """health's size-alert band, per series: the median of earlier backups -/+ size_change_pct."""
    out = []
    for series in sorted({p.series for p in pts}):
        run = [p for p in pts if p.series == series and p.band]
        if not run:
            continue
        if len(run) == 1:
            p = run[0]
            out.append(f'<rect class="band" x="{_f(X(p.started_at) - 5)}" y="{_f(Y(p.band[1]))}" width="10" '
                       f'height="{_f(Y(p.band[0]) - Y(p.band[1]))}" fill="#ffd33d" opacity="0.35"/>')
            continue
        top = [f"{_f(X(p.started_at))},{_f(Y(p.band[1]))}" for p in run]
        bottom = [f"{_f(X(p.started_at))},{_f(Y(p.band[0]))}" for p in reversed(run)]
        out.append(f'<polygon class="band" points="{" ".join(top + bottom)}" fill="#ffd33d" opacity="0.35">'
                   f'<title>{esc(f"size-alert band ({series}): median of earlier backups ±{ov.size_change_pct:g}%")}'
                   f'</title></polygon>')
    return out


def _point(p: Point, what: str, v: float | None, x: float, y: float) -> str:
    """One backup run as a ``circle.point`` with its facts in ``data-*`` and a tooltip."""
    cls = f"point {p.status.lower()}" + (" outside-band" if what == "size" and p.outside_band else "")
    stroke = "#cf222e" if what == "size" and p.outside_band else POINT_STROKE.get(p.status, "#57606a")
    tip = [f"{p.name} ({p.id})", f"{iso(p.started_at)} UTC, {p.kind}", f"status {p.status}"]
    if p.label:
        tip.append(f"label: {p.label}")
    if p.bytes is not None:
        tip.append(f"size {human_bytes(p.bytes)}")
    if p.duration_s is not None:
        tip.append(f"took {_secs(p.duration_s)}")
    if what == "size" and p.band:
        tip.append(f"band {human_bytes(p.band[0])} - {human_bytes(p.band[1])}"
                   + (" (OUTSIDE: size alert)" if p.outside_band else ""))
    if p.error:
        tip.append(f"error: {p.error}")
    return (f'<circle class="{cls}" cx="{_f(x)}" cy="{_f(y)}" r="4.5" '
            f'fill="{POINT_FILL.get(p.status, "#ffffff")}" stroke="{stroke}" stroke-width="1.8" '
            f'data-id="{esc(p.id)}" data-status="{esc(p.status)}" data-value="{esc("" if v is None else v)}">'
            f'<title>{esc(chr(10).join(tip))}</title></circle>')


def chart(ov: HostOverview, what: str, now: datetime) -> str:
    """One inline SVG chart of ``ov``'s backups over time: ``what`` is ``size`` (bytes, with
    health's size-alert band) or ``duration`` (seconds). One ``circle.point`` per backup run
    (FAILED runs and missing values sit on the axis); the freshness limit
    (``alerts.max_age_hours`` before ``now``) is a dashed line with the window right of it shaded."""
    pts = [p for p in ov.points if p.started_at is not None]
    limit_at = now - timedelta(hours=ov.max_age_hours)
    t0 = min([p.started_at for p in pts] + [limit_at])
    t1 = max([p.started_at for p in pts] + [now])
    span = max((t1 - t0).total_seconds(), 3600.0)
    pad = span * 0.04
    x0, xs = t0 - timedelta(seconds=pad), span + 2 * pad

    def value(p: Point) -> float | None:
        return (p.bytes if what == "size" else p.duration_s) if p.status != "FAILED" or what == "duration" else None

    vals = [v for v in (value(p) for p in pts) if v is not None]
    if what == "size":
        vals += [p.band[1] for p in pts if p.band]
    ymax = max(vals or [1]) * 1.15 or 1
    pw, ph = W - ML - MR, H - MT - MB

    def X(t: datetime) -> float:
        return ML + (t - x0).total_seconds() / xs * pw

    def Y(v: float) -> float:
        return MT + ph - v / ymax * ph

    fmt = human_bytes if what == "size" else _secs
    out = [f'<svg class="chart chart-{what}" viewBox="0 0 {W} {H}" role="img" '
           f'aria-label="{esc(f"{what} of each backup of {ov.database} on {ov.host} over time")}" '
           f'preserveAspectRatio="xMidYMid meet" font-size="11" font-family="system-ui,sans-serif">']
    # the freshness window: a good backup must lie right of the limit line
    xl = X(limit_at)
    out.append(f'<rect class="fresh-window" x="{_f(xl)}" y="{MT}" width="{_f(max(0.0, X(now) - xl))}" '
               f'height="{ph}" fill="#dafbe1" opacity="0.6"/>')
    for i in range(5):  # y grid and labels
        v = ymax / 1.15 * i / 4
        y = Y(v)
        out.append(f'<line x1="{ML}" x2="{W - MR}" y1="{_f(y)}" y2="{_f(y)}" stroke="#eaeef2"/>'
                   f'<text x="{ML - 5}" y="{_f(y + 4)}" text-anchor="end" fill="#59636e">{esc(fmt(v))}</text>')
    for i in range(3):  # x labels: start, middle, end (UTC)
        t = t0 + timedelta(seconds=span * i / 2)
        anchor = ("start", "middle", "end")[i]
        out.append(f'<text x="{_f(X(t))}" y="{H - MB + 15}" text-anchor="{anchor}" fill="#59636e">'
                   f'{esc(t.strftime("%b %d" if span > 2 * 86400 else "%m-%d %H:%M"))}</text>')
    out.append(f'<text x="{W - MR}" y="{H - 6}" text-anchor="end" fill="#59636e">UTC</text>')
    out.append(f'<line x1="{ML}" x2="{W - MR}" y1="{MT + ph}" y2="{MT + ph}" stroke="#8c959f"/>')
    if what == "size":
        out += _band(ov, pts, X, Y)
    for series in sorted({p.series for p in pts}):  # one line per series through its good backups
        good = [p for p in pts if p.series == series and p.status == "DONE" and value(p) is not None]
        if len(good) > 1:
            out.append('<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" opacity="0.6" points="'
                       + " ".join(f"{_f(X(p.started_at))},{_f(Y(value(p)))}" for p in good) + '"/>')
    out.append(f'<line class="freshness-limit" x1="{_f(xl)}" x2="{_f(xl)}" y1="{MT}" y2="{MT + ph}" '
               f'stroke="#cf222e" stroke-dasharray="5 4" stroke-width="1.5">'
               f'<title>{esc(f"freshness limit: alerts.max_age_hours = {ov.max_age_hours:g} h before {iso(now)}")}'
               f'</title></line>')
    label_x, anchor = (xl + 4, "start") if xl < ML + pw * 0.6 else (xl - 4, "end")
    out.append(f'<text x="{_f(label_x)}" y="{MT + 11}" text-anchor="{anchor}" fill="#cf222e">'
               f'max age {esc(f"{ov.max_age_hours:g}")} h</text>')
    out += [_point(p, what, value(p), X(p.started_at), Y(value(p)) if value(p) is not None else MT + ph)
            for p in pts]
    out.append("</svg>")
    return "".join(out)


LEGEND = ('<p class="legend"><span><span class="sw" style="background:#1f6feb"></span>good backup</span>'
          '<span><span class="sw" style="background:#cf222e"></span>FAILED run</span>'
          '<span><span class="sw" style="background:#fff;border:2px solid #bc4c00"></span>MISSING archive</span>'
          '<span><span class="sw" style="background:#ffd33d;opacity:.6;border-radius:0"></span>size-alert band</span>'
          '<span><span class="sw" style="background:#dafbe1;border-left:2px dashed #cf222e;border-radius:0"></span>'
          'freshness window (max age)</span></p>')


def _facts(ov: HostOverview, now: datetime) -> str:
    fresh = ov.check("freshness") or {}
    newest = next((p for p in reversed(ov.points) if p.name == fresh.get("newest_good")), None)
    rows = [("database", esc(ov.database)), ("backup folder", esc(ov.backup_dir))]
    if newest:
        rows.append(("newest good backup", f"{esc(newest.name)} <span class=\"muted\">({esc(newest.id)})</span>"))
        age = fresh.get("age_s")
        if age is None:
            age = (now - newest.started_at).total_seconds()
        rows.append(("taken", f"{esc(_t(newest.started_at))}, <b>{esc(_age(age))} ago</b> "
                              f"(max age {esc(f'{ov.max_age_hours:g}')} h)"))
        rows.append(("size", esc(human_bytes(newest.bytes))
                     + (f", took {esc(_secs(newest.duration_s))}" if newest.duration_s is not None else "")))
    else:
        rows.append(("newest good backup", "<b>none</b>"))
    ver = ov.check("verification")
    if ver:
        rows.append(("verification", f'<span class="st {esc(ver["state"])}">{esc(ver["state"])}</span> '
                                     f'{esc(ver["message"])}'))
    offs = [c for c in ov.checks if str(c.get("check", "")).startswith("offsite ")]
    rows.append(("offsite", "<br>".join(f'<span class="st {esc(c["state"])}">{esc(c["state"])}</span> '
                                        f'{esc(c["message"])}' for c in offs) or "no offsite target configured"))
    rows.append(("next scheduled run", f"{esc(_t(ov.next_run_at))} (the inventory's schedule)"
                 if ov.next_run_at else "none"))
    n_failed = sum(p.status == "FAILED" for p in ov.points)
    n_missing = sum(p.status == "MISSING" for p in ov.points)
    n_damaged = sum(p.status == "DAMAGED" for p in ov.points)
    rows.append(("runs", f"{len(ov.points)} backup run(s): {sum(p.status == 'DONE' for p in ov.points)} good, "
                         f"{n_failed} FAILED, {n_missing} MISSING" + (f", {n_damaged} DAMAGED" if n_damaged else "")))
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _host(ov: HostOverview, i: int, now: datetime) -> str:
    state = ov.state if ov.state in STATE_WORD else "unknown"
    out = [f'<section class="host {state}" id="h{i}" data-host="{esc(ov.host)}" data-state="{state}">',
           f'<div class="head"><h2>{esc(ov.host)}</h2><span class="badge">{STATE_WORD[state]}</span>'
           f'<span class="muted">{esc(ov.database)}</span></div>']
    if ov.error:
        out.append(f'<p class="empty">The backups of {esc(ov.host)} could not be read: {esc(ov.error)}</p>')
    elif not ov.points:
        out.append(f'<p class="empty no-backups">No backups yet: {esc(ov.host)} has no backup of '
                   f'{esc(ov.database)} in {esc(ov.backup_dir)}. Run <code>inv db.backup --host '
                   f'{esc(ov.host)}</code>.</p>')
    if not ov.error:
        out.append(_facts(ov, now))
    out.append('<h3>Checks (as db.health decides)</h3><ul class="checks">'
               + "".join(f'<li><span class="st {esc(c.get("state"))}">{esc(c.get("state"))}</span> '
                         f'<b>{esc(c.get("check"))}</b>: {esc(c.get("message"))}</li>' for c in ov.checks) + "</ul>")
    bad = [p for p in reversed(ov.points) if p.status in BAD_STATUSES]
    if bad:
        out.append('<h3>Runs that need a look</h3><ul class="problems">')
        for p in bad[:20]:
            why = (p.error or "") if p.status == "FAILED" else (
                "the manifest says DONE but the archive file is gone" if p.status == "MISSING"
                else "the archive's size differs from its manifest's: truncated or changed" if p.status == "DAMAGED"
                else "never finished (running, or killed)")
            out.append(f'<li class="{p.status.lower()}" data-status="{esc(p.status)}"><span class="st '
                       f'{p.status.lower()}">{esc(p.status)}</span> {esc(_t(p.started_at))} {esc(p.name)}'
                       f'{" [" + esc(p.label) + "]" if p.label else ""}: {esc(why)}</li>')
        if len(bad) > 20:
            out.append(f"<li>... and {len(bad) - 20} more (inv db.list --host {esc(ov.host)})</li>")
        out.append("</ul>")
    if ov.points:
        out.append('<div class="charts">'
                   f'<figure><figcaption>Backup size</figcaption>{chart(ov, "size", now)}</figure>'
                   f'<figure><figcaption>Backup duration</figcaption>{chart(ov, "duration", now)}</figure>'
                   f'</div>{LEGEND}')
    out.append("</section>")
    return "".join(out)


def render(overviews: list[HostOverview], now: datetime, *, title: str = "bigskies-ops backup report") -> str:
    """The whole page for ``overviews`` (one section per host, in the order given), its ages
    measured against ``now`` (UTC). Returns HTML text; nothing in it loads anything."""
    chips = "".join(f'<li><a class="{esc(o.state)}" href="#h{i}">{esc(o.host)}: {STATE_WORD.get(o.state, "UNKNOWN")}'
                    f'</a></li>' for i, o in enumerate(overviews))
    fleet = worst(o.state for o in overviews)  # db.health's ranking: critical > unknown > warning > ok
    body = "".join(_host(o, i, now) for i, o in enumerate(overviews)) or '<p class="empty">No hosts selected.</p>'
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
            "img-src data:\">"
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><p class=\"muted\">Generated {esc(_t(now))}. Fleet state: "
            f"<b>{STATE_WORD[fleet]}</b> ({len(overviews)} host(s)). States and checks are db.health's; hover a "
            f"point for its backup.</p><ul class=\"fleet\">{chips}</ul></header>"
            f"<main>{body}</main></body></html>\n")
