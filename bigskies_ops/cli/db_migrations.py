"""``db.*`` tasks contributed by the migrations feature (registered into the db namespace by cli/db.py)."""
TASKS: list = []
