"""The migration folder: its ``NNN_description.sql`` files, their statements, and the plan.

Decide, then act (DESIGN.md practice 8): this module is the "decide" half of
:mod:`bigskies_ops.jobs.migrations`. It reads the folder through a runner and
otherwise does no I/O; :func:`plan` compares the files with the rows a database has
recorded (:mod:`bigskies_ops.jobs.migration_apply` reads them and applies the files).

* Files ``NNN_description.sql`` are taken in numeric order; versions must be unique
  and contiguous (:func:`read_folder`).
* The checksum is SHA-256 (hex) of the file with CRLF normalised to LF, so a Windows
  checkout does not count as an edit; a stored checksum of the raw bytes (what
  ``bigskies_ops.dev.schema.bootstrap_sql`` writes) is accepted as well.
* A file whose leading comment block holds :data:`NO_TRANSACTION_MARKER` is
  non-transactional: its statements (:func:`split_statements`, split the way psql
  does) run one by one.
"""
from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass, field

from bigskies_ops.errors import EXIT_USAGE, BigskiesError

#: Header comment that makes a migration non-transactional (must be in the leading comment block).
NO_TRANSACTION_MARKER = "-- bigskies:no-transaction"
FILE_RE = re.compile(r"^(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)\.sql$")
_LOOKS_LIKE_RE = re.compile(r"^[0-9]+_.*\.sql$")
TX_CONTROL_RE = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|START\s+TRANSACTION|END|ABORT)\b(?!\s+ATOMIC)", re.I)


class MigrationError(BigskiesError):
    """A migration could not be applied or the folder/database state is not usable."""


# --------------------------------------------------------------------------- files
@dataclass(frozen=True)
class Statement:
    number: int          # 1-based
    start_line: int      # first line of the statement's first token (leading comments skipped)
    end_line: int        # line of its terminating ';' (or last line)
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationFile:
    version: int
    name: str
    filename: str
    path: str
    text: str            # CRLF normalised to LF
    checksum: str        # sha256 of text (LF-normalised) as UTF-8
    raw_checksum: str    # sha256 of the bytes as stored
    transactional: bool

    def matches(self, stored: str | None) -> bool:
        return stored is None or stored in (self.checksum, self.raw_checksum)

    def statements(self) -> list[Statement]:
        return split_statements(self.text)


def normalise(data: bytes) -> str:
    """The text a checksum is taken over: UTF-8, CRLF -> LF (see module docstring)."""
    return data.decode("utf-8").replace("\r\n", "\n")


def _has_marker(text: str) -> bool:
    for line in text.split("\n"):
        s = line.strip()
        if not s:
            continue
        if not s.startswith("--"):
            return False
        if s.lower().replace(" ", "") == NO_TRANSACTION_MARKER.replace(" ", ""):
            return True
    return False


def read_folder(runner, folder: str) -> list[MigrationFile]:
    """Read and validate the migration folder on the host (through its runner).

    Raises:
        MigrationError (exit 2): folder missing, a badly named ``NNN_*.sql`` file, a
            duplicate version, a gap in the versions, or a file that is not UTF-8.
    """
    if not runner.exists(folder):
        raise MigrationError(f"migration folder {folder} does not exist (migrations.dir)", exit_code=EXIT_USAGE)
    found: dict[int, MigrationFile] = {}
    for fn in runner.listdir(folder):
        m = FILE_RE.match(fn)
        if not m:
            if _LOOKS_LIKE_RE.match(fn):
                raise MigrationError(f"{posixpath.join(folder, fn)}: migration file names must look like "
                                     f"NNN_description.sql ([A-Za-z0-9_.-] in the description)",
                                     exit_code=EXIT_USAGE)
            continue
        v = int(m.group("version"))
        path = posixpath.join(folder, fn)
        if v in found:
            raise MigrationError(f"duplicate migration version {v}: {found[v].filename} and {fn} in {folder}; "
                                 f"every version must be used once", exit_code=EXIT_USAGE)
        data = runner.read_bytes(path)
        try:
            text = normalise(data)
        except UnicodeDecodeError as e:
            raise MigrationError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})", exit_code=EXIT_USAGE)
        found[v] = MigrationFile(v, m.group("name"), fn, path, text,
                                 hashlib.sha256(text.encode()).hexdigest(), hashlib.sha256(data).hexdigest(),
                                 not _has_marker(text))
    files = [found[v] for v in sorted(found)]
    for a, b in zip(files, files[1:]):
        if b.version != a.version + 1:
            missing = ", ".join(str(x) for x in range(a.version + 1, min(b.version, a.version + 6)))
            raise MigrationError(f"gap in migration versions in {folder}: {a.filename} is followed by {b.filename} "
                                 f"(missing {missing}{', ...' if b.version - a.version > 6 else ''}); "
                                 f"versions must be contiguous", exit_code=EXIT_USAGE)
    return files


