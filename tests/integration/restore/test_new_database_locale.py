"""A restore that makes a new database (none of that name exists on the target) gives it
the encoding and locale the backed-up database had, as ``pg_restore --create`` would: a
plain pg_dump leaves them out, and the server's defaults sort and case-map text
differently (``upper('ä')`` in a LATIN1 ``C`` database is ``ä``; ORDER BY under ICU
``de`` puts ``ä`` after ``a``). The oracle is the source database itself, read with the
test's own SQL. A locale the target server lacks falls back to its defaults, loudly.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.conftest import PASSWORD_ENV, cli, drop_db_and_copies, native_host, write_inventory
from tests.remote_helpers import PROD_PW, PROD_PW_ENV, prod_host, prod_sql

WORDS = "('a'), ('B'), ('ä'), ('Z'), ('é'), ('b'), ('Äb')"

LOCALES = {
    "latin1_c": "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'",
    "icu_de": "ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'",
}

# what the database is and how its text behaves, read in UTF8 whatever its encoding
FACTS_SQL = ("SET client_encoding TO 'UTF8'; SELECT json_build_object("
             "'encoding', pg_encoding_to_char(d.encoding), 'collate', d.datcollate, 'ctype', d.datctype, "
             "'provider', d.datlocprovider, 'icu_locale', d.daticulocale, "
             "'sorted', (SELECT string_agg(w, ',' ORDER BY w) FROM words), "
             "'upper', (SELECT string_agg(upper(w), ',' ORDER BY w COLLATE \"C\") FROM words), "
             "'by_index', (SELECT string_agg(w, ',') FROM (SELECT w FROM words WHERE w > 'a' ORDER BY w) s)) "
             "FROM pg_database d WHERE d.datname = current_database()")


def _facts(run_sql, db: str) -> dict:
    return json.loads(run_sql(FACTS_SQL, db).strip())


def _make_source(run_sql, name: str, kind: str) -> None:
    run_sql(f'CREATE DATABASE "{name}" TEMPLATE template0 {LOCALES[kind]}', "postgres")
    run_sql(f"SET client_encoding TO 'UTF8'; CREATE TABLE words (w text); INSERT INTO words VALUES {WORDS}; "
            f"CREATE INDEX ON words (w)", name)


def _backup(tmp_path, pg, src: str, env: dict, *args: str) -> str:
    """A backup of ``src`` (a host ``dev`` with backup dir ``tmp_path/b``); its path."""
    inv = write_inventory(tmp_path / "s.yaml", {"dev": native_host(pg, src, tmp_path / "b")})
    r = cli("db.backup", *args, "--json", "-i", str(inv), env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["path"]


@pytest.fixture
def names(pg):
    made = []

    def new(prefix: str) -> str:
        made.append(f"{prefix}_{uuid.uuid4().hex[:8]}")
        return made[-1]
    yield new
    for n in made:
        drop_db_and_copies(pg, n)


@pytest.mark.parametrize("kind", sorted(LOCALES))
@pytest.mark.parametrize("fmt", ["plain", "custom"])
def test_a_new_database_gets_the_archives_encoding_and_locale(tmp_path, pg, pg_sql, cli_env, names, kind, fmt):
    src, new = names("loc_src"), names("loc_new")
    _make_source(pg_sql, src, kind)
    want = _facts(pg_sql, src)
    bdir = tmp_path / "b"
    archive = _backup(tmp_path, pg, src, cli_env, "--format", fmt)
    m = json.loads(Path(archive + ".manifest.json").read_text())
    assert m["database_locale"]["encoding"] == want["encoding"]

    inv = write_inventory(tmp_path / "n.yaml", {"dev": native_host(pg, new, bdir)})
    r = cli("db.restore", archive, "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "locale" not in r.stderr and "defaults" not in r.stderr, r.stderr
    got = _facts(pg_sql, new)
    assert got == want
    # the server's defaults would have given another database
    assert (want["encoding"], want["provider"]) != ("UTF8", "c")


def test_a_locale_this_server_lacks_gives_its_defaults_and_says_so(tmp_path, pg, pg_sql, cli_env, names):
    """An archive from a server with a locale this one has not installed (a manifest made
    there: its ``database_locale`` names ``xx_XX.UTF-8``) still restores, with the
    server's defaults and a warning naming both; the archive and its data are intact."""
    src, new = names("loc_src"), names("loc_new")
    _make_source(pg_sql, src, "latin1_c")
    bdir = tmp_path / "b"
    archive = _backup(tmp_path, pg, src, cli_env)
    mpath = Path(archive + ".manifest.json")
    m = json.loads(mpath.read_text())
    m["database_locale"] = dict(m["database_locale"], encoding="UTF8", collate="xx_XX.UTF-8", ctype="xx_XX.UTF-8")
    mpath.write_text(json.dumps(m))
    archive_bytes = Path(archive).read_bytes()

    inv = write_inventory(tmp_path / "n.yaml", {"dev": native_host(pg, new, bdir)})
    r = cli("db.restore", archive, "-i", str(inv), "--yes", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "warning: the archive's database had encoding UTF8, collation xx_XX.UTF-8" in r.stderr, r.stderr
    assert "the new database has the server's defaults" in r.stderr
    got, source = _facts(pg_sql, new), _facts(pg_sql, src)
    assert (got["encoding"], got["collate"]) == ("UTF8", "C.UTF-8")
    assert sorted(got["sorted"].split(",")) == sorted(source["sorted"].split(","))  # every row is there
    assert Path(archive).read_bytes() == archive_bytes


def test_a_pull_restore_into_a_new_database_gets_the_sources_locale(tmp_path, pg, pg_sql, cli_env, names,
                                                                   ssh_server, pg_container):
    """Scenario 4 onto a machine without the database: the streamed load starts before the
    manifest exists, so the source's encoding and locale are read from prod first."""
    run_prod = prod_sql(pg_container)
    src, new = f"loc_p_{uuid.uuid4().hex[:8]}", names("loc_new")
    _make_source(run_prod, src, "latin1_c")
    try:
        want = _facts(run_prod, src)
        proj = tmp_path / "prod-project"
        proj.mkdir()
        inv = write_inventory(tmp_path / "i.yaml", {
            "prod": prod_host(ssh_server, pg_container, proj, src, protected=False),
            "dev": native_host(pg, new, tmp_path / "dev-backups")})
        env = dict(cli_env, **{PROD_PW_ENV: PROD_PW})
        assert PASSWORD_ENV in env
        r = cli("db.pull", "-i", str(inv), "--from", "prod", "--to", "dev", "--restore", "--yes", env=env)
        assert r.returncode == 0, r.stderr + r.stdout
        assert "locale" not in r.stderr and "defaults" not in r.stderr, r.stderr
        assert _facts(pg_sql, new) == want
    finally:
        run_prod(f'DROP DATABASE IF EXISTS "{src}" WITH (FORCE)', "postgres")


@pytest.mark.parametrize("bad, says", [
    ("LATIN1", "the manifest's database_locale is not understood (\"LATIN1\")"),
    ({"encoding": "UTF8"}, "the manifest's database_locale is not understood ({\"encoding\": \"UTF8\"})"),
    ({"encoding": "UTF8", "collate": None, "ctype": None}, "the manifest's database_locale is not understood"),
    ({"encoding": "SQL_ASCII", "collate": "C", "ctype": "C", "provider": "i", "icu_locale": "de-DE"},
     "this server refused them (encoding \"SQL_ASCII\" is not supported with ICU provider)"),
])
def test_a_malformed_database_locale_gives_the_servers_defaults_and_says_so(tmp_path, pg, pg_sql, cli_env, names,
                                                                            bad, says):
    """A hand-edited manifest (break-it trial: 'internal error: AttributeError', KeyError, a
    raw SQL syntax error): the restore still runs, with the server's defaults and a warning."""
    src, new = names("loc_src"), names("loc_new")
    _make_source(pg_sql, src, "latin1_c")
    bdir = tmp_path / "b"
    archive = _backup(tmp_path, pg, src, cli_env)
    mpath = Path(archive + ".manifest.json")
    mpath.write_text(json.dumps(dict(json.loads(mpath.read_text()), database_locale=bad)))
    r = cli("db.restore", archive, "-i", str(write_inventory(tmp_path / "n.yaml", {"dev": native_host(pg, new, bdir)})),
            "--yes", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert says in r.stderr and "the new database has the server's defaults" in r.stderr, r.stderr
    got = _facts(pg_sql, new)
    assert (got["encoding"], got["collate"], got["provider"]) == ("UTF8", "C.UTF-8", "c")
    assert sorted(got["sorted"].split(",")) == sorted(_facts(pg_sql, src)["sorted"].split(","))


def test_target_db_gets_the_archives_locale_not_the_host_databases(tmp_path, pg, pg_sql, cli_env, names):
    """--target-db makes a new database: the archive's encoding and locale, whatever the
    host's own database has (it took the host database's: an EUC_JP archive then failed to
    load into a LATIN1 one, an ICU one silently became libc; break-it trial)."""
    src, host_db, new = names("loc_src"), names("loc_host"), names("loc_tgt")
    _make_source(pg_sql, src, "icu_de")
    _make_source(pg_sql, host_db, "latin1_c")
    want = _facts(pg_sql, src)
    bdir = tmp_path / "b"
    archive = _backup(tmp_path, pg, src, cli_env)
    host_before = _facts(pg_sql, host_db)
    inv = write_inventory(tmp_path / "h.yaml", {"dev": native_host(pg, host_db, bdir)})
    r = cli("db.restore", archive, "-i", str(inv), "--target-db", new, "--yes", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert _facts(pg_sql, new) == want
    assert _facts(pg_sql, host_db) == host_before
