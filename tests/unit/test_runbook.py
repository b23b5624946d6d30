"""The runbook format's pure parts (docs/runbooks.md): parsing and validation of small YAML
strings (each bad input names the step and the field), params from ``--set``, templates
that keep a single reference's type, ``when`` conditions, and the engine's flow (skip
propagation, ignore_errors, a failure stopping the run, check mode) over in-memory actions
registered for the test only. The real tasks run against PostgreSQL in
tests/integration/runbook/."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bigskies_ops.errors import SafetyError, StorageError, UsageError
from bigskies_ops.inventory import parse as parse_inventory
from bigskies_ops.stack import runbook as rb
from bigskies_ops.stack.actions import ACTIONS, Action, Param, Plan, RunContext
from bigskies_ops.stack.runbook_expr import parse_when, render

INV = parse_inventory({"defaults": {"host": "dev"}, "groups": {"live": ["prod"]},
                       "hosts": {"dev": {"postgres": {"database": "app"}},
                                 "prod": {"postgres": {"database": "app"}, "protected": True}}},
                      Path("/nonexistent/inventory.yaml"))
CALLS: list[tuple[str, dict]] = []


def _echo_run(h, a, ctx):
    CALLS.append((h.name, dict(a)))
    if a["fail"]:
        raise StorageError(f"echo failed: {a['text']}")
    return {"text": a["text"], "n": a["n"], "changed": a["n"] > 0, "msg": f"said {a['text']}"}


def _echo_plan(h, a, ctx):
    return Plan(a["n"] > 0, [f"say {a['text']}"], {"text": a["text"]}, facts={"text": f"(would say {a['text']})",
                                                                                "n": a["n"]})


@pytest.fixture(autouse=True)
def test_actions():
    """``test.echo`` and ``test.wipe`` (destructive) in the registry while a test runs."""
    rb.action_registry()
    params = {"text": Param(str, default="hi"), "n": Param(int, default=1), "fail": Param(bool, default=False),
              "words": Param(list)}
    ACTIONS["test.echo"] = Action("test.echo", "echo", params, _echo_run, _echo_plan, facts=("text", "n"))
    ACTIONS["test.wipe"] = Action("test.wipe", "wipe", params, _echo_run, _echo_plan, destructive="restore")
    CALLS.clear()
    yield
    del ACTIONS["test.echo"], ACTIONS["test.wipe"]


def _err(text: str) -> str:
    with pytest.raises(UsageError) as e:
        rb.parse(text)
    return str(e.value)


# ------------------------------------------------------------------ parsing
def test_a_runbook_parses_into_steps_with_defaults():
    b = rb.parse("description: d\nparams: {x: {type: int, default: 3}}\n"
                 "steps:\n - task: test.echo\n   register: a\n - name: Two\n   task: test.echo\n   when: a is ok\n")
    assert b.description == "d" and b.params["x"].default == 3 and b.params["x"].type is int
    assert [s.where for s in b.steps] == ["step 1 ('test.echo')", "step 2 ('Two')"]
    assert b.steps[1].when[0].test == "ok"


@pytest.mark.parametrize("text,message", [
    ("steps: []", "steps: expected a non-empty list of steps (there are none)"),
    ("description: x", "steps: expected a non-empty list of steps (there are none)"),
    ("steps: [\n", "not valid YAML at line 2"),
    ("- task: test.echo", "expected a mapping with description, params and steps"),
    ("stepz: []", "unknown key 'stepz' (did you mean 'steps'?)"),
    ("steps:\n - task: test.ech", "step 1 ('test.ech'): task: unknown task 'test.ech' (did you mean 'test.echo'?)"),
    ("steps:\n - name: A\n   args: {}", "step 1 ('A'): task: missing"),
    ("steps:\n - task: 42", "step 1: task: expected a task name (a string), got 42"),
    ("steps:\n - name: A\n   task: [db.backup]", "step 1 ('A'): task: expected a task name (a string), got ['db.backup']"),
    ("steps:\n - task: test.echo\n   register: a\n - task: test.echo\n   args: {text: '{{ a.txt }}'}",
     "step 2 ('test.echo'): args.text: 'a.txt': step 1 ('test.echo') (test.echo) registers no fact 'txt' "
     "(did you mean 'text'?); its facts: text, n (and result, ok, changed, failed, skipped, msg)"),
    ("steps:\n - task: db.backup\n   register: pre\n - task: db.verify\n   args: {archive: '{{ pre.archiv }}'}",
     "step 2 ('db.verify'): args.archive: 'pre.archiv': step 1 ('db.backup') (db.backup) registers no fact "
     "'archiv' (did you mean 'archive'?); its facts: archive, id, name, size_bytes, sha256, pulled"),
    ("steps:\n - task: db.backup\n   register: pre\n - task: db.verify\n   when: pre.archiv",
     "step 2 ('db.verify'): when: 'pre.archiv': step 1 ('db.backup') (db.backup) registers no fact 'archiv'"),
    ("steps:\n - task: test.echo\n   hots: dev", "step 1 ('test.echo'): unknown key 'hots' (did you mean 'host'?)"),
    ("steps:\n - task: test.echo\n   args: [1]", "step 1 ('test.echo'): args: expected a mapping"),
    ("steps:\n - task: test.echo\n   ignore_errors: maybe", "step 1 ('test.echo'): ignore_errors: expected true or false"),
    ("steps:\n - task: test.echo\n   register: 1x", "step 1 ('test.echo'): register: expected a name"),
    ("steps:\n - task: test.echo\n   register: params", "register: expected a name"),
    ("steps:\n - task: test.echo\n   register: a\n - task: test.echo\n   register: a",
     "step 2 ('test.echo'): register: 'a' is registered by step 1 ('test.echo') already"),
    ("steps:\n - task: test.echo\n   when: b is ok\n - task: test.echo\n   register: b",
     "step 1 ('test.echo'): when: 'b' is registered by step 2, which runs later: facts flow forward only (a cycle)"),
    ("steps:\n - task: test.echo\n   args: {text: '{{ a.text }}'}\n   register: a",
     "step 1 ('test.echo'): args.text: 'a.text' is registered by this step itself"),
    ("steps:\n - task: test.echo\n   when: nope", "step 1 ('test.echo'): when: 'nope': no earlier step registers 'nope'"),
    ("steps:\n - task: test.echo\n   when: params.y", "step 1 ('test.echo'): when: 'params.y': no such parameter"),
    ("steps:\n - task: test.echo\n   when: 'a is fine'", "unknown test 'fine' (did you mean 'failed'?)"),
    ("steps:\n - task: test.echo\n   when: '{{ params.x }}'", "write the reference without {{ }} in a condition"),
    ("steps:\n - task: test.echo\n   when: [1]", "step 1 ('test.echo'): when: expected a condition"),
    ("steps:\n - task: test.echo\n   args: {text: '{{ params.x | upper }}'}",
     "step 1 ('test.echo'): args.text: {{ params.x | upper }} is not a reference"),
    ("steps:\n - task: test.echo\n   args: {text: '{{ params.x }'}", "args.text: unbalanced {{ }}"),
    ("steps:\n - task: test.echo\n   register: a\n - task: test.echo\n   host: '{{ a.text }}'",
     "step 2 ('test.echo'): host: 'a.text': a step's host may use params and host only"),
    ("params: {x: {type: integer}}\nsteps: [{task: test.echo}]", "params.x.type: expected one of str, int"),
    ("params: {x: {type: int, default: 'a'}}\nsteps: [{task: test.echo}]", "params.x.default: expected an int"),
    ("params: {x: {tpye: int}}\nsteps: [{task: test.echo}]", "params.x: unknown key 'tpye' (did you mean 'type'?)"),
])
def test_a_bad_runbook_is_refused_naming_the_step_and_field(text, message):
    assert message in _err(text)


# ------------------------------------------------------------------ params and templates
def test_set_values_are_converted_to_the_params_types():
    b = rb.parse("params:\n  n: {type: int, default: 1}\n  f: {type: float}\n  b: {type: bool, default: true}\n"
                 "  l: {type: list}\n  c: {type: str, choices: [a, b]}\nsteps: [{task: test.echo}]")
    assert rb.bind_params(b, []) == {"n": 1, "f": None, "b": True, "l": None, "c": None}
    got = rb.bind_params(b, ["n=5", "f=2", "b=no", "l=x, y", "c=b"])
    assert got == {"n": 5, "f": 2.0, "b": False, "l": ["x", "y"], "c": "b"} and isinstance(got["f"], float)
    for bad, msg in (("n=x", "--set n=x: expected an int"), ("b=maybe", "expected true or false"),
                     ("c=z", "expected one of a, b"), ("nn=1", "no parameter 'nn' (did you mean 'n'?)"),
                     ("n", "expected NAME=VALUE")):
        with pytest.raises(UsageError, match=re.escape(msg)):
            rb.bind_params(b, [bad])


def test_a_single_reference_keeps_its_type_and_a_longer_string_is_text():
    look = {("params", "n"): 3, ("params", "b"): False, ("params", "l"): ["a"], ("host",): "dev"}.__getitem__
    assert render("{{ params.n }}", look, "w") == 3
    assert render(" {{params.b}} ", look, "w") is False
    assert render({"x": ["{{ params.l }}"]}, look, "w") == {"x": [["a"]]}
    assert render("n={{ params.n }} b={{ params.b }} on {{ host }}", look, "w") == "n=3 b=false on dev"


@pytest.mark.parametrize("text,regs,params,expected", [
    ("params.b", {}, {"b": True}, True),
    ("not params.b", {}, {"b": True}, False),
    ("a", {"a": "changed"}, {}, True),          # a register alone: its step succeeded
    ("a", {"a": "failed"}, {}, False),
    ("a is failed", {"a": "failed"}, {}, True),
    ("a is not failed", {"a": "ok"}, {}, True),
    ("a is succeeded", {"a": "ok"}, {}, True),
    ("a is skipped", {"a": "skipped"}, {}, True),
    ("a.changed", {"a": "changed"}, {}, True),
    # an unreachable host is a failure too (docs/runbooks.md: registered as failed)
    ("a is failed", {"a": "unreachable"}, {}, True),
    ("a is not failed", {"a": "unreachable"}, {}, False),
    ("a is unreachable", {"a": "unreachable"}, {}, True),
    ("a is unreachable", {"a": "failed"}, {}, False),
    ("a is succeeded", {"a": "unreachable"}, {}, False),
])
def test_when_conditions(text, regs, params, expected):
    registered = {k: {"result": w, "changed": w == "changed", "failed": w == "failed", "skipped": w == "skipped"}
                  for k, w in regs.items()}

    def look(parts):
        return params[parts[1]] if parts[0] == "params" else registered[parts[0]][parts[1]]
    assert parse_when(text, "w").holds(look, registered) is expected


# ------------------------------------------------------------------ the engine over in-memory actions
def _go(text: str, *, check: bool = False, sets=(), host=None, **flags):
    b = rb.parse(text)
    params = rb.bind_params(b, list(sets))
    v = rb.validate(b, INV, host, params, check=check, **flags)
    lines: list[str] = []
    ctx = RunContext(INV, check=check, yes=True)
    return rb.run(b, ctx, v, params, say=lines.append), lines, ctx


FLOW = """
params: {loud: {type: bool, default: false}}
steps:
  - name: First
    task: test.echo
    args: {text: one, n: 2}
    register: first
  - task: test.echo
    args: {text: "{{ first.text }}-again", fail: true}
    ignore_errors: true
    register: second
  - task: test.echo
    when: params.loud
    register: loud
  - name: Needs the skipped step
    task: test.echo
    args: {text: "{{ loud.text }}"}
  - name: After the ignored failure
    task: test.echo
    args: {n: "{{ first.n }}"}
    when: second is failed
  - task: test.echo
    args: {fail: true, text: stop}
  - task: test.echo
    args: {text: never}
