"""Notifications (apprise) and heartbeats (docs/monitoring.md "Notifications", "Heartbeats").

**Notifications.** A host's ``notify: {urls_env: [VAR, ...], on: [...]}`` names the
environment variables that hold apprise URLs (they carry tokens and passwords, so the
inventory only names them) and the events they receive
(:data:`bigskies_ops.inventory.NOTIFY_EVENTS`; ``failure`` and ``all`` are aliases). The
older ``alerts.webhook_env`` is one more target: a raw ``http(s)://`` webhook URL becomes
apprise's ``json(s)://`` (:func:`apprise_url`), so there is one sending path. Events are
raised where they happen (jobs.backup, jobs.verify, jobs.offsite, jobs.restore,
jobs.schedule, jobs.health and ``db.health``) through :func:`notify`.

A message names the host, database, task, step, error and the command to look further
(:func:`bigskies_ops.output.hint`); a JSON target also gets them as fields of its payload.
Sending never changes a task's result: an unset variable, a URL apprise cannot read, a
target that refuses or times out is one ``warning: notify: ...`` line on stderr (a cron
job's log), never the URL. Each target is sent in a daemon thread joined for at most
:data:`SEND_TIMEOUT_S`, and apprise's own connect/read timeouts are capped
(:data:`CONNECT_TIMEOUT_S`, :data:`READ_TIMEOUT_S`): a dead SMTP server cannot hang a
cron job. apprise is imported only when something is sent.

**Heartbeats.** ``heartbeat: {url_env: VAR, style: healthchecks|uptime-kuma, timeout}``:
``db.scheduled-run`` pings when it starts and when it ends, with its exit code
(:func:`scheduled_run_monitor`). healthchecks.io style: ``URL/start``, then ``URL/0`` on
success or ``URL/<exit code>`` on failure, POSTing the run's summary (healthchecks.io
shows it as the ping's body). Uptime Kuma push style: no start ping (a push monitor has
none); ``URL?status=up|down&msg=...``. Each ping is one HTTP request with ``timeout``
seconds, retried once after :data:`RETRY_DELAY_S`; a failure is one stderr line. urllib
is used here rather than apprise: apprise sends messages to services, while a heartbeat
is a bare GET/POST to a URL whose path carries the outcome.
"""
from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field

from bigskies_ops import output, report
from bigskies_ops.inventory import Host, Inventory

#: seconds one notification target may take in all before it is given up (the send goes on
#: in a daemon thread that does not keep the process alive)
SEND_TIMEOUT_S = 30.0
#: caps on apprise's per-target socket timeouts, seconds (its email default is 15 s)
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0
#: seconds between a failed heartbeat ping and its one retry
RETRY_DELAY_S = 1.0

TITLES = {"backup_failed": "backup FAILED", "verify_failed": "verification FAILED",
          "offsite_failed": "offsite copy FAILED", "prune_skipped": "prune skipped for safety",
          "health_degraded": "backup health degraded", "restore_protected": "restore done on a protected host",
          "success": "scheduled run succeeded"}


@dataclass
class Event:
    """One notification: what happened where, and the command to look further."""
    event: str
    host: str
    database: str
    task: str
    step: str
    error: str = ""
    hint: str = ""
    facts: dict = field(default_factory=dict)

    @property
    def failure(self) -> bool:
        return self.event not in ("success", "restore_protected")

    def title(self) -> str:
        return f"[bigskies-ops] {self.host}/{self.database}: {TITLES.get(self.event, self.event)} ({self.task})"

    def body(self) -> str:
        lines = [f"host: {self.host}", f"database: {self.database}", f"task: {self.task}", f"step: {self.step}"]
        if self.error:
            lines.append(f"{'error' if self.failure else 'detail'}: {self.error}")
        if self.hint:
            lines.append(f"look further: {self.hint}")
        return "\n".join(lines)

    def payload(self) -> dict:
        """The fields a JSON target gets beside apprise's own (``title``, ``message``, ``type``)."""
        return {**self.facts, "event": self.event, "host": self.host, "database": self.database,
                "task": self.task, "step": self.step, "error": self.error, "hint": self.hint}


