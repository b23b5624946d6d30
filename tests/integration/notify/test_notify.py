"""Notifications (apprise) and heartbeats against real local services started here: an HTTP
receiver (a http.server thread on 127.0.0.1: JSON webhooks and heartbeat pings) and an SMTP
server (aiosmtpd) receiving apprise's ``mailto://`` mail. Real failing backups on the test
cluster raise the events; no secret may appear in any output or file written."""
from __future__ import annotations

import email
import email.policy
import json
import time
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, cli, native_host, write_inventory
from tests.infra.receivers import http_receiver, tcp_server
from tests.infra.sshd import free_port

HOOK_TOKEN = "hk7Qw9ZtokenXy42"     # in the webhook URL's path: a secret
HB_TOKEN = "hb3c1b2a9e0d4f5a6"      # in the heartbeat URL's path: a secret
MAIL_SECRET = "mailsecret9z"        # in the mail URL (recipient): a secret


@pytest.fixture
def receiver():
    with http_receiver() as (port, rec):
        yield port, rec


@pytest.fixture
def smtp():
    from aiosmtpd.controller import Controller
    got: list = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            got.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
            return "250 OK"

    port = free_port()
    c = Controller(Handler(), hostname="127.0.0.1", port=port)
    c.start()
    try:
        yield port, got
    finally:
        c.stop()


def _text(msg) -> str:
    part = msg.get_body(preferencelist=("plain",))
    return f"{msg['Subject']}\n{part.get_content()}"


def _wait(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not pred():
        time.sleep(0.05)
    return pred()


def _no_secret(*texts, files_under=()):
    secrets = (PASSWORD, HOOK_TOKEN, HB_TOKEN, MAIL_SECRET)
    for t in texts:
        for s in secrets:
            assert s not in t, f"a secret leaked: {s!r}"
    for d in files_under:
        for p in Path(d).rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                for s in secrets:
                    assert s.encode() not in data, f"a secret leaked into {p}"


def _hook(port):
    return f"json://127.0.0.1:{port}/hook/{HOOK_TOKEN}"


def _mail(port):
    return f"mailto://127.0.0.1:{port}?from=bigskies@example.org&to=ops-{MAIL_SECRET}@example.org"


def test_a_failing_backup_notifies_webhook_and_mail_naming_host_database_task_and_error(
        tmp_path, pg, cli_env, receiver, smtp):
    port, rec = receiver
    sport, mails = smtp
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(
        pg, "no_such_db_here", bdir, notify={"urls_env": ["NOTIFY_HOOK", "NOTIFY_MAIL"]})})
    env = dict(cli_env, NOTIFY_HOOK=_hook(port), NOTIFY_MAIL=_mail(sport))
    r = cli("db.backup", "-i", str(inv), env=env)
    assert r.returncode == 1, r.stderr
    [p] = rec.posts("/hook/")
    b = p["body"]
    assert (b["event"], b["host"], b["database"], b["task"], b["step"]) == (
        "backup_failed", "dev", "no_such_db_here", "db.backup", "backup")
    assert "no_such_db_here" in b["error"] and "does not exist" in b["error"]
    assert "db.list --host dev" in b["hint"] and b["type"] == "failure"
    assert "host: dev" in b["message"] and "task: db.backup" in b["message"] and "error:" in b["message"]
    assert _wait(lambda: len(mails) == 1)
    text = _text(mails[0])
    assert "dev/no_such_db_here" in text and "backup FAILED" in text and "does not exist" in text
    assert "look further:" in text and "db.list --host dev" in text
    # plain text kept as lines (apprise read an unset format as HTML: one run-on line in a mail)
    lines = [ln.strip() for ln in text.splitlines()]
    assert "host: dev" in lines and "database: no_such_db_here" in lines, text
    assert "warning: notify" not in r.stderr      # both were sent
    _no_secret(r.stdout, r.stderr, json.dumps([g["body"] for g in rec.got]), files_under=[bdir])


