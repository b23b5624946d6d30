"""Server-side administration of databases: what a database is (owner, encoding,
settings, privileges), creating and dropping one, the sessions on it, whether this
role may replace it, and whether the server has room for another copy of it.

Used by the restore (bigskies_ops.jobs.restore) and the restore test (bigskies_ops.jobs.verify).
"""
from __future__ import annotations

import json
import re
import time

from bigskies_ops import report
from bigskies_ops.pg.access import PostgresAccess, Sql, ident, lit, pgsql
from bigskies_ops.errors import BigskiesError, PostgresError, SafetyError
from bigskies_ops.hosts.runners import tail


def db_info(sql: Sql, name: str) -> dict | None:
    rows = sql.query(pgsql.SQL(
        "SELECT d.oid::int AS oid, pg_catalog.pg_get_userbyid(d.datdba) AS owner, "
        "pg_catalog.pg_encoding_to_char(d.encoding) AS encoding, d.datcollate AS collate, d.datctype AS ctype, "
        "d.datlocprovider::text AS provider, d.daticulocale AS icu_locale, "
        "pg_catalog.shobj_description(d.oid, 'pg_database') AS comment, "
        "(SELECT spcname FROM pg_catalog.pg_tablespace t WHERE t.oid = d.dattablespace "
        " AND spcname <> 'pg_default') AS tablespace, "
        "(SELECT array_agg(c) FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c "
        " WHERE s.setdatabase = d.oid AND s.setrole = 0) AS settings "
        "FROM pg_catalog.pg_database d WHERE d.datname = {}").format(lit(name)))
    return rows[0] if rows else None


def sessions_on(sql: Sql, name: str) -> list[dict]:
    """Client sessions connected to database ``name`` (not ours), that this role can see.

    Background workers are not sessions: the server cancels autovacuum itself on RENAME
    and DROP (CountOtherDBBackends). A role without pg_read_all_stats sees neither the
    type nor the user of another role's process (an autovacuum worker looks like any
    other): those are left to the server, whose RENAME refuses while a real session is
    connected (the restore's swap, bigskies_ops.jobs.swap, turns that into the same refusal)."""
    return sql.query(pgsql.SQL(
        "SELECT pid, usename AS user, application_name AS application, client_addr::text AS client, state, "
        "to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS since "
        "FROM pg_catalog.pg_stat_activity WHERE datname = {} AND pid <> pg_catalog.pg_backend_pid() "
        "AND backend_type IN ('client backend', 'walsender') "
        "ORDER BY pid").format(lit(name)))


