"""bigskies_ops.signals.deferred: a held signal is raised when the step ends; with
``insist`` a second one is raised at once. Real signals to this process (os.kill), the
real handlers of interrupts_unwind."""
from __future__ import annotations

import os
import signal

import pytest

from bigskies_ops import signals
from bigskies_ops.errors import Interrupted


@pytest.fixture(autouse=True)
def fresh_state():
    signals._received.clear()
    signals._held.clear()
    yield
    signals._received.clear()
    signals._held.clear()


def test_a_signal_in_a_deferred_step_is_raised_when_it_ends():
    steps = []
    with pytest.raises(Interrupted):
        with signals.interrupts_unwind(), signals.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("after the signal")
            os.kill(os.getpid(), signal.SIGINT)  # a second one: only recorded
            steps.append("the step ran to its end")
    assert steps == ["after the signal", "the step ran to its end"]


def test_a_second_signal_in_an_insisting_step_is_raised_at_once():
    steps = []
    with pytest.raises(Interrupted):
        with signals.interrupts_unwind(), signals.deferred(insist=True):
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("held")
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("never")
    assert steps == ["held"] and signals._insist == 0 and signals._depth == 0
