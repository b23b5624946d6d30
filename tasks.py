"""Invoke entry point: ``inv --list``. The tasks live in ``bigskies_ops/cli/``."""
from bigskies_ops.cli import ns  # noqa: F401  (Invoke looks for ``ns``)
