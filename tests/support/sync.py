"""Real sidecar and connect processes on loopback, and tree comparison."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from devstack.core.plan import Plan
from devstack.core.sync.acks import Stats
from devstack.sync.v1 import sync_pb2 as pb

PY = sys.executable


def devstack_cmd(*args: str) -> list[str]:
    return [PY, "-m", "devstack.cli", *args]


def tree_state(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """path -> (kind, permission bits, content or link target); the
    sidecar's own .devstack/ folder is left out."""
    out: dict[str, tuple[str, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != ".devstack"]
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(full).encode())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), Path(full).read_bytes())
    return out


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_same(src: Path, dst: Path, timeout: float = 30.0) -> None:
    def same() -> bool:
        try:
            return tree_state(src) == tree_state(dst)
        except FileNotFoundError:
            return False

    try:
        wait_until(same, timeout, f"{dst} to match {src}")
    except AssertionError:
        a, b = tree_state(src), tree_state(dst)
        diff = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
        raise AssertionError(f"trees differ: {sorted(diff)[:20]}") from None


#: Runs a command as root without the capabilities that bypass file
#: permissions, as a non-root sidecar in a pod runs: a folder made mode 000
#: is then unreadable to it (util-linux's setpriv; a plain user could not
#: run this checkout's interpreter, which lives under /root).
WITHOUT_DAC = (
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
)


class Sidecar:
    """``devstack sidecar`` as a real process on 127.0.0.1 (``prefix``, such
    as ``WITHOUT_DAC``, goes before the command)."""

    def __init__(
        self,
        workspace: Path,
        token_file: Path,
        *extra: str,
        port: int = 0,
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.workspace = workspace
        self.token_file = token_file
        self.extra = extra
        self.port = port
        self.prefix = prefix
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: list[dict[str, object]] = []
        self.raw: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Sidecar:
        cmd = [
            *self.prefix,
            *devstack_cmd(
                "sidecar",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--workspace",
                str(self.workspace),
                "--token-file",
                str(self.token_file),
                *self.extra,
            ),
        ]
        env = {**os.environ, "DEVSTACK_LOG_LEVEL": "debug", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env
        )
        ready = threading.Event()

        def drain() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                self.raw.append(line)
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                self.log.append(ev)
                if ev.get("event") == "sidecar.listening":
                    self.port = int(ev["port"])  # type: ignore[arg-type]
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            raise AssertionError("sidecar did not start:\n" + "\n".join(self.raw[-30:]))
        return self

    def events(self, name: str) -> list[dict[str, object]]:
        return [e for e in self.log if e.get("event") == name]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def restart(self) -> Sidecar:
        self.stop()
        return self.start()


def connect_once(
    src: Path,
    sidecar: Sidecar,
    token_file: Path | None = None,
    *extra: str,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        devstack_cmd(
            "connect",
            str(src),
            "--to",
            sidecar.address,
            "--token-file",
            str(token_file or sidecar.token_file),
            "--once",
            *extra,
        ),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "XDG_CACHE_HOME": str(src.parent / ".cache"), **(env or {})},
    )


def connect_follow(src: Path, sidecar: Sidecar, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        devstack_cmd(
            "connect",
            str(src),
            "--to",
            sidecar.address,
            "--token-file",
            str(sidecar.token_file),
            *extra,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(src.parent / ".cache")},
    )


class ConnectProcess:
    """``devstack connect`` (watching) as a real process whose stderr is
    read as it comes: plain reporter lines in ``lines``, JSON log events
    (``DEVSTACK_LOG_LEVEL=info``) in ``log``."""

    def __init__(
        self, src: Path, address: str, token_file: Path, *extra: str, level: str = "info"
    ) -> None:
        env = {
            **os.environ,
            "XDG_CACHE_HOME": str(src.parent / ".cache"),
            "DEVSTACK_LOG_LEVEL": level,
            "PYTHONUNBUFFERED": "1",
        }
        self.proc = subprocess.Popen(
            devstack_cmd(
                "connect", str(src), "--to", address, "--token-file", str(token_file), *extra
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.lines: list[str] = []
        self.log: list[dict[str, object]] = []
        self._drained = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    self.log.append(json.loads(line))
        self._drained.set()

    def events(self, name: str, **match: object) -> list[dict[str, object]]:
        return [
            e
            for e in list(self.log)
            if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
        ]

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"connect ignored signal {sig} for {timeout}s") from None
        self._drained.wait(10)
        return code


class QuietReporter:
    """A ``Syncer`` reporter that keeps nothing: for stories that read the
    syncer's stats."""

    def round_started(self, plan: Plan, *, initial: bool) -> None: ...
    def progress(self, files: int, nbytes: int) -> None: ...
    def round_finished(self, stats: Stats) -> None: ...
    def event(self, event: pb.Event) -> None: ...
    def note(self, text: str) -> None: ...