def test_a_scheduled_run_with_a_failing_backup_pings_failure_with_its_exit_code_and_logs_no_secret(
        tmp_path, pg, cli_env, receiver):
    port, rec = receiver
    bdir, log = tmp_path / "b", tmp_path / "logs" / "dev.log"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(
        pg, "no_such_db_here", bdir, notify={"urls_env": ["NOTIFY_HOOK"], "on": ["failure", "success"]},
        heartbeat={"url_env": "HB_URL"})})
    env = dict(cli_env, NOTIFY_HOOK=_hook(port), HB_URL=f"http://127.0.0.1:{port}/ping/{HB_TOKEN}")
    r = cli("db.scheduled-run", "-i", str(inv), "--log", str(log), env=env)
    assert r.returncode == 1, r.stderr
    pings = rec.posts("/ping/")
    assert [g["path"] for g in pings] == [f"/ping/{HB_TOKEN}/start", f"/ping/{HB_TOKEN}/1"]
    assert pings[0]["method"] == "GET" and pings[1]["method"] == "POST"
    assert "failed: [dev] backup:" in pings[1]["body"] and "exit 1" in pings[1]["body"]
    [p] = rec.posts("/hook/")   # the failure; no success digest for a failed run
    assert (p["body"]["event"], p["body"]["task"], p["body"]["step"]) == ("backup_failed", "db.scheduled-run", "backup")
    _no_secret(r.stdout, r.stderr, files_under=[bdir, log.parent])


def test_heartbeats_and_one_success_digest_for_a_good_scheduled_run(tmp_path, pg, dbname, cli_env, receiver):
    port, rec = receiver
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(
        pg, dbname, bdir, notify={"urls_env": ["NOTIFY_HOOK"], "on": ["success"]},
        heartbeat={"url_env": "HB_URL"})})
    env = dict(cli_env, NOTIFY_HOOK=_hook(port), HB_URL=f"http://127.0.0.1:{port}/ping/{HB_TOKEN}")
    r = cli("db.scheduled-run", "-i", str(inv), "--log", str(tmp_path / "l.log"), env=env)
    assert r.returncode == 0, r.stderr
    assert [g["path"] for g in rec.posts("/ping/")] == [f"/ping/{HB_TOKEN}/start", f"/ping/{HB_TOKEN}/0"]
    [d] = rec.posts("/hook/")
    b = d["body"]
    assert (b["event"], b["host"], b["database"], b["task"], b["type"]) == (
        "success", "dev", dbname, "db.scheduled-run", "success")
    assert [s["step"] for s in b["steps"]] == ["backup", "prune", "offsite"]
    assert b["steps"][0]["result"] == "changed"
    # Uptime Kuma push style: no start, then status=up with a message
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(
        pg, dbname, bdir, heartbeat={"url_env": "HB_URL", "style": "uptime-kuma"})})
    env["HB_URL"] = f"http://127.0.0.1:{port}/api/push/{HB_TOKEN}?ping="
    r = cli("db.scheduled-run", "-i", str(inv), "--log", str(tmp_path / "l.log"), env=env)
    assert r.returncode == 0, r.stderr
    [k] = rec.posts("/api/push/")
    assert k["method"] == "GET" and "status=up" in k["path"] and "msg=" in k["path"]
    _no_secret(r.stdout, r.stderr)


def test_a_protected_hosts_skipped_prune_notifies_and_still_exits_4(tmp_path, pg, dbname, cli_env, receiver):
    port, rec = receiver
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(
        pg, dbname, tmp_path / "b", protected=True, notify={"urls_env": ["NOTIFY_HOOK"]},
        heartbeat={"url_env": "HB_URL"})})
    env = dict(cli_env, NOTIFY_HOOK=_hook(port), HB_URL=f"http://127.0.0.1:{port}/ping/{HB_TOKEN}")
    r = cli("db.scheduled-run", "-i", str(inv), "--log", str(tmp_path / "l.log"), env=env)
    assert r.returncode == 4, r.stderr
    [p] = rec.posts("/hook/")
    assert (p["body"]["event"], p["body"]["step"]) == ("prune_skipped", "prune")
    assert "--force-protected --confirm" in p["body"]["hint"]
    assert rec.posts("/ping/")[-1]["path"] == f"/ping/{HB_TOKEN}/4"