"""


def test_the_flow_skips_ignores_and_stops_at_a_failure():
    (res,), lines, ctx = _go(FLOW)
    assert [s.result for s in res.steps] == ["changed", "failed", "skipped", "skipped", "changed", "failed"]
    assert res.steps[1].ignored and res.steps[1].reason == "echo failed: one-again"
    assert res.steps[2].reason == "condition 'params.loud' is false"
    assert res.steps[3].reason == "needs 'loud' of step 3 ('test.echo'), which was skipped"
    assert CALLS[2] == ("dev", {"text": "hi", "n": 2, "fail": False, "words": None})  # {{ first.n }} kept its int
    assert res.recap == {"ok": 0, "changed": 2, "failed": 1, "skipped": 2, "unreachable": 0, "ignored": 1}
    assert res.exit_code == 1 and res.result == "failed" and "never" not in str(CALLS)
    assert "TASK [First] (test.echo on dev) " in lines[0] and lines[0].endswith("***")
    assert "failed: [dev] echo failed: one-again ...ignoring" in lines
    assert ctx.registered["first"]["text"] == "one" and ctx.registered["second"]["failed"] is True
    assert rb.recap_lines([res])[1] == "dev : ok=0 changed=2 failed=1 skipped=2 unreachable=0 ignored=1"


def test_check_mode_plans_every_step_calls_no_run_and_is_failed_is_false():
    (res,), lines, _ = _go(FLOW, check=True)
    assert CALLS == []
    assert [s.result for s in res.steps] == ["changed", "changed", "skipped", "skipped", "skipped", "changed",
                                             "changed"]
    assert res.steps[4].reason == "runs only if 'second' failed (check mode plans no failure)"
    assert res.steps[1].plan == {"text": "(would say one)-again", "refusals": []}  # a stand-in fact flows on
    assert "  would say one" in lines and rb.exit_code([res]) == 0


def test_a_destructive_step_on_a_protected_host_is_refused_before_anything_runs():
    text = "steps:\n - task: test.echo\n - name: Wipe\n   task: test.wipe\n   host: prod\n"
    with pytest.raises(SafetyError, match=r"step 2 \('Wipe'\): refused: prod is protected; restore needs "
                                          r"--force-protected --confirm app"):
        _go(text)
    assert CALLS == []
    (res,), _, _ = _go(text, check=True)  # check mode lists it
    assert res.refusals == ["step 2 ('Wipe'): refused: prod is protected; restore needs --force-protected "
                            "--confirm app"]
    (res,), _, _ = _go(text, force_protected=True, confirm="app")
    assert res.result == "changed" and [c[0] for c in CALLS] == ["dev", "prod"]


def test_a_group_is_refused_for_a_destructive_step_and_unknown_hosts_are_usage_errors():
    with pytest.raises(SafetyError, match="group 'live' containing protected"):
        _go("steps: [{task: test.wipe}]", host="live", force_protected=True, confirm="app")
    with pytest.raises(UsageError, match=r"step 1 \('test.echo'\): host: unknown host or group 'prd' "
                                         r"\(did you mean 'prod'\?\)"):
        _go("steps: [{task: test.echo, host: prd}]")
    with pytest.raises(UsageError, match=r"step 1 \('test.echo'\): args.n: expected an int, got str"):
        _go("steps: [{task: test.echo, args: {n: two}}]")
    with pytest.raises(UsageError, match=r"args.txet: test.echo has no argument 'txet' \(did you mean 'text'\?\)"):
        _go("steps: [{task: test.echo, args: {txet: x}}]")


def test_a_fact_of_the_wrong_type_fails_its_step_when_it_runs():
    (res,), _, _ = _go("steps:\n - task: test.echo\n   register: a\n - task: test.echo\n"
                       "   args: {n: '{{ a.text }}'}\n")
    assert res.steps[1].result == "failed" and res.steps[1].exit_code == 2
    assert res.steps[1].reason == "step 2 ('test.echo'): args.n: expected an int, got str 'hi'"


def test_the_json_document_has_every_host_and_step():
    results, _, _ = _go("steps: [{task: test.echo, args: {n: 0}}]", host="dev,prod")
    doc = rb.document(rb.parse("steps: [{task: test.echo}]", "echo"), results, check=False)
    assert doc["runbook"] == "echo" and doc["result"] == "ok" and [h["host"] for h in doc["hosts"]] == ["dev", "prod"]
    assert doc["hosts"][0]["steps"][0] == {"index": 1, "name": "test.echo on dev", "task": "test.echo", "host": "dev",
                                           "result": "ok", "reason": "said hi", "facts": {"text": "hi", "n": 0},
                                           "ignored": False, "exit_code": 0, "shared": False}


def test_every_task_action_has_a_summary_and_documented_params():
    for name, a in rb.action_registry().items():
        if a.run.__module__ != "bigskies_ops.stack.task_actions":
            continue
        assert a.summary.endswith("."), name
        assert all(p.help for p in a.params.values()), name


# ------------------------------------------------------------------ issue: a new user's trial
def test_a_step_after_an_unreachable_ignored_step_runs_when_it_is_failed():
    from bigskies_ops.hosts.connection import SSHError

    def unreachable(h, a, ctx):
        raise SSHError("cannot connect to far.example:22")
    ACTIONS["test.far"] = Action("test.far", "far", {}, unreachable, _echo_plan, facts=())
    try:
        (res,), lines, _ = _go("steps:\n - task: test.far\n   register: pre\n   ignore_errors: true\n"
                               " - name: React\n   task: test.echo\n   when: pre is failed\n"
                               " - task: test.echo\n   when: pre is unreachable\n")
    finally:
        del ACTIONS["test.far"]
    assert [s.result for s in res.steps] == ["unreachable", "changed", "changed"]


def test_a_value_set_for_a_typed_argument_is_checked_before_the_first_step():
    text = ("params: {target: {type: str, default: app_scratch}}\nsteps:\n - task: test.echo\n"
            " - name: Restore\n   task: db.restore\n   args: {archive: latest, target_db: '{{ params.target }}'}\n")
    for value, got in (("", "''"), ("x" * 64, repr("x" * 64))):
        with pytest.raises(UsageError) as e:
            _go(text, sets=[f"target={value}"], precheck=False)
        assert str(e.value) == (f"step 2 ('Restore'): args.target_db: expected a database name of 1 to 63 bytes, "
                                f"got {got} (from params.target: --set target=...)")
    assert CALLS == []
    with pytest.raises(UsageError, match=r"step 1 \('docker.up'\): args.timeout: expected seconds \(0 or more\), "
                                         r"got -1.0 \(from params.t"):
        _go("params: {t: {type: float, default: 1}}\nsteps: [{task: docker.up, args: {timeout: '{{ params.t }}'}}]",
            sets=["t=-1"])


def test_a_step_needing_the_compose_stack_on_a_host_without_one_is_refused_before_the_first_step():
    with pytest.raises(UsageError) as e:
        _go("steps:\n - task: test.echo\n - name: Stop everything\n   task: docker.down\n")
    assert str(e.value) == ("step 2 ('Stop everything'): host: dev has no compose: block in the inventory "
                            "(hosts.dev.compose); docker.down needs the compose stack")
    with pytest.raises(UsageError, match=r"step 1 \('coordinators.stop'\): host: dev has no compose: block"):
        _go("steps: [{task: coordinators.stop}]", check=True)
    # a step whose `when` on params is false is not checked against the inventory
    (res,), _, _ = _go("params: {r: {type: bool, default: false}}\nsteps:\n - task: test.echo\n"
                       " - task: docker.down\n   when: params.r\n")
    assert [s.result for s in res.steps] == ["changed", "skipped"]
    assert CALLS == [("dev", {"text": "hi", "n": 1, "fail": False, "words": None})]


def test_a_pull_from_a_local_host_is_refused_before_the_first_step():
    with pytest.raises(UsageError) as e:
        _go("params: {from: {type: str, default: prod}}\nsteps:\n - task: test.echo\n - name: Pull\n"
            "   task: db.pull\n   args: {from: '{{ params.from }}'}\n", sets=["from=dev"])
    assert str(e.value) == ("step 2 ('Pull'): args.from: dev is not an SSH host (connection: local); db.pull pulls "
                            "from an SSH host (use db.backup for a local host) (from params.from: --set from=...)")
    assert CALLS == []


def test_a_step_the_real_run_would_refuse_says_so_on_its_check_line():
    def refused(h, a, ctx):
        return Plan(False, ["restore x"], {}, ["--target-db 'x' already exists on dev; choose a new name"])
    ACTIONS["test.refused"] = Action("test.refused", "refused", {}, _echo_run, refused, facts=())
    try:
        (res,), lines, _ = _go("steps: [{name: Restore, task: test.refused}, {task: test.echo}]", check=True)
    finally:
        del ACTIONS["test.refused"]
    assert ("ok (check): [dev] the real run would REFUSE this step: --target-db 'x' already exists on dev; "
            "choose a new name") in lines
    assert not any("would change nothing" in line for line in lines[:4])
    assert res.steps[0].to_json()["refusals"] == ["step 1 ('Restore'): --target-db 'x' already exists on dev; "
                                                  "choose a new name"]


def test_the_recap_counts_where_the_steps_ran_and_a_pinned_step_runs_once_per_run():
    text = "steps:\n - task: test.echo\n   host: prod\n   register: p\n - task: test.echo\n   args: {text: '{{ p.text }}'}\n"
    (res,), lines, _ = _go("steps: [{task: test.echo, host: prod}]")
    assert rb.recap_lines([res])[1:] == ["prod : ok=0 changed=1 failed=0 skipped=0 unreachable=0 ignored=0"]
    CALLS.clear()
    results, lines, _ = _go(text, host="dev,prod")
    assert [c[0] for c in CALLS].count("prod") == 2  # the pinned step once, prod's own step once
    assert sorted(c[0] for c in CALLS) == ["dev", "prod", "prod"]
    assert rb.recap_lines(results)[1:] == ["prod : ok=0 changed=2 failed=0 skipped=0 unreachable=0 ignored=0",
                                           "dev  : ok=0 changed=1 failed=0 skipped=0 unreachable=0 ignored=0"]
    doc = rb.document(rb.parse(text, "t"), results, check=False)
    assert doc["recap"]["prod"]["changed"] == 2 and doc["recap"]["dev"]["changed"] == 1
    assert sum(s["shared"] for h in doc["hosts"] for s in h["steps"]) == 1
    assert all(h["steps"][1]["reason"] == "said hi" for h in doc["hosts"])  # the shared step's facts flow on


def test_list_gives_a_broken_runbook_an_error_apart_from_its_description(tmp_path):
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "good.yaml").write_text("description: fine\nsteps: [{task: test.echo}]\n")
    (tmp_path / "runbooks" / "broken.yaml").write_text("description: half\nsteps: [{task: 42}]\n")
    inv = parse_inventory({"hosts": {"dev": {}}}, tmp_path / "inventory.yaml")
    found = {r["name"]: r for r in rb.available(inv)}
    assert found["good"] == {"name": "good", "path": str(tmp_path / "runbooks" / "good.yaml"), "description": "fine",
                             "error": None}
    assert found["broken"]["description"] == ""
    assert found["broken"]["error"] == "step 1: task: expected a task name (a string), got 42"


def test_an_interrupt_after_a_destructive_step_says_where_the_data_is_and_how_to_restore_it():
    res = rb.RunResult("dev")
    res.steps = [rb.StepResult(1, "Back up", "db.backup", "dev", "changed", "backup a.sql.gz written (1 KiB)",
                               facts={"archive": "/b/a.sql.gz", "id": "3f9a"}),
                 rb.StepResult(2, "Purge", "docker.purge", "dev", "changed", "project 'app' purged",
                               facts={"backup": None, "volume": "app_pgdata"}, destructive=True)]
    res.stopped = rb.StepResult(3, "Start fresh", "docker.up", "dev", "failed", "interrupted by signal 2", exit_code=130)
    res.steps.append(res.stopped)
    ctx = RunContext(INV, backups=[(1, "dev", "/b/a.sql.gz")])
    lines = rb.interrupted_lines([(res, ctx)], 2)
    assert lines[:7] == [
        "INTERRUPTED by signal 2 in step 3 ('Start fresh', docker.up on dev); it did not finish and the steps after "
        "it did not run",
        "Steps that finished:",
        "  step 1 ('Back up', db.backup on dev): changed: backup a.sql.gz written (1 KiB)",
        "      archive: /b/a.sql.gz",
        "  step 2 ('Purge', docker.purge on dev): changed: project 'app' purged",
        "      volume: app_pgdata",
        "A destructive step ran (step 2, docker.purge on dev): the data from before it is in /b/a.sql.gz (written by "
        "step 1). To restore it:"]
    assert lines[7] == "  inv db.restore /b/a.sql.gz --host dev --roles"
    assert lines[9] == "dev : ok=0 changed=2 failed=1 skipped=0 unreachable=0 ignored=0"
