"""``python -m bigskies_ops ...`` == ``bigskies-ops ...``."""
from bigskies_ops.entry import main

main()
