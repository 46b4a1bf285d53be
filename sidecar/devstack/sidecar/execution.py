"""``Exec``: run a command in the workspace and stream its output (process
I/O). No shell is involved unless argv names one. The command runs in its
own process group, which is killed if the caller goes away or the timeout
passes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from devstack.core.errors import ConfigError
from devstack.core.exits import describe
from devstack.core.logging import get_logger
from devstack.core.paths import check_relpath
from devstack.sync.v1 import sync_pb2 as pb

log = get_logger("sidecar.exec")
_READ = 64 * 1024


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def run_exec(workspace: Path, req: pb.ExecRequest) -> AsyncIterator[pb.ExecEvent]:
    if not req.argv:
        raise ConfigError("exec needs a command")
    cwd = workspace / check_relpath(req.cwd) if req.cwd else workspace
    if not cwd.is_dir() or cwd.is_symlink():
        raise ConfigError(f"working directory {req.cwd!r} is not a folder in the workspace")
    env = {**os.environ, **dict(req.env)}
    env.pop("DEVSTACK_TOKEN", None)
    log.info("exec.start", argv=list(req.argv)[:1], cwd=req.cwd or ".")
    try:
        proc = await asyncio.create_subprocess_exec(
            *req.argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        info = describe(127)
        yield pb.ExecEvent(
            exit=pb.ExecExit(code=127, reason=info.reason, message=f"{req.argv[0]}: {info.message}")
        )
        return
    except PermissionError:
        info = describe(126)
        yield pb.ExecEvent(
            exit=pb.ExecExit(code=126, reason=info.reason, message=f"{req.argv[0]}: {info.message}")
        )
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
                _kill_group(proc)
                break
            if item is None:
                open_streams -= 1
            else:
                yield item
        code = await proc.wait()
    finally:
        if proc.returncode is None:
            _kill_group(proc)
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