def create_like(sql: Sql, new: str, like: dict | None, then: pgsql.Composable | None = None) -> None:
    """CREATE DATABASE ``new`` from template0 with ``like``'s owner, default tablespace,
    encoding and collation (:func:`db_info`; without ``owner``, as an archive's
    :data:`DATABASE_LOCALE_SQL` row, only its encoding and collation).
    Its settings come after the load (:func:`apply_properties`): a setting such as
    ``default_transaction_read_only = on`` would refuse the load itself.

    ``then``: a statement run right after the CREATE by the same psql (its own transaction;
    not run when the CREATE fails: ``ON_ERROR_STOP``), sparing a psql start (a restore
    labels its side database so)."""
    parts = [pgsql.SQL("CREATE DATABASE {} TEMPLATE template0").format(ident(new))]
    if like and like.get("owner"):
        can_own = sql.value(pgsql.SQL(
            "SELECT pg_catalog.pg_has_role(current_user, {}, 'MEMBER') "
            "OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)").format(lit(like["owner"])))
        if can_own:
            parts.append(pgsql.SQL("OWNER {}").format(ident(like["owner"])))
        else:
            report.note(f"note: cannot make {like['owner']!r} the owner (not a member of that role); "
                        f"the restored database is owned by the restoring user")
        if like.get("tablespace"):  # the database stays on the disk it was on
            parts.append(pgsql.SQL("TABLESPACE {}").format(ident(like["tablespace"])))
    if like:
        parts.append(pgsql.SQL("ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            lit(like["encoding"]), lit(like["collate"]), lit(like["ctype"])))
        if like.get("provider") == "i" and like.get("icu_locale"):
            parts.append(pgsql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(lit(like["icu_locale"])))
        elif like.get("provider") == "c":  # else template0's provider: ICU on a cluster made with it
            parts.append(pgsql.SQL("LOCALE_PROVIDER libc"))
    create = pgsql.SQL(" ").join(parts)
    sql.execute(create if then is None else pgsql.SQL(";\n").join([create, then]))


#: the session's database's encoding and locale, as CREATE DATABASE takes them: the backup
#: records the row in the manifest as ``database_locale`` (what ``pg_restore --create`` would
#: give a new database; a plain pg_dump leaves it out)
DATABASE_LOCALE_SQL = (
    "SELECT pg_catalog.pg_encoding_to_char(d.encoding) AS encoding, d.datcollate AS collate, d.datctype AS ctype, "
    "d.datlocprovider::text AS provider, d.daticulocale AS icu_locale "
    "FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()")

# the server's refusals of an encoding or locale it does not have (PostgreSQL 15
# src/backend/commands/dbcommands.c: check_encoding_locale_matches, check_locale;
# utils/adt/pg_locale.c: check_icu_locale)
_LOCALE_REFUSED = re.compile(r"invalid (?:LC_COLLATE |LC_CTYPE )?locale name|is not a valid encoding name|"
                             r"does not match locale|could not open collator|ICU is not supported|"
                             r"is not supported with ICU provider|ICU locale must be specified")


def create_new(sql: Sql, new: str, locale, like: dict | None = None, then: pgsql.Composable | None = None) -> str | None:
    """CREATE DATABASE ``new`` as :func:`create_like` ``like`` (None: the server's
    defaults), with the encoding and locale the archive's database had (``locale``: its
    manifest's ``database_locale``, what ``pg_restore --create`` would give; None: not
    asked for). A server that lacks that locale (or whose ICU does not know it), or a
    ``locale`` that is not a :data:`DATABASE_LOCALE_SQL` row, gives ``like``'s instead.
    ``then``: as :func:`create_like`'s, run once the database is made.

    Returns:
        None, or the warning that says the archive's locale was not used, and why.

    Raises:
        PostgresError: CREATE DATABASE failed for another reason.
    """
    fallback = "the server's defaults" if like is None else "the encoding and locale of the host's database"
    if locale is None:
        create_like(sql, new, like, then)
        return None
    if not (isinstance(locale, dict) and all(isinstance(locale.get(k), str) and locale[k]
                                             for k in ("encoding", "collate", "ctype"))):
        create_like(sql, new, like, then)
        return (f"the manifest's database_locale is not understood ({json.dumps(locale)[:200]}); the new database has "
                f"{fallback}")
    try:
        create_like(sql, new, {**(like or {}), **{k: locale.get(k) for k in
                                                   ("encoding", "collate", "ctype", "provider", "icu_locale")}}, then)
        return None
    except PostgresError as e:
        if not _LOCALE_REFUSED.search(str(e)):
            raise
        why = next((ln for ln in str(e).splitlines() if "ERROR:" in ln), str(e).splitlines()[0])
        why = why.split("ERROR:", 1)[-1].split(" | LINE ", 1)[0].strip()
    create_like(sql, new, like, then)
    icu = f", ICU locale {locale['icu_locale']}" if locale.get("provider") == "i" and locale.get("icu_locale") else ""
    return (f"the archive's database had encoding {locale['encoding']}, collation {locale['collate']}{icu}; this "
            f"server refused them ({why}), so the new database has {fallback}: text sorts and compares by it")


def locale_differs(sql: Sql, name: str, locale: dict | None) -> str | None:
    """A warning when database ``name`` lacks the archive's encoding or locale
    (``database_locale``), else None."""
    if not locale:
        return None
    have = db_info(sql, name) or {}
    keys = ("encoding", "collate", "ctype") + (("provider", "icu_locale") if locale.get("provider") else ())
    diff = [k for k in keys if (have.get(k) or None) != (locale.get(k) or None)]
    if not diff:
        return None
    return ("the new database has this server's default " + ", ".join(
        f"{k} {have.get(k)!s}" for k in diff) + "; the archive's database had " + ", ".join(
        f"{k} {locale.get(k)!s}" for k in diff) + ": text sorts and compares by this server's collation")


#: settings whose value is a list of names, each quoted on its own (pg_dump's
#: variable_is_guc_list_quote, src/bin/pg_dump/dumputils.c); any other value is one literal
GUC_LIST_QUOTE = frozenset({"local_preload_libraries", "search_path", "session_preload_libraries",
                            "shared_preload_libraries", "temp_tablespaces", "unix_socket_directories"})


def split_guc_list(value: str) -> list[str]:
    """The elements of a list setting as the server stores it (``app, "My Schema", public``),
    as PostgreSQL's SplitGUCList reads it (src/backend/utils/adt/varlena.c): separated
    by commas, white space around them ignored, ``"..."`` quoted with ``""`` for a quote."""
    out, i, n = [], 0, len(value)
    while True:
        while i < n and value[i].isspace():
            i += 1
        if i >= n:
            return out
        if value[i] == '"':
            j, item = i + 1, []
            while j < n:
                if value[j] == '"':
                    if j + 1 < n and value[j + 1] == '"':
                        item.append('"')
                        j += 2
                        continue
                    break
                item.append(value[j])
                j += 1
            out.append("".join(item))
            i = j + 1
        else:
            j = i
            while j < n and value[j] != "," and not value[j].isspace():
                j += 1
            out.append(value[i:j])
            i = j
        while i < n and value[i].isspace():
            i += 1
        if i < n and value[i] == ",":
            i += 1


def set_config_sql(target: pgsql.Composable, setting: str) -> pgsql.Composable:
    """``<target> SET name TO value`` for one ``name=value`` of pg_db_role_setting, as
    pg_dump writes it (makeAlterConfigCommand): a list setting element by element."""
    name, _, value = setting.partition("=")
    if name.lower() in GUC_LIST_QUOTE:
        items = split_guc_list(value)
        val = pgsql.SQL(", ").join(lit(v) for v in items) if items else lit("")
    else:
        val = lit(value)
    return pgsql.SQL("{} SET {} TO {}").format(target, ident(name), val)


_ACL_ITEM = re.compile(r'^((?:"(?:[^"]|"")*"|[^=]*))=([A-Za-z*]*)/(.*)$')
_DB_PRIVS = {"C": "CREATE", "T": "TEMPORARY", "c": "CONNECT"}


def acl_items(acl) -> list[tuple[str | None, str, bool]]:
    """``aclitem`` texts of a database -> ``(grantee or None for PUBLIC, privilege, grant option)``."""
    out = []
    for item in acl or []:
        m = _ACL_ITEM.match(item)
        if not m:
            continue
        g = m.group(1)
        grantee = (g[1:-1].replace('""', '"') if g.startswith('"') else g) or None
        privs = m.group(2)
        for k, ch in enumerate(privs):
            if ch in _DB_PRIVS:
                out.append((grantee, _DB_PRIVS[ch], privs[k + 1:k + 2] == "*"))
    return out


def database_properties(maint: Sql, name: str) -> dict | None:
    """The properties of database ``name`` (:func:`database_properties_sql`), or None."""
    rows = maint.query(database_properties_sql(name))
    return rows[0] if rows else None


def apply_properties(maint: Sql, name: str, props: dict, existing: frozenset | None) -> list[str]:
    """Give database ``name`` the settings, role settings and privileges of ``props``
    (:func:`database_properties_sql`) after its data is loaded. The comment comes with
    the swap. ``existing``: the roles of this cluster, whose absence skips a role's
    settings and privileges (None: none skipped). Returns warnings: a setting or
    privilege the restoring user may not set, with the command that sets it, or one
    naming a role missing here (skipped)."""
    warnings: list[str] = []
    db = ident(name)

    def run(stmt: pgsql.Composable, what: str) -> None:
        try:
            maint.execute(stmt)
        except BigskiesError as e:
            text = stmt.as_string() if hasattr(stmt, "as_string") else str(stmt)
            warnings.append(f"{what} was not restored ({str(e).splitlines()[-1][:200]}); run as a superuser: "
                            f"{text.replace(ident(name).as_string(), '<database>')}")
    for setting in props.get("settings") or []:
        run(set_config_sql(pgsql.SQL("ALTER DATABASE {}").format(db), setting), f"setting {setting!r}")
    for rs in props.get("role_settings") or []:
        if existing is not None and rs["role"] not in existing:
            warnings.append(f"settings of role {rs['role']!r} in the database skipped (no such role here)")
            continue
        for setting in rs.get("settings") or []:
            run(set_config_sql(pgsql.SQL("ALTER ROLE {} IN DATABASE {}").format(ident(rs["role"]), db), setting),
                f"setting {setting!r} of role {rs['role']!r}")
    if props.get("acl") is not None:
        stmts = [pgsql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db)]  # as pg_dump --create does
        owner = maint.value(pgsql.SQL("SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database "
                                      "WHERE datname = {}").format(lit(name)))
        if owner:
            stmts.append(pgsql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(db, ident(owner)))
        for grantee, priv, grant_option in acl_items(props["acl"]):
            if grantee is not None and existing is not None and grantee not in existing:
                warnings.append(f"{priv} on the database for role {grantee!r} skipped (no such role here)")
                continue
            stmts.append(pgsql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                pgsql.SQL(priv), db, pgsql.SQL("PUBLIC") if grantee is None else ident(grantee),
                pgsql.SQL(" WITH GRANT OPTION" if grant_option else "")))
        run(pgsql.SQL("BEGIN; {}; COMMIT").format(pgsql.SQL("; ").join(stmts)), "the database's privileges")
    for w in warnings:
        report.note(f"warning: {w}")
    return warnings


