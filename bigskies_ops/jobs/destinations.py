"""Where a dump's bytes go: the three destinations of the backup engine (bigskies_ops.jobs.dump).

* :class:`FileHere` - a file in a local host's ``backup.dir``. pg_dump runs here
  (natively or through ``<engine> exec -i``); a plain dump is compressed in this
  process (ISA-L or zlib: archives.gz) while sha256 is computed; a native host's
  custom archive is written by pg_dump itself (a seekable file gets the data offsets
  in its TOC, so pg_restore --jobs and -L seek instead of scanning; pg_dump fsyncs it).
* :class:`FileOnHost` - a file in an SSH host's ``backup.dir``: ``pg_dump [| gzip] >
  <archive>.partial`` runs there, every stage reporting its own exit status; the file
  is hashed (``sha256sum``) and checked (gzip stream, completion trailer) there. The
  dump never leaves the host.
* :class:`StreamHere` - the same pipeline without the file: the compressed dump
  crosses the SSH channel straight into a local ``.partial`` (``db.pull``), hashed and,
  for plain dumps, inflated while it arrives (trailer checked, rows counted). Nothing
  is written on the host's disk.
"""
from __future__ import annotations

import hashlib
import os
import queue
import shlex
import shutil
import threading
import time

from bigskies_ops import report
from bigskies_ops.archives import gz
from bigskies_ops.archives.integrity import HEAD_BYTES, TAIL_BYTES
from bigskies_ops.archives.plainsql import COPY_RE, PY_CODECS, OwnerAclFilter, split_qualified
from bigskies_ops.errors import BigskiesError, CommandError, StorageError
from bigskies_ops.hosts.local import LocalRunner
from bigskies_ops.hosts.runners import redact_argv, tail
from bigskies_ops.jobs.dump import ArchiveFacts, Destination, DumpSpec
from bigskies_ops.pg.access import PostgresAccess
from bigskies_ops.pg.tools import parse_plain_header, plain_tail_complete

CHUNK = 1 << 20  # bytes read from pg_dump per iteration


# ----------------------------------------------------------------------------- the SQL as it passes
class SqlTap:
    """What the engine learns from a plain dump's SQL as it passes, chunk by chunk: its
    first 64 KiB (the header) and last 8 KiB (the completion trailer), its size, and
    with ``track_copy`` the ``COPY ... FROM stdin`` blocks read by the restore's own
    statement lexer (archives.plainsql.OwnerAclFilter, tracking only), so a data row
    or a function body that looks like a COPY statement is never taken for one."""

    def __init__(self, track_copy: bool):
        self.head = b""
        self.tail = b""
        self.raw_bytes = 0
        self.lexer = OwnerAclFilter(emit=False, count_rows=True) if track_copy else None

    def feed(self, raw: bytes) -> None:
        self.raw_bytes += len(raw)
        if len(self.head) < HEAD_BYTES:
            self.head += raw[:HEAD_BYTES - len(self.head)]
        if self.lexer is not None:
            self.lexer.feed(raw)
        self.tail = (self.tail + raw[-TAIL_BYTES:])[-TAIL_BYTES:]

    def copy_blocks(self) -> tuple[list[tuple[str, str] | None], list[int]]:
        """End the stream; the COPY blocks in stream order: their tables (``(schema, name)``,
        None for a name the lexer could not read) and their data lines (one row per line in
        COPY's text format). Raises ValueError when not tracked."""
        if self.lexer is None:
            raise ValueError("COPY blocks are tracked only for plain dumps with track_copy")
        self.lexer.flush()  # the last bytes
        return list(self.lexer.copy_tables), list(self.lexer.copy_rows)

    def named_roles(self) -> tuple[set[str], set[str]]:
        """The roles the dump's statements name (owners, grantees, ...) and the extensions
        it creates (after :meth:`copy_blocks`)."""
        return set(self.lexer.roles), set(self.lexer.facts.extensions)

    def check_complete(self) -> None:
        """Raise StorageError unless the SQL is a plain dump that ends with its trailer."""
        check_plain(self.head, self.tail)


