"""Shell text a runner sends (pure: tests assert the text): the remote guard wrapper
(:data:`WRAPPER`) that takes secrets on stdin and stops an unattended command when its
client goes away, the pipeline script whose stages each report their exit status
(:func:`pipeline_script`, :func:`stage_statuses`), and how a command is named in a
message (:func:`describe`).
"""
from __future__ import annotations

import re
import shlex

from bigskies_ops.hosts.runners import redact_argv, tail

ENV_MARK = "__bigskies_ops_env__"

# The remote side of every command that needs environment values or that runs unattended
# (``sh -c WRAPPER sh G ARGV...``, G = "g" to guard, "-" not to):
# 1. skip stdin up to ENV_MARK (an optional sudo password line, consumed by sudo -S if it
#    asked), then export NAME=value lines up to an empty line (dash/bash `read` consume a
#    pipe byte by byte, so nothing of the command's own input is eaten). Secrets such as
#    PGPASSWORD are never on a command line and never on the host's disk: they live in the
#    environment of the command that needs them (on Linux, /proc/PID/environ is readable by
#    that user and root only, as a 0600 file would be) and go with it.
# 2. Not guarded: exec the argv (stdin untouched).
# 3. Guarded (the command reads no stdin): the argv runs in the background on /dev/null and
#    a watcher blocks reading the channel's stdin, which the client never closes. When the
#    client dies or the connection drops, sshd closes that pipe: the watcher gets EOF and
#    sends SIGTERM to the whole process group (sshd made the command a session and group
#    leader), so a ``pg_dump | gzip > file`` stops instead of running on unattended.
#    The watcher itself is stopped with SIGKILL: a SIGTERM that arrives before the forked
#    subshell has reset the parent's traps is lost, and it would read on (seen with dash).
WRAPPER = (
    'g=$1; shift; '
    'while IFS= read -r l; do [ "$l" = %(mark)s ] && break; done; '
    'while IFS= read -r kv && [ -n "$kv" ]; do export "$kv"; done; '
    '[ "$g" = g ] || exec "$@"; '
    'exec 3<&0; "$@" </dev/null & c=$!; '
    '{ while IFS= read -r _; do :; done; kill -TERM 0; } <&3 >/dev/null 2>&1 & w=$!; exec 3<&-; '
    'wait "$c" 2>/dev/null; rc=$?; kill -KILL "$w" 2>/dev/null; wait "$w" 2>/dev/null; exit "$rc"'
) % {"mark": ENV_MARK}
RC_MARK = "@@bigskies_rc"      # "RC_MARK STAGE STATUS" on a pipeline's stderr, one per stage
PGID_MARK = "@@bigskies_pgid"  # "PGID_MARK PGID": the group to stop when the pipeline is killed


def describe(argv: list[str]) -> str:
    """A remote command as shown in messages (pure): the argv, redacted and at most 200
    characters; our own ``sh -c SCRIPT`` steps are named by what they work on instead of
    showing the script (not 200 characters of shell cut mid-word)."""
    a = [str(x) for x in redact_argv(argv)]
    if len(a) >= 3 and a[0] == "sh" and a[1] == "-c":
        args = a[4:]
        if RC_MARK in a[2]:
            return "the remote pipeline " + " | ".join(
                m.group(1).split(" ", 1)[0] for m in re.finditer(r"\{ (\S+[^;]*); echo", a[2]))
        paths = [x for x in args if "/" in x]  # modes, sizes and offsets are noise to the reader
        return ("a remote shell step" + (f" on {shlex.join(paths)}" if paths else ""))[:200]
    return shlex.join(a)[:200]


def failure_reason(stderr: str) -> str:
    """Why a file operation failed, from its stderr (pure): the tail, with a full file
    system named as such; ``"failed"`` when stderr is empty."""
    s = tail(stderr, 300)
    if "No space left" in s:
        return f"file system full ({s})"
    return s or "failed"


# ----------------------------------------------------------------------------- pipelines
def pipeline_script(stages: list[list[str]], *, stdout_path: str | None = None,
                    stdin_path: str | None = None) -> str:
    """POSIX sh for ``s0 | s1 | ... [> stdout_path]`` where each stage reports
    ``@@bigskies_rc I STATUS`` on stderr (pure; tests assert the text)."""
    parts = []
    for i, argv in enumerate(stages):
        cmd = shlex.join([str(a) for a in argv])
        if i == 0 and stdin_path:
            cmd += " < " + shlex.quote(stdin_path)
        parts.append(f'{{ {cmd}; echo "{RC_MARK} {i} $?" >&2; }}')
    s = ("umask 027; read -r _ _ _ _ pg _ < /proc/$$/stat && echo \"%s $pg\" >&2; " % PGID_MARK
         + " | ".join(parts))
    if stdout_path:
        s += " > " + shlex.quote(stdout_path)
    return s


def without_marks(stderr: str) -> str:
    """``stderr`` without our pipeline's marker lines (:data:`PGID_MARK`, :data:`RC_MARK`):
    what a user sees of a remote command's stderr in messages and manifests."""
    return "\n".join(line for line in stderr.splitlines() if not line.startswith((PGID_MARK, RC_MARK)))


def stage_statuses(stderr: str, n: int) -> tuple[list[int | None], str]:
    """Parse the stage markers: ``([status or None per stage], stderr without markers)``."""
    rcs: list[int | None] = [None] * n
    rest = []
    for line in stderr.splitlines():
        m = re.fullmatch(re.escape(RC_MARK) + r" (\d+) (\d+)", line.strip())
        if m and int(m.group(1)) < n:
            rcs[int(m.group(1))] = int(m.group(2))
        elif not line.startswith(PGID_MARK):
            rest.append(line)
    return rcs, "\n".join(rest)
