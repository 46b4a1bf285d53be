"""Save-to-reloaded latency of the hot-reload strategies ``signal`` and
``supervise`` (real processes on 127.0.0.1).

Each run writes a new value into ``message.txt`` in a temporary workspace,
calls ``Reloader.notify`` as the sidecar does after applying a batch, and
stops the clock when the app answers HTTP with the new value:

- ``signal``: a long-running HTTP server re-reads the file on SIGHUP; the
  reloader finds it by pid file and signals it;
- ``supervise``: the reloader restarts the server process (SIGTERM to its
  process group, start again, wait for ``--ready-url``); the new process
  reads the file at start.

Usage: .venv/bin/python bench/reload_latency.py [--runs 50] [--debounce-ms 0 100]
Prints a table of the median, p90, p99 and max over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from devstack.core import logging as dlog
from devstack.sidecar.reload import (
    RESTART,
    ReloadConfig,
    ReloadEvent,
    Rule,
    build_reloader,
)

APP = """
import http.server, os, pathlib, signal, sys
msg = pathlib.Path("message.txt")
body = [msg.read_bytes()]
def reread(*_):
    body[0] = msg.read_bytes()
signal.signal(signal.SIGHUP, reread)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body[0])))
        self.end_headers()
        self.wfile.write(body[0])
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
pathlib.Path("app.pid").write_text(str(os.getpid()))
s.serve_forever(poll_interval=0.05)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fetch(port: int) -> bytes | None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        writer.write(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
    _, _, body = data.partition(b"\r\n\r\n")
    return body


async def until_body(port: int, want: bytes, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await fetch(port) == want:
            return
        await asyncio.sleep(0.001)
    raise RuntimeError(f"the app never answered {want!r}")


async def measure(strategy: str, runs: int, debounce_ms: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="devstack-reload-bench-") as tmp:
        ws = Path(tmp)
        (ws / "app.py").write_text(APP)
        (ws / "message.txt").write_text("v0")
        port = free_port()
        events: list[ReloadEvent] = []
        rules = (Rule(("*.txt",), (RESTART,)),)
        target = None
        if strategy == "supervise":
            config = ReloadConfig(
                strategy="supervise",
                command=(sys.executable, "app.py", str(port)),
                rules=rules,
                debounce_ms=debounce_ms,
                ready_url=f"http://127.0.0.1:{port}/",
            )
        else:
            target = await asyncio.create_subprocess_exec(
                sys.executable, "app.py", str(port), cwd=ws
            )
            config = ReloadConfig(
                strategy="signal",
                pid_file=str(ws / "app.pid"),
                rules=rules,
                debounce_ms=debounce_ms,
            )
        reloader = build_reloader(config, workspace=ws, on_event=events.append)
        await reloader.start()
        await until_body(port, b"v0")
        samples: list[float] = []
        try:
            for i in range(1, runs + 1):
                want = f"v{i}".encode()
                t0 = time.perf_counter()
                (ws / "message.txt").write_bytes(want)
                reloader.notify(["message.txt"])
                await until_body(port, want)
                samples.append((time.perf_counter() - t0) * 1000)
                # Let the reload's own bookkeeping finish before the next save.
                while sum(e.kind != "reload-started" for e in events) < i:
                    await asyncio.sleep(0.001)
            failed = [e for e in events if e.kind in ("reload-failed", "process-exited")]
            if failed:
                raise RuntimeError(f"unexpected events: {failed}")
        finally:
            await reloader.close()
            if target is not None:
                target.terminate()
                await target.wait()
        return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--debounce-ms", type=int, nargs="+", default=[0, 100])
    args = ap.parse_args()
    dlog.configure(level="warning")  # keep the table readable
    rows = []
    for debounce in args.debounce_ms:
        for strategy in ("signal", "supervise"):
            s = asyncio.run(measure(strategy, args.runs, debounce))
            a = np.array(s)
            rows.append(
                (
                    strategy,
                    debounce,
                    len(s),
                    statistics.median(s),
                    float(np.percentile(a, 90)),
                    float(np.percentile(a, 99)),
                    max(s),
                )
            )
    print(f"save-to-reloaded latency, {args.runs} runs each (ms)")
    print()
    print("| strategy | debounce ms | runs | median | p90 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for strategy, debounce, n, med, p90, p99, mx in rows:
        print(f"| {strategy} | {debounce} | {n} | {med:.1f} | {p90:.1f} | {p99:.1f} | {mx:.1f} |")


if __name__ == "__main__":
    main()