def check_plain(head: bytes, tail_: bytes) -> None:
    """Raise StorageError unless ``head`` starts a plain dump and ``tail_`` (its last bytes)
    holds the completion trailer pg_dump writes last (a dump cut short lacks it)."""
    try:
        header = parse_plain_header(head)
    except ValueError as e:
        raise StorageError(f"pg_dump output is not a plain dump: {e}") from e
    if not plain_tail_complete(tail_, header.restrict_key):
        raise StorageError("pg_dump exited 0 but the dump lacks its completion trailer")


class CompressingSink(SqlTap):
    """Compress (plain: gzip container, archives.gz level N) + sha256 + write, chunk by
    chunk, to the file ``f``; a custom archive's bytes are written as they are."""

    def __init__(self, f, fmt: str, level: int, track_copy: bool = False):
        super().__init__(track_copy and fmt == "plain")
        self.f = f
        self.sha = hashlib.sha256()
        self.out_bytes = 0
        self.comp = gz.compressobj(level) if fmt == "plain" else None

    def _emit(self, data: bytes) -> None:
        if data:
            self.sha.update(data)
            self.f.write(data)
            self.out_bytes += len(data)

    def write(self, chunk: bytes) -> None:
        if self.comp is None:
            self.raw_bytes += len(chunk)
            self._emit(chunk)
            return
        self.feed(chunk)
        self._emit(self.comp.compress(chunk))

    def finish(self) -> None:
        if self.comp is not None:
            self._emit(self.comp.flush())


class ReceivingSink(SqlTap):
    """Write already-compressed bytes as they arrive: sha256, byte count, and for plain
    dumps an inflater feeding :class:`SqlTap` (rows counted from the stream)."""

    def __init__(self, f, fmt: str):
        super().__init__(fmt == "plain")
        self.f = f
        self.sha = hashlib.sha256()
        self.out_bytes = 0
        self.inflate = gz.decompressobj() if fmt == "plain" else None

    def write(self, chunk: bytes) -> None:
        self.f.write(chunk)
        self.sha.update(chunk)
        self.out_bytes += len(chunk)
        if self.inflate is None:
            return
        try:
            raw = self.inflate.decompress(chunk)
            while self.inflate.unused_data:
                rest = self.inflate.unused_data
                self.inflate = gz.decompressobj()
                raw += self.inflate.decompress(rest)
        except gz.ERRORS as e:
            raise StorageError(f"the remote gzip stream is corrupt ({e})") from None
        self.feed(raw)


def _pump(stream, q: "queue.Queue") -> None:
    """Reader thread: move pg_dump's stdout into a bounded queue so pg_dump never waits
    while we compress (zlib and pipe reads release the GIL: the two overlap)."""
    try:
        while True:
            b = stream.read(CHUNK)
            q.put(b)
            if not b:
                return
    except BaseException as e:  # delivered to the consumer
        q.put(e)


def _write_error(partial: str, e: OSError, manifest: dict) -> StorageError:
    manifest["phase"] = "write"
    return StorageError(f"writing {partial} failed: {e.strerror or e}"
                        f"{' (file system full)' if getattr(e, 'errno', 0) == 28 else ''}")


def _open_partial(writer, partial: str):
    try:
        return writer.open_write(partial)
    except OSError as e:
        raise StorageError(f"cannot write {partial}: {e.strerror}") from e


# ----------------------------------------------------------------------------- tables with data
def as_listed(name: str, server_encoding: str | None) -> str:
    """``name`` as it reads in ``pg_restore -l`` output decoded as UTF-8 with replacement:
    pg_dump writes names in the database's encoding (a LATIN1 ``café`` is the byte 0xE9,
    shown as U+FFFD), so the comparison goes through the same loss."""
    codec = PY_CODECS.get((server_encoding or "UTF8").upper(), "utf-8")
    try:
        raw = name.encode(codec, "surrogateescape")
    except (UnicodeEncodeError, LookupError):
        return name
    return raw.decode("utf-8", "replace")


