"""``python -m bigskies_ops ...`` == ``bigskies-ops ...``."""
from .cli.program import main

main()
