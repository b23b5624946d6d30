"""The manifest's life: an archive is published under its final name with a DONE
manifest in one step, an interrupted one is settled, a failed one recorded
(CONTRACTS.md section 2)."""
from __future__ import annotations

import posixpath
import time

from bigskies_ops import report
from bigskies_ops.archives.catalog import PARTIAL_SUFFIX, iso, parse_archive_name, read_manifest, utcnow, write_manifest
from bigskies_ops.errors import BigskiesError, CommandError, Interrupted, StorageError

def publish(writer, partial: str, final: str, manifest: dict | None) -> None:
    """Record the DONE ``manifest`` of the finished ``partial``, then rename it to ``final``
    (``manifest`` None: a legacy archive without one, only renamed).

    In this order an archive under its final name always has a DONE manifest (CONTRACTS
    s.2), whatever stops us: a SIGKILL or a lost connection between the two steps leaves
    a DONE manifest whose archive is missing (``Backup.status`` MISSING, never picked as
    ``latest``) next to the complete ``.partial``, which the next run publishes
    (:func:`settle_interrupted`, or a rerun of ``db.pull --existing``). With the rename
    first, an interruption leaves complete archives with STARTED, FAILED, empty or no
    manifests. SIGINT/SIGTERM are held for the step (:func:`bigskies_ops.signals.deferred`).

    Raises:
        StorageError: ``final`` exists already, or the manifest could not be written.
        Interrupted: a signal arrived during the step (raised after it; the backup is DONE).
    """
    from bigskies_ops import signals
    taken = StorageError(f"{final} appeared while we were writing; refusing to overwrite it")
    with signals.deferred():
        if writer.exists(final):  # never a manifest over someone else's archive
            raise taken
        if manifest is not None:
            write_manifest(writer, final, manifest)
        if not writer.link_noreplace(partial, final):
            raise taken


def settle_interrupted(runner, bdir: str, db: str, what: str = "backup", *, orphans: bool = False) -> None:
    """Under the (host, database) lock, deal with what killed runs of ``db`` left in ``bdir``:
    a ``.partial`` whose manifest is DONE and whose size is the manifest's was stopped
    between the two steps of :func:`publish` and is published now (its checks had passed);
    a ``.partial`` beside a STARTED manifest is removed and the manifest becomes FAILED (it
    would be listed as 'started' for ever). A ``.partial`` without a
    manifest is someone else's download (``db.restore --from-offsite`` writes one without
    holding the lock) and is left alone, unless ``orphans`` (a streamed pull's own folder,
    where a rerun starts over)."""
    for n in runner.listdir(bdir):
        if not n.endswith(PARTIAL_SUFFIX):
            continue
        arch = n[: -len(PARTIAL_SUFFIX)]
        p = parse_archive_name(arch)
        if p is None or p.database != db:
            continue
        part, final = posixpath.join(bdir, n), posixpath.join(bdir, arch)
        try:
            m = read_manifest(runner, final)
        except (BigskiesError, OSError, ValueError):
            m = None
        status = (m or {}).get("status")
        if status not in ("DONE", "STARTED") and not (orphans and m is None):
            continue
        try:
            if (status == "DONE" and m.get("bytes") == runner.size(part) and not runner.exists(final)
                    and runner.link_noreplace(part, final)):
                report.note(f"published {arch}: a run that was stopped while publishing had finished it")
                continue
            runner.remove(part)
            report.note(f"removed {n} left by an interrupted {what}"
                        + (" (a streamed pull starts over)" if what == "pull" else ""))
            if status == "STARTED":
                m.update({"status": "FAILED", "error": f"interrupted: the {what} ended without finishing; "
                          f"its .partial was removed by a later {what}", "phase": m.get("phase")})
                write_manifest(runner, final, m)
        except (BigskiesError, OSError) as e:
            report.note(f"warning: could not settle {n}: {e}")


def _done_on_disk(writer, final: str) -> bool:
    try:
        return writer.exists(final) and (read_manifest(writer, final) or {}).get("status") == "DONE"
    except (BigskiesError, OSError, ValueError):
        return False


def record_failure(e: BaseException, manifest: dict, t0: float, writer, final: str, partial: str,
                   proc, session, *, record: bool = True) -> None:
    """After a failed dump: stop pg_dump and the snapshot session, remove the ``.partial``,
    write the manifest as FAILED (when ``record``; a failure to write it is a warning),
    then re-raise ``e`` as the project's error (OSError -> StorageError). A signal held
    by :func:`publish` arrives after the DONE manifest: then only ``e`` is re-raised."""
    if isinstance(e, (Interrupted, KeyboardInterrupt)) and manifest.get("status") == "DONE" \
            and _done_on_disk(writer, final):
        report.note(f"the backup had finished before the signal; kept: {final}")
        raise e
    if proc is not None:
        proc.kill()
    if session is not None:
        try:
            session.proc.kill()
        except Exception:
            pass
    try:
        writer.remove(partial)
    except BigskiesError:
        pass
    manifest.update({"status": "FAILED", "error": str(e) or type(e).__name__,
                     "finished_at": iso(utcnow()), "duration_s": round(time.monotonic() - t0, 3)})
    if isinstance(e, CommandError) and e.stderr and "stderr_tail" not in manifest:
        manifest["stderr_tail"] = e.stderr
    try:
        if record:
            write_manifest(writer, final, manifest)
    except BigskiesError as e2:
        report.note(f"warning: could not record the FAILED manifest: {e2}")
    if isinstance(e, (KeyboardInterrupt, BigskiesError)):
        raise e
    if isinstance(e, OSError):
        raise StorageError(f"backup failed: {e}") from e
    raise e
