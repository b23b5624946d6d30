"""Foreign keys that ``pg_restore --jobs`` could tie to another index than a serial restore.

PostgreSQL ties a foreign key to the valid unique index of the referenced table with the
lowest OID among those that exist when the key is created and whose key columns are, as
a set, the referenced ones (INCLUDE columns aside), with no expression, no predicate and
not deferrable (PostgreSQL 15 source, tablecmds.c ``transformFkeyCheckAttrs``; the index is
``pg_constraint.conindid``, and ``DROP INDEX`` of it is refused while the key exists).
pg_dump names the referenced columns of every foreign key, so that rule always applies.
A serial restore builds every index before the foreign keys, in the archive's order
(constraints before other indexes, each kind by name). ``pg_restore --jobs`` starts what
is ready largest table first, then in dump-id order, and creates a foreign key once the
index it used at dump time exists: another candidate may have been built first (so holds
the lowest OID) or not exist yet. Measured (2026-12-05, PostgreSQL 15, helper trials): a
primary key ``acct_pkey`` and a unique index ``acct_id_uidx`` on the same column (the
index's name sorts first): ``pg_restore -j 2`` tied the key to the unique index every time
(6 of 6), one job to the primary key; with the index named ``t_u`` both agreed. Such an
archive loads with one job. Two unique constraints alone never differed in those trials
(pg_restore runs one table's ALTER TABLEs one at a time); they are flagged all the same,
as is a partitioned table's ``ON ONLY`` index that may still be invalid: the cost of a
needless flag is a serial load, not another result.
"""
from __future__ import annotations

from bigskies_ops.archives.sqltokens import fold_name, last_top, qualified_at

Name = bytes  # an identifier as PostgreSQL stores it (quotes removed; unquoted ones folded)
Key = tuple[tuple[Name, Name], frozenset[Name]]  # (schema, table), key columns


def _shown(n: Name) -> str:
    return n.decode("utf-8", "replace")


def _paren_items(toks: list[bytes], i: int) -> tuple[list[list[bytes]], int] | None:
    """The comma-separated items of the parenthesised list opening at ``toks[i]`` and the
    index after its ``)``, or None when ``toks[i]`` is not ``(``."""
    if i >= len(toks) or toks[i] != b"(":
        return None
    items: list[list[bytes]] = [[]]
    depth = 0
    for j in range(i + 1, len(toks)):
        t = toks[j]
        if t == b"(":
            depth += 1
        elif t == b")":
            if depth == 0:
                return items, j + 1
            depth -= 1
        elif t == b"," and depth == 0:
            items.append([])
            continue
        items[-1].append(t)
    return None


def _columns(items: list[list[bytes]]) -> frozenset[Name] | None:
    """Key columns of an index's (or a foreign key's) element list; None when one is an
    expression (a ``(`` in it)."""
    cols = []
    for it in items:
        if not it or b"(" in it:
            return None
        cols.append(fold_name(it[0]))
    return frozenset(cols)


def _skip(toks: list[bytes], w: list[bytes], j: int, *words: bytes) -> int:
    """Index after the optional keywords ``words`` at ``w[j:]``; a keyword followed by ``.``
    is a schema's name (``if.t``: IF is not reserved, pg_dump leaves it unquoted)."""
    n = len(words)
    if w[j:j + n] == list(words) and toks[j + n:j + n + 1] != [b"."]:
        return j + n
    return j


