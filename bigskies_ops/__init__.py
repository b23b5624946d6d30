"""bigskies-ops: back up, verify, move and restore the BIG SKIES PostgreSQL database.

The library is the product; ``bigskies_ops.cli`` is a thin Invoke shell over it.
"""
__version__ = "0.1.0"
