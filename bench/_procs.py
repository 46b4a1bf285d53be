"""devstack's own processes for the benchmarks: ``devstack sidecar`` and
``devstack connect`` as real processes on 127.0.0.1, each writing its output
to a log file of its own under the work folder (never to the benchmark's
stdout, which holds only the result table), plus the small waiting helpers
the measurements share.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent


def devstack(*args: str) -> list[str]:
    return [PY, "-m", "devstack.cli", *args]


class LogDir:
    """Hands out one fresh log file per child process: ``NAME-N.log``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._n = 0

    def new(self, name: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        self._n += 1
        return self.root / f"{self._n:03d}-{name}.log"


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return f"--- {path} (last {lines} lines) ---\n" + "\n".join(text.splitlines()[-lines:])


def spawn(
    cmd: Sequence[str], log: Path, *, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with stdout and stderr appended to ``log``."""
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )


def run_logged(
    cmd: Sequence[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
    what: str = "",
) -> float:
    """Run ``cmd`` to completion with its output in ``log``; its wall time
    in seconds. A non-zero exit raises with the log's tail."""
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        done = subprocess.run(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            timeout=timeout,
            check=False,
        )
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{what or cmd[0]} exited {done.returncode}\n{tail(log)}")
    return took


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until(cond: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


class Sidecar:
    """``devstack sidecar`` on 127.0.0.1 (an ephemeral port, read back from
    its ``sidecar.listening`` log event); ``extra`` adds options such as the
    reload strategy."""

    def __init__(
        self,
        workspace: Path,
        token_file: Path,
        logs: LogDir,
        extra: Sequence[str] = (),
        *,
        port: int = 0,
    ) -> None:
        self.workspace = workspace
        self.token_file = token_file
        self.log = logs.new("sidecar")
        self.extra = list(extra)
        self.listen_port = port  # 0: any
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _listening_port(self) -> int:
        with contextlib.suppress(OSError), open(self.log, errors="replace") as f:
            for line in f:
                if '"sidecar.listening"' in line:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        return int(json.loads(line)["port"])
        return 0

    def start(self, timeout: float = 60.0) -> Sidecar:
        cmd = devstack(
            "sidecar",
            "--listen",
            f"127.0.0.1:{self.listen_port}",
            "--workspace",
            str(self.workspace),
            "--token-file",
            str(self.token_file),
            *self.extra,
        )
        self.proc = spawn(cmd, self.log, env={"DEVSTACK_LOG_LEVEL": "info"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            self.port = self._listening_port()
            if self.port:
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"the sidecar did not start\n{tail(self.log)}")

    def stop(self) -> None:
        stop(self.proc)


def connect_cmd(src: Path, address: str, token_file: Path, *extra: str) -> list[str]:
    return devstack("connect", str(src), "--to", address, "--token-file", str(token_file), *extra)


def connect_once(
    src: Path,
    address: str,
    token_file: Path,
    cache: Path,
    logs: LogDir,
    *extra: str,
    name: str = "connect",
) -> float:
    """Wall time of one ``devstack connect --once`` process."""
    return run_logged(
        connect_cmd(src, address, token_file, "--once", *extra),
        logs.new(name),
        env={"XDG_CACHE_HOME": str(cache)},
        what="devstack connect --once",
    )


class Connect:
    """``devstack connect`` in watch mode (no ``--once``), until stopped."""

    def __init__(
        self, src: Path, address: str, token_file: Path, cache: Path, logs: LogDir
    ) -> None:
        self.cmd = connect_cmd(src, address, token_file)
        self.cache = cache
        self.log = logs.new("connect-watch")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Connect:
        self.proc = spawn(self.cmd, self.log, env={"XDG_CACHE_HOME": str(self.cache)})
        return self

    def check(self) -> None:
        """Raise if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"devstack connect exited {self.proc.returncode}\n{tail(self.log)}")

    def stop(self) -> None:
        stop(self.proc, timeout=20)
