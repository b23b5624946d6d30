"""``db.report``: one self-contained HTML page, opened in real headless Chromium (Debian's
chromium, driven over the DevTools protocol by bigskies_ops/dev/browser.py).

Real backups through the CLI, a FAILED run (pg_dump gave up on a held lock), a backup whose
archive file was deleted (MISSING), a label full of HTML, and a host with no backups yet.
The page must load with no console error and no network request, hold one chart point per
backup, show FAILED and MISSING as such, carry db.health's state per host, fit a 390 px
phone window, and render to screenshots that are not blank.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from bigskies_ops.dev.browser import Browser
from tests.conftest import PASSWORD, cli, native_host, write_inventory

BIN = "/usr/lib/postgresql/15/bin"
LABEL = '<script>alert("x")</script> & <b>bold</b> \'q\''


def png_pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of raw RGB(A) bytes) of an 8-bit RGB or RGBA PNG, decoded with zlib
    (the test's own decoder: PNG's five scanline filters, RFC 2083 section 6)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", None
    while pos < len(png):
        n, kind = struct.unpack(">I4s", png[pos:pos + 8])
        data = png[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            idat += data
        pos += 12 + n
    w, h, depth, ctype = ihdr[:4]
    assert depth == 8 and ctype in (2, 6), ihdr
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return w, h, [bytes(r[i:i + 3]) for r in rows for i in range(0, stride, bpp)]


def assert_not_blank(png: bytes, width: int) -> None:
    w, h, px = png_pixels(png)
    assert w == width and h > 600, (w, h)
    colours = set(px)
    inked = sum(1 for p in px if min(p) < 200)   # text, charts, borders: clearly not background
    assert len(colours) > 40, len(colours)
    assert inked / len(px) > 0.02, inked / len(px)


class Locker:
    """The test's own psql session holding ACCESS EXCLUSIVE on a table: pg_dump waits for it."""

    def __init__(self, pg, db: str, table: str):
        self.p = subprocess.Popen([f"{BIN}/psql", "-X", "-q", "-A", "-t", "-h", str(pg.socket_dir), "-p",
                                   str(pg.port), "-U", "bigskies", "-d", db], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        self.p.stdin.write(f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT 1;\n")
        self.p.stdin.flush()
        assert self.p.stdout.readline().strip() == "1"

    def release(self) -> None:
        if self.p.poll() is None:
            self.p.stdin.write("COMMIT;\n\\q\n")
            self.p.stdin.close()
            self.p.wait(10)


@pytest.fixture
def fleet(tmp_path, pg, dbname, cli_env):
    """Host ``dev``: five real backups (one labelled with HTML), a FAILED run between the
    fourth and fifth, the second's archive deleted afterwards (MISSING). Host ``empty``: the
    same database, an empty backup folder."""
    bdir = tmp_path / "backups"
    inv = write_inventory(tmp_path / "inventory.yaml", {
        "dev": native_host(pg, dbname, bdir),
        "empty": native_host(pg, dbname, tmp_path / "none-yet")})
    for i in range(5):
        if i == 4:
            lock = Locker(pg, dbname, "users")
            try:
                r = cli("db.backup", "-i", str(inv), "--host", "dev", "--lock-wait-timeout", "1", env=cli_env)
            finally:
                lock.release()
            assert r.returncode == 1 and "gave up after 1 s waiting for a lock" in r.stderr, r.stderr
        args = ["--label", LABEL] if i == 2 else []
        r = cli("db.backup", "-i", str(inv), "--host", "dev", *args, env=cli_env)
        assert r.returncode == 0, r.stderr
    mans = sorted(bdir.glob("*.manifest.json"))
    assert sorted(json.loads(m.read_text())["status"] for m in mans) == ["DONE"] * 5 + ["FAILED"]
    done = sorted(p for p in bdir.glob("*.sql.gz"))
    missing = done[1]
    missing.unlink()                      # its manifest still says DONE: MISSING
    return inv, bdir, missing.name


def test_report_opens_in_chromium_with_one_point_per_backup_and_no_requests(fleet, tmp_path, cli_env):
    inv, bdir, missing = fleet
    out = tmp_path / "site" / "report.html"
    out.parent.mkdir()
    r = cli("db.report", "-i", str(inv), "--out", str(out), "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["result"] == "changed" and doc["path"] == str(out) and doc["bytes"] == out.stat().st_size
    assert os.listdir(out.parent) == ["report.html"]          # atomic: no temp file left behind
    dev, empty = doc["hosts"]
    assert (dev["host"], dev["backups"], dev["failed_runs"], dev["missing_archives"]) == ("dev", 6, 1, 1)
    assert (empty["host"], empty["backups"], empty["newest_good"]) == ("empty", 0, None)
    # the colour per host is db.health's state (literal: dev was never verified -> warning; empty -> critical)
    health = json.loads(cli("db.health", "-i", str(inv), "--host", "all", "--json", env=cli_env).stdout)
    assert [h["state"] for h in health["hosts"]] == ["warning", "critical"]
    assert [dev["state"], empty["state"]] == ["warning", "critical"]

    text = out.read_text()
    assert "<script" not in text and "alert(" not in text.replace("alert(&quot;", "")  # escaped, never markup
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt; &#x27;q&#x27;" in text
    assert PASSWORD not in text and "http://" not in text and "https://" not in text

    with Browser() as b:
        b.open(out.as_uri(), width=1280, height=900)
        dom = b.evaluate("""(() => {
          const sec = h => document.querySelector(`section[data-host="${h}"]`);
          const pts = (h, c) => [...sec(h).querySelectorAll(`svg.chart-${c} circle.point`)]
                                 .map(e => e.dataset.status);
          return {
            scripts: document.querySelectorAll('script').length,
            size: pts('dev', 'size'), duration: pts('dev', 'duration'),
            bands: sec('dev').querySelectorAll('svg.chart-size .band').length,
            limits: sec('dev').querySelectorAll('svg .freshness-limit').length,
            problems: [...sec('dev').querySelectorAll('ul.problems li')].map(e => e.textContent),
            states: [...document.querySelectorAll('section.host')].map(e => e.dataset.state),
            border: getComputedStyle(sec('dev')).borderLeftColor,
            border_empty: getComputedStyle(sec('empty')).borderLeftColor,
            empty_text: sec('empty').textContent, empty_svgs: sec('empty').querySelectorAll('svg').length,
            titles: [...sec('dev').querySelectorAll('circle.point title')].map(e => e.textContent).join('\\n'),
          };
        })()""")
        desktop = b.screenshot(tmp_path / "desktop.png")
        b.resize(390, 844, mobile=True)
        phone_scroll = b.evaluate("document.documentElement.scrollWidth")
        phone = b.screenshot(tmp_path / "phone.png")
        problems = b.problems()

    assert problems == {"console": [], "exceptions": [], "requests": []}, problems
    assert dom["scripts"] == 0
    # one point per backup run, in each chart: 4 good, 1 FAILED, 1 MISSING
    for chart in ("size", "duration"):
        assert sorted(dom[chart]) == ["DONE"] * 4 + ["FAILED", "MISSING"], (chart, dom[chart])
    assert dom["bands"] >= 1 and dom["limits"] == 2      # health's size band (3 earlier good ones); max age line
    failed_line, missing_line = sorted(dom["problems"], key=lambda t: "MISSING" in t)
    assert failed_line.startswith("FAILED") and "gave up after 1 s waiting for a lock" in failed_line
    assert missing_line.startswith("MISSING") and missing in missing_line and "archive file is gone" in missing_line
    assert dom["states"] == ["warning", "critical"]
    assert dom["border"] == "rgb(154, 103, 0)" and dom["border_empty"] == "rgb(207, 34, 46)"
    assert "No backups yet" in dom["empty_text"] and dom["empty_svgs"] == 0
    assert LABEL in dom["titles"]                        # the label shown as text, exactly
    assert phone_scroll <= 390, phone_scroll             # nothing wider than a phone
    assert_not_blank(desktop, 1280)
    assert_not_blank(phone, 390)


def test_report_of_a_host_with_no_backups_says_so_and_exits_0(tmp_path, pg, dbname, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", {"fresh": native_host(pg, dbname, tmp_path / "nothing")})
    out = tmp_path / "r.html"
    r = cli("db.report", "-i", str(inv), "--out", str(out), env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "CRITICAL: [fresh]" in r.stdout and "no backups yet" in r.stdout
    assert f"changed: [all] report written to {out}" in r.stdout
    with Browser() as b:
        b.open(out.as_uri(), width=390, height=844, mobile=True)
        said = b.evaluate("document.querySelector('section[data-host=fresh] .no-backups').textContent")
        points = b.evaluate("document.querySelectorAll('circle.point').length")
        assert b.problems() == {"console": [], "exceptions": [], "requests": []}
    assert said.startswith("No backups yet: fresh has no backup of") and points == 0


def test_report_bad_out_paths_are_usage_errors_and_write_nothing(tmp_path, pg, dbname, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(pg, dbname, tmp_path / "b")})
    before = sorted(os.listdir(tmp_path))
    r = cli("db.report", "-i", str(inv), "--out", str(tmp_path / "no" / "such" / "r.html"), env=cli_env)
    assert r.returncode == 2 and "the folder" in r.stderr and "does not exist" in r.stderr, r.stderr
    r = cli("db.report", "-i", str(inv), env=cli_env)
    assert r.returncode == 2 and "db.report needs --out FILE.html" in r.stderr, r.stderr
    r = cli("db.report", "-i", str(inv), "--out", str(tmp_path), "--json", env=cli_env)
    assert r.returncode == 2 and json.loads(r.stdout)["error"]["exit_code"] == 2
    assert "Traceback" not in r.stderr
    assert sorted(os.listdir(tmp_path)) == before
    assert not list(Path(tmp_path).glob("**/*.html"))
