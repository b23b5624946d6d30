"""The fidelity suite's own view of a database, with psql and pg_dump only (CONTRACTS.md 7).

:func:`snapshot` returns one dict per database; :func:`differences` lists what
differs between two of them, one readable line per difference.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
from typing import Callable

BINDIR = "/usr/lib/postgresql/15/bin"

# Objects made by users (and extensions), not by initdb (FirstNormalObjectId).
USER_OID = 16384

# psql script: one JSON document per database. Per-table rows and sequence values need
# one query per object, generated and run by \gexec; everything else comes from catalogs.
_PRELUDE = r"""
SET search_path = pg_catalog;
SET default_transaction_read_only = off;
SET statement_timeout = 0;
\pset tuples_only on
\pset format unaligned
"""

_ROWS_GEN = r"""
WITH enum_hash AS (  -- hash-partitioned on an enum key: rows go where the new enum oids hash to
  SELECT pt.partrelid AS relid FROM pg_partitioned_table pt
  WHERE pt.partstrat = 'h' AND EXISTS (SELECT 1 FROM unnest(pt.partattrs::int2[]) k
        JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = k
        JOIN pg_type ty ON ty.oid = a.atttypid WHERE ty.typtype = 'e'))
SELECT format($q$SELECT json_build_object('kind','table','name',%L,'rows',count(*),'md5',coalesce(md5(string_agg(t::text, E'\n' ORDER BY t::text)), ''))::text FROM %s %I.%I t$q$,
              format('%I.%I', n.nspname, c.relname) || CASE WHEN c.relkind = 'p' THEN ' (all partitions)' ELSE '' END,
              CASE WHEN c.relkind = 'p' THEN '' ELSE 'ONLY' END, n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
  AND ((c.relkind = 'r' OR (c.relkind = 'm' AND c.relispopulated))
       AND NOT EXISTS (SELECT 1 FROM pg_partition_ancestors(c.oid) a WHERE a.relid IN (SELECT relid FROM enum_hash))
       -- a partition tree hashed on an enum is compared as a whole, from its topmost such table
       OR c.oid IN (SELECT relid FROM enum_hash) AND NOT EXISTS (SELECT 1 FROM pg_partition_ancestors(c.oid) a
          WHERE a.relid <> c.oid AND a.relid IN (SELECT relid FROM enum_hash)))
ORDER BY 1 \gexec
SELECT format($q$SELECT json_build_object('kind','sequence','name',%L,'last_value',last_value,'is_called',is_called)::text FROM %I.%I$q$,
              format('%I.%I', n.nspname, c.relname), n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' ORDER BY 1 \gexec
"""

# One row, one JSON object: catalog facts keyed by stable names (never oids).
_CATALOG = r"""
WITH
 rel AS (SELECT c.*, format('%I.%I', n.nspname, c.relname) AS qname FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid >= 16384 AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'),
 fn AS (SELECT p.*, p.oid::regprocedure::text AS qname FROM pg_proc p WHERE p.oid >= 16384),
 nsp AS (SELECT n.* FROM pg_namespace n WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
         AND n.nspname !~ '^pg_(toast|temp)'),
 typ AS (SELECT t.*, format('%I.%I', n.nspname, t.typname) AS qname FROM pg_type t
         JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid >= 16384
         AND n.nspname !~ '^pg_(toast|temp)' AND n.nspname <> 'pg_catalog')
SELECT json_build_object(
 'kind', 'catalog',
 'database', json_build_object(
    'owner', (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()),
    'acl', (SELECT datacl::text[] FROM pg_database WHERE datname = current_database()),
    'comment', shobj_description((SELECT oid FROM pg_database WHERE datname = current_database()), 'pg_database'),
    'settings', (SELECT json_object_agg(coalesce(r.rolname, ''), s.setconfig)
                 FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole
                 WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()))),
 'acl', json_build_object(
    'relations', (SELECT json_object_agg(qname, relacl::text[]) FROM rel WHERE relacl IS NOT NULL),
    'columns', (SELECT json_object_agg(rel.qname || '.' || quote_ident(a.attname), a.attacl::text[])
                FROM pg_attribute a JOIN rel ON rel.oid = a.attrelid WHERE a.attacl IS NOT NULL),
    'functions', (SELECT json_object_agg(qname, proacl::text[]) FROM fn WHERE proacl IS NOT NULL),
    'schemas', (SELECT json_object_agg(nspname, nspacl::text[]) FROM nsp WHERE nspacl IS NOT NULL),
    'types', (SELECT json_object_agg(qname, typacl::text[]) FROM typ WHERE typacl IS NOT NULL),
    'languages', (SELECT json_object_agg(lanname, lanacl::text[]) FROM pg_language WHERE lanacl IS NOT NULL),
    'default_privileges', (SELECT json_object_agg(pg_get_userbyid(d.defaclrole) || ' in '
                              || coalesce(n.nspname, '(all schemas)') || ' on ' || d.defaclobjtype::text, d.defaclacl::text[])
                           FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace),
    'large_objects', (SELECT json_object_agg(oid, lomacl::text[]) FROM pg_largeobject_metadata WHERE lomacl IS NOT NULL)),
 'owners', json_build_object(
    'relations', (SELECT json_object_agg(qname, pg_get_userbyid(relowner)) FROM rel WHERE relkind NOT IN ('i', 'I', 'c', 't')),
    'functions', (SELECT json_object_agg(qname, pg_get_userbyid(proowner)) FROM fn),
    'schemas', (SELECT json_object_agg(nspname, pg_get_userbyid(nspowner)) FROM nsp),
    'types', (SELECT json_object_agg(qname, pg_get_userbyid(typowner)) FROM typ WHERE typelem = 0 OR typcategory <> 'A'),
    'collations', (SELECT json_object_agg(collname, pg_get_userbyid(collowner)) FROM pg_collation WHERE oid >= 16384),
    'extensions', (SELECT json_object_agg(extname, pg_get_userbyid(extowner)) FROM pg_extension),
    'publications', (SELECT json_object_agg(pubname, pg_get_userbyid(pubowner)) FROM pg_publication),
    'event_triggers', (SELECT json_object_agg(evtname, pg_get_userbyid(evtowner)) FROM pg_event_trigger),
    'large_objects', (SELECT json_object_agg(oid, pg_get_userbyid(lomowner)) FROM pg_largeobject_metadata)),
 'comments', (SELECT json_object_agg(pg_describe_object(classoid, objoid, objsubid), description)
              FROM pg_description WHERE objoid >= 16384 OR (classoid = 'pg_namespace'::regclass AND objoid = 2200)),
 'triggers', (SELECT json_object_agg(rel.qname || ' ' || quote_ident(t.tgname), t.tgenabled)
              FROM pg_trigger t JOIN rel ON rel.oid = t.tgrelid WHERE NOT t.tgisinternal),
 'event_triggers', (SELECT json_object_agg(evtname, json_build_array(evtevent, evtenabled, evtfoid::regproc::text, evttags))
                    FROM pg_event_trigger),
 'subscriptions', (SELECT json_object_agg(subname, json_build_object('enabled', subenabled, 'owner', pg_get_userbyid(subowner),
                       'slot', subslotname, 'publications', subpublications, 'conninfo', subconninfo))
                   FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())),
 'matviews_populated', (SELECT json_object_agg(qname, relispopulated) FROM rel WHERE relkind = 'm'),
 'large_objects', (SELECT json_object_agg(oid, md5(lo_get(oid))) FROM pg_largeobject_metadata),
 'extensions', (SELECT json_object_agg(extname, extversion || ' in ' || extnamespace::regnamespace::text) FROM pg_extension)
)::text;
"""

_RESTRICT = re.compile(r"^\\(un)?restrict \S+$", re.M)


def psql_script(host: str, port: int, database: str, script: str, user: str = "bigskies") -> str:
    """Run ``script`` with psql (stop on error); return stdout."""
    r = subprocess.run([f"{BINDIR}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", str(port),
                        "-U", user, "-d", database], input=script, capture_output=True, text=True,
                       env={**os.environ, "PGPASSWORD": "", "PGOPTIONS": ""})
    if r.returncode != 0:
        raise AssertionError(f"test psql failed on {database}: {r.stderr[-2000:]}")
    return r.stdout


def schema_dump(host: str, port: int, database: str, user: str = "bigskies") -> str:
    """``pg_dump --schema-only`` text with the per-run ``\\restrict`` keys and the database name neutralised."""
    r = subprocess.run([f"{BINDIR}/pg_dump", "--schema-only", "-h", host, "-p", str(port), "-U", user, "-d", database],
                       capture_output=True, text=True, env={**os.environ, "PGPASSWORD": ""})
    if r.returncode != 0:
        raise AssertionError(f"test pg_dump failed on {database}: {r.stderr[-2000:]}")
    text = _RESTRICT.sub(r"\\\1restrict KEY", r.stdout)
    for form in (database, '"%s"' % database.replace('"', '""')):
        text = text.replace(form, "<DATABASE>")
    return text


SNAPSHOT_SCRIPT = _PRELUDE + _ROWS_GEN + _CATALOG


def snapshot(host: str, port: int, database: str, *, schema: bool = True,
             run: Callable[[str], str] | None = None) -> dict:
    """Everything the suite compares about ``database`` on the cluster at ``host``:``port``.

    ``run(script) -> stdout`` replaces the local psql (e.g. psql inside a container).
    Returns ``{"schema": text, "tables": {name: "rows md5"}, "sequences": {...},
    "database": {owner, acl, comment, settings}, "acl": {...}, "owners": {...}, ...}``.
    """
    out = (run or (lambda script: psql_script(host, port, database, script)))(SNAPSHOT_SCRIPT)
    snap: dict = {"tables": {}, "sequences": {}}
    for line in out.splitlines():
        if not line.strip():
            continue
        doc = json.loads(line)
        kind = doc.pop("kind")
        if kind == "table":
            snap["tables"][doc["name"]] = f"{doc['rows']} {doc['md5']}"
        elif kind == "sequence":
            snap["sequences"][doc["name"]] = f"last_value={doc['last_value']} is_called={doc['is_called']}"
        else:
            snap.update(doc)
    if schema:
        snap["schema"] = schema_dump(host, port, database)
    return snap


def differences(got: dict, want: dict, path: str = "") -> list[str]:
    """Readable lines naming each key where ``got`` differs from ``want`` (schema as a unified diff)."""
    lines: list[str] = []
    if isinstance(got, dict) and isinstance(want, dict):
        for k in sorted(set(got) | set(want), key=str):
            p = f"{path}.{k}" if path else str(k)
            if k not in got:
                lines.append(f"{p}: missing (want {want[k]!r})"[:600])
            elif k not in want:
                lines.append(f"{p}: unexpected {got[k]!r}"[:600])
            else:
                lines += differences(got[k], want[k], p)
    elif isinstance(got, str) and isinstance(want, str) and path == "schema" and got != want:
        diff = difflib.unified_diff(want.splitlines(), got.splitlines(), "want", "got", n=1, lineterm="")
        lines.append(f"{path}:\n" + "\n".join(list(diff)[:80]))
    elif got != want:
        lines.append(f"{path}: got {got!r}, want {want!r}"[:600])
    return lines
