"""Foreign keys that ``pg_restore --jobs`` could tie to another index than a serial restore.

PostgreSQL ties a foreign key to the first unique index of the referenced table, in OID
order, whose key columns are exactly the referenced ones, with no expression, no predicate
and not deferrable (PostgreSQL 15 source, tablecmds.c ``transformFkeyCheckAttrs``; the index
is ``pg_constraint.conindid``, and ``DROP INDEX`` of it is refused while the key exists).
pg_dump names the referenced columns of every foreign key, so that rule always applies.
A serial restore creates all indexes before the foreign keys (pg_dump sorts them first), so
the choice is fixed. ``pg_restore --jobs`` creates a foreign key as soon as the one index it
used at dump time is built: where two or more unique indexes cover the referenced columns,
which of them exist by then depends on the schedule (2026-12-05, PostgreSQL 15.x: a primary
key, then a unique index on the same column, then the key: ``pg_restore -j 2`` tied it to
the unique index 6 times in 6, one job to the primary key). Such an archive loads with one job.
"""
from __future__ import annotations

from bigskies_ops.archives.sqltokens import last_top, qualified_at, unquote

Key = tuple[tuple[str, str], frozenset[str]]  # (schema, table), key columns


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


def _columns(items: list[list[bytes]]) -> frozenset[str] | None:
    """Key columns of an index's element list; None when one is an expression (a ``(`` in it)."""
    cols = []
    for it in items:
        if not it or b"(" in it:
            return None
        cols.append(unquote(it[0]))
    return frozenset(cols)


class ForeignKeyIndexes:
    """Read a dump's statements (:meth:`feed`: tokens from
    :func:`bigskies_ops.archives.sqltokens.tokens`, their :func:`keyword` forms) and add to
    ``hazards`` (the list given, else a new one) each foreign key whose referenced columns
    have two or more candidate unique indexes: primary key, ``UNIQUE`` constraints, ``CREATE
    UNIQUE INDEX`` without ``WHERE`` or expressions; deferrable constraints do not count."""

    def __init__(self, hazards: list[str] | None = None):
        self.unique: dict[Key, list[str]] = {}
        self.foreign: dict[Key, list[str]] = {}
        self.hazards: list[str] = hazards if hazards is not None else []
        self._said: set[Key] = set()

    def feed(self, toks: list[bytes], w: list[bytes]) -> None:
        if w[:2] == [b"CREATE", b"UNIQUE"] and w[2:3] == [b"INDEX"]:
            self._unique_index(toks, w)
        elif w[:2] == [b"ALTER", b"TABLE"]:
            self._constraint(toks, w)

    def _unique_index(self, toks: list[bytes], w: list[bytes]) -> None:
        if b"ON" not in w or last_top(toks, b"WHERE") > 0:
            return
        name = unquote(toks[3]) if len(toks) > 3 and w[3] not in (b"ON", b"CONCURRENTLY", b"IF") else "?"
        j = w.index(b"ON") + 1
        if w[j:j + 1] == [b"ONLY"]:
            j += 1
        table = qualified_at(toks, j)
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
        j = 2
        while j < len(w) and w[j] in (b"ONLY", b"IF", b"EXISTS"):
            j += 1
        table = qualified_at(toks, j)
        if table is None or w[j + 3:j + 5] != [b"ADD", b"CONSTRAINT"] or len(toks) <= j + 6:
            return
        name, k = unquote(toks[j + 5]), j + 6
        kind = w[k:k + 2]
        if kind == [b"FOREIGN", b"KEY"]:
            own = _paren_items(toks, k + 2)
            if not own or w[own[1]:own[1] + 1] != [b"REFERENCES"]:
                return
            ref = qualified_at(toks, own[1] + 1)
            cols = _paren_items(toks, own[1] + 4) if ref else None
            if ref and cols:
                self._add(self.foreign, (ref, frozenset(unquote(c[0]) for c in cols[0] if c)),
                          f"{table[0]}.{table[1]}.{name}")
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
        self.hazards.append(f"foreign key {self.foreign[key][0]} references {s}.{t} ({', '.join(sorted(cols))}), "
                            f"covered by {len(self.unique[key])} unique indexes "
                            f"({', '.join(self.unique[key])}): pg_restore --jobs may tie it to another one")
