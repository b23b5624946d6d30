"""The plain-SQL scanner: pg_dump's SQL read statement by statement, the way psql reads it.

One lexer (:class:`OwnerAclFilter`) serves the backup (which tables have COPY data,
and how many rows), the restore (the roles a statement names, and what to do with a
statement naming a role missing on the target: :class:`RolePolicy`) and the parallel
loader (whether the schema makes a parallel load unsafe: :class:`StatementFacts`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from bigskies_ops.archives.fkeys import ReferencedUniqueIndexes
from bigskies_ops.archives.sqltokens import keyword, last_top, qualified_at, tokens, unquote
from bigskies_ops.errors import ArchiveError


#: role names that are not roles (PostgreSQL docs, GRANT: "PUBLIC"; role specifications)
_PSEUDO_ROLES = frozenset({b"PUBLIC", b"CURRENT_USER", b"SESSION_USER", b"CURRENT_ROLE"})
#: statement heads that can name a role (owner, grantee, grantor, policy or mapping role)
_ROLE_HEADS = re.compile(rb"\A(?:ALTER|GRANT|REVOKE|SET\s+SESSION\s+AUTHORIZATION|CREATE\s+POLICY"
                         rb"|CREATE\s+USER\s+MAPPING)\b", re.I)
#: statement heads whose expressions the server evaluates while table data is loaded
#: (generated columns, CHECK constraints, domain checks, defaults) or, for a parallel
#: pg_restore, as soon as one table's data is in (index expressions and predicates,
#: triggers of partitioned tables, which fire on every partition)
_LOAD_HEADS = re.compile(rb"\A(?:CREATE\s+(?:UNLOGGED\s+)?TABLE|CREATE\s+DOMAIN|ALTER\s+TABLE|ALTER\s+DOMAIN)\b",
                         re.I)
_POST_HEADS = re.compile(rb"\A(?:CREATE\s+(?:UNIQUE\s+)?INDEX|CREATE\s+(?:CONSTRAINT\s+)?TRIGGER)\b", re.I)
_EXT_HEAD = re.compile(rb"\ACREATE\s+EXTENSION\b", re.I)
_OPERATOR_HEAD = re.compile(rb"\ACREATE\s+OPERATOR\s+([^\s.]+)\.(\S+?)\s*\(", re.I)
_CAST_HEAD = re.compile(rb"\ACREATE\s+CAST\b.*\bWITH\s+FUNCTION\b", re.I | re.S)
_FUNC_HEADS = re.compile(rb"\ACREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE|AGGREGATE)\b", re.I)


def _role_list(toks: list[bytes], i: int, codec: str = "utf-8") -> list[str]:
    """Role names of a comma-separated list starting at ``toks[i]`` (PUBLIC and the like left out)."""
    out = []
    while i < len(toks):
        t = toks[i]
        if t[:1] not in (b'"', b"'") and not (t[:1].isalpha() or t[:1] == b"_" or t[0] >= 0x80):
            break
        if keyword(t) not in _PSEUDO_ROLES:
            out.append(unquote(t, codec))
        if i + 1 < len(toks) and toks[i + 1] == b",":
            i += 2
            continue
        break
    return out


def statement_roles(stmt: bytes, codec: str = "utf-8") -> tuple[str | None, list[str]]:
    """``(kind, roles)``: the roles a pg_dump statement names, and what kind of statement it is.

    Kinds: ``owner`` (``ALTER ... OWNER TO r``), ``acl`` (``GRANT ... TO r``, ``REVOKE ...
    FROM r``; pg_dump writes one grantee each), ``default_acl`` (``ALTER DEFAULT
    PRIVILEGES FOR ROLE r ...``), ``session`` (``SET SESSION AUTHORIZATION r``: pg_dump's
    way to record a grant made by another grantor), ``policy`` (``CREATE POLICY ... TO
    r1, r2``), ``user_mapping``; ``(None, [])`` for any other statement. ``codec``: the
    dump's client encoding (:func:`unquote`).
    """
    if not _ROLE_HEADS.match(stmt):
        return None, []
    toks = tokens(stmt)
    w = [keyword(t) for t in toks]
    if w[:1] == [b"GRANT"]:
        i = last_top(toks, b"TO")
        return ("acl", _role_list(toks, i + 1, codec)) if i > 0 else (None, [])
    if w[:1] == [b"REVOKE"]:
        i = last_top(toks, b"FROM")
        return ("acl", _role_list(toks, i + 1, codec)) if i > 0 else (None, [])
    if w[:3] == [b"ALTER", b"DEFAULT", b"PRIVILEGES"]:
        roles: list[str] = []
        if w[3:5] in ([b"FOR", b"ROLE"], [b"FOR", b"USER"]):
            roles += _role_list(toks, 5, codec)
        for j, x in enumerate(w):
            if x in (b"GRANT", b"REVOKE"):
                i = last_top(toks, b"TO" if x == b"GRANT" else b"FROM", j)
                if i > 0:
                    roles += _role_list(toks, i + 1, codec)
                break
        return "default_acl", roles
    if w[:1] == [b"ALTER"] and len(w) >= 4 and w[-3:-1] == [b"OWNER", b"TO"]:
        return "owner", _role_list(toks, len(toks) - 1, codec)
    if w[:3] == [b"SET", b"SESSION", b"AUTHORIZATION"]:
        return "session", ([] if w[3:4] == [b"DEFAULT"] else _role_list(toks, 3, codec))
    if w[:2] == [b"CREATE", b"POLICY"]:
        on = w.index(b"ON") if b"ON" in w else len(w)
        for i in range(on, len(w)):
            if w[i] in (b"USING", b"WITH"):
                break
            if w[i] == b"TO":
                return "policy", _role_list(toks, i + 1, codec)
        return "policy", []
    if w[:4] == [b"CREATE", b"USER", b"MAPPING", b"FOR"] or w[:7] == [b"CREATE", b"USER", b"MAPPING", b"IF", b"NOT",
                                                                    b"EXISTS", b"FOR"]:
        return "user_mapping", _role_list(toks, w.index(b"FOR") + 1, codec)
    return None, []


class StatementFacts:
    """What a dump's DDL tells about loading it in parallel (PostgreSQL docs, pg_restore
    ``--jobs``: dependencies hidden in function bodies are invisible to the scheduler).

    A function defined by the dump (``CREATE FUNCTION/PROCEDURE/AGGREGATE``; functions
    of extensions are not in a dump) may read other tables. Where such a function is
    called while data is loaded -- a generated column, a CHECK constraint, a domain
    check or a default (:data:`_LOAD_HEADS`) -- a load that fills tables concurrently
    can compute other values than PostgreSQL's serial load of the same archive, which
    fills them one after another in file order. ``load_hazards`` lists those uses;
    ``post_hazards`` the ones that matter only to ``pg_restore --jobs``, which builds an
    index as soon as its own table's data is in (an index expression or predicate) and
    creates a partitioned table's triggers before its partitions' data (the trigger
    fires on every partition). pg_dump writes every name outside pg_catalog with its
    schema (it dumps with an empty search_path), so a call reads ``schema.name(``.
    """

    #: the rules' edition, recorded in a custom backup's manifest beside its hazards
    #: (``parallel_hazards_version``): hazards found by older rules are read again. Bump it
    #: whenever a rule can find a hazard the previous edition missed (2: foreign keys with
    #: two candidate indexes, :class:`bigskies_ops.archives.fkeys.ReferencedUniqueIndexes`)
    RULES = 2

    def __init__(self):
        self.functions: set[tuple[str, str]] = set()
        self.partitioned: set[tuple[str, str]] = set()
        self.load_hazards: list[str] = []
        self.post_hazards: list[str] = []
        self.foreign_keys = ReferencedUniqueIndexes(self.post_hazards)  # adds its hazards to post_hazards
        self.extensions: set[str] = set()  # CREATE EXTENSION names
        self.operators: set[tuple[bytes, bytes]] = set()  # (schema, symbol) of CREATE OPERATOR
        self.user_casts = False  # a CREATE CAST ... WITH FUNCTION of the dump's own function
        self.security_definer: set[tuple[str, str]] = set()

    def feed(self, stmt: bytes) -> None:
        """Read one statement (without the comments before it)."""
        if _EXT_HEAD.match(stmt):
            toks = [t for t in tokens(stmt)[2:] if keyword(t) not in (b"IF", b"NOT", b"EXISTS")]
            if toks:
                self.extensions.add(unquote(toks[0]))
            return
        if _FUNC_HEADS.match(stmt):
            toks = tokens(stmt)
            i = next((j for j, t in enumerate(toks) if keyword(t) in (b"FUNCTION", b"PROCEDURE", b"AGGREGATE")), -1)
            q = qualified_at(toks, i + 1) if i >= 0 else None
            if q:
                self.functions.add(q)
                w = [keyword(t) for t in toks]
                if any(w[k:k + 2] == [b"SECURITY", b"DEFINER"] for k in range(len(w) - 1)):
                    self.security_definer.add(q)
            return
        m = _OPERATOR_HEAD.match(stmt)
        if m:
            self.operators.add((m.group(1), m.group(2)))
            return
        if _CAST_HEAD.match(stmt):
            self.user_casts = True
            return
        load = _LOAD_HEADS.match(stmt)
        if not load and not _POST_HEADS.match(stmt):
            return
        toks = tokens(stmt)
        w = [keyword(t) for t in toks]
        self.foreign_keys.feed(toks, w)
        if load and w[:2] == [b"CREATE", b"TABLE"] or w[:3] == [b"CREATE", b"UNLOGGED", b"TABLE"]:
            if last_top(toks, b"PARTITION") > 0 and b"BY" in w:
                q = qualified_at(toks, w.index(b"TABLE") + 1)
                if q:
                    self.partitioned.add(q)
        calls = self._calls(toks)
        if not calls:
            return
        what = " ".join(unquote(t) if t[:1] == b'"' else t.decode("utf-8", "replace").upper()
                        for t in toks[:2]) + " " + self._object(toks, w)
        uses = ", ".join(f"operator {n}" if s == "operator" else "a cast of the dump" if s == "cast"
                         else f"{s}.{n}()" for s, n in sorted(calls))
        if load:
            self.load_hazards.append(f"{what} calls {uses}")
        elif w[1] == b"INDEX" or w[2:3] == [b"INDEX"]:
            self.post_hazards.append(f"{what} calls {uses}")
        else:  # a trigger: only on a partitioned table does it fire while data is loaded
            on = w.index(b"ON") if b"ON" in w else -1
            q = qualified_at(toks, on + 1) if on > 0 else None
            if q in self.partitioned:
                self.post_hazards.append(f"{what} on partitioned table {q[0]}.{q[1]} calls {uses}")

    def _calls(self, toks: list[bytes]) -> set[tuple[str, str]]:
        # an operator or a cast of the dump runs its function too: pg_dump writes a
        # non-pg_catalog operator as OPERATOR(schema.sym)
        raw = b" ".join(toks)
        out = {("operator", (a + b"." + o).decode("utf-8", "replace"))
               for a, o in re.findall(rb"OPERATOR \( (\S+) \. ([^()\s][^()]*?) \)", raw)
               if (a, o.replace(b" ", b"")) in self.operators}
        if self.user_casts and (b":" in toks or b"CAST" in (keyword(t) for t in toks)):
            out.add(("cast", "of the dump"))
        for i in range(len(toks) - 3):
            if toks[i + 3] == b"(":
                q = qualified_at(toks, i)
                if q in self.functions:
                    out.add(q)
        return out

    @staticmethod
    def _object(toks: list[bytes], w: list[bytes]) -> str:
        for i, x in enumerate(w[:6]):
            if x in (b"TABLE", b"DOMAIN", b"INDEX", b"TRIGGER") and i + 1 < len(toks):
                j = i + 1
                while j < len(w) and w[j] in (b"ONLY", b"IF", b"NOT", b"EXISTS", b"CONCURRENTLY"):
                    j += 1
                q = qualified_at(toks, j)
                return f"{q[0]}.{q[1]}" if q else (unquote(toks[j]) if j < len(toks) else "")
        return ""


class MissingRolesError(ArchiveError):
    """A statement of the archive names roles that do not exist on the target (exit 3):
    loading it would fail, or give other owners and privileges than the source had."""

    exit_code = 3

    def __init__(self, roles: list[str], statement: str = "", widening: bool = False):
        self.roles = sorted(set(roles))
        if widening:
            super().__init__(f"the archive gives a view or a SECURITY DEFINER function to role(s) "
                             f"{', '.join(repr(r) for r in self.roles)}, missing here ({statement}): owned by the "
                             f"restoring user instead, it would run with that user's rights for everyone who may "
                             f"use it (a superuser passes row-level security), so --skip-missing-roles cannot map "
                             f"it. Nothing was changed; create the roles first (--roles, or CREATE ROLE)")
        else:
            super().__init__(missing_roles_message(self.roles, statement))


def missing_roles_message(roles, statement: str = "", host: str | None = None) -> str:
    names = ", ".join(repr(r) for r in sorted(roles))
    where = f" on {host}" if host else " on the target server"
    at = f" (first named by: {statement})" if statement else ""
    return (f"the archive names {len(roles)} role(s) that do not exist{where}: {names}{at}. Nothing was changed. "
            f"Either create them first (--roles creates them from the backup's <archive>.roles.sql), or pass "
            f"--skip-missing-roles: objects of those roles are then owned by the restoring user and only the "
            f"statements naming them are skipped (no privilege is widened)")


@dataclass(frozen=True)
class RolePolicy:
    """What a restore does with a statement naming a role.

    Attributes:
        existing: the roles of the target cluster.
        skip_missing: skip the statements (owner, grant, revoke, default privileges,
            session authorization, user mapping) that name a role missing on the
            target; objects keep the restoring user as owner. Without it such a
            statement raises :class:`MissingRolesError`. A REVOKE naming an existing
            role (or PUBLIC) is always kept, so no privilege is widened; a policy naming
            a missing role beside existing ones is refused (skipping it would change
            who it applies to).
    """

    existing: frozenset
    skip_missing: bool = False


class OwnerAclFilter:
    """Read a plain dump stream statement by statement: list the tables of its ``COPY ...
    FROM stdin`` statements in order (``copy_tables``; None for a name it cannot parse),
    which :class:`CopyTags` pairs with psql's ``COPY n`` tags, with the data lines of
    each block (``copy_rows``: COPY's text format writes one row per line, newlines in
    values escaped as ``\\n``; PostgreSQL docs, COPY "Text Format"); collect the roles
    the statements name (``roles``) and what the DDL tells about a parallel load
    (``facts``, :class:`StatementFacts`). With a ``policy`` (:class:`RolePolicy`) a
    statement naming a role missing on the target is skipped (``skipped`` counts them
    per role) or raises :class:`MissingRolesError`; without one nothing is removed.
    With ``emit=False`` nothing is returned (tracking only).
    :meth:`feed_pieces` returns the output as typed pieces (for the parallel loader,
    bigskies_ops.jobs.parload): ``copy`` (a COPY statement with the rest of its line),
    ``data``, ``end`` (the ``\\.`` line), ``set`` (a ``SET``/``set_config`` statement),
    ``meta`` (a backslash meta-command line), ``blank`` (whitespace and comments only),
    ``hazard`` (a statement that adds a ``facts.load_hazards`` entry) and ``sql`` (any
    other statement).

    Whole statements are judged, never lines: the SQL between COPY blocks is split the
    way psql splits it (psqlscan.l: string literals with doubled quotes, ``E''`` strings
    with backslash escapes, quoted identifiers, dollar-quoted bodies, ``--`` and nested
    ``/* */`` comments; a backslash meta-command such as ``\\restrict`` at a statement
    start runs to the end of its line). COPY data passes through untouched, block-wise,
    up to its ``\\.`` line. So a data row that looks like SQL (``GRANT ...;``), a quoted
    table name holding a newline, or ``$$`` inside a string literal can never put the
    filter out of step and cost a row.
    """

    COPY_STMT = re.compile(rb"\ACOPY\s.*\sFROM\s+stdin;\Z", re.S | re.I)
    LEADING = re.compile(rb"(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.S)  # whitespace/comments before a statement
    TOKEN = re.compile(rb"""[Ee]'|'|"|\$(?:[A-Za-z_\x80-\xff][A-Za-z_0-9\x80-\xff]*)?\$|--|/\*|;""")
    NONSPACE = re.compile(rb"\S")
    IDENT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$" + bytes(range(0x80, 0x100)))
    E_STRING = re.compile(rb"\\.|'", re.S)
    COMMENT = re.compile(rb"/\*|\*/")
    #: session settings pg_dump writes (``SET x = v;``, ``SELECT pg_catalog.set_config(..., false);``)
    SET_RE = re.compile(rb"\A(?:SET\s[^;]*;|SELECT pg_catalog\.set_config\('[a-z_]+', '[^']*', false\);)\Z")

    def __init__(self, policy: RolePolicy | None = None, emit: bool = True, count_rows: bool = False):
        self.buf = b""
        self.count_rows = count_rows
        self.in_copy = False
        self.policy = policy
        self.codec = "utf-8"  # of names, from the dump's SET client_encoding
        self.roles: set[str] = set()
        self.skipped: dict[str, int] = {}
        self.facts = StatementFacts()
        self.emit = emit
        self.copy_tables: list[tuple[str, str] | None] = []
        self.copy_rows: list[int] = []
        self.stmt = bytearray()  # the statement being read, with the whitespace/comments before it
        self.mode = "n"  # n(ormal), s(tring), e(scape string), d(ouble-quoted name), $ (dollar body), b(lock comment)
        self.tag = b""
        self.depth = 0
        self.blank = True  # nothing but whitespace/comments in self.stmt so far
        self.copy_next = False  # a COPY ... FROM stdin; just ended: its data starts on the next line
        self._out: list[tuple[str, bytes]] = []

    def feed(self, data: bytes) -> bytes:
        self._feed(data)
        return self._take()

    def flush(self) -> bytes:
        self._flush()
        return self._take()

    def feed_pieces(self, data: bytes) -> list[tuple[str, bytes]]:
        """Like :meth:`feed`, as ``(kind, bytes)`` pieces (kinds: see the class docstring)."""
        self._feed(data)
        return self._take_pieces()

    def flush_pieces(self) -> list[tuple[str, bytes]]:
        self._flush()
        return self._take_pieces()

    def _feed(self, data: bytes) -> None:
        # complete lines only (no token spans a newline); the line left over from the last
        # chunk is completed and scanned on its own, so a 1 MiB chunk is never copied
        start = 0
        if self.buf:
            nl = data.find(b"\n")
            if nl < 0:
                self.buf += data
                return
            head, self.buf = self.buf + data[:nl + 1], b""
            self._scan(head, len(head))
            start = nl + 1
        end = data.rfind(b"\n") + 1
        if end > start:
            self._scan(data, end, start)
        self.buf = data[max(end, start):]

    def _flush(self) -> None:
        rest, self.buf = self.buf, b""
        if rest:
            self._scan(rest, len(rest))
        if self.stmt:
            self._put(bytes(self.stmt), "blank" if self.blank else "sql")
            self.stmt = bytearray()

    def tables_with_data(self) -> set[tuple[str, str]]:
        """End the stream; the tables that had a ``COPY ... FROM stdin`` block (for a
        tracking-only filter: ``emit=False``)."""
        self.flush()
        return {t for t in self.copy_tables if t is not None}

    def _runs_as_owner(self, stmt: bytes) -> bool:
        """A view (its queries read with its owner's rights, past row-level security for
        a superuser) or a SECURITY DEFINER function: owned by the restoring user instead of
        a missing role it would give everyone who may use it that user's rights."""
        toks = tokens(stmt)
        w = [keyword(t) for t in toks]
        if w[1:2] == [b"VIEW"] or w[1:3] == [b"MATERIALIZED", b"VIEW"]:
            return True
        if w[1:2] in ([b"FUNCTION"], [b"PROCEDURE"]):
            return qualified_at(toks, 2) in self.facts.security_definer
        return False

    def _put(self, b, kind: str = "sql") -> None:
        if self.emit and b:
            self._out.append((kind, bytes(b)))

    def _take(self) -> bytes:
        out, self._out = b"".join(b for _, b in self._out), []
        return out

    def _take_pieces(self) -> list[tuple[str, bytes]]:
        out, self._out = self._out, []
        return out

    @staticmethod
    def _terminator(buf: bytes, pos: int, end: int) -> int:
        """Index of the ``\n`` before the first ``\\.\n`` line in ``buf[pos:end]``, or -1.

        Backslashes are rare in COPY text (each one in a value is doubled): a few memchr
        jumps from one to the next are cheaper than searching for the 4-byte pattern,
        which scans at every newline; after 16 backslashes in a chunk the pattern search
        takes over."""
        i = pos
        for _ in range(16):
            k = buf.find(b"\\", i, end)
            if k < 0:
                return -1
            if k > pos and buf[k - 1] == 0x0A and buf.startswith(b".\n", k + 1) and k + 3 <= end:
                return k - 1
            i = k + 2 if k + 1 < end and buf[k + 1] == 0x5C else k + 1  # an escaped backslash is one unit
        return buf.find(b"\n\\.\n", i - 1 if i > pos else pos, end)

    def _line_end(self, buf: bytes, i: int, end: int) -> int:
        nl = buf.find(b"\n", i, end)
        return end if nl < 0 else nl + 1

    def _scan(self, buf: bytes, end: int, pos: int = 0) -> int:
        """Consume ``buf[pos:end]`` (whole lines, or the stream's last bytes); return ``end``."""
        while pos < end:
            if self.in_copy:
                if buf.startswith(b"\\.\n", pos) or (end - pos == 2 and end == len(buf) and buf.startswith(b"\\.", pos)):
                    data_end, stop = pos, min(pos + 3, end)
                else:
                    k = self._terminator(buf, pos, end)
                    stop, data_end = (k + 4, k + 1) if k >= 0 else (-1, end)
                if self.count_rows:
                    self.copy_rows[-1] += buf.count(b"\n", pos, data_end)  # one row per line
                if stop < 0:  # no terminator yet: pass the data through
                    if self.emit:
                        self._put(buf[pos:end], "data")
                    return end
                if self.emit:
                    self._put(buf[pos:data_end], "data")
                    self._put(buf[data_end:stop], "end")
                pos = stop
                self.in_copy = False
                continue
            if self.copy_next:  # the rest of the COPY statement's line, then its data
                nl = self._line_end(buf, pos, end)
                self._put(buf[pos:nl], "copy")
                pos = nl
                self.copy_next = False
                self.in_copy = True
                continue
            mode = self.mode
            if mode == "n":
                if self.blank:
                    m = self.NONSPACE.search(buf, pos, end)
                    if m is None:
                        self.stmt += buf[pos:end]
                        return end
                    if buf[m.start()] == 0x5C:  # backslash: a psql meta-command, to the end of its line
                        nl = self._line_end(buf, m.start(), end)
                        self.stmt += buf[pos:nl]
                        self._put(self.stmt, "meta")
                        self.stmt = bytearray()
                        pos = nl
                        continue
                m = self.TOKEN.search(buf, pos, end)
                if m is None:
                    seg = buf[pos:end]
                    if self.blank and seg.strip():
                        self.blank = False
                    self.stmt += seg
                    return end
                s, e = m.span()
                tok = m.group()
                if self.blank and buf[pos:s].strip():
                    self.blank = False
                if tok == b";":
                    self.stmt += buf[pos:e]
                    pos = e
                    self._statement_end()
                    continue
                if tok == b"--":
                    nl = self._line_end(buf, e, end)
                    self.stmt += buf[pos:nl]
                    pos = nl
                    continue
                if tok == b"/*":
                    self.mode, self.depth = "b", 1
                    self.stmt += buf[pos:e]
                    pos = e
                    continue
                prev = buf[s - 1] if s > pos else (self.stmt[-1] if self.stmt else 0x0A)
                self.blank = False
                if tok[0] == 0x24:  # $
                    if prev in self.IDENT:  # part of a name like a$b$: not a dollar quote
                        self.stmt += buf[pos:s + 1]
                        pos = s + 1
                        continue
                    self.mode, self.tag = "$", tok
                elif tok[0] in b"Ee":
                    self.mode = "s" if prev in self.IDENT else "e"
                elif tok == b"'":
                    self.mode = "s"
                else:
                    self.mode = "d"
                self.stmt += buf[pos:e]
                pos = e
            elif mode in ("s", "d"):
                q = 0x27 if mode == "s" else 0x22
                k = buf.find(bytes([q]), pos, end)
                if k < 0:
                    self.stmt += buf[pos:end]
                    return end
                if k + 1 < end and buf[k + 1] == q:  # doubled: still inside
                    self.stmt += buf[pos:k + 2]
                    pos = k + 2
                    continue
                self.stmt += buf[pos:k + 1]
                pos = k + 1
                self.mode = "n"
            elif mode == "e":
                m = self.E_STRING.search(buf, pos, end)
                if m is None:
                    self.stmt += buf[pos:end]
                    return end
                k = m.end()
                if m.group() == b"'" and not (k < end and buf[k] == 0x27):
                    self.mode = "n"
                elif m.group() == b"'":
                    k += 1  # doubled quote
                self.stmt += buf[pos:k]
                pos = k
            elif mode == "$":
                k = buf.find(self.tag, pos, end)
                if k < 0:
                    self.stmt += buf[pos:end]
                    return end
                self.stmt += buf[pos:k + len(self.tag)]
                pos = k + len(self.tag)
                self.mode = "n"
            else:  # block comment (they nest)
                m = self.COMMENT.search(buf, pos, end)
                if m is None:
                    self.stmt += buf[pos:end]
                    return end
                self.depth += 1 if m.group() == b"/*" else -1
                self.stmt += buf[pos:m.end()]
                pos = m.end()
                if self.depth == 0:
                    self.mode = "n"
        return pos

    def _statement_end(self) -> None:
        stmt = bytes(self.stmt)
        self.stmt = bytearray()
        self.blank = True
        lead = self.LEADING.match(stmt).end()
        core = stmt[lead:]
        if self.COPY_STMT.match(core):
            m = COPY_RE.match(core)
            try:
                self.copy_tables.append(split_qualified(m.group(1).decode("utf-8")) if m else None)
            except (ValueError, UnicodeDecodeError):
                self.copy_tables.append(None)
            self.copy_rows.append(0)
            self.copy_next = True
            self._put(stmt, "copy")
            return
        if core.startswith(b"SET client_encoding"):  # pg_dump's first SET: the dump's encoding
            m = re.search(rb"'([A-Za-z0-9_]+)'", core)
            if m:
                self.codec = PY_CODECS.get(m.group(1).decode().upper(), "utf-8")
        kind, names = statement_roles(core, self.codec)
        if names:
            self.roles.update(names)
            missing = [] if self.policy is None else [n for n in names if n not in self.policy.existing]
            if missing:
                if not self.policy.skip_missing or (kind == "policy" and len(missing) < len(names)):
                    raise MissingRolesError(missing, core[:200].decode("utf-8", "replace"))
                if kind == "owner" and self._runs_as_owner(core):
                    raise MissingRolesError(missing, core[:200].decode("utf-8", "replace"), widening=True)
                for n in missing:
                    self.skipped[n] = self.skipped.get(n, 0) + 1
                self._put(stmt[:lead], "blank")
                return
        n = len(self.facts.load_hazards)
        self.facts.feed(core)
        if len(self.facts.load_hazards) > n:  # the piece itself says so: every reader sees it at the same place
            self._put(stmt, "hazard")
            return
        self._put(stmt, "set" if self.SET_RE.match(core) else "sql")


