"""``scenario.*`` tasks (the compose stack feature)."""
from invoke import Collection

ns = Collection("scenario")
