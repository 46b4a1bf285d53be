"""``Exec``: run a command in the workspace and stream its output (process
I/O). No shell is involved unless argv names one. The command runs in its
own process group, which is killed if the caller goes away or the timeout
passes. Its environment never holds the sync token, and only the program
name is logged (never the arguments or the environment)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from devstack.core.errors import ConfigError
from devstack.core.exits import ExitInfo, describe
from devstack.core.logging import clip, get_logger
from devstack.core.paths import check_relpath
from devstack.sidecar.process import kill_group, spawn
from devstack.sync.v1 import sync_pb2 as pb

log = get_logger("sidecar.exec")
_READ = 64 * 1024


def _working_dir(workspace: Path, rel: str) -> Path:
    """``rel`` as a folder inside the workspace (not through a symlink out)."""
    cwd = workspace / check_relpath(rel) if rel else workspace
    if not cwd.is_dir() or not cwd.resolve().is_relative_to(workspace.resolve()):
        raise ConfigError(f"working directory {rel!r} is not a folder in the workspace")
    return cwd


def _check_strings(req: pb.ExecRequest) -> None:
    """Refuse what no process can be started with: a NUL byte in an
    argument or in the environment, a variable name that is empty or holds
    ``=`` (never an argument's or a value's text in the message)."""
    for i, arg in enumerate(req.argv):
        if "\0" in arg:
            raise ConfigError(f"exec: argument {i} holds a NUL byte")
    for name, value in req.env.items():
        if "\0" in name or "\0" in value:
            raise ConfigError(f"exec: environment variable {clip(name)!r} holds a NUL byte")
        if not name or "=" in name:
            raise ConfigError(f"exec: {clip(name)!r} is not an environment variable name")


async def run_exec(workspace: Path, req: pb.ExecRequest) -> AsyncIterator[pb.ExecEvent]:
    if not req.argv:
        raise ConfigError("exec needs a command")
    _check_strings(req)
    cwd = _working_dir(workspace, req.cwd)
    log.info("exec.start", program=req.argv[0], cwd=req.cwd or ".")
    proc = await spawn(list(req.argv), cwd=cwd, env=dict(req.env))
    if isinstance(proc, ExitInfo):
        log.info("exec.exit", code=proc.code, reason=proc.reason)
        message = f"{req.argv[0]}: {proc.message}"
        yield pb.ExecEvent(exit=pb.ExecExit(code=proc.code, reason=proc.reason, message=message))
        return
    queue: asyncio.Queue[pb.ExecEvent | None] = asyncio.Queue(maxsize=64)

    async def pump(stream: asyncio.StreamReader | None, name: str) -> None:
        assert stream is not None
        while data := await stream.read(_READ):
            await queue.put(
                pb.ExecEvent(stdout=data) if name == "stdout" else pb.ExecEvent(stderr=data)
            )
        await queue.put(None)

    pumps = [
        asyncio.create_task(pump(proc.stdout, "stdout")),
        asyncio.create_task(pump(proc.stderr, "stderr")),
    ]
    timed_out = False
    deadline = (
        asyncio.get_running_loop().time() + req.timeout_seconds if req.timeout_seconds else None
    )
    try:
        open_streams = 2
        while open_streams:
            timeout = (
                None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
            )
            try:
                item = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                timed_out = True
                kill_group(proc.pid, signal.SIGKILL)
                break
            if item is None:
                open_streams -= 1
            else:
                yield item
        code = await proc.wait()
    finally:
        if proc.returncode is None:
            kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        for t in pumps:
            t.cancel()
    if timed_out:
        yield pb.ExecEvent(
            exit=pb.ExecExit(
                code=124, reason="timeout", message=f"killed after {req.timeout_seconds}s timeout"
            )
        )
        return
    info = describe(code)
    log.info("exec.exit", code=info.code, reason=info.reason)
    yield pb.ExecEvent(exit=pb.ExecExit(code=info.code, reason=info.reason, message=info.message))
