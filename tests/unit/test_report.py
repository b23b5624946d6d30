"""The reporter (bigskies_ops.report): where the library's notes and step lines go."""
from __future__ import annotations

import threading

import pytest

from bigskies_ops import report
from bigskies_ops.inventory import Host
from bigskies_ops.jobs.fleet import run_on_hosts


@pytest.fixture(autouse=True)
def nothing_installed():
    previous = report.install(None)
    yield
    report.install(*previous)


def test_nothing_is_sent_anywhere_until_a_sink_is_given(capsys):
    report.note("a note")
    report.say("a step")
    assert capsys.readouterr() == ("", "")
    assert report.sinks() == report.Sinks(None, None)


def test_installed_sinks_get_notes_and_step_lines_on_their_own_channel():
    notes, steps = [], []
    report.install(notes.append, say=steps.append)
    report.note("n1")
    report.say("s1")
    assert notes == ["n1"] and steps == ["s1"]


def test_install_returns_the_previous_sinks_and_installed_puts_them_back():
    first = []
    report.install(first.append)
    previous = report.install(None)
    assert previous.note == first.append
    report.install(*previous)
    inner = []
    with report.installed(inner.append):
        report.note("inner")
    report.note("outer")
    assert inner == ["inner"] and first == ["outer"]


def test_reporting_overrides_a_channel_for_the_block_and_restores_it():
    installed, mine, steps = [], [], []
    report.install(installed.append, say=steps.append)
    with report.reporting(mine.append):
        report.note("inside")
        report.say("step inside")          # the channel not given stays as it is
        with report.reporting(None):
            report.note("dropped")
        report.note("inside again")
    report.note("outside")
    assert mine == ["inside", "inside again"] and installed == ["outside"] and steps == ["step inside"]


def test_reporting_restores_the_previous_sinks_after_an_error():
    installed, mine = [], []
    report.install(installed.append)
    with pytest.raises(RuntimeError):
        with report.reporting(mine.append):
            raise RuntimeError("boom")
    report.note("after")
    assert installed == ["after"] and mine == []


def test_only_the_say_channel_can_be_dropped():
    notes, steps = [], []
    report.install(notes.append, say=steps.append)
    with report.reporting(say=None):
        report.note("kept")
        report.say("dropped")
    assert notes == ["kept"] and steps == []


def test_a_plain_thread_sees_the_installed_sinks_not_its_starters_override():
    installed, mine = [], []
    report.install(installed.append)
    with report.reporting(mine.append):
        t = threading.Thread(target=report.note, args=("from a thread",))
        t.start()
        t.join()
    assert installed == ["from a thread"] and mine == []


def test_a_carried_thread_reports_where_its_starter_does():
    installed, mine = [], []
    report.install(installed.append)
    with report.reporting(mine.append):
        t = threading.Thread(target=report.carried(report.note), args=("carried",))
    t.start()  # started after the block: the context was copied when it was wrapped
    t.join()
    assert mine == ["carried"] and installed == []


def test_prefixed_sends_whole_lines_to_the_note_sink_in_effect():
    notes = []
    with report.reporting(notes.append):
        p = report.prefixed("prod")
    p("hello")
    assert notes == ["[prod] hello"]
    assert report.prefixed("prod") is None  # nothing installed: nowhere to send


def test_warn_goes_to_stderr_when_there_is_no_note_sink(capsys):
    report.warn("the server is not authenticated")
    assert capsys.readouterr().err == "the server is not authenticated\n"
    notes = []
    with report.reporting(notes.append):
        report.warn("told")
    assert notes == ["told"] and capsys.readouterr().err == ""


def test_fleet_workers_prefix_each_hosts_notes_and_report_where_the_caller_does():
    notes = []
    hosts = [Host(name="a"), Host(name="b"), Host(name="c")]
    barrier = threading.Barrier(len(hosts), timeout=10)

    def job(h):
        barrier.wait()  # all hosts at once, each in its own worker thread
        report.note(f"working on {h.name}")
        done = threading.Event()
        threading.Thread(target=report.carried(lambda: (report.note("from a helper thread"), done.set()))).start()
        done.wait(10)
        return "ok", h.name, None

    with report.reporting(notes.append):
        outcomes = run_on_hosts(hosts, job)
    assert [o.word for o in outcomes] == ["ok"] * 3
    assert sorted(notes) == sorted([f"[{n}] working on {n}" for n in "abc"]
                                   + [f"[{n}] from a helper thread" for n in "abc"])
    report.note("after the run")  # nothing leaked out of the workers' contexts
    assert len(notes) == 6


def test_a_single_host_run_is_not_prefixed():
    notes = []
    with report.reporting(notes.append):
        run_on_hosts([Host(name="a")], lambda h: (report.note("alone"), ("ok", "", None))[1])
    assert notes == ["alone"]