class ReferencedUniqueIndexes:
    """The candidate unique indexes of each referenced column set, from a dump's statements.

    Adds to ``hazards`` (the list given, else a new one) one line per referenced column set
    that a foreign key names and that two or more candidates cover (primary key, ``UNIQUE``
    constraints, ``CREATE UNIQUE INDEX`` without ``WHERE`` or expressions; deferrable
    constraints do not count), naming the first such foreign key."""

    def __init__(self, hazards: list[str] | None = None):
        self.unique: dict[Key, list[str]] = {}
        self.foreign: dict[Key, list[str]] = {}
        self.hazards: list[str] = hazards if hazards is not None else []
        self._said: set[Key] = set()

    def feed(self, toks: list[bytes], w: list[bytes]) -> None:
        """Read one statement: ``toks`` from :func:`bigskies_ops.archives.sqltokens.tokens`,
        ``w`` their :func:`bigskies_ops.archives.sqltokens.keyword` forms."""
        if w[:3] == [b"CREATE", b"UNIQUE", b"INDEX"]:
            self._unique_index(toks, w)
        elif w[:2] == [b"ALTER", b"TABLE"]:
            self._constraint(toks, w)

    def _unique_index(self, toks: list[bytes], w: list[bytes]) -> None:
        # CREATE UNIQUE INDEX [CONCURRENTLY] [[IF NOT EXISTS] name] ON [ONLY] table [USING m] (cols) ...
        if last_top(toks, b"WHERE") > 0:
            return
        j = _skip(toks, w, _skip(toks, w, 3, b"CONCURRENTLY"), b"IF", b"NOT", b"EXISTS")
        name = "?"
        if w[j:j + 1] != [b"ON"]:
            name, j = (_shown(fold_name(toks[j])) if j < len(toks) else "?"), j + 1
        if w[j:j + 1] != [b"ON"]:
            return
        j = _skip(toks, w, j + 1, b"ONLY")
        table = qualified_at(toks, j, fold_name)
        if table is None:
            return
        j += 3
        if w[j:j + 1] == [b"USING"]:
            j += 2
        got = _paren_items(toks, j)
        cols = _columns(got[0]) if got else None
        if cols:
            self._add(self.unique, (table, cols), name)

    def _constraint(self, toks: list[bytes], w: list[bytes]) -> None:
        # ALTER TABLE [IF EXISTS] [ONLY] table ADD CONSTRAINT name {PRIMARY KEY | UNIQUE ... | FOREIGN KEY ...}
        j = _skip(toks, w, _skip(toks, w, 2, b"IF", b"EXISTS"), b"ONLY")
        table = qualified_at(toks, j, fold_name)
        if table is None or w[j + 3:j + 5] != [b"ADD", b"CONSTRAINT"] or len(toks) <= j + 6:
            return
        name, k = _shown(fold_name(toks[j + 5])), j + 6
        kind = w[k:k + 2]
        if kind == [b"FOREIGN", b"KEY"]:
            own = _paren_items(toks, k + 2)
            if not own or w[own[1]:own[1] + 1] != [b"REFERENCES"]:
                return
            ref = qualified_at(toks, own[1] + 1, fold_name)
            got = _paren_items(toks, own[1] + 4) if ref else None
            cols = _columns(got[0]) if got else None
            if cols:
                self._add(self.foreign, (ref, cols), f"{_shown(table[0])}.{_shown(table[1])}.{name}")
            return
        if kind == [b"PRIMARY", b"KEY"]:
            k += 2
        elif kind[:1] == [b"UNIQUE"]:
            k += 1
            while w[k:k + 1] in ([b"NULLS"], [b"NOT"], [b"DISTINCT"]):
                k += 1
        else:
            return
        deferrable = any(x == b"DEFERRABLE" and w[i - 1] != b"NOT" for i, x in enumerate(w))
        got = _paren_items(toks, k)
        cols = _columns(got[0]) if got and not deferrable else None
        if cols:
            self._add(self.unique, (table, cols), name)

    def _add(self, into: dict[Key, list[str]], key: Key, name: str) -> None:
        into.setdefault(key, []).append(name)
        if key in self._said or len(self.unique.get(key, ())) < 2 or key not in self.foreign:
            return
        self._said.add(key)
        (s, t), cols = key
        self.hazards.append(f"foreign key {self.foreign[key][0]} references {_shown(s)}.{_shown(t)} "
                            f"({', '.join(sorted(_shown(c) for c in cols))}), covered by {len(self.unique[key])} "
                            f"unique indexes ({', '.join(self.unique[key])}): pg_restore --jobs may tie it to "
                            f"another one")
