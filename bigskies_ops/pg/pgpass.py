"""``db.pgpass``: converge a pgpass file from the inventory and the variables it names.

The file format is libpq's (PostgreSQL docs 34.16 "The Password File"): one
``hostname:port:database:username:password`` per line, ``:`` and ``\\`` escaped
with a backslash, ``#`` comment lines, first matching line wins. libpq ignores
(with only a WARNING) a file that has group or world access, so
:func:`check_mode` turns that into an error for every task that relies on one.

Converging means: for every (host, port, database, user) of the inventory host
(``postgres.database``, ``postgres.maintenance_db``, and ``*`` for the databases the
tool creates under generated names) exactly one line with the current password; other entries untouched (order and comments kept); mode 0600.
A new line goes before the first existing wildcard line that would otherwise
shadow it. Which file: ``postgres.passfile``, else ``$PGPASSFILE`` (local hosts),
else ``~/.pgpass`` of the user the runner acts as. See docs/credentials.md.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from bigskies_ops import output
from bigskies_ops.errors import BigskiesError, EXIT_USAGE
from bigskies_ops.inventory import Host

LIBPQ_MODE_REASON = ('password file "{path}" has group or world access; '
                     'permissions should be u=rw (0600) or less')


class PgpassError(BigskiesError):
    """The pgpass file is malformed or too open (exit 2: fix the input)."""

    exit_code = EXIT_USAGE


def escape(value: str) -> str:
    """Escape ``\\`` and ``:`` as libpq requires in a pgpass field."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


def split_fields(line: str) -> list[str] | None:
    """Unescaped fields of a pgpass line, or None when it ends in a lone backslash.

    libpq takes everything after the fourth separator as the password, so a line
    with more than four unescaped ``:`` still has five fields.
    """
    fields, cur, i = [], [], 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            if i + 1 >= len(line):
                return None
            cur.append(line[i + 1])
            i += 2
            continue
        if c == ":" and len(fields) < 4:
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    fields.append("".join(cur))
    return fields


@dataclass
class Entry:
    host: str
    port: str
    database: str
    user: str
    password: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.host, self.port, self.database, self.user)

    def line(self) -> str:
        return ":".join(escape(x) for x in (self.host, self.port, self.database, self.user, self.password))

    def shadows(self, key: tuple[str, str, str, str]) -> bool:
        """Whether this line (possibly with ``*`` fields) matches ``key`` for libpq."""
        return all(a == "*" or a == b for a, b in zip(self.key, key))


def parse(text: str, path: str) -> list[tuple[str, Entry | None]]:
    """``[(raw_line, Entry or None for comments/blank lines)]``.

    Raises:
        PgpassError: a malformed line; the message names the line number, never its content.
    """
    out: list[tuple[str, Entry | None]] = []
    for no, raw in enumerate(text.split("\n"), 1):
        s = raw.rstrip("\r")
        if not s.strip() or s.lstrip().startswith("#"):
            out.append((raw, None))
            continue
        f = split_fields(s)
        problem = None
        if f is None:
            problem = "it ends in a lone backslash"
        elif len(f) < 5:
            problem = f"it has {len(f)} field(s), expected 5 (host:port:database:user:password)"
        elif not (f[1] == "*" or f[1].isdigit()):
            problem = "its port field is neither a number nor *"
        if problem:
            raise PgpassError(f"pgpass file {path} line {no} is malformed: {problem}. Fix or remove that line "
                              f"(the file was not changed)")
        out.append((raw, Entry(*f)))
    if out and out[-1][0] == "":
        out.pop()   # the final newline
    return out


def wanted_entries(host: Host, password: str) -> list[Entry]:
    """The lines the tool needs on that server: one for the database and one for the
    maintenance database (as before: explicit, and what older files hold), then one with
    ``*`` as the database for every database the tool creates and reads there under
    generated names: restore side databases (``<db>_restoring_<stamp>``, cut to 63 bytes
    with a hash), pre-restore copies (``<db>_pre_<stamp>``) and the scratch databases of
    ``db.verify --restore-test``. Without it a cron run (no password variable, only
    this file) failed its restore at the side database with "no password supplied".

    The ``*`` does not widen what the password can do: PostgreSQL authenticates the
    role, whatever database is named; which databases the role may open is decided by
    pg_hba.conf and CONNECT privileges, not by this file (docs/credentials.md).

    libpq matches a unix-socket connection against ``localhost`` (docs 34.16).
    """
    pg = host.postgres
    h = pg.host if pg.host and not pg.host.startswith("/") else "localhost"
    dbs = list(dict.fromkeys([pg.database, pg.maintenance_db, "*"]))
    return [Entry(h, str(pg.port), d, pg.user, password) for d in dbs]


@dataclass
class PgpassResult:
    host: str
    path: str
    word: str = "ok"
    changes: list[str] = field(default_factory=list)
    #: with ``check``: the file's entry lines that would go and come, passwords masked
    #: (:func:`masked`); comments and untouched lines are not listed
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"result": self.word, "host": self.host, "path": self.path, "changes": self.changes}


def masked(line: str) -> str:
    """A pgpass line with its password field replaced by ``********`` (comments as they are)."""
    f = split_fields(line.rstrip("\r"))
    if not line.strip() or line.lstrip().startswith("#") or f is None or len(f) < 5:
        return line
    return ":".join(escape(x) for x in f[:4]) + ":********"