def targets(host: Host) -> list[tuple[str, str]]:
    """``[(field, VAR)]``: the variables holding this host's notification URLs, in order:
    ``notify.urls_env[i]``, then ``alerts.webhook_env``."""
    out = [(f"notify.urls_env[{i}]", n) for i, n in enumerate(host.notify.urls_env)]
    if host.alerts.webhook_env and host.alerts.webhook_env not in host.notify.urls_env:
        out.append(("alerts.webhook_env", host.alerts.webhook_env))
    return out


def apprise_url(raw: str) -> str:
    """apprise's URL for a target: a raw ``http(s)://`` webhook (``alerts.webhook_env``'s
    form) becomes ``json(s)://`` (apprise's JSON webhook: a POST of ``{"title",
    "message", "type", ...}``); every other scheme is apprise's own."""
    s = raw.strip()
    for plain, js in (("http://", "json://"), ("https://", "jsons://")):
        if s.lower().startswith(plain):
            return js + s[len(plain):]
    return s


def _instantiate(raw: str):
    """The apprise plugin for ``raw``, or None when apprise cannot read it (a malformed URL,
    an unknown scheme). apprise's own log lines are captured (they may quote the URL)."""
    import apprise
    with apprise.LogCapture(level=apprise.logging.DEBUG):
        return apprise.Apprise.instantiate(apprise_url(raw), suppress_exceptions=True)


def check_urls(inv: Inventory) -> list[dict]:
    """The notification URLs set here that apprise cannot read, and heartbeat URLs that are
    not http(s):// (``inventory.check``:
    exit 2). Unset variables are :func:`bigskies_ops.inventory.inventory_warnings`' business.

    Returns:
        ``[{"host", "field", "variable", "message"}]``; the message names the variable,
        never its value.
    """
    out, seen = [], {}
    for h in inv.hosts.values():
        for fld, var in targets(h):
            raw = os.environ.get(var)
            if not raw:
                continue
            if var not in seen:
                seen[var] = _instantiate(raw) is not None
            if not seen[var]:
                out.append({"host": h.name, "field": f"hosts.{h.name}.{fld}", "variable": var,
                            "message": f"the URL in {var} is not a notification URL apprise can read "
                                       f"(see https://github.com/caronc/apprise/wiki for the forms)"})
        var = h.heartbeat.url_env
        raw = os.environ.get(var) if var else None
        if raw and (urllib.parse.urlsplit(raw).scheme not in ("http", "https") or not urllib.parse.urlsplit(raw).netloc):
            out.append({"host": h.name, "field": f"hosts.{h.name}.heartbeat.url_env", "variable": var,
                        "message": f"the URL in {var} is not an http(s):// heartbeat URL"})
    return out


def _secrets_of(raw: str) -> list[str]:
    """The parts of a URL that may be secret (the whole URL, user, password, path segments,
    query values), longest first, for :func:`redact`."""
    parts = {raw, apprise_url(raw)}
    try:
        u = urllib.parse.urlsplit(raw)
        parts |= {u.username or "", u.password or "", u.netloc, u.path, u.query}
        parts |= set(u.path.split("/")) | {v for _, v in urllib.parse.parse_qsl(u.query)}
    except ValueError:
        pass
    return sorted((p for p in parts if p and len(p) >= 4), key=len, reverse=True)


def redact(text: str, raw: str) -> str:
    """``text`` without any secret-looking part of the URL ``raw`` (:func:`_secrets_of`)."""
    for p in _secrets_of(raw):
        text = text.replace(p, "***")
    return text


