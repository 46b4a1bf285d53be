"""Save-to-reloaded latency of the hot-reload strategies ``signal`` and
``supervise``, end to end: real processes on 127.0.0.1 only.

A source tree on the "laptop" side holds ``message.txt``. A real
``devstack sidecar`` serves a workspace with a reload strategy, a real
``devstack connect`` watches the source tree, and a small app serves, over
HTTP on 127.0.0.1, what it last read from the workspace's ``message.txt``
and how many times it reloaded. Each sample writes a new value into the
source file and stops the clock when the app answers with it (polled
tightly over one keep-alive connection), so the figure covers connect's
watcher, the sync, the sidecar's write, its reload debounce and the reload
itself:

- ``signal``: the app runs on its own and re-reads the file on SIGHUP; the
  sidecar finds it by pid file and signals it;
- ``supervise``: the sidecar runs the app and restarts it (SIGTERM to its
  process group, start again, wait for ``--ready-url``); the new process
  reads the file when it starts.

``--reloader-only`` measures the reloader alone instead, in process: it
writes the workspace file itself and calls ``Reloader.notify`` as the
sidecar does after applying a batch (no watcher, no sync).

Usage: .venv/bin/python bench/reload_latency.py [--runs 30] [--debounce-ms 0 100]
       [--reloader-only]
Prints a table of the median, p90, p99 and max over the runs (ms).
``bench/sync_bench.py`` calls ``end_to_end`` for its table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _procs

from devstack.core.ports import free_port

STRATEGIES = ("signal", "supervise")

# The app: serves {"pid", "reloads", "message"} as JSON on 127.0.0.1:PORT;
# reads message.txt from its working directory (the workspace) at start and
# on SIGHUP. A missing file reads as null (the supervised app starts before
# the initial sync has delivered it). HTTP runs in threads (one per
# connection, so the benchmark's keep-alive probe never blocks the sidecar's
# readiness probe) with SIGHUP blocked; the main thread takes SIGHUP with
# sigwait, so a signal is handled at once rather than at the next wake-up
# of a server loop. TCP_NODELAY: otherwise Nagle's algorithm and delayed ACKs
# hold each keep-alive answer back by ~40 ms.
APP = """
import http.server, json, os, signal, sys, threading
port, pid_file = int(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "")
def read():
    try:
        with open("message.txt", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None
state = {"pid": os.getpid(), "reloads": 0, "message": read()}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes
    def do_GET(self):
        body = json.dumps(state).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
srv.daemon_threads = True
threading.Thread(target=srv.serve_forever, daemon=True).start()
if pid_file:
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(pid_file + ".tmp", pid_file)
while True:
    signal.sigwait({signal.SIGHUP})
    state["message"] = read()
    state["reloads"] += 1
"""


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def summary_ms(seconds: list[float]) -> dict[str, Any]:
    ms = [x * 1000 for x in seconds]
    return {
        "saves": len(ms),
        "median_ms": median(ms),
        "p90_ms": pct(ms, 90),
        "p99_ms": pct(ms, 99),
        "min_ms": min(ms) if ms else math.nan,
        "max_ms": max(ms) if ms else math.nan,
        "runs_ms": ms,
    }


class Probe:
    """GET / on the app over one keep-alive connection, reconnecting when
    the app restarts; ``None`` while nothing answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def get(self) -> dict[str, Any] | None:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            self.conn.request("GET", "/")
            resp = self.conn.getresponse()
            body = resp.read()
            state: dict[str, Any] = json.loads(body)
            return state
        except (OSError, http.client.HTTPException, ValueError):
            self.close()
            return None

    def until(self, want: str, timeout: float, *, every: float = 0.0005) -> dict[str, Any]:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            state = self.get()
            if state is not None and state.get("message") == want:
                return state
            time.sleep(every)
        raise TimeoutError(f"the app did not serve {want!r} within {timeout:.0f}s")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _save(path: Path, data: bytes) -> None:
    """An in-place save, as most editors do it."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Setup:
    """Where one end-to-end measurement runs (its folders must not exist)."""

    base: Path
    token_file: Path
    logs: _procs.LogDir


def end_to_end(
    setup: Setup, *, strategy: str, saves: int, debounce_ms: int, gap: float = 0.15
) -> dict[str, Any]:
    """``saves`` samples of save-to-reloaded latency through real
    ``devstack connect`` and ``devstack sidecar --reload STRATEGY``
    processes; the summary in ms plus what the app reported."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}")
    src, ws, app_dir = setup.base / "src", setup.base / "workspace", setup.base / "app"
    for d in (src, ws, app_dir):
        d.mkdir(parents=True)
    (app_dir / "app.py").write_text(APP)
    (src / "message.txt").write_text("v0")
    (src / "README.md").write_text("the reload benchmark's source tree\n")
    port = free_port()
    app_cmd = [_procs.PY, str(app_dir / "app.py"), str(port)]
    app: Any = None
    probe = Probe(port)
    sidecar: _procs.Sidecar | None = None
    follow: _procs.Connect | None = None
    extra = ["--reload-on", "message.txt", "--reload-debounce-ms", str(debounce_ms)]
    if strategy == "signal":
        pid_file = app_dir / "app.pid"
        app = _procs.spawn([*app_cmd, str(pid_file)], setup.logs.new("app-signal"), cwd=ws)
        _procs.wait_until(lambda: probe.get() is not None, 60, "the app to answer", every=0.02)
        extra += ["--reload", "signal", "--pid-file", str(pid_file), "--signal", "HUP"]
    else:
        extra += [
            "--reload",
            "supervise",
            "--command",
            shlex.join(app_cmd),
            "--ready-url",
            f"http://127.0.0.1:{port}/",
        ]
    samples: list[float] = []
    pids: set[int] = set()
    try:
        sidecar = _procs.Sidecar(ws, setup.token_file, setup.logs, extra).start()
        follow = _procs.Connect(
            src, sidecar.address, setup.token_file, setup.base / "cache", setup.logs
        ).start()
        try:
            first = probe.until("v0", 120, every=0.01)  # the initial sync, then a reload
        except TimeoutError as e:
            follow.check()
            raise RuntimeError(f"{e}\n{_procs.tail(sidecar.log)}") from e
        reloads0 = int(first.get("reloads", 0))
        time.sleep(gap)
        for i in range(1, saves + 1):
            want = f"v{i}"
            t0 = time.perf_counter()
            _save(src / "message.txt", want.encode())
            try:
                state = probe.until(want, 60)
            except TimeoutError as e:
                follow.check()
                raise RuntimeError(
                    f"{strategy}: save {i}: {e}\n{_procs.tail(sidecar.log)}\n"
                    f"{_procs.tail(follow.log)}"
                ) from e
            samples.append(time.perf_counter() - t0)
            pids.add(int(state.get("pid", 0)))
            time.sleep(gap)  # let the reload's bookkeeping finish first
        last = probe.get() or {}
    finally:
        probe.close()
        if follow is not None:
            follow.stop()
        if sidecar is not None:
            sidecar.stop()
        _procs.stop(app, timeout=10)
    out = summary_ms(samples)
    out["debounce_ms"] = debounce_ms
    if strategy == "signal":
        out["signals_handled"] = int(last.get("reloads", 0)) - reloads0
    else:
        out["app_processes"] = len(pids)
    return out


