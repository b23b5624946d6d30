"""Text for humans and JSON: sizes, ages, names whose bytes are not UTF-8."""
from __future__ import annotations

import difflib
import json
from datetime import datetime, timezone


def json_bytes(obj) -> bytes:
    """``obj`` as indented UTF-8 JSON. A name read from a SQL_ASCII database may hold bytes
    that are not UTF-8 (lone surrogates, ``access.decode_out``): then the text is written
    with ``\\uXXXX`` escapes, which read back to exactly the same name."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=True, default=str).encode() + b"\n"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    f = float(n)
    for u in units:
        if f < 1024 or u == units[-1]:
            return f"{f:.0f} {u}" if u == "B" else f"{f:.1f} {u}"
        f /= 1024
    return f"{n} B"


def human_age(dt: datetime | None, now: datetime | None = None) -> str:
    if dt is None:
        return "-"
    s = int(((now or datetime.now(timezone.utc)) - dt).total_seconds())
    if s < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def printable(name: str) -> str:
    """A name for humans and for JSON text: a byte that is not UTF-8 is shown as
    ``\\xNN`` (e.g. ``caf\\xe9`` for LATIN1 bytes in a SQL_ASCII database)."""
    if not any("\udc80" <= ch <= "\udcff" for ch in name):
        return name
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` naming the closest of ``choices`` to ``word`` (difflib ratio
    >= 0.6), or ``""`` when none is close."""
    m = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {m[0]!r}?)" if m else ""
