"""``python -m bigskies_ops ...`` == ``bigskies-ops ...``."""
from bigskies_ops.cli.program import main

main()