def _send_one(raw: str, ev: Event) -> str | None:
    """Send ``ev`` to one URL. Returns None when sent, else the reason (URL parts redacted)."""
    import apprise
    box: dict = {}

    def run():
        try:
            with apprise.LogCapture(level=apprise.logging.WARNING) as logs:
                obj = apprise.Apprise.instantiate(apprise_url(raw), suppress_exceptions=True)
                if obj is None:
                    box["error"] = "apprise cannot read the URL (malformed or unknown scheme)"
                    return
                obj.socket_connect_timeout = min(obj.socket_connect_timeout or CONNECT_TIMEOUT_S, CONNECT_TIMEOUT_S)
                obj.socket_read_timeout = min(obj.socket_read_timeout or READ_TIMEOUT_S, READ_TIMEOUT_S)
                if hasattr(obj, "payload_extras") and type(obj).__name__ == "NotifyJSON":
                    obj.payload_extras.update(ev.payload())  # a JSON webhook gets the facts as fields
                ntype = apprise.NotifyType.FAILURE if ev.failure else (
                    apprise.NotifyType.SUCCESS if ev.event == "success" else apprise.NotifyType.WARNING)
                # TEXT: kept as lines in a mail (apprise reads an unset format as HTML there, so
                # the lines ran together and a name such as no<b>such</b>db was shown as markup)
                ok = obj.notify(body=ev.body(), title=ev.title(), notify_type=ntype,
                                body_format=apprise.NotifyFormat.TEXT)
                if not ok:
                    lines = [l.split(" - ", 2)[-1] for l in logs.getvalue().splitlines() if l.strip()]
                    box["error"] = (lines[-1] if lines else f"{obj.service_name} refused it")[:300]
        except Exception as e:  # noqa: BLE001 - a notification must never fail the task
            box["error"] = f"{type(e).__name__}: {e}"
        box.setdefault("error", None)

    t = threading.Thread(target=run, name="bigskies-notify", daemon=True)
    t.start()
    t.join(SEND_TIMEOUT_S)
    if "error" not in box:
        return f"no answer within {SEND_TIMEOUT_S:g} s"
    return redact(box["error"], raw) if box["error"] else None


def send(host: Host, ev: Event) -> int:
    """Send ``ev`` to every target of ``host`` that receives ``ev.event``.

    Returns:
        How many targets took it. Never raises; each problem is one ``warning: notify: ...``
        note (:func:`bigskies_ops.report.note`, stderr), naming the variable, never the URL.
    """
    if ev.event not in host.notify.events:
        return 0
    sent = 0
    for fld, var in targets(host):
        raw = os.environ.get(var)
        if not raw:
            report.note(f"warning: notify: {fld} names {var}, which is not set; no notification was sent to it "
                        f"({ev.event} on {host.name})")
            continue
        try:
            err = _send_one(raw, ev)
        except Exception as e:  # noqa: BLE001 - e.g. apprise not installed: still never fails the task
            err = redact(f"{type(e).__name__}: {e}", raw)
        if err:
            report.note(f"warning: notify: {ev.event} on {host.name} was not sent to the target in {var}: {err}")
        else:
            sent += 1
    return sent


def notify(host: Host, event: str, *, task: str, step: str, error: str = "", hint: str | None = None,
           database: str | None = None, facts: dict | None = None) -> int:
    """Raise ``event`` for ``host`` (see :func:`send`); ``hint`` defaults to the event's
    usual next command. Cheap when the host has no targets (apprise is not imported)."""
    if not targets(host) or event not in host.notify.events:
        return 0
    ev = Event(event, host.name, database or host.postgres.database, task, step,
               " | ".join(l.strip() for l in str(error).splitlines() if l.strip())[:1000],
               hint if hint is not None else default_hint(host, event), dict(facts or {}))
    return send(host, ev)


def default_hint(host: Host, event: str) -> str:
    """The command to look further for ``event`` on ``host`` (with ``-i FILE`` when given)."""
    h = host.name
    return output.hint({"backup_failed": f"db.list --host {h}", "verify_failed": f"db.list --host {h}",
                        "offsite_failed": f"db.offsite --host {h} --check",
                        "restore_protected": f"db.list --host {h} --pre-restore"}.get(event, f"db.health --host {h}"))


def failed(host: Host, event: str, e: BaseException, *, task: str, step: str, database: str | None = None) -> None:
    """:func:`notify` for an exception that ends a job, when it is a failure of the work
    (exit 1); usage mistakes (2) and refusals (3) are answered on the terminal instead."""
    if getattr(e, "exit_code", 1) == 1:
        notify(host, event, task=task, step=step, error=str(e) or type(e).__name__, database=database)


# ------------------------------------------------------------------ heartbeats
def _ping_url(host: Host, raw: str, code: int | None, msg: str) -> tuple[str, bytes | None]:
    """``(url, body)`` of one ping: ``code`` None is the start."""
    if host.heartbeat.style == "uptime-kuma":
        u = urllib.parse.urlsplit(raw)
        q = [(k, v) for k, v in urllib.parse.parse_qsl(u.query, keep_blank_values=True) if k not in ("status", "msg")]
        q += [("status", "up" if code == 0 else "down"), ("msg", (msg or f"exit {code}")[:200])]
        return urllib.parse.urlunsplit(u._replace(query=urllib.parse.urlencode(q))), None
    u = urllib.parse.urlsplit(raw)  # the suffix goes on the path, before a query (?create=1)
    suffix = "start" if code is None else str(code)
    url = urllib.parse.urlunsplit(u._replace(path=f"{u.path.rstrip('/')}/{suffix}"))
    return url, None if code is None else (msg or f"exit {code}").encode()[:10000]


