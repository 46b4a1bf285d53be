"""What an exit status means, for a person (pure). One home for the readable
reasons of 126, 127, 137 and death by signal, used by reloads and Exec,
including a command that could not even start (it gets the code a shell
would give it)."""

from __future__ import annotations

import errno
import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class ExitInfo:
    code: int
    reason: str
    message: str


def describe(returncode: int) -> ExitInfo:
    """Classify a subprocess return code (negative: killed by that signal)."""
    if returncode == 0:
        return ExitInfo(0, "", "exited 0")
    if returncode < 0:
        signum = -returncode
        code = 128 + signum
    else:
        code = returncode
        signum = code - 128 if code > 128 else 0
    if code == 126:
        return ExitInfo(code, "not-executable", "exit 126: the command is not executable")
    if code == 127:
        return ExitInfo(code, "command-not-found", "exit 127: command not found")
    if signum == signal.SIGKILL:
        return ExitInfo(
            code, "killed", f"exit {code}: killed by SIGKILL (often the out-of-memory killer)"
        )
    if signum > 0 and returncode < 0:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return ExitInfo(code, "killed", f"exit {code}: killed by {name}")
    return ExitInfo(code, "exit", f"exited {code}")


def spawn_failure(error: OSError) -> ExitInfo:
    """What it means that a program could not be started (``error`` from
    exec): 127 if it does not exist, else 126, as a shell reports it, with
    the kernel's reason in words."""
    if isinstance(error, FileNotFoundError) or error.errno == errno.ENOENT:
        return ExitInfo(127, "command-not-found", "exit 127: command not found")
    if error.errno == errno.ENOEXEC:
        why = "not a program the kernel can run (a script needs a #! line)"
    elif isinstance(error, PermissionError):
        why = "permission denied (is it an executable file?)"
    else:
        why = f"cannot execute: {error.strerror or error}"
    return ExitInfo(126, "not-executable", f"exit 126: {why}")
