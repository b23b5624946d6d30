"""The package's layering rules (docs/CONTRIBUTING.md), measured by scripts/structure.py:
imports run downward only, no import cycle (imports inside functions included), no import
of another module's private name, no module over 700 lines, at most 3 functions over 80."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "structure.py"


@pytest.fixture(scope="module")
def structure():
    spec = importlib.util.spec_from_file_location("structure", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def graph(structure):
    return structure.graph(structure.modules())


def test_no_import_cycle(structure, graph):
    assert structure.cycles(graph[0]) == []


def test_imports_run_downward_only(structure, graph):
    g = graph[0]
    upward = [f"{m} -> {t}" for m in g for t in g[m]
              if structure.LAYERS[structure.layer(t)] > structure.LAYERS[structure.layer(m)]
              or (structure.layer(t) == "dev" and structure.layer(m) != "dev")]
    assert upward == []


def test_no_module_imports_another_modules_private_name(graph):
    assert graph[1] == []


def test_no_module_over_700_lines(structure):
    big = {m: len(p.read_text().splitlines()) for m, p in structure.modules().items()}
    assert {m: n for m, n in big.items() if n > structure.MAX_MODULE_LINES} == {}


def test_at_most_three_functions_over_80_lines(structure):
    assert len(structure.long_functions(structure.modules())) <= structure.MAX_LONG_FUNCTIONS


def test_the_rules_see_a_cycle_an_upward_and_a_private_import(structure, tmp_path, monkeypatch):
    """The checks can fail: a made-up package with each fault is caught."""
    pkg = tmp_path / "bigskies_ops"
    (pkg / "hosts").mkdir(parents=True)
    (pkg / "jobs").mkdir()
    for d in (pkg, pkg / "hosts", pkg / "jobs"):
        (d / "__init__.py").write_text("")
    (pkg / "hosts" / "a.py").write_text("def f():\n    from bigskies_ops.jobs import b\n")
    (pkg / "jobs" / "b.py").write_text("from bigskies_ops.hosts.a import _secret\n")
    monkeypatch.setattr(structure, "ROOT", pkg)
    g, private = structure.graph(structure.modules())
    assert structure.cycles(g) == [["bigskies_ops.hosts.a", "bigskies_ops.jobs.b"]]
    assert structure.layer("bigskies_ops.hosts.a") == "hosts" and "bigskies_ops.jobs.b" in g["bigskies_ops.hosts.a"]
    assert private == ["bigskies_ops.jobs.b:1 imports bigskies_ops.hosts.a._secret"]