def test_health_degraded_and_a_failed_verification_notify(tmp_path, pg, dbname, cli_env, receiver):
    port, rec = receiver
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(
        pg, dbname, bdir, notify={"urls_env": ["NOTIFY_HOOK"]})})
    env = dict(cli_env, NOTIFY_HOOK=_hook(port))
    r = cli("db.health", "-i", str(inv), env=env)       # no backup at all: critical
    assert r.returncode == 2
    [p] = rec.posts("/hook/")
    assert p["body"]["event"] == "health_degraded" and p["body"]["state"] == "critical"
    assert "freshness" in p["body"]["checks"] and "db.health --host dev" in p["body"]["hint"]
    assert cli("db.backup", "-i", str(inv), env=env).returncode == 0
    [arch] = [p for p in bdir.iterdir() if p.name.endswith(".sql.gz")]
    data = arch.read_bytes()
    arch.write_bytes(data[: len(data) // 2])           # a damaged archive
    r = cli("db.verify", "latest", "-i", str(inv), env=env)
    assert r.returncode == 1
    v = [g["body"] for g in rec.posts("/hook/") if g["body"]["event"] == "verify_failed"]
    assert len(v) == 1 and v[0]["archive"] == arch.name and v[0]["task"] == "db.verify"


def test_an_unset_variable_and_an_unreachable_webhook_are_one_line_each_and_change_nothing(
        tmp_path, pg, cli_env, receiver):
    port, rec = receiver
    bdir = tmp_path / "b"
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(
        pg, "no_such_db_here", bdir, notify={"urls_env": ["NOTIFY_UNSET", "NOTIFY_DEAD", "NOTIFY_HOOK"]})})
    dead = free_port()   # nothing listens there
    env = dict(cli_env, NOTIFY_DEAD=f"json://127.0.0.1:{dead}/x/{HOOK_TOKEN}", NOTIFY_HOOK=_hook(port))
    env.pop("NOTIFY_UNSET", None)
    t0 = time.monotonic()
    r = cli("db.backup", "-i", str(inv), "--json", env=env)
    assert time.monotonic() - t0 < 30
    assert r.returncode == 1 and json.loads(r.stdout)["result"] == "failed"
    lines = r.stderr.splitlines()
    assert len([ln for ln in lines if "NOTIFY_UNSET, which is not set" in ln]) == 1
    assert len([ln for ln in lines if "not sent to the target in NOTIFY_DEAD" in ln]) == 1
    assert lines[-1].startswith("error:") and "no_such_db_here" in lines[-1]   # the task's own error, unchanged
    assert len(rec.posts("/hook/")) == 1                                        # the third target still got it
    _no_secret(r.stdout, r.stderr)
    assert str(dead) not in r.stdout


def test_a_good_scheduled_run_with_its_heartbeat_and_webhook_down_still_exits_0(tmp_path, pg, dbname, cli_env):
    dead = free_port()
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(
        pg, dbname, tmp_path / "b", notify={"urls_env": ["NOTIFY_DEAD"], "on": ["all"]},
        heartbeat={"url_env": "HB_URL", "timeout": 2})})
    env = dict(cli_env, NOTIFY_DEAD=f"json://127.0.0.1:{dead}/x/{HOOK_TOKEN}",
               HB_URL=f"http://127.0.0.1:{dead}/ping/{HB_TOKEN}")
    r = cli("db.scheduled-run", "-i", str(inv), "--log", str(tmp_path / "l.log"), env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    hb = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: heartbeat:")]
    assert len(hb) == 2 and "start ping" in hb[0] and "exit 0 ping" in hb[1] and "2 attempts" in hb[0]
    assert len([ln for ln in r.stderr.splitlines() if "not sent to the target in NOTIFY_DEAD" in ln]) == 1
    _no_secret(r.stdout, r.stderr)


def test_inventory_check_names_a_malformed_notification_url_by_its_variable(tmp_path, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": {"connection": "local", "notify": {
        "urls_env": ["NOTIFY_OK", "NOTIFY_BAD"]}, "heartbeat": {"url_env": "HB_UNSET"}}})
    bad = f"notascheme://{HOOK_TOKEN}@example.org/x"
    env = dict(cli_env, NOTIFY_OK="json://127.0.0.1:9/x", NOTIFY_BAD=bad)
    env.pop("HB_UNSET", None)
    r = cli("inventory.check", "-i", str(inv), env=env)
    assert r.returncode == 2
    assert "hosts.dev.notify.urls_env[1]" in r.stderr and "NOTIFY_BAD" in r.stderr and "apprise" in r.stderr
    r2 = cli("inventory.check", "-i", str(inv), "--json", env=env)
    assert r2.returncode == 2 and json.loads(r2.stdout)["error"]["exit_code"] == 2
    _no_secret(r.stdout, r.stderr, r2.stdout, r2.stderr)
    assert bad not in r.stderr + r2.stdout
    # fixed: valid, with the unset variables as warnings
    env.pop("NOTIFY_BAD")
    r = cli("inventory.check", "-i", str(inv), env=env)
    assert r.returncode == 0, r.stderr
    assert "hosts.dev.notify.urls_env[1]: environment variable NOTIFY_BAD is not set here" in r.stdout
    assert "hosts.dev.heartbeat.url_env: environment variable HB_UNSET is not set here" in r.stdout
    # a literal URL in the file is refused, and an unknown event named with a hint
    inv.write_text("hosts:\n  dev:\n    notify: {urls: ['json://x/y'], on: [failure]}\n")
    r = cli("inventory.check", "-i", str(inv), env=env)
    assert r.returncode == 2 and "hosts.dev.notify.urls: literal secrets are not allowed" in r.stderr
    inv.write_text("hosts:\n  dev:\n    notify: {urls_env: [X], on: [backup_fail]}\n")
    r = cli("inventory.check", "-i", str(inv), env=env)
    assert r.returncode == 2 and "unknown event 'backup_fail' (did you mean 'backup_failed'?)" in r.stderr


