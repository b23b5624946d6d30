"""Round trips for the fidelity suite: a case's source database, its archives made by
``db.backup``, the restore by ``db.restore`` (or ``db.pull --restore``) and the oracle,
PostgreSQL's own serial load of the same archive into a scratch database.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import cli, native_host, write_inventory
from tests.fidelity.compare import BINDIR, differences, snapshot

CASES = Path(__file__).with_name("cases")
AFTER_MARK = re.compile(r"^-- after backup\b.*$", re.M)

# Every case may use these roles; created once per cluster (roles are cluster-wide).
ROLES = ("fid_dbowner", "fid_owner", "fid_reader", "fid_writer", "fid_definer", "fid_app")
ROLES_SQL = "".join(
    f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{r}') THEN CREATE ROLE {r} NOLOGIN; "
    f"END IF; END $$;\n" for r in ROLES)

# After the backup, every table with rows loses one and a new table appears, so a restore
# that left the database alone cannot pass (CONTRACTS.md 7).
CHANGE_SQL = r"""
SET default_transaction_read_only = off;
DROP TABLE IF EXISTS public.fid_changed_after_backup;
CREATE TABLE public.fid_changed_after_backup AS SELECT 1 AS x;
DO $$ DECLARE r record; BEGIN
  SET CONSTRAINTS ALL IMMEDIATE;  -- a deferred foreign key fails inside the per-table block
  FOR r IN SELECT c.oid::regclass AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname !~ '^pg_toast' LOOP
    BEGIN
      EXECUTE format('DELETE FROM %s WHERE ctid = (SELECT ctid FROM %s LIMIT 1)', r.t, r.t);
    EXCEPTION WHEN others THEN NULL;
    END;
  END LOOP;
END $$;
"""


@dataclass
class Case:
    name: str
    setup: str
    after: str

    @classmethod
    def load(cls, name: str) -> "Case":
        text = (CASES / f"{name}.sql").read_text()
        parts = AFTER_MARK.split(text, maxsplit=1)
        return cls(name, parts[0], parts[1] if len(parts) > 1 else "")


def case_names() -> list[str]:
    return sorted(p.stem for p in CASES.glob("*.sql"))


def psql(pg, database: str, sql: str, **variables: str) -> str:
    """Run ``sql`` as the superuser with ON_ERROR_STOP; ``variables`` become psql ``-v`` values."""
    argv = [f"{BINDIR}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(pg.socket_dir), "-p", str(pg.port),
            "-U", "bigskies", "-d", database]
    for k, v in variables.items():
        argv += ["-v", f"{k}={v}"]
    r = subprocess.run(argv, input=sql, capture_output=True, text=True, env={"PGOPTIONS": "", "PATH": "/usr/bin:/bin"})
    if r.returncode != 0:
        raise AssertionError(f"test psql failed on {database}: {r.stderr[-3000:]}")
    return r.stdout


def qi(name: str) -> str:
    return '"%s"' % name.replace('"', '""')


def create_db(pg, name: str, owner: str) -> None:
    psql(pg, "postgres", f"CREATE DATABASE {qi(name)} TEMPLATE template0 OWNER {qi(owner)}")


DROP_SUBSCRIPTIONS = r"""
SET default_transaction_read_only = off;
SELECT format('ALTER SUBSCRIPTION %I DISABLE', subname), format('ALTER SUBSCRIPTION %I SET (slot_name = NONE)', subname),
       format('DROP SUBSCRIPTION %I', subname) FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
