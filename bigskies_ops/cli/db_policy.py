"""``db.*`` tasks contributed by the policy feature (registered into the db namespace by cli/db.py)."""
TASKS: list = []