def toc_data_tables(listing: str, tables: list[dict], server_encoding: str | None) -> set[tuple[str, str]]:
    """The tables of ``tables`` that have a TABLE DATA entry in a custom archive's TOC
    (``listing``: ``pg_restore -l`` output decoded as UTF-8 with replacement)."""
    return {(t["schema"], t["name"]) for t in tables
            if f" TABLE DATA {as_listed(t['schema'], server_encoding)} {as_listed(t['name'], server_encoding)} "
            in listing}


# ----------------------------------------------------------------------------- a file here
class FileHere(Destination):
    """A file in a local host's ``backup.dir`` (module docstring)."""

    def __init__(self, access: PostgresAccess):
        super().__init__(access, access.runner, access.host.backup.dir)
        self.direct = False  # pg_dump writes the custom archive itself
        self.args: list[str] = []
        self.f = None

    def compressor(self, spec: DumpSpec) -> tuple[str, int]:
        return (gz.codec_name(spec.level) if spec.fmt == "plain" else "pg_dump custom (zlib)"), spec.level

    def counts_from_stream(self, spec: DumpSpec) -> bool:
        return spec.fmt == "plain"

    def progress_measure(self, spec: DumpSpec) -> str:
        return "raw" if spec.fmt == "plain" else "archive"  # a plain dump's SQL passes through here

    def prepare(self, spec, args, partial, manifest) -> None:
        self.direct = spec.fmt == "custom" and not self.access.host.container
        self.args = [*args, "--file", partial] if self.direct else args
        manifest["argv"] = redact_argv(self.access.tool_argv("pg_dump", self.args))

    def start(self, spec, partial, manifest) -> None:
        f = _open_partial(self.writer, partial)  # created with our mode (0640) before pg_dump may open it
        if self.direct:
            f.close()
            f = open(os.devnull, "wb")
        self.f = f
        self.proc = self.access.popen_tool("pg_dump", self.args)
        self.sink = CompressingSink(f, spec.fmt, spec.level, track_copy=spec.fmt == "plain")

    def transfer(self, partial, manifest, progress) -> None:
        q: queue.Queue = queue.Queue(maxsize=16)
        threading.Thread(target=_pump, args=(self.proc.stdout, q), daemon=True).start()
        sink = self.sink
        stop = _watch_size(partial, progress) if self.direct and progress else None
        try:
            with self.f as f:
                while True:
                    chunk = q.get()
                    if isinstance(chunk, BaseException):
                        raise chunk
                    if not chunk:
                        break
                    sink.write(chunk)
                    if progress:
                        progress(sink.raw_bytes, sink.out_bytes)
                sink.finish()
                f.flush()
                if not self.direct:
                    report.step("fsync")
                    _fsync(f)
        except OSError as e:
            self.proc.kill()
            raise _write_error(partial, e, manifest) from e
        finally:
            if stop is not None:
                stop.set()

    def check_exit(self, spec, manifest) -> str:
        rc = self.proc.wait()
        err = self.proc.stderr_text()
        if rc != 0:
            manifest["stderr_tail"] = tail(err)
            error = self.access.error_for(self.proc.argv, rc, err, "pg_dump")
            if self.direct and "No space left on device" in err:
                manifest["phase"] = "write"
                raise StorageError(f"writing {self.args[-1]} failed: {tail(err, 300)} (file system full)") from error
            raise error
        return err

    def check_archive(self, spec, partial, tables, manifest, progress) -> ArchiveFacts:
        if self.direct:  # one read of the fresh file, from the page cache
            report.step("hashing")
            digest, size = self.writer.sha256(partial)
            if progress:
                progress(size, size)
        else:
            digest, size = self.sink.sha.hexdigest(), self.sink.out_bytes
        facts = ArchiveFacts(digest, size, self.sink.raw_bytes)
        if spec.fmt == "plain":
            self.sink.check_complete()
            return facts
        if spec.data_left_out:
            from bigskies_ops.archives.integrity import toc_listing
            try:
                facts.data_tables = toc_data_tables(toc_listing(self.access, partial), tables,
                                                    manifest.get("server_encoding"))
            except BigskiesError:
                pass  # cannot tell: every table counted
        if self.direct:  # written here with offsets: its schema reads fast (integrity.custom_schema_facts)
            from bigskies_ops.archives.integrity import custom_schema_facts
            facts.extra = custom_schema_facts(self.access, partial)
        return facts