def _request(url: str, body: bytes | None, timeout: float) -> str | None:
    """One HTTP request, bounded as a whole by ``timeout`` seconds (urllib's timeout bounds
    each socket read, so a server sending a byte every second would hold it for ever): run in
    a daemon thread that is abandoned at the deadline. Returns None when answered, else the
    reason. Never raises (a reply that is not HTTP is http.client's BadStatusLine)."""
    box: dict = {}

    def run():
        try:
            req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                         headers={"User-Agent": "bigskies-ops"})
            with urllib.request.urlopen(req, timeout=timeout) as r:
                r.read(1024)
            box["error"] = None
        except Exception as e:  # noqa: BLE001 - a heartbeat must never fail the job
            box["error"] = str(getattr(e, "reason", None) or e) or type(e).__name__

    t = threading.Thread(target=run, name="bigskies-heartbeat", daemon=True)
    t.start()
    t.join(timeout)
    return box["error"] if "error" in box else f"no whole answer within {timeout:g} s"


def ping(host: Host, code: int | None = None, msg: str = "") -> bool:
    """One heartbeat of ``host``'s scheduled run: the start (``code`` None) or the end with
    its exit code. Never raises; True when the monitor took it (or none is configured)."""
    hb = host.heartbeat
    if not hb.url_env:
        return True
    what = "start" if code is None else f"exit {code}"
    raw = os.environ.get(hb.url_env)
    if not raw:
        report.note(f"warning: heartbeat: heartbeat.url_env names {hb.url_env}, which is not set; "
                    f"no {what} ping was sent")
        return False
    if code is None and hb.style == "uptime-kuma":
        return True  # a push monitor has no start
    err = ""
    try:
        url, body = _ping_url(host, raw, code, msg)
    except ValueError as e:
        url, body, err = None, None, str(e)
    for attempt in (1, 2):
        if url is None:
            break
        err = _request(url, body, hb.timeout)
        if err is None:
            return True
        if attempt == 1:
            time.sleep(RETRY_DELAY_S)
    report.note(f"warning: heartbeat: the {what} ping to the URL in {hb.url_env} failed "
                f"(2 attempts, {hb.timeout:g} s timeout): {redact(err, raw)}")
    return False


@dataclass
class RunOutcome:
    """Filled in by the scheduled run inside :func:`scheduled_run_monitor`."""
    code: int | None = None
    summary: str = ""
    steps: list = field(default_factory=list)


@contextmanager
def scheduled_run_monitor(host: Host, task: str = "db.scheduled-run"):
    """Around one scheduled run: the start ping, then the end ping with the exit code (also
    when the run raises: the exception's exit code, else 1) and, on exit 0 when
    ``on: [success]``, ONE digest notification of the run's steps. Yields a
    :class:`RunOutcome` for the run to fill in (``code``, ``summary``, ``steps``: objects with
    ``name``, ``word``, ``reason``)."""
    ping(host)
    out = RunOutcome()
    try:
        yield out
    except BaseException as e:
        code = getattr(e, "exit_code", None) or (130 if isinstance(e, KeyboardInterrupt) else 1)
        ping(host, code, f"{task} {host.name}: " + (" | ".join(str(e).splitlines())[:500] or type(e).__name__))
        raise
    code = out.code or 0
    ping(host, code, out.summary or f"{task} {host.name}: exit {code}")
    if code == 0 and "success" in host.notify.events:
        notify(host, "success", task=task, step="digest", error="; ".join(
            f"{s.name}: {s.word} ({s.reason})" for s in out.steps), hint=output.hint(f"db.health --host {host.name}"),
            facts={"steps": [{"step": s.name, "result": s.word, "reason": s.reason} for s in out.steps]})


def summary_of(host: Host, steps, code: int) -> str:
    """The heartbeat body: one line per step (``word: [host] name: reason``) and the exit code."""
    return "\n".join([f"{s.word}: [{host.name}] {s.name}: {s.reason}" for s in steps] + [f"exit {code}"])

