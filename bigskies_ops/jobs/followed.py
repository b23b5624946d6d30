"""A plain archive restored while it is written (``db.pull --restore``, the guide's
scenario 4): what the restore (:func:`bigskies_ops.jobs.restore.restore`) needs to follow
the pull (:func:`bigskies_ops.jobs.pull.pull_and_restore`) instead of reading a finished file."""
from __future__ import annotations

import threading
from dataclasses import dataclass

from bigskies_ops import report
from bigskies_ops.archives.integrity import ArchiveInfo, check_archive, gunzip_chunks
from bigskies_ops.archives.plainsql import RolePolicy
from bigskies_ops.errors import ArchiveError, Interrupted
from bigskies_ops.jobs.parload import load_plain_parallel
from bigskies_ops.jobs.sideload import RESTORE_PGOPTIONS, report_load_stats


@dataclass
class FollowedArchive:
    """A plain archive restored while it is written (``db.pull --restore``).

    Attributes:
        growing: the file being written (:class:`bigskies_ops.jobs.handoff.GrowingFile`).
        start: called once, after the restore's checks, beside the side database's
            CREATE (the writer starts then, so a refusal - lock busy, sessions connected,
            roles missing - costs no transfer; a failed CREATE cancels ``growing``).
        result: waits for the writer; returns the finished archive's path or raises
            the writer's error.
        locale: called when there is no database to replace: the source database's
            encoding and locale (a :data:`bigskies_ops.pg.admin.DATABASE_LOCALE_SQL` row)
            or None, for the new database (the manifest comes only at the end).
    """

    growing: object
    start: object
    result: object
    locale: object = None


def load_followed(access, fa: FollowedArchive, side: str, policy: RolePolicy | None, jobs: int | None):
    """Load ``fa`` into ``side`` as it arrives (its writer was started by
    :func:`bigskies_ops.jobs.restore.restore` beside the side database's CREATE), then
    check the finished archive.

    Returns ``(ArchiveInfo of the finished archive, (rc, stderr, rows))``. Raises the
    writer's error (after stopping the load), or ArchiveError."""
    growing = fa.growing
    n = max(1, jobs if jobs is not None else 2)
    checked = WrittenArchiveCheck(access, fa)
    stats: dict = {}
    try:
        rc, _, err, rows = load_plain_parallel(
            access, "(pull in progress)", side, jobs=n, policy=policy, pgoptions=RESTORE_PGOPTIONS, stats=stats,
            open_chunks=lambda: followed_sql(growing), source_failed=lambda: growing.error)
        report_load_stats(stats.get("serial_because"), stats.get("skipped"))
    except (KeyboardInterrupt, Interrupted):
        growing.cancel()  # the pull stops too (its .partial is removed, manifest FAILED)
        raise
    except BaseException:
        growing.detach()  # nothing reads the SQL any more: the pull goes on alone
        fa.result()  # a failed pull is the cause: its error first; else the pull is kept, and ours raised
        raise
    growing.detach()  # a load that stopped early (rc != 0) no longer holds the pull back
    info = checked.result()
    for w in info.warnings:
        report.note(f"warning: {w}")
    if info.format != "plain":
        raise ArchiveError(f"{info.path}: expected a plain archive to follow, got {info.format}")
    return info, (rc, err, rows)


class WrittenArchiveCheck:
    """:func:`check_archive` of a followed archive as soon as its writer has finished it
    (DONE manifest, sha256 computed while receiving), on a thread of its own: the file on
    disk (size, sha256 read back against the manifest, versions) is checked while the load
    still builds its indexes, not after it (~0.1 s of the benchmark's scenario 4, issue 21).
    The restore still swaps nothing before :meth:`result` has returned, and
    :meth:`ArchiveInfo.confirm_unchanged` after the load proves the file checked is the one
    that stayed (``checked_stat`` is taken by this check)."""

    def __init__(self, access, fa: FollowedArchive):
        self._box: dict = {}
        self._thread = threading.Thread(target=report.carried(self._run), args=(access, fa), daemon=True,
                                        name="check-pulled-archive")
        self._thread.start()

    def _run(self, access, fa: FollowedArchive) -> None:
        try:
            self._box["info"] = check_archive(access, fa.result())
        except BaseException as e:  # noqa: BLE001 - raised by result(), in the restore's thread
            self._box["err"] = e

    def result(self) -> ArchiveInfo:
        """The finished archive's :class:`ArchiveInfo`, once written and checked.

        Raises:
            the writer's error (:attr:`FollowedArchive.result`), or ArchiveError (the check's)."""
        while self._thread.is_alive():
            self._thread.join(0.5)  # short waits: Ctrl-C is still taken meanwhile
        if "err" in self._box:
            raise self._box["err"]
        return self._box["info"]


def followed_sql(growing):
    """``(bytes read, SQL bytes)`` of a followed pull, once it has started: the SQL it hands
    over (a plain dump sent uncompressed), else its growing ``.sql.gz`` inflated."""
    growing.wait_started()
    if growing.compressed:
        yield from gunzip_chunks(None, path=growing.path or "pull", raw=growing.raw_chunks())
    else:
        yield from growing.raw_chunks()