def _watch_size(path: str, progress, every: float = 0.5) -> threading.Event:
    """Tell ``progress`` the size of ``path`` (a file pg_dump writes itself) every ``every``
    seconds until the returned event is set."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(every):
            try:
                n = os.path.getsize(path)
            except OSError:
                continue
            progress(n, n)
    threading.Thread(target=poll, daemon=True, name="dump-size").start()
    return stop


def _fsync(f) -> None:
    try:
        os.fsync(f.fileno())
    except (OSError, AttributeError, ValueError):
        pass


# ----------------------------------------------------------------------------- pipelines on an SSH host
def stage_statuses_of(proc, n: int) -> tuple[list[int | None], str]:
    """Each stage's exit status of a finished pipeline (None: it never reported), and its
    stderr without the status markers (hosts.shell.stage_statuses)."""
    from bigskies_ops.hosts.shell import stage_statuses
    return stage_statuses(proc.stderr_text(), n)


class _Pipeline(Destination):
    """``pg_dump [| gzip -N]`` on an SSH host, each stage reporting its own exit status."""

    where = ""

    def __init__(self, access: PostgresAccess, writer, bdir: str):
        super().__init__(access, writer, bdir)
        self.stages: list[list[str]] = []
        self.names: list[str] = []

    def compressor(self, spec: DumpSpec) -> tuple[str, int]:
        if spec.fmt == "plain":
            return f"gzip -{max(1, spec.level)} (on {self.access.host.name})", max(1, spec.level)
        return "pg_dump custom (zlib)", spec.level

    def prepare(self, spec, args, partial, manifest) -> None:
        dump_argv = self.access.tool_argv("pg_dump", args)
        self.stages, self.names = [dump_argv], ["pg_dump"]
        if spec.fmt == "plain":
            self.stages.append(["gzip", f"-{max(1, spec.level)}", "-n", "-c"])
            self.names.append("gzip")
        manifest["argv"] = redact_argv(dump_argv)
        manifest["remote_pipeline"] = " | ".join(shlex.join(redact_argv(s)) for s in self.stages) + self.where

    def check_exit(self, spec, manifest) -> str:
        """Every stage must have run and exited 0; the output side is judged first (a full
        disk kills gzip, and pg_dump then only reports a broken pipe)."""
        rc = self.proc.wait()
        rcs, err = stage_statuses_of(self.proc, len(self.stages))
        manifest["remote_exit_statuses"] = dict(zip(self.names, rcs))
        host = self.access.host
        where = f"on {host.name}" if self.mode == "remote" else "while streaming"
        failed = "No space left on device" in err or rc != 0 or any(r != 0 for r in rcs)
        if failed:
            manifest["stderr_tail"] = tail(err)
        if "No space left on device" in err:
            raise StorageError(f"{host.name}: file system full {where} (backup.dir {host.backup.dir}): {tail(err, 300)}")
        not_written = StorageError(f"{host.name}: the dump could not be written {where}: "
                                   f"{tail(err, 400) or 'output not opened'}")
        if spec.fmt == "plain" and rcs[-1] != 0:
            if rcs[-1] is None:
                raise not_written
            if rcs[0] == 0:
                raise CommandError(f"{host.name}: gzip failed (exit {rcs[-1]}) {where}: {tail(err, 400)}",
                                   returncode=rcs[-1], stderr=tail(err))
        if rcs[0] != 0:
            if rcs[0] is None and self.mode == "remote":
                raise not_written
            raise self.access.error_for(self.stages[0], rcs[0] if rcs[0] is not None else rc, err, "pg_dump")
        if rc != 0:
            raise CommandError(f"{host.name}: remote dump pipeline failed (exit {rc}): {tail(err, 400)}",
                               returncode=rc, stderr=tail(err))
        return err


# ----------------------------------------------------------------------------- a file on the SSH host
class FileOnHost(_Pipeline):
    """A file in an SSH host's ``backup.dir`` (module docstring); ``access`` runs on that host."""

    mode = "remote"

    def __init__(self, access: PostgresAccess):
        super().__init__(access, access.runner, access.host.backup.dir)

    def prepare(self, spec, args, partial, manifest) -> None:
        self.where = f" > {os.path.basename(partial)}"
        super().prepare(spec, args, partial, manifest)

    def start(self, spec, partial, manifest) -> None:
        self.proc = self.writer.pipeline(self.stages, stdout_path=partial, env=self.access.env())

    def transfer(self, partial, manifest, progress) -> None:
        """Wait for the remote ``... > partial`` pipeline, reporting the file's size; a file
        that does not grow for ``backup.stall_timeout`` seconds aborts it (StallError)."""
        from bigskies_ops.hosts.channels import StallError
        host, runner = self.access.host, self.writer
        stall = host.backup.stall_timeout or None
        last_size, last_change = -1, time.monotonic()
        while not self.proc.channel.status_event.wait(2.0):
            try:
                size = runner.size(partial)
            except (FileNotFoundError, BigskiesError):
                size = 0
            now = time.monotonic()
            if size != last_size:
                last_size, last_change = size, now
                if progress:
                    progress(size, size)
            elif stall and now - last_change > stall:
                raise StallError(f"{host.name}: pg_dump wrote nothing to {partial} for {stall:g} s "
                                 f"(backup.stall_timeout); aborted")
            if not runner.alive():
                break

    def check_archive(self, spec, partial, tables, manifest, progress) -> ArchiveFacts:
        """Prove the archive on the host complete, hashed there."""
        report.step(f"hashing on {self.access.host.name}")
        digest, size = self.writer.sha256(partial)
        facts = ArchiveFacts(digest, size)
        if spec.fmt == "plain":
            report.step(f"decompressing on {self.access.host.name} to check the end")
            self._check_plain(partial)
            if spec.data_left_out:
                facts.data_tables = self._copy_tables(partial)
        elif spec.data_left_out:
            facts.data_tables = toc_data_tables(self._toc(partial), tables, manifest.get("server_encoding"))
        return facts

    def _check_plain(self, partial: str) -> None:
        runner = self.writer
        r = runner.pipeline([["gzip", "-dc"], ["tail", "-c", str(TAIL_BYTES)]], stdin_path=partial)
        end = r.stdout.read()
        r.wait()
        rcs, err = stage_statuses_of(r, 2)
        if rcs != [0, 0]:
            raise StorageError(f"{self.access.host.name}: the written archive does not decompress: {tail(err, 300)}")
        check_plain(_head_of(runner, partial), end)

    def _copy_tables(self, partial: str) -> set[tuple[str, str]]:
        g = self.writer.pipeline([["gzip", "-dc"], ["grep", "-a", "^COPY "]], stdin_path=partial)
        text = g.stdout.read()
        g.wait()
        out = set()
        for m in COPY_RE.finditer(text):
            try:
                out.add(split_qualified(m.group(1).decode("utf-8")))
            except (ValueError, UnicodeDecodeError):
                pass
        return out

    def _toc(self, partial: str) -> str:
        r = self.writer.pipeline([self.access.tool_argv("pg_restore", ["--list"])], stdin_path=partial,
                                 env=self.access.env())
        text = r.stdout.read().decode("utf-8", "replace")
        r.wait()
        rcs, err = stage_statuses_of(r, 1)
        if rcs != [0]:
            raise StorageError(f"{self.access.host.name}: pg_restore cannot read the written archive: {tail(err, 300)}")
        return text


