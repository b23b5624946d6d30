"""One exception tree for the whole library (DESIGN.md practice 7).

Every error carries the exit code the CLI maps it to (CONTRACTS.md section 5):
0 ok, 1 failed, 2 usage or inventory error, 3 refused for safety.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


class BigskiesError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self)


class UsageError(BigskiesError):
    """Bad flags or arguments on the command line (exit 2)."""

    exit_code = EXIT_USAGE


class InventoryError(BigskiesError):
    """The inventory file is missing, malformed or names something unknown (exit 2)."""

    exit_code = EXIT_USAGE


class SafetyError(BigskiesError):
    """A destructive action was refused by the safety policy (exit 3)."""

    exit_code = EXIT_REFUSED


class CommandError(BigskiesError):
    """A command (local or remote) failed: carries the redacted argv, exit status, stderr tail."""

    def __init__(self, message: str, *, argv: list[str] | None = None, returncode: int | None = None,
                 stderr: str = "", exit_code: int | None = None):
        super().__init__(message, exit_code=exit_code)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class PostgresError(CommandError):
    """PostgreSQL refused or failed a query or tool run (unreachable, auth, SQL error)."""


class StorageError(BigskiesError):
    """Reading or writing backup files failed (missing file, full disk, bad archive)."""


class LockBusyError(BigskiesError):
    """Another task holds the (host, database) lock."""


class ArchiveError(StorageError):
    """An archive is unreadable, truncated, not a dump, or too new for the local tools."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: raised in the main thread so every ``finally`` (drop the
    side database, remove the private pgpass file, release the lock, restart
    coordinators) runs before the process exits 130 / 143."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