def line_diff(old: str, new: str) -> tuple[list[str], list[str]]:
    """``(lines only in old, lines only in new)``, masked, in file order (pure)."""
    a, b = old.splitlines(), new.splitlines()
    return [masked(x) for x in a if x not in b], [masked(x) for x in b if x not in a]


def converge_text(text: str, path: str, wanted: list[Entry]) -> tuple[str, list[str]]:
    """Pure: the new file text and a list of human-readable changes (never a password)."""
    items = parse(text, path)
    changes: list[str] = []
    for w in wanted:
        label = ":".join(w.key)
        idx = [i for i, (_, e) in enumerate(items) if e is not None and e.key == w.key]
        if idx:
            first = idx[0]
            if items[first][1].password != w.password:
                changes.append(f"updated the password of {label}")
            if items[first][0].rstrip("\r") != w.line():
                items[first] = (w.line(), w)
            for i in reversed(idx[1:]):
                del items[i]
            if len(idx) > 1:
                changes.append(f"removed {len(idx) - 1} duplicate line(s) for {label}")
        else:
            pos = next((i for i, (_, e) in enumerate(items) if e is not None and e.shadows(w.key)), len(items))
            items.insert(pos, (w.line(), w))
            changes.append(f"added {label}" + (f" (before the wildcard line {pos + 1} that would shadow it)"
                                               if pos < len(items) - 1 else ""))
    new = "\n".join(raw for raw, _ in items) + "\n" if items else ""
    if new == text or (not changes and new.rstrip("\n") == text.rstrip("\n")):
        return text, []
    if not changes:
        changes.append("normalised the entries' escaping")
    return new, changes


# --------------------------------------------------------------------------- files on hosts
def _is_local(runner) -> bool:
    return not getattr(runner, "is_remote", False)


def default_path(host: Host, runner) -> str:
    """``postgres.passfile``, else ``$PGPASSFILE`` (local), else ``~/.pgpass`` on the host."""
    if host.postgres.passfile:
        return host.postgres.passfile
    if _is_local(runner):
        return os.environ.get("PGPASSFILE") or os.path.join(os.path.expanduser("~"), ".pgpass")
    home = runner.run(["sh", "-c", 'printf %s "$HOME"']).text.strip() or "."
    return home.rstrip("/") + "/.pgpass"


def file_mode(runner, path: str) -> int | None:
    """Permission bits of ``path`` on the runner's host, or None when it does not exist."""
    if _is_local(runner):
        try:
            return stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            return None
    r = runner.run(["stat", "-c", "%a", path], check=False)
    if r.returncode != 0:
        return None
    return int(r.text.strip(), 8)


def check_mode(runner, path: str, host_name: str) -> None:
    """Refuse a pgpass file libpq would ignore (group or world access).

    Raises:
        PgpassError: with libpq's own reason and the command that fixes it.
    """
    mode = file_mode(runner, path)
    if mode is not None and mode & 0o077:
        raise PgpassError(LIBPQ_MODE_REASON.format(path=path)
                          + f" (mode {mode:04o}; libpq ignores such a file). Fix: {output.hint(f'db.pgpass --host {host_name}')}")


def converge(host: Host, *, runner=None, path: str | None = None, check: bool = False) -> PgpassResult:
    """Make the host's pgpass file hold the inventory's credentials, mode 0600.

    ``check``: a dry run: the result says what would change (``changes``, and the entry
    lines ``before``/``after`` with passwords masked) and nothing is written.

    Raises:
        BigskiesError (exit 2): no ``password_env`` in the inventory, or it is not set.
        PgpassError: the existing file has a malformed line (file untouched).
    """
    from bigskies_ops.hosts import runner_for
    name = host.postgres.password_env
    if not name:
        raise BigskiesError(f"hosts.{host.name}.postgres.password_env is not set in the inventory; "
                            f"db.pgpass writes the password that variable names", exit_code=EXIT_USAGE)
    if name not in os.environ:
        raise BigskiesError(f"hosts.{host.name}.postgres.password_env: environment variable {name} is not set",
                            exit_code=EXIT_USAGE)
    password = os.environ[name]
    own = runner is None
    runner = runner or runner_for(host)
    try:
        path = path or default_path(host, runner)
        res = PgpassResult(host.name, path)
        exists = runner.exists(path)
        text = runner.read_bytes(path).decode("utf-8") if exists else ""
        new, changes = converge_text(text, path, wanted_entries(host, password))
        mode = file_mode(runner, path) if exists else None
        if check:
            changes = (["created the file (mode 0600)"] if not exists else []) + changes
            if exists and mode != 0o600:
                changes.append(f"mode {mode:04o} -> 0600")
            res.changes, res.word = changes, ("changed" if changes else "ok")
            res.before, res.after = line_diff(text, new)
            return res
        if changes or not exists:
            if not exists:
                changes = ["created the file"] + changes
            parent = os.path.dirname(path)
            if parent and not runner.exists(parent):
                runner.makedirs(parent, mode=0o700)
            runner.write_atomic(path, new.encode("utf-8"), mode=0o600)
            if mode is not None and mode != 0o600:
                changes.append(f"mode {mode:04o} -> 0600")
        elif mode != 0o600:
            if _is_local(runner):
                os.chmod(path, 0o600)
            else:
                runner.run(["chmod", "600", path])
            changes.append(f"mode {mode:04o} -> 0600")
        res.changes = changes
        res.word = "changed" if changes else "ok"
        return res
    finally:
        if own:
            runner.close()