_LOCAL_SERVER = re.compile(r"^(?:localhost|127\.\d+\.\d+\.\d+|::1|/.*)$")


def server_free_bytes(access: PostgresAccess, maint: Sql) -> tuple[int | None, str]:
    """Free bytes of the file system holding the server's data directory, seen where the
    server runs (this machine, the SSH host, or inside the container), and the
    directory; or ``(None, why it cannot be seen)``."""
    host, pg = access.host, access.host.postgres
    try:
        datadir = maint.value("SELECT current_setting('data_directory')")
    except PostgresError:
        return None, ("this role may not read the server's data_directory (a superuser or a member of "
                      "pg_read_all_settings may)")
    if host.container:
        c = host.container
        r = access.runner.run([*c.engine_argv, "exec", c.name, "stat", "-f", "-c", "%a %S", "--", datadir],
                              check=False)
        try:
            a, b = r.text.split()
            return int(a) * int(b), datadir
        except ValueError:
            return None, f"stat of {datadir} in container {c.name} failed: {tail(r.stderr, 200)}"
    if pg.host and not _LOCAL_SERVER.match(pg.host):
        return None, f"the server ({pg.host}) is not on {'the SSH host' if host.is_remote else 'this machine'}"
    free = access.runner.free_bytes(datadir)
    return (free, datadir) if free is not None else (None, f"{datadir} cannot be read here")