def test_notify_settings_merge_host_over_group_over_defaults(tmp_path, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", {"a": {"connection": "local"}, "b": {
        "connection": "local", "notify": {"on": ["backup_failed"]}}},
        defaults={"notify": {"urls_env": ["TEAM"], "on": ["failure"]}},
        groups={"prod": {"hosts": ["b"], "vars": {"notify": {"urls_env": ["ONCALL"], "on": ["all"]}}}})
    r = cli("inventory.show", "-i", str(inv), "--json", env=dict(cli_env, TEAM="json://x"))
    assert r.returncode == 0, r.stderr
    hosts = json.loads(r.stdout)["hosts"]
    assert hosts["a"]["notify"] == {"urls_env": ["TEAM (set)"], "on": ["failure"]}
    assert hosts["b"]["notify"] == {"urls_env": ["ONCALL (NOT SET)"], "on": ["backup_failed"]}
    assert "json://x" not in r.stdout


def test_db_schedule_warns_that_cron_lacks_the_notification_and_heartbeat_variables(tmp_path, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": {"connection": "local", "notify": {
        "urls_env": ["NOTIFY_HOOK"]}, "heartbeat": {"url_env": "HB_URL"}}})
    r = cli("db.schedule", "-i", str(inv), "--crontab-file", str(tmp_path / "crontab"), "--json",
            env=dict(cli_env, NOTIFY_HOOK=_hook(9)))
    assert r.returncode == 0, r.stderr
    [h] = json.loads(r.stdout)["hosts"]
    assert any("NOTIFY_HOOK, HB_URL" in w and "crontab" in w for w in h["warnings"])
    assert HOOK_TOKEN not in r.stdout + r.stderr + (tmp_path / "crontab").read_text()


def test_a_failed_offsite_copy_and_a_restore_on_a_protected_host_notify(tmp_path, pg, dbname, cli_env, receiver):
    port, rec = receiver
    dead = free_port()
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(
        pg, dbname, tmp_path / "b", protected=True, notify={"urls_env": ["NOTIFY_HOOK"]},
        offsite=[{"name": "vault", "url": f"ssh://nobody@127.0.0.1:{dead}/srv/vault"}])})
    env = dict(cli_env, NOTIFY_HOOK=_hook(port))
    assert cli("db.backup", "-i", str(inv), env=env).returncode == 0
    r = cli("db.offsite", "-i", str(inv), env=env)
    assert r.returncode == 1
    [o] = [g["body"] for g in rec.posts("/hook/")]
    assert (o["event"], o["step"], o["target"], o["task"]) == ("offsite_failed", "offsite vault", "vault", "db.offsite")
    assert o["error"] and "db.offsite --host dev --check" in o["hint"]
    r = cli("db.restore", "latest", "-i", str(inv), "--yes", "--force-protected", "--confirm", dbname, env=env)
    assert r.returncode == 0, r.stderr
    [p] = [g["body"] for g in rec.posts("/hook/") if g["body"]["event"] == "restore_protected"]
    assert p["host"] == "dev" and p["database"] == dbname and p["task"] == "db.restore" and p["type"] == "warning"
    assert p["archive"].startswith(dbname) and "--pre-restore" in p["hint"]
    _no_secret(r.stdout, r.stderr)


