"""``db.*`` tasks contributed by the remote feature (registered into the db namespace by cli/db.py)."""
TASKS: list = []
