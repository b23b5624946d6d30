"""bigskies_ops.jobs.handoff.GrowingFile handing a pull's SQL to the load in memory (db.pull
--restore): order, the bound on what waits unread, and the ways a waiting writer is let go.

Pure threads, no database: the real pulls are tests/integration/pull/test_pull.py
(``test_a_pull_larger_than_the_handoff_restores_every_row``,
``test_a_load_that_fails_early_does_not_hold_the_pull_back``).
"""
from __future__ import annotations

import threading

import pytest

from bigskies_ops.jobs import handoff
from bigskies_ops.jobs.handoff import GrowingFile

CHUNK = b"x" * 8


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(handoff, "HANDOFF_BYTES", 16)  # two chunks unread: the third waits
    g = GrowingFile()
    g.start("(pull)", handed=True)
    return g


def _writer(g: GrowingFile, chunks: list[bytes]) -> tuple[threading.Thread, list[int]]:
    handed: list[int] = []

    def run():
        for i, c in enumerate(chunks):
            g.hand(c)
            handed.append(i)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, handed


def test_the_reader_gets_every_chunk_in_order_then_the_end(small):
    g = small
    chunks = [bytes([65 + i]) * 8 for i in range(6)]
    t, _ = _writer(g, chunks)
    got = []
    reader = g.raw_chunks()
    for _ in chunks:
        got.append(next(reader))
    t.join(10)
    g.finish()
    assert [b for _, b in got] == chunks and got[-1][0] == 48
    assert list(reader) == [] and not g.compressed


def test_a_writer_ahead_of_the_reader_waits_until_it_reads(small):
    g = small
    t, handed = _writer(g, [CHUNK] * 3)
    t.join(0.5)
    assert t.is_alive() and handed == [0, 1]       # 16 bytes unread: the third chunk waits
    assert next(g.raw_chunks())[1] == CHUNK
    t.join(10)
    assert not t.is_alive() and handed == [0, 1, 2]


@pytest.mark.parametrize("let_go", ["detach", "cancel"])
def test_a_waiting_writer_is_let_go_when_the_load_ends_or_is_cancelled(small, let_go):
    g = small
    t, handed = _writer(g, [CHUNK] * 5)
    t.join(0.5)
    assert t.is_alive() and handed == [0, 1]
    getattr(g, let_go)()
    t.join(10)
    assert not t.is_alive() and handed == [0, 1, 2, 3, 4]
    if let_go == "detach":  # nothing is kept for a reader that has gone: memory is released
        assert g._queued == 0 and not g._queue


def test_the_writers_error_comes_after_the_data_handed_before_it(small):
    g = small
    g.hand(CHUNK)
    g.fail(OSError("connection lost"))
    reader = g.raw_chunks()
    assert next(reader) == (8, CHUNK)
    with pytest.raises(OSError, match="connection lost"):
        next(reader)


def test_a_source_that_has_ended_is_read_to_its_end_past_the_bound(small):
    """A lost pull: the writer reads what its dead source left and fails, instead of waiting
    for a reader stuck behind the server; nothing it read is dropped."""
    g = small

    class Ended:
        def poll(self):
            return 255
    g.proc = Ended()
    for _ in range(4):
        g.hand(CHUNK)   # returns at once: 32 bytes queued, past the 16-byte bound
    g.fail(OSError("the SSH connection was lost"))
    reader = g.raw_chunks()
    assert [next(reader)[1] for _ in range(4)] == [CHUNK] * 4
    with pytest.raises(OSError, match="connection was lost"):
        next(reader)


def test_a_source_attached_after_the_reader_gave_up_is_killed_at_once():
    """A restore that fails before the pull's pg_dump has started (its side database's
    CREATE, helper-50) must not leave that dump running: attach() kills it at once; one
    attached before the cancel is killed by the cancel, with its reason for the writer."""
    import subprocess
    g = GrowingFile()
    g.cancel("the restore following this pull could not create its side database 'x'")
    late = subprocess.Popen(["sleep", "60"])
    g.attach(late)
    assert late.wait(10) == -9 and g.proc is late
    assert g.cancel_reason == "the restore following this pull could not create its side database 'x'"
    g2 = GrowingFile()
    early = subprocess.Popen(["sleep", "60"])
    g2.attach(early)
    assert early.poll() is None  # not cancelled: it runs
    g2.cancel()
    assert early.wait(10) == -9 and g2.cancel_reason == "the restore following this pull was interrupted"
