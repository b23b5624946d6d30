"""Run one job on several hosts at once (``--host production`` or ``--host prod,dev``).

Hosts run in parallel threads; one host's failure never stops the others; the
caller prints a recap line per host (CONTRACTS.md section 5) and exits 1 when any
host failed. Jobs are plain functions ``fn(host) -> (word, reason, data)`` where
word is ``ok``, ``changed`` or ``skipped``; any exception makes that host
``failed`` with the error's one-line message.
"""
from __future__ import annotations

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

    @property
    def failed(self) -> bool:
        return self.word == "failed"

    def to_json(self) -> dict:
        return {"host": self.host, "result": self.word, "reason": self.reason, "exit_code": self.exit_code}


def run_on_hosts(hosts: list[Host], fn: Callable[[Host], tuple[str, str, Any]], *,
                 max_parallel: int = MAX_PARALLEL) -> list[HostOutcome]:
    """Run ``fn`` for every host in parallel; return one outcome per host, in ``hosts`` order.

    Each host's notes (:func:`bigskies_ops.report.note`) go where the caller's do, each line
    prefixed ``[host]`` (one host alone: no prefix). Never raises for a host's failure
    (KeyboardInterrupt still propagates).
    """
    def one(h: Host) -> HostOutcome:
        try:
            word, reason, data = fn(h)
            return HostOutcome(h.name, word, reason, data)
        except BigskiesError as e:
            return HostOutcome(h.name, "failed", str(e), exit_code=e.exit_code)
        except Exception as e:  # noqa: BLE001 - a bug on one host must not hide the others' results
            return HostOutcome(h.name, "failed", f"{type(e).__name__}: {e}", exit_code=EXIT_FAILED)

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

