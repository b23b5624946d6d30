"""Backup ids and the db.list table (pure functions): ids are stable and typed by prefix;
an archive's name is never cut, at 200, 100, 80 or 40 columns; a FAILED verification
reads FAILED. The commands themselves: tests/integration/housekeeping."""
from __future__ import annotations

from io import StringIO

import pytest
from rich.console import Console

from bigskies_ops.archives.catalog import Backup, backup_id, by_id, find, looks_like_id
from bigskies_ops.cli.render import backups_table

NAME = "bigskies_observations_backup_20261129_085200.sql.gz"


def _b(name, status="DONE", verifications=(), origin=None, size=123456789):
    man = {"status": status, "started_at": "2026-11-29T08:52:00Z", "kind": "scheduled", "format": "plain",
           "verifications": list(verifications), "error": "pg_dump: connection refused" if status == "FAILED" else None}
    return Backup("/b" + (f"/{origin}" if origin else ""), name, man, None if status == "FAILED" else size, origin)


def test_an_id_is_eight_hex_digits_of_the_name_and_never_changes():
    i = backup_id(NAME)
    assert len(i) == 8 and looks_like_id(i) and i == backup_id(NAME)
    assert backup_id(NAME.replace("085200", "085201")) != i
    assert not looks_like_id("2") and not looks_like_id("latest") and not looks_like_id("ABCD1234")
    bs = [_b(NAME), _b(NAME.replace("0852", "0953"))]
    assert by_id(bs, i[:4]) == [bs[0]] and by_id(bs, i) == [bs[0]] and by_id(bs, "2") == []
    assert find(bs, NAME) == [bs[0]] and find(bs, "/b/" + NAME) == [bs[0]]
    pulled = _b(NAME, origin="prod")
    assert find([pulled], f"prod/{NAME}") == [pulled] and pulled.id == i   # same name: same id everywhere


def _render(backups, width):
    f = StringIO()
    Console(file=f, width=width, highlight=False).print(backups_table(backups, width=width))
    return f.getvalue()


@pytest.mark.parametrize("width", [200, 100, 80, 60, 40])
def test_names_are_never_cut_at_any_width(width):
    bs = [_b(NAME, verifications=[{"ok": True}]), _b("x" * 30 + "_backup_20261128_085200.sql.gz", origin="prod"),
          _b(NAME.replace("29_", "27_"), status="FAILED")]
    text = _render(bs, width)
    flat = text.replace("\n", "")  # a very narrow terminal wraps the name; nothing cuts it
    for b in bs:
        assert b.shown_name in (text if width >= 80 else flat), text
        assert b.id in text
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    if width >= 80:
        assert text.splitlines()[0].split()[0] == "id"


def test_a_failed_verification_reads_failed_and_a_failed_run_reads_failed():
    bs = [_b(NAME, verifications=[{"ok": True}, {"ok": False, "error": "sha256 differs"}]),
          _b(NAME.replace("29_", "28_")), _b(NAME.replace("29_", "27_"), status="FAILED")]
    text = _render(bs, 200)
    rows = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert "FAILED" in rows[bs[0].id] and " no " not in rows[bs[0].id]
    assert "never" in rows[bs[1].id]
    assert "failed" in rows[bs[2].id]
    j = bs[0].to_json()
    assert j["id"] == bs[0].id and j["verification"] == "failed" and j["verified"] is False
    assert j["verification_error"] == "sha256 differs"
    assert "failed at" in bs[2].failed_message() and "connection refused" in bs[2].failed_message()