def test_a_monthly_restore_test_with_nothing_to_test_notifies_and_pings_its_exit_code(tmp_path, pg, dbname, cli_env,
                                                                                       receiver):
    port, rec = receiver
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(
        pg, dbname, tmp_path / "b", notify={"urls_env": ["NOTIFY_HOOK"]}, heartbeat={"url_env": "HB_URL"})})
    env = dict(cli_env, NOTIFY_HOOK=_hook(port), HB_URL=f"http://127.0.0.1:{port}/ping/{HB_TOKEN}")
    r = cli("db.scheduled-run", "--monthly", "-i", str(inv), "--log", str(tmp_path / "l.log"), env=env)
    assert r.returncode == 1
    [v] = [g["body"] for g in rec.posts("/hook/")]
    assert (v["event"], v["step"], v["task"]) == ("verify_failed", "verify latest --restore-test", "db.scheduled-run")
    assert [g["path"] for g in rec.posts("/ping/")] == [f"/ping/{HB_TOKEN}/start", f"/ping/{HB_TOKEN}/1"]


def _nasty_answer(mode: str):
    """An answer for tests/infra/receivers.tcp_server: "garbage" (a reply that is not HTTP:
    http.client's BadStatusLine) or "trickle" (a header line every second, never the end:
    each socket read is quick, the whole answer never comes)."""
    def answer(c, stop):
        c.recv(4096)
        if mode == "garbage":
            c.sendall(b"GARBAGE NOT HTTP\r\n\r\n")
            return
        c.sendall(b"HTTP/1.1 200 OK\r\n")
        while not stop.is_set():
            c.sendall(b"X-Slow: 1\r\n")
            time.sleep(1)
    return answer


@pytest.mark.parametrize("mode", ["garbage", "trickle"])
def test_a_heartbeat_server_that_answers_badly_never_fails_or_holds_the_run(tmp_path, pg, dbname, cli_env, mode):
    """A reply that is not HTTP ended the run with 'internal error: BadStatusLine' before the
    backup; a server sending a header line every second held it past any limit (urllib's
    timeout bounds each read): the ping's time is now bounded as a whole."""
    with tcp_server(_nasty_answer(mode)) as (port, _stop):
        bdir = tmp_path / "b"
        inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(
            pg, dbname, bdir, heartbeat={"url_env": "HB_URL", "timeout": 2})})
        env = dict(cli_env, HB_URL=f"http://127.0.0.1:{port}/ping/{HB_TOKEN}")
        t0 = time.monotonic()
        r = cli("db.scheduled-run", "-i", str(inv), "--log", str(tmp_path / "l.log"), env=env, timeout=120)
        took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert list(bdir.glob("*.sql.gz")), "no backup was made"
    hb = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: heartbeat:")]
    assert len(hb) == 2 and "start ping" in hb[0] and "exit 0 ping" in hb[1], r.stderr
    # 2 pings x (2 attempts x 2 s + 1 s between): well under a minute, however the server trickles
    assert took < 60, took
    _no_secret(r.stdout, r.stderr)


def test_a_healthchecks_url_with_a_query_gets_the_outcome_on_its_path(tmp_path, pg, dbname, cli_env, receiver):
    """healthchecks.io's slug URLs take ?create=1: '/start' and '/0' go on the path, before it
    (they were appended to the query, where a failure would read as a plain success ping)."""
    port, rec = receiver
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": native_host(
        pg, dbname, tmp_path / "b", heartbeat={"url_env": "HB_URL"})})
    env = dict(cli_env, HB_URL=f"http://127.0.0.1:{port}/ping/{HB_TOKEN}/nightly-dev?create=1")
    r = cli("db.scheduled-run", "-i", str(inv), "--log", str(tmp_path / "l.log"), env=env)
    assert r.returncode == 0, r.stderr
    assert [g["path"] for g in rec.posts("/ping/")] == [f"/ping/{HB_TOKEN}/nightly-dev/start?create=1",
                                                       f"/ping/{HB_TOKEN}/nightly-dev/0?create=1"]


def test_inventory_check_refuses_a_heartbeat_url_that_is_not_http(tmp_path, cli_env):
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": {"connection": "local", "heartbeat": {"url_env": "HB_URL"}}})
    r = cli("inventory.check", "-i", str(inv), env=dict(cli_env, HB_URL=f"hc-ping.com/{HB_TOKEN}"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "hosts.dev.heartbeat.url_env" in r.stderr and "HB_URL" in r.stderr and "http(s)://" in r.stderr
    _no_secret(r.stdout, r.stderr)
    r = cli("inventory.check", "-i", str(inv), env=dict(cli_env, HB_URL=f"https://hc-ping.com/{HB_TOKEN}"))
    assert r.returncode == 0, r.stderr