def check_no_transaction_control(f: MigrationFile) -> None:
    """A transactional file must not BEGIN/COMMIT itself (it would break all-or-nothing)."""
    for s in f.statements():
        m = TX_CONTROL_RE.match(s.text)
        if m:
            raise MigrationError(f"{f.path}:{s.start_line}: transaction control ({m.group(1).upper()}) is "
                                 f"not allowed in a migration; each file already runs in one transaction (or mark "
                                 f"it '{NO_TRANSACTION_MARKER}'); nothing was applied", exit_code=EXIT_USAGE)


# --------------------------------------------------------------------------- SQL splitting
_DOLLAR_RE = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z_0-9\x80-\uffff]*)?\$")
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z_0-9$]*")


def split_statements(text: str) -> list[Statement]:
    """Split SQL into statements the way psql does: on ``;`` outside quotes, comments,
    dollar quotes and ``BEGIN ATOMIC ... END`` bodies. Line numbers are 1-based."""
    out: list[Statement] = []
    i, n, line = 0, len(text), 1
    buf_start = None           # index where the current statement's first token starts
    start_line = 1
    atomic = 0                 # depth inside BEGIN ATOMIC ... END (CASE ... END nests)
    prev_word = ""

    def flush(end: int, end_line: int):
        nonlocal buf_start, atomic, prev_word
        if buf_start is not None:
            body = text[buf_start:end].strip()
            if body and body != ";":
                out.append(Statement(len(out) + 1, start_line, end_line, body))
        buf_start, atomic, prev_word = None, 0, ""

    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if c in " \t\r\f":
            i += 1
            continue
        if text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if buf_start is None:
            buf_start, start_line = i, line
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            line += text.count("\n", i, j)
            i = j
            continue
        if c in "'\"":
            esc = c == "'" and i > 0 and text[i - 1] in "eE" and (i < 2 or not (text[i - 2].isalnum() or text[i - 2] == "_"))
            j = i + 1
            while j < n:
                if esc and text[j] == "\\":
                    j += 2
                    continue
                if text[j] == c:
                    if j + 1 < n and text[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            line += text.count("\n", i, j + 1)
            i = j + 1
            continue
        if c == "$":
            m = _DOLLAR_RE.match(text, i)
            if m and not (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
                tag = m.group(0)
                j = text.find(tag, m.end())
                j = n if j < 0 else j + len(tag)
                line += text.count("\n", i, j)
                i = j
                continue
        if c.isalpha() or c == "_":
            m = _WORD_RE.match(text, i)
            w = m.group(0).upper()
            if w == "ATOMIC" and prev_word == "BEGIN":
                atomic += 1
            elif atomic and w == "CASE":
                atomic += 1
            elif atomic and w == "END":
                atomic -= 1
            prev_word = w
            i = m.end()
            continue
        if c == ";" and not atomic:
            flush(i + 1, line)
            i += 1
            continue
        prev_word = ""
        i += 1
    flush(n, line)
    return out


# --------------------------------------------------------------------------- plan (pure)
@dataclass
class Plan:
    applied: list[tuple[MigrationFile, dict]] = field(default_factory=list)
    pending: list[MigrationFile] = field(default_factory=list)
    changed: list[tuple[MigrationFile, dict]] = field(default_factory=list)
    unknown: list[dict] = field(default_factory=list)        # rows without a file (db ahead of code)
    beyond_target: list[MigrationFile] = field(default_factory=list)

    @property
    def head(self) -> int | None:
        vs = [f.version for f, _ in self.applied + self.changed] + [int(r["version"]) for r in self.unknown]
        return max(vs) if vs else None


def plan(files: list[MigrationFile], rows: dict[int, dict], to: int | None = None) -> Plan:
    """Compare the folder with the applied rows. Pure: no I/O."""
    p = Plan()
    known = {f.version for f in files}
    for f in files:
        row = rows.get(f.version)
        if row is not None:
            (p.applied if f.matches(row.get("checksum")) else p.changed).append((f, row))
        elif to is not None and f.version > to:
            p.beyond_target.append(f)
        else:
            p.pending.append(f)
    p.unknown = [rows[v] for v in sorted(rows) if v not in known]
    return p


def changed_message(p: Plan) -> str:
    lines = [f"{f.filename} was changed after it was applied (file checksum {f.checksum}, recorded "
             f"{row.get('checksum')} on {row.get('applied_at')})" for f, row in p.changed]
    return ("refused: " + "; ".join(lines) + ". Applied migrations must never be edited: restore the file "
            "(git checkout) and put the change in a new migration")


def ahead_message(p: Plan, folder: str) -> str:
    names = ", ".join(f"{r['version']} {r.get('name') or ''}".strip() for r in p.unknown)
    return (f"the database is ahead of the code: migration(s) {names} are applied but not in {folder}; "
            f"update the code (or its migrations folder) before migrating")
