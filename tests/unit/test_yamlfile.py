"""Duplicate keys in YAML are errors (bigskies_ops.yamlfile): in the loader itself, in an
inventory (a repeated safety flag) and in a runbook (a repeated ``args``)."""
from __future__ import annotations

import pytest
import yaml

from bigskies_ops import yamlfile
from bigskies_ops.errors import InventoryError, UsageError
from bigskies_ops.inventory import load as load_inventory
from bigskies_ops.stack.runbook_load import parse as parse_runbook


def test_a_duplicate_key_is_an_error_naming_it_and_both_lines():
    with pytest.raises(yaml.YAMLError) as e:
        yamlfile.load("a: 1\nb:\n  c: 2\n  c: 3\n")
    assert "duplicate key 'c' (first given at line 3" in e.value.problem and e.value.problem_mark.line == 3


def test_merge_keys_and_the_same_key_in_different_mappings_are_fine():
    doc = yamlfile.load("d: &d {x: 1, y: 1}\ne:\n  <<: *d\n  y: 2\nf: {x: 3}\n")
    assert doc == {"d": {"x": 1, "y": 1}, "e": {"x": 1, "y": 2}, "f": {"x": 3}}


def test_an_inventory_repeating_protected_is_refused(tmp_path):
    p = tmp_path / "inv.yaml"
    p.write_text("hosts:\n  prod:\n    protected: true\n    protected: false\n")
    with pytest.raises(InventoryError) as e:
        load_inventory(p)
    assert "line 4 column 5" in str(e.value) and "duplicate key 'protected' (first given at line 3" in str(e.value)
    assert e.value.exit_code == 2


def test_a_runbook_step_repeating_args_is_refused():
    text = ("steps:\n  - name: pre\n    task: db.backup\n    args: {label: before}\n"
            "    args: {format: custom}\n")
    with pytest.raises(UsageError) as e:
        parse_runbook(text, "dup")
    assert "line 5, column 5" in str(e.value) and "duplicate key 'args' (first given at line 4" in str(e.value)