def _head_of(runner, path: str) -> bytes:
    """Up to 64 KiB of the decompressed start of a gzip archive on the runner's host."""
    f = runner.open_read(path)
    try:
        d = gz.decompressobj()
        out = b""
        while len(out) < HEAD_BYTES:
            chunk = f.read(HEAD_BYTES)
            if not chunk:
                break
            try:
                out += d.decompress(chunk)
            except gz.ERRORS as e:
                raise StorageError(f"{path}: corrupt gzip data ({e})") from None
        return out[:HEAD_BYTES]
    finally:
        f.close()


# ----------------------------------------------------------------------------- a stream to here
class StreamHere(_Pipeline):
    """The SSH host's dump streamed into a local folder ``bdir`` (module docstring).

    ``growing``: a :class:`bigskies_ops.jobs.handoff.GrowingFile` told when the ``.partial``
    exists and when its last byte is written (a restore follows it); setting its
    ``cancelled`` stops the pull (FAILED manifest, ``.partial`` removed)."""

    mode = "stream"
    what = "pull"
    where = " (stdout over SSH)"

    def __init__(self, access: PostgresAccess, bdir: str, growing=None):
        super().__init__(access, LocalRunner(), bdir)
        self.growing = growing
        self.f = None

    def manifest_fields(self) -> dict:
        return {"pulled_from": self.access.host.name, "pull_mode": "stream"}

    def counts_from_stream(self, spec: DumpSpec) -> bool:
        # prod's tables are read once, by pg_dump, not again by count(*)
        return spec.fmt == "plain"

    def progress_measure(self, spec: DumpSpec) -> str:
        # a plain dump's SQL is inflated here: its bytes match the estimate when the only
        # basis is the database's size (compressed bytes would end at ~1/6 of it: a wrong ETA)
        return "raw" if spec.fmt == "plain" else "archive"

    def start(self, spec, partial, manifest) -> None:
        self._launch()
        self.f = _open_partial(self.writer, partial)
        if self.growing is not None:
            self.growing.start(partial)
        self.sink = ReceivingSink(self.f, spec.fmt)

    def _launch(self) -> None:
        """Start the source (pg_dump on the host) unless the restore following the pull has
        already given up; one that gives up meanwhile kills it (GrowingFile.attach)."""
        self.stop_if_cancelled()
        self.proc = self.access.runner.pipeline(self.stages, env=self.access.env())
        if self.growing is not None:
            self.growing.attach(self.proc)

    def stop_if_cancelled(self) -> None:
        if self.growing is not None and self.growing.cancelled.is_set():
            raise KeyboardInterrupt(self.growing.cancel_reason)

    def transfer(self, partial, manifest, progress) -> None:
        sink, growing = self.sink, self.growing
        try:
            with self.f as f:
                while True:
                    chunk = self.proc.stdout.read(CHUNK)
                    if not chunk:
                        break
                    sink.write(chunk)
                    if progress:
                        progress(sink.raw_bytes if sink.inflate is not None else sink.out_bytes, sink.out_bytes)
                    if growing is not None:
                        f.flush()  # the follower reads what is in the file
                        self.stop_if_cancelled()
                f.flush()
                if growing is not None:
                    self.stop_if_cancelled()  # the source was killed: its end is not the dump's
                    growing.finish()
                report.step("fsync")
                os.fsync(f.fileno())
        except OSError as e:
            raise _write_error(partial, e, manifest) from e

    def check_archive(self, spec, partial, tables, manifest, progress) -> ArchiveFacts:
        sink = self.sink
        facts = ArchiveFacts(sink.sha.hexdigest(), sink.out_bytes, sink.raw_bytes or None)
        if spec.fmt == "plain":
            if not sink.inflate.eof:
                raise StorageError("the streamed gzip data ends early (truncated transfer)")
            sink.check_complete()
            return facts
        with open(partial, "rb") as f:
            if f.read(5) != b"PGDMP":
                raise StorageError("pg_dump output is not a custom-format archive")
        if spec.data_left_out:
            pr = shutil.which("pg_restore")
            listing = LocalRunner().run([pr, "--list", partial], check=False).text if pr else ""
            # without a local pg_restore which tables have data is unknown: no row checks
            facts.data_tables = toc_data_tables(listing, tables, manifest.get("server_encoding"))
        return facts