# ------------------------------------------------------- --reloader-only


async def _reloader_only(strategy: str, runs: int, debounce_ms: int) -> list[float]:
    from devstack.sidecar.reload import RESTART, ReloadConfig, ReloadEvent, Rule, build_reloader

    with tempfile.TemporaryDirectory(prefix="devstack-reload-bench-") as tmp:
        ws = Path(tmp) / "workspace"
        ws.mkdir()
        (Path(tmp) / "app.py").write_text(APP)
        (ws / "message.txt").write_text("v0")
        port = free_port()
        app_cmd = (sys.executable, str(Path(tmp) / "app.py"), str(port))
        events: list[ReloadEvent] = []
        rules = (Rule(("*.txt",), (RESTART,)),)
        target = None
        if strategy == "supervise":
            config = ReloadConfig(
                strategy="supervise",
                command=app_cmd,
                rules=rules,
                debounce_ms=debounce_ms,
                ready_url=f"http://127.0.0.1:{port}/",
            )
        else:
            pid_file = str(Path(tmp) / "app.pid")
            target = await asyncio.create_subprocess_exec(*app_cmd, pid_file, cwd=ws)
            config = ReloadConfig(
                strategy="signal", pid_file=pid_file, rules=rules, debounce_ms=debounce_ms
            )
        reloader = build_reloader(config, workspace=ws, on_event=events.append)
        await reloader.start()
        probe = Probe(port)
        samples: list[float] = []
        try:
            await asyncio.to_thread(probe.until, "v0", 60)
            for i in range(1, runs + 1):
                want = f"v{i}"
                t0 = time.perf_counter()
                (ws / "message.txt").write_text(want)
                reloader.notify(["message.txt"])
                while True:
                    state = probe.get()
                    if state is not None and state.get("message") == want:
                        break
                    await asyncio.sleep(0.0005)
                samples.append(time.perf_counter() - t0)
                # Let the reload's own bookkeeping finish before the next save.
                while sum(e.kind != "reload-started" for e in events) < i:
                    await asyncio.sleep(0.001)
            failed = [e for e in events if e.kind in ("reload-failed", "process-exited")]
            if failed:
                raise RuntimeError(f"unexpected events: {failed}")
        finally:
            probe.close()
            await reloader.close()
            if target is not None:
                target.terminate()
                await target.wait()
        return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="saves per strategy (default 30)")
    ap.add_argument("--debounce-ms", type=int, nargs="+", default=[0, 100])
    ap.add_argument(
        "--reloader-only",
        action="store_true",
        help="time the reloader alone, in process (no watcher, no sync)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work folder and its logs")
    args = ap.parse_args()
    rows = []
    work = Path(tempfile.mkdtemp(prefix="devstack-reload-bench-"))
    try:
        (work / "token").write_text("bench-token")
        logs = _procs.LogDir(work / "logs")
        for debounce in args.debounce_ms:
            for strategy in STRATEGIES:
                if args.reloader_only:
                    from devstack.core import logging as dlog

                    dlog.configure(level="warning")  # keep the table readable
                    s = summary_ms(asyncio.run(_reloader_only(strategy, args.runs, debounce)))
                else:
                    setup = Setup(work / f"{strategy}-{debounce}", work / "token", logs)
                    s = end_to_end(setup, strategy=strategy, saves=args.runs, debounce_ms=debounce)
                rows.append((strategy, debounce, s))
    finally:
        if args.keep:
            print(f"work folder and logs: {work}", file=sys.stderr)
        else:
            import shutil

            with contextlib.suppress(OSError):
                shutil.rmtree(work)
    what = "reloader only" if args.reloader_only else "end to end: save on the laptop side"
    print(f"save-to-reloaded latency ({what}), {args.runs} runs each (ms)")
    print()
    print("| strategy | debounce ms | runs | median | p90 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for strategy, debounce, s in rows:
        print(
            f"| {strategy} | {debounce} | {s['saves']} | {s['median_ms']:.1f} "
            f"| {s['p90_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
