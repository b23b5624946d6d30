"""Restore fidelity, part a of the corpus in tests/fidelity/cases.

Each case's source database is backed up by ``db.backup`` in both formats, changed, and
restored by ``db.restore ARCHIVE --yes`` with default flags; the result must equal
PostgreSQL's own serial load of the same archive (tests/fidelity/compare.py), and its
database-level facts (settings, owner, ACL, comment) the source's at backup time.
"""
from __future__ import annotations

import pytest

from tests.fidelity.harness import World, check_round_trip, cleanup, cli_env, share


@pytest.fixture(scope="module")
def world(pg, tmp_path_factory):
    w = World(pg, tmp_path_factory.mktemp("fidelity_a"), cli_env())
    yield w
    cleanup(w)


@pytest.mark.parametrize("fmt", ["plain", "custom"])
@pytest.mark.parametrize("case", share(0, 2))
def test_a_restored_backup_equals_postgresqls_own_serial_load_of_it(world, case, fmt):
    check_round_trip(world, case, fmt)