class StreamSqlHere(StreamHere):
    """A plain dump streamed as SQL, with no gzip on the SSH host, for a restore that loads
    it while it arrives (``db.pull --restore``): here the SQL is compressed into the kept
    ``.sql.gz`` (archives.gz: ISA-L level ``compress_level``), hashed, its rows counted, and
    handed over in memory to the load's reader (``growing``, a
    :class:`bigskies_ops.jobs.handoff.GrowingFile`; it bounds what waits unread).

    Why (measured on the benchmark's 752 MB of SQL, docs in the report of issue 21): GNU
    ``gzip -1`` on the host costs ~4 s of the host's CPU and is the single-threaded stage
    every byte waits for; ISA-L deflates the same SQL here in ~1.5 s, and the loading
    sessions read SQL instead of each inflating the archive again. The price is bandwidth:
    the SQL crosses the SSH channel uncompressed (~6x the bytes of the ``.sql.gz``)."""

    where = " (stdout over SSH; compressed here while loading)"

    def compressor(self, spec: DumpSpec) -> tuple[str, int]:
        level = max(1, spec.level)
        return f"{gz.codec_name(level)} (here, while loading)", level

    def prepare(self, spec, args, partial, manifest) -> None:
        dump_argv = self.access.tool_argv("pg_dump", args)
        self.stages, self.names = [dump_argv], ["pg_dump"]
        manifest["argv"] = redact_argv(dump_argv)
        manifest["remote_pipeline"] = shlex.join(redact_argv(dump_argv)) + self.where

    def start(self, spec, partial, manifest) -> None:
        self._launch()
        self.f = _open_partial(self.writer, partial)
        self.growing.start(partial, handed=True)
        self.sink = CompressingSink(self.f, "plain", max(1, spec.level), track_copy=True)

    def transfer(self, partial, manifest, progress) -> None:
        sink, growing = self.sink, self.growing
        try:
            with self.f as f:
                while True:
                    chunk = self.proc.stdout.read(CHUNK)
                    if not chunk:
                        break
                    growing.hand(chunk)  # the load's reader gets it while it is compressed here
                    sink.write(chunk)
                    if progress:
                        progress(sink.raw_bytes, sink.out_bytes)  # progress_measure "raw" (StreamHere)
                    self.stop_if_cancelled()
                sink.finish()
                self.stop_if_cancelled()  # the source was killed: its end is not the dump's
                growing.finish()
                f.flush()
                report.step("fsync")
                os.fsync(f.fileno())
        except OSError as e:
            raise _write_error(partial, e, manifest) from e

    def check_archive(self, spec, partial, tables, manifest, progress) -> ArchiveFacts:
        sink = self.sink
        sink.check_complete()  # pg_dump's completion trailer; the gzip stream is ours, complete
        return ArchiveFacts(sink.sha.hexdigest(), sink.out_bytes, sink.raw_bytes or None)
