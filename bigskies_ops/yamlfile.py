"""YAML as this project reads it: PyYAML's safe loader, but a key given twice in one mapping
is an error (a ``yaml.constructor.ConstructorError`` naming the key and both lines).

Why: YAML 1.2 requires mapping keys to be unique, but PyYAML keeps the last value
silently; in an inventory ``protected: true`` followed by ``protected: false`` would
quietly turn a safety flag off, and in a runbook a second ``args:`` would replace the
arguments the reader sees. Merge keys (``<<: *defaults``) are not duplicates.
"""
from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class StrictLoader(_Base):  # type: ignore[misc, valid-type]
    """The safe loader, refusing duplicate keys in a mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if first is not None:
                    raise ConstructorError("while constructing a mapping", node.start_mark,
                                           f"duplicate key {key!r} (first given at line {first.line + 1}; YAML keys "
                                           f"must be unique, and a repeated one would silently win)",
                                           key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """Parse one YAML document with :class:`StrictLoader`.

    Raises:
        yaml.YAMLError: malformed YAML, or a duplicate key (``problem`` says which,
            ``problem_mark`` where)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