#: Why a restore's space is not compared (:func:`restore_space`'s ``needed`` is None): the
#: one wording of the note, the --check line and the plan's check detail.
SIZE_UNKNOWN = "the backup did not record its database's size"


def restore_space(access: PostgresAccess, maint: Sql, database_bytes: int | None) -> dict:
    """The free space a restore needs on the server and what it has (read-only; the one
    computation behind :func:`check_space` and ``db.restore --check``): the backed-up
    database's size (``database_bytes``, from the manifest), plus the WAL the load writes
    before a checkpoint recycles it (up to ``max_wal_size``), plus 10%.

    Returns:
        ``{"database_bytes", "needed" (bytes or None: size unknown), "free" (bytes or None:
        cannot be seen), "where" (the data directory, or why it cannot be seen),
        "enough" (bool, or None when not known)}``.
    """
    out = {"database_bytes": database_bytes, "needed": None, "free": None, "where": None, "enough": None}
    if database_bytes is None:  # the free space is still shown; only the comparison is not made
        out["free"], out["where"] = server_free_bytes(access, maint)
        return out
    size = int(database_bytes)
    wal = maint.value("SELECT pg_catalog.pg_size_bytes(current_setting('max_wal_size'))") or 0
    out["needed"] = int(size + min(size, wal) + size // 10)
    out["free"], out["where"] = server_free_bytes(access, maint)
    if out["free"] is not None:
        out["enough"] = out["free"] >= out["needed"]
    return out


def check_space(access: PostgresAccess, maint: Sql, info) -> dict:
    """Refuse before anything is created when the server lacks the room for the side
    database (:func:`restore_space`). A server that runs out of space PANICs and stays
    down until space is freed. Returns :func:`restore_space`'s figures.

    Raises:
        SafetyError: too little free space (exit 3), naming both figures and
            ``--skip-space-check``.
    """
    from bigskies_ops.text import human_bytes
    sp = restore_space(access, maint, (getattr(info, "manifest", None) or {}).get("database_bytes"))
    if sp["needed"] is None or sp["free"] is None:
        report.note(f"note: free space on the server not checked: {sp['where']}"
                    if sp["needed"] is not None else
                    f"note: free space on the server not checked ({SIZE_UNKNOWN})")
        return sp
    if not sp["enough"]:
        raise SafetyError(f"the restore needs about {human_bytes(sp['needed'])} on the server "
                          f"({human_bytes(sp['database_bytes'])} of database, WAL and 10% headroom) but "
                          f"{sp['where']} has {human_bytes(sp['free'])} free. Nothing was changed; free space "
                          f"there, or pass --skip-space-check if you know better")
    return sp


def check_rights(maint: Sql, db: str | None, old: dict | None) -> None:
    """Refuse before anything is loaded when the connecting role cannot finish the
    restore: it creates the side database (CREATEDB), and to swap it in renames and
    later drops the current one (its owner, or a member of the owner's role;
    PostgreSQL docs, ALTER DATABASE ... RENAME and DROP DATABASE). ``db``: the database
    replaced (None for a new ``--target-db``); ``old``: :func:`db_info` of it.

    Raises:
        SafetyError: a right is missing (exit 3); the message names it and who has it.
    """
    me = maint.query("SELECT current_user AS name, rolsuper AS su, rolcreatedb AS createdb "
                     "FROM pg_catalog.pg_roles WHERE rolname = current_user")[0]
    if me["su"]:
        return
    if not me["createdb"]:
        raise SafetyError(f"role {me['name']!r} may not create databases (no CREATEDB), so it cannot build the "
                          f"side database a restore loads into. Nothing was changed; restore as the database's "
                          f"owner with CREATEDB or a superuser, or run: ALTER ROLE {ident(me['name']).as_string()} "
                          f"CREATEDB")
    if db is not None and old is not None:
        # USAGE, not MEMBER: a NOINHERIT member has not the owner's rights without SET ROLE
        owns = maint.value(pgsql.SQL("SELECT pg_catalog.pg_has_role(current_user, {}, 'USAGE')").format(
            lit(old["owner"])))
        if not owns:
            raise SafetyError(f"role {me['name']!r} does not own database {db!r} (its owner is {old['owner']!r}), "
                              f"so it could load the side database but not swap it in (renaming and dropping a "
                              f"database needs its owner). Nothing was changed; restore as {old['owner']!r} or a "
                              f"superuser, or GRANT {ident(old['owner']).as_string()} TO "
                              f"{ident(me['name']).as_string()}")


def drop_db(sql: Sql, name: str) -> None:
    """DROP DATABASE ``name`` (if it exists), its connections ended. Subscriptions in it
    are dropped first without touching their publisher (``slot_name = NONE``): the
    server refuses to drop a database that holds one (PostgreSQL docs, DROP SUBSCRIPTION)."""
    subs = sql.query(pgsql.SQL(
        "SELECT s.subname AS name FROM pg_catalog.pg_subscription s JOIN pg_catalog.pg_database d "
        "ON d.oid = s.subdbid WHERE d.datname = {}").format(lit(name)))
    if subs:
        stmts = [pgsql.SQL("SET default_transaction_read_only = off")]
        for r in subs:
            sub = ident(r["name"])
            stmts += [pgsql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(sub),
                      pgsql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(sub),
                      pgsql.SQL("DROP SUBSCRIPTION {}").format(sub)]
        sql.access.sql(name).execute(pgsql.SQL(";\n").join(stmts))
    for attempt in range(3):
        try:
            sql.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident(name)))
            return
        except PostgresError as e:
            # FORCE signals every backend on it, autovacuum too, which a non-superuser may not;
            # a plain DROP cancels autovacuum itself (PostgreSQL docs, DROP DATABASE)
            if "must be" not in str(e) and "being accessed" not in str(e) or attempt == 2:
                raise
            try:
                # our own sessions (a killed load's backend may still be busy with buffered
                # rows), then a plain DROP, which cancels autovacuum itself
                sql.query(pgsql.SQL(
                    "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
                    "WHERE datname = {} AND backend_type = 'client backend' AND usename = current_user "
                    "AND pid <> pg_catalog.pg_backend_pid()").format(lit(name)))
                time.sleep(0.5)
                sql.execute(pgsql.SQL("DROP DATABASE IF EXISTS {}").format(ident(name)))
                return
            except PostgresError:
                time.sleep(1)


