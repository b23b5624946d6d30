"""The lock watcher's reporting rules, on looks given by the test (the looks themselves,
through a real session, are tests/integration/pg/test_servers.py's)."""
from __future__ import annotations

import pytest

from bigskies_ops.pg import lockwait

WAIT = {"pid": 7, "wants": "public.users (AccessShareLock)", "waited_s": 1.2,
        "blockers": [{"pid": 9, "user": "app", "application_name": "psql", "state": "idle in transaction"}]}


class _Access:
    app_name = "bigskies-ops test"


def _said(looks: list, monkeypatch) -> list[str]:
    """What a watcher says over ``looks`` (each a list of waits, or None: could not be read)."""
    monkeypatch.setattr(lockwait, "FIRST_LOOK_S", 0)
    monkeypatch.setattr(lockwait, "POLL_S", 0)
    said: list[str] = []
    w = lockwait.Watcher(_Access(), "db", what="backup")
    queue = list(looks)

    def look():
        if not queue:
            w._stop.set()
            return None
        return queue.pop(0)
    monkeypatch.setattr(w, "_look", look)
    monkeypatch.setattr(w, "_say", said.append)
    w._run()
    return said


def test_a_look_that_could_not_be_read_neither_ends_nor_renews_a_wait(monkeypatch):
    said = _said([[WAIT], None, None, [WAIT], []], monkeypatch)
    assert len(said) == 2, said
    assert said[0].startswith("backup: waiting for a lock on public.users") and "held by pid 9" in said[0]
    assert said[1] == "backup: lock wait over, going on"


@pytest.mark.parametrize("looks", [[None, [WAIT]], [[WAIT], [WAIT]]])
def test_a_wait_is_said_once_until_it_ends(looks, monkeypatch):
    said = _said(looks, monkeypatch)
    assert len(said) == 1 and "waiting for a lock" in said[0], said
