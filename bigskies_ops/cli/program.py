"""``bigskies-ops`` console script: the same Collection as ``inv`` through ``invoke.Program``."""
from invoke import Program

from .. import __version__
from . import ns

program = Program(namespace=ns, version=__version__, name="bigskies-ops", binary="bigskies-ops")


def main() -> None:
    program.run()