class CopyTags:
    """Collect the ``COPY n`` command tags psql prints (not quiet) while restoring a plain
    dump: the server's own count of the rows each ``COPY ... FROM stdin`` inserted.

    Only command tags start a line with ``COPY ``: psql's aligned query results start
    with a space or a border, so a result value can never be taken for a tag.
    """

    TAG = re.compile(rb"^COPY (\d+)$", re.M)

    def __init__(self):
        self.rows: list[int] = []
        self._carry = b""

    def feed(self, data: bytes) -> None:
        buf = self._carry + data
        nl = buf.rfind(b"\n")
        if nl < 0:
            self._carry = buf[-4096:]
            return
        self.rows.extend(int(m.group(1)) for m in self.TAG.finditer(buf, 0, nl))
        self._carry = buf[nl + 1:][-4096:]

    def by_table(self, tables: list[tuple[str, str] | None]) -> dict[tuple[str, str], int] | None:
        """Rows per table (summed over its COPY statements), or None when the tags and the
        statements do not pair up one to one (then every table is counted instead)."""
        if len(tables) != len(self.rows) or None in tables:
            return None
        out: dict[tuple[str, str], int] = {}
        for t, n in zip(tables, self.rows):
            out[t] = out.get(t, 0) + n
        return out


COPY_RE = re.compile(rb'^COPY ((?:"(?:[^"]|"")*"|[^".\s(]+)\.(?:"(?:[^"]|"")*"|[^".\s(]+)) ', re.M)


