"""Run one job on several hosts at once (``--host production`` or ``--host prod,dev``).

Hosts run in parallel threads; one host's failure never stops the others; the
caller prints a recap line per host (CONTRACTS.md section 5) and exits 1 when any
host failed. Jobs are plain functions ``fn(host) -> (word, reason, data)`` where
word is ``ok``, ``changed`` or ``skipped``; any exception makes that host
``failed`` with the error's one-line message.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from bigskies_ops import report
from bigskies_ops.errors import BigskiesError, EXIT_FAILED, EXIT_OK
from bigskies_ops.inventory import Host

MAX_PARALLEL = 8


@dataclass
class HostOutcome:
    host: str
    word: str            # ok | changed | skipped | failed
    reason: str
    data: Any = None
    exit_code: int = EXIT_OK
    seconds: float | None = None  # the host's whole run, wall clock

    @property
    def failed(self) -> bool:
        return self.word == "failed"

    def to_json(self) -> dict:
        out = {"host": self.host, "result": self.word, "reason": self.reason, "exit_code": self.exit_code}
        if self.seconds is not None:
            out["seconds"] = round(self.seconds, 3)
        return out


def run_on_hosts(hosts: list[Host], fn: Callable[[Host], tuple[str, str, Any]], *,
                 max_parallel: int = MAX_PARALLEL,
                 finished: Callable[[HostOutcome], None] | None = None) -> list[HostOutcome]:
    """Run ``fn`` for every host in parallel; return one outcome per host, in ``hosts`` order.

    Each host's notes (:func:`bigskies_ops.report.note`) go where the caller's do, each line
    prefixed ``[host]`` (one host alone: no prefix). ``finished``, if given, is called with
    each host's outcome as soon as that host is done (from its worker thread, one call at a
    time), so a long fleet run shows results as they come. Never raises for a host's
    failure (KeyboardInterrupt still propagates).
    """
    import threading
    told = threading.Lock()

    def one(h: Host) -> HostOutcome:
        t0 = time.monotonic()
        try:
            word, reason, data = fn(h)
            o = HostOutcome(h.name, word, reason, data)
        except BigskiesError as e:
            o = HostOutcome(h.name, "failed", str(e), exit_code=e.exit_code)
        except Exception as e:  # noqa: BLE001 - a bug on one host must not hide the others' results
            o = HostOutcome(h.name, "failed", f"{type(e).__name__}: {e}", exit_code=EXIT_FAILED)
        o.seconds = time.monotonic() - t0
        if finished is not None:
            with told:
                finished(o)
        return o

    if len(hosts) == 1:
        return [one(hosts[0])]
    def one_prefixed(h: Host) -> HostOutcome:
        with report.reporting(report.prefixed(h.name)):
            return one(h)

    with ThreadPoolExecutor(max_workers=min(len(hosts), max_parallel), thread_name_prefix="host") as ex:
        futures = [ex.submit(report.carried(one_prefixed), h) for h in hosts]  # a context per host
        return [f.result() for f in futures]


def exit_code(outcomes: list[HostOutcome]) -> int:
    """0 when no host failed, else 1 (a multi-host run is failed if any host failed)."""
    return EXIT_FAILED if any(o.failed for o in outcomes) else EXIT_OK