\gexec
"""


def drop_db_like(pg, prefix: str) -> None:
    """Drop every database whose name starts with ``prefix`` (source, copies, scratch), subscriptions first."""
    out = psql(pg, "postgres", f"\\pset tuples_only on\nSELECT datname FROM pg_database "
                               f"WHERE starts_with(datname, '{prefix}')")
    for n in [line.strip() for line in out.splitlines() if line.strip()]:
        psql(pg, n, DROP_SUBSCRIPTIONS)
        psql(pg, "postgres", f"DROP DATABASE IF EXISTS {qi(n)} WITH (FORCE)")


def oracle_load(pg, archive: Path, name: str, owner: str) -> None:
    """PostgreSQL's own serial load of ``archive`` into a new database ``name`` (template0, ``owner``)."""
    create_db(pg, name, owner)
    conn = ["-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "bigskies"]
    env = {"PGOPTIONS": "", "PATH": "/usr/bin:/bin"}
    if archive.name.endswith(".sql.gz"):
        cmd = (f"gunzip -c {shlex.quote(str(archive))} | {BINDIR}/psql -X -q -v ON_ERROR_STOP=1 "
               f"{shlex.join(conn)} -d {shlex.quote(name)} >/dev/null")
        r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, env=env)
    else:
        r = subprocess.run([f"{BINDIR}/pg_restore", "--exit-on-error", *conn, "-d", name, str(archive)],
                           capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise AssertionError(f"the oracle (PostgreSQL's own serial load) failed on {archive.name}: {r.stderr[-3000:]}")


@dataclass
class World:
    """One cluster, one folder, one environment for a module's round trips."""
    pg: object
    root: Path
    env: dict
    made: dict = field(default_factory=dict)   # case name -> Prepared
    done: list = field(default_factory=list)   # (case, format) round trips finished
    keep_pre_restore: int = 2
    dropping: list = field(default_factory=list)

    def drop_later(self, prefix: str) -> None:
        """Drop the databases named ``prefix*`` in a thread while the next case runs (DROP DATABASE
        waits for a checkpoint; overlapping it with the next case's work saves wall time)."""
        previous = self.dropping[-1] if self.dropping else None

        def run():
            if previous:
                previous.join()
            drop_db_like(self.pg, prefix)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.dropping.append(t)

    def host(self, database: str) -> Path:
        inv = self.root / f"inv-{database}.yaml"
        return write_inventory(inv, {"dev": native_host(self.pg, database, self.root / f"backups-{database}",
                                                        backup={"keep_pre_restore": self.keep_pre_restore})})


@dataclass
class Prepared:
    case: Case
    source: str
    inventory: Path
    backup_dir: Path
    at_backup: dict                 # the source's snapshot (no schema) when its backups were made
    archives: dict                  # format -> Path


def backup(world: World, inv: Path, fmt: str) -> Path:
    r = cli("db.backup", "-i", str(inv), "--format", fmt, "--json", env=world.env)
    assert r.returncode == 0, f"db.backup --format {fmt} failed: {r.stdout}{r.stderr}"
    return Path(json.loads(r.stdout)["path"])


def prepare(world: World, name: str) -> Prepared:
    """The case's source database (owned by ``fid_dbowner``), loaded once, backed up in both formats."""
    if name in world.made:
        return world.made[name]
    case = Case.load(name)
    source = f"fs_{uuid.uuid4().hex[:8]}"
    psql(world.pg, "postgres", ROLES_SQL)
    create_db(world.pg, source, "fid_dbowner")
    psql(world.pg, source, case.setup, dbname=source)
    inv = world.host(source)
    at_backup = snapshot(str(world.pg.socket_dir), world.pg.port, source, schema=False)
    archives = {fmt: backup(world, inv, fmt) for fmt in ("plain", "custom")}
    p = Prepared(case, source, inv, world.root / f"backups-{source}", at_backup, archives)
    world.made[name] = p
    return p


@dataclass
class Outcome:
    restore: subprocess.CompletedProcess
    tool: dict | None
    oracle: dict
    expected_database: dict

    def problems(self) -> list[str]:
        """What differs: the tool's database vs the oracle, and its database-level facts vs the source's."""
        if self.restore.returncode != 0:
            return [f"db.restore exited {self.restore.returncode}: {(self.restore.stderr or self.restore.stdout)[-1500:]}"]
        tool = dict(self.tool)
        oracle = dict(self.oracle)
        got_db, _ = tool.pop("database"), oracle.pop("database")
        return differences(tool, oracle) + differences(got_db, self.expected_database, "database")


def round_trip(world: World, name: str, fmt: str) -> Outcome:
    """Change the source, ``db.restore ARCHIVE --yes`` (default flags), load the oracle, snapshot both."""
    p = prepare(world, name)
    archive = p.archives[fmt]
    psql(world.pg, p.source, CHANGE_SQL + p.case.after, dbname=p.source)
    r = cli("db.restore", str(archive), "-i", str(p.inventory), "--yes", env=world.env)
    sock, port = str(world.pg.socket_dir), world.pg.port
    tool = snapshot(sock, port, p.source) if r.returncode == 0 else None
    oracle_db = f"{p.source}_oracle_{fmt}"
    oracle_load(world.pg, archive, oracle_db, "fid_dbowner")
    oracle = snapshot(sock, port, oracle_db)
    return Outcome(r, tool, oracle, p.at_backup["database"])


def cleanup(world: World) -> None:
    for t in world.dropping:
        t.join()
    for p in world.made.values():
        drop_db_like(world.pg, p.source)


def share(part: int, parts: int) -> list[str]:
    """Every ``parts``-th case name from ``part`` on (the round-trip modules split the corpus)."""
    return case_names()[part::parts]


def cli_env() -> dict:
    """The environment of tests.conftest's ``cli_env`` fixture, for module-scoped use."""
    import os
    from tests.conftest import PASSWORD, PASSWORD_ENV, REPO
    env = dict(os.environ)
    env[PASSWORD_ENV] = PASSWORD
    env.pop("BIGSKIES_INVENTORY", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    return env


# What the source database looked like at backup time, written out by hand for the cases
# about database-level facts (pg_db_role_setting arrays compared element by element).
DATABASE_FACTS = {
    "database_settings": {"settings": {"": ["search_path=app, public", "work_mem=7MB", "statement_timeout=1min",
                                             "DateStyle=SQL, DMY", "fid.custom_setting=a, b"]}},
    "database_settings_read_only": {"settings": {"": ["default_transaction_read_only=on",
                                                       'search_path="$user", public']}},
    "role_in_database_settings": {"settings": {
        "fid_reader": ["search_path=reporting, public", "statement_timeout=30s"],
        "fid_app": ["work_mem=16MB", "default_transaction_read_only=on"]}},
    "comments": {"comment": "the database's own comment"},
    "privileges": {"owner": "fid_dbowner", "acl": ["fid_dbowner=CTc/fid_dbowner",
                                                   "fid_reader=c/fid_dbowner", "fid_app=c/fid_dbowner",
                                                   "fid_owner=C/fid_dbowner"]},
}


def check_round_trip(world: World, name: str, fmt: str) -> None:
    """The whole check of one (case, format): literal database facts, then tool vs oracle."""
    p = prepare(world, name)
    for key, want in DATABASE_FACTS.get(name, {}).items():
        assert p.at_backup["database"][key] == want, (
            f"the case's source is not as written: {key} is {p.at_backup['database'][key]!r}")
    outcome = round_trip(world, name, fmt)
    world.done.append((name, fmt))
    if sum(1 for n, _ in world.done if n == name) == 2:
        world.drop_later(p.source)
        del world.made[name]
    problems = outcome.problems()
    assert not problems, f"{name} ({fmt}): the restored database differs:\n" + "\n".join(problems)
