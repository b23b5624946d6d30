"""docs/runbooks.md's table of the tasks a step can name matches the registry
(:data:`bigskies_ops.stack.actions.ACTIONS`): every task_actions action is listed with
exactly its arguments, types, defaults and destructive rule, and every listed task exists."""
from __future__ import annotations

import re
from pathlib import Path

from bigskies_ops.stack import runbook as rb

DOCS = Path(__file__).resolve().parents[2] / "docs"
HEAD = "| task | what it does | arguments (type, default) | destructive |"


def _rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for f in sorted(DOCS.glob("runbooks*.md")):
        inside = False
        for line in f.read_text().splitlines():
            if line.strip() == HEAD:
                inside = True
                continue
            if inside and line.startswith("|---"):
                continue
            if inside and line.startswith("| `"):
                cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
                rows[cells[0].strip("`")] = cells
            else:
                inside = False
    return rows


def _cell(a) -> tuple[str, str, str]:
    args = "; ".join(f"`{k}` ({p.type.__name__}{', required' if p.required else ''}"
                     f"{', ' + repr(p.default) if p.default is not None else ''})" for k, p in a.params.items()) or "none"
    d = (f"`{a.destructive}`" + (" (see below)" if a.destructive_when else "")) if a.destructive else "no"
    return a.summary, args, d


def test_the_docs_table_lists_every_task_action_with_its_arguments():
    actions = rb.action_registry()
    rows = _rows()
    ours = {n for n, a in actions.items() if a.run.__module__ == "bigskies_ops.stack.task_actions"}
    assert ours <= set(rows), f"not in docs/runbooks.md: {sorted(ours - set(rows))}"
    for name, cells in rows.items():
        assert name in actions, f"docs/runbooks.md lists {name}, which no step can name"
        assert tuple(cells[1:]) == _cell(actions[name]), name


def test_the_docs_examples_parse():
    text = (DOCS / "runbooks.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    for b in blocks:
        rb.parse(b)


def test_the_docs_facts_table_lists_what_each_task_registers():
    text = (DOCS / "runbooks.md").read_text()
    table = text.split("| task | facts |", 1)[1].split("\n\n", 1)[0]
    actions = rb.action_registry()
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        tasks, facts = line.strip().strip("|").split(" | ")
        facts = re.sub(r"with `\w+`:?", "", re.sub(r"\([^)]*\)", "", facts))  # "(null with `target_db`)"
        named = set(re.findall(r"`([a-z_0-9]+)`", facts))
        for task in re.findall(r"`([a-z.]+)`", tasks):
            assert named == set(actions[task].facts), task
