"""``db.*`` tasks contributed by the stack feature (registered into the db namespace by cli/db.py)."""
TASKS: list = []
