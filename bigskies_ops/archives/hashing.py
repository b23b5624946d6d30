"""Hashing of archives: the one chunked sha256 every check of a file goes through."""
from __future__ import annotations

import hashlib

CHUNK = 1 << 20  # bytes per read


def sha256_file(runner, path: str) -> tuple[str, int]:
    """``(sha256 hex digest, size in bytes)`` of the file ``path`` read through ``runner``
    (:class:`bigskies_ops.hosts.runners.Runner`: a local or a remote file). Raises OSError
    when it cannot be read."""
    h = hashlib.sha256()
    n = 0
    with runner.open_read(path) as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                break
            h.update(b)
            n += len(b)
    return h.hexdigest(), n