def split_qualified(q: str) -> tuple[str, str]:
    """``"My Schema"."T"`` -> ``("My Schema", "T")``; ``public.users`` -> ``("public", "users")``."""
    parts = [m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2)
             for m in IDENT_RE.finditer(q)]
    if len(parts) != 2:
        raise ValueError(q)
    return parts[0], parts[1]


#: PostgreSQL server encodings -> Python codecs, for names as pg_dump writes them
PY_CODECS = {"UTF8": "utf-8", "SQL_ASCII": "utf-8", "LATIN1": "latin-1", "LATIN2": "iso8859-2",
             "LATIN3": "iso8859-3", "LATIN4": "iso8859-4", "LATIN5": "iso8859-9", "LATIN6": "iso8859-10",
             "LATIN7": "iso8859-13", "LATIN8": "iso8859-14", "LATIN9": "iso8859-15", "LATIN10": "iso8859-16",
             "WIN1250": "cp1250", "WIN1251": "cp1251", "WIN1252": "cp1252", "WIN1253": "cp1253",
             "WIN1254": "cp1254", "WIN1255": "cp1255", "WIN1256": "cp1256", "WIN1257": "cp1257",
             "WIN1258": "cp1258", "WIN866": "cp866", "WIN874": "cp874", "KOI8R": "koi8-r", "KOI8U": "koi8-u",
             "EUC_JP": "euc-jp", "EUC_KR": "euc-kr", "EUC_CN": "gb2312", "ISO_8859_5": "iso8859-5",
             "ISO_8859_6": "iso8859-6", "ISO_8859_7": "iso8859-7", "ISO_8859_8": "iso8859-8"}


IDENT_RE = re.compile(r'"((?:[^"]|"")*)"|([^".\s(]+)')
