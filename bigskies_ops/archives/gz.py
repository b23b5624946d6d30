"""The gzip codec of plain ``.sql.gz`` archives: ISA-L when available, zlib otherwise.

Compression is most of the cost of the guide's ``pg_dump | gzip`` (research/perf-
baseline.md: GNU gzip -6 does 43 MB/s of SQL). python-isal (Intel ISA-L's igzip,
maintained by the pycompression project) deflates the same SQL about 3.7x faster
than zlib at level 1 and into fewer bytes (measured on the 752 MB plain dump of the
benchmark database: zlib -1 138 MB/s -> 135 MB; ISA-L 1 511 MB/s -> 127 MB), and
inflates about twice as fast. Both write standard gzip members (RFC 1952), so
``gunzip -c FILE | psql`` (the guide's restore) reads our archives unchanged.

ISA-L has compression levels 0-3 only; a ``compress_level`` of 4-9 means the user
asked for smaller files over speed, so those levels use zlib, and so does 0, which
means "stored, not compressed" for gzip and zlib (ISA-L's level 0 still compresses).
"""
from __future__ import annotations

import zlib

try:  # a required dependency; the fallback keeps an unusual platform working
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    _isal = None

#: Exceptions raised for corrupt compressed data, whichever codec is in use.
ERRORS: tuple[type[BaseException], ...] = (zlib.error,) + ((_isal.error,) if _isal is not None else ())

_GZIP = 31  # wbits: gzip container (16) + 32 KiB window (15)


def codec_name(level: int) -> str:
    """Human-readable compressor for the manifest, e.g. ``gzip (ISA-L level 1)``."""
    if _isal is not None and 1 <= level <= 3:
        return f"gzip (ISA-L level {level})"
    return f"gzip (zlib level {level})"


def compressobj(level: int):
    """A streaming gzip compressor (``compress(bytes) -> bytes``, ``flush() -> bytes``).

    Args:
        level: 0-9; 1-3 use ISA-L when installed, 0 and 4-9 zlib.
    """
    if _isal is not None and 1 <= level <= 3:
        return _isal.compressobj(level, _isal.DEFLATED, _GZIP)
    return zlib.compressobj(level, zlib.DEFLATED, _GZIP)  # 0: stored, no compression (as gzip/zlib mean it)


def decompressobj():
    """A streaming gzip decompressor with zlib's interface (``decompress(data, max_length)``,
    ``unconsumed_tail``, ``unused_data``, ``eof``, ``flush()``); one gzip member each."""
    if _isal is not None:
        return _isal.decompressobj(_GZIP)
    return zlib.decompressobj(_GZIP)
