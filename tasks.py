"""Invoke entry point: ``inv --list``. The tasks live in ``bigskies_ops/cli/``.

``inv`` is Invoke's own Program; while it loads this file we give it the operator
contract's command-line behaviour (an unknown task or flag: a did-you-mean and exit 2; no
BrokenPipeError traceback under ``| head``), the same as the ``bigskies-ops`` console script
(docs/cli.md "Flags")."""
import sys

from bigskies_ops.cli import ns  # noqa: F401  (Invoke looks for ``ns``)

if "invoke.main" in sys.modules:  # run by ``inv`` / ``invoke`` / ``python -m invoke``
    from bigskies_ops.cli.program import adopt
    adopt(sys.modules["invoke.main"].program)