def database_properties_sql(database: str | None = None) -> pgsql.Composable:
    """What a plain ``pg_dump`` (without ``--create``) leaves out of the archive but the
    database had: its settings (``ALTER DATABASE ... SET``), its roles' settings in it
    (``ALTER ROLE ... IN DATABASE ... SET``), its privileges, owner and comment (pg_dump
    docs, ``--create``; pg_dumpall dumps the role settings). The backup records the row
    in the manifest as ``database_properties``; a restore gives them back
    (:func:`apply_properties`). Settings are the server's own ``name=value`` strings
    (pg_db_role_setting), privileges the ``aclitem`` texts (None: the defaults).

    Args:
        database: the database to describe (default: the session's own).
    """
    return pgsql.SQL(
        "SELECT (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s "
        "        WHERE s.setdatabase = d.oid AND s.setrole = 0) AS settings, "
        "  (SELECT coalesce(json_agg(json_build_object('role', r.rolname, 'settings', s.setconfig) "
        "                            ORDER BY r.rolname), '[]') "
        "   FROM pg_catalog.pg_db_role_setting s JOIN pg_catalog.pg_roles r ON r.oid = s.setrole "
        "   WHERE s.setdatabase = d.oid) AS role_settings, "
        "  d.datacl::text[] AS acl, pg_catalog.pg_get_userbyid(d.datdba) AS owner, "
        "  pg_catalog.shobj_description(d.oid, 'pg_database') AS comment "
        "FROM pg_catalog.pg_database d WHERE d.datname = {}").format(
            pgsql.SQL("current_database()") if database is None else lit(database))


MIGRATION_HEAD_SQL = """
SELECT to_regclass('public.schema_migrations') IS NOT NULL AS present
"""


def migration_head(session_or_sql) -> dict | None:
    """The newest row of ``schema_migrations`` (version, name) or None when absent."""
    if not session_or_sql.query(MIGRATION_HEAD_SQL)[0]["present"]:
        return None
    cols = {r["column_name"] for r in session_or_sql.query(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name = 'schema_migrations'")}
    name_col = "name" if "name" in cols else None
    rows = session_or_sql.query(
        "SELECT version::text AS version" + (", name" if name_col else ", NULL::text AS name")
        + " FROM public.schema_migrations ORDER BY version DESC LIMIT 1")
    if not rows:
        return {"version": None, "name": None, "count": 0}
    cnt = session_or_sql.query("SELECT count(*) AS n FROM public.schema_migrations")[0]["n"]
    return {"version": rows[0]["version"], "name": rows[0]["name"], "count": cnt}
