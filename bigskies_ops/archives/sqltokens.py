"""Tokens of one SQL statement as pg_dump writes it, and the small readers of them that
the scanners share (:mod:`bigskies_ops.archives.plainsql`, :mod:`bigskies_ops.archives.fkeys`)."""
from __future__ import annotations

import re

#: one token of a DDL statement: a quoted name, a string literal, a dollar-quoted body,
#: a word, a number, or one other character (whitespace and ``--`` comments are skipped)
_TOK = re.compile(rb"""\s+|--[^\n]*|"(?:[^"]|"")*"|'(?:[^']|'')*'|\$([A-Za-z_\x80-\xff][A-Za-z_0-9\x80-\xff]*)?\$.*?\$\1\$"""
                  rb"""|[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*|\d+(?:\.\d+)?|\S""", re.S)


def tokens(stmt: bytes) -> list[bytes]:
    """The tokens of one SQL statement (see :data:`_TOK`), without its final ``;``."""
    out = [m.group() for m in _TOK.finditer(stmt)]
    out = [t for t in out if not t[:1].isspace() and not t.startswith(b"--")]
    if out and out[-1] == b";":
        out.pop()
    return out


def keyword(t: bytes) -> bytes:
    """An unquoted token in upper case (keywords), a quoted one as it is."""
    return t if t[:1] in (b'"', b"'") else t.upper()


def unquote(t: bytes, codec: str = "utf-8") -> str:
    """A name token as PostgreSQL reads it: ``"Ab""c"`` -> ``Ab"c``; ``abc`` -> ``abc``
    (unquoted names fold to lower case); a string literal ``'x'`` -> ``x``. Bytes that
    are valid UTF-8 are read as UTF-8 (a role made from a UTF8 database keeps those bytes
    in a LATIN1 database's dump), others in ``codec``, the dump's client encoding."""
    raw = t[1:-1].replace(b"''", b"'") if t[:1] == b"'" else fold_name(t)
    try:  # role names are shared by every database: stored in the bytes of the session that made them
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode(codec, "replace")


def fold_name(t: bytes) -> bytes:
    """An identifier token's bytes as PostgreSQL stores the name: ``"Ab""c"`` -> ``Ab"c``;
    unquoted ones fold to lower case (pg_dump quotes every name that is not plain lower-case
    ASCII). Bytes, not text: names in a dump of a LATIN1 database are not UTF-8."""
    return t[1:-1].replace(b'""', b'"') if t[:1] == b'"' else t.lower()


def last_top(toks: list[bytes], word: bytes, start: int = 0) -> int:
    """Index of the last ``word`` outside parentheses in ``toks[start:]``, or -1."""
    depth, found = 0, -1
    for i in range(start, len(toks)):
        t = toks[i]
        if t == b"(":
            depth += 1
        elif t == b")":
            depth -= 1
        elif depth == 0 and keyword(t) == word:
            found = i
    return found


def qualified_at(toks: list[bytes], i: int, read=unquote):
    """``schema . name`` starting at ``toks[i]``, each part read by ``read`` (text by
    :func:`unquote`; :func:`fold_name` gives the stored bytes), or None."""
    if i + 2 < len(toks) and toks[i + 1] == b"." and toks[i][:1] != b"'" and toks[i + 2][:1] != b"'":
        return read(toks[i]), read(toks[i + 2])
    return None
