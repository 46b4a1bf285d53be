"""The sync benchmark: devstack beside cp, tar, rsync and syncthing, measured
in one run on this machine (processes and files on 127.0.0.1 and a work
folder; not a test: it prints numbers, it asserts only that every tool
produced the whole tree).

    .venv/bin/python bench/sync_bench.py [--quick] [--only NAME[,NAME...]]

Measures (see docs/benchmarks.md):

1. initial sync of a generated tree (10,000 files, ~100 MB) into a fresh
   destination with ``cp -a``, ``tar c | tar x``, rsync over a pipe and
   against a daemon, syncthing and devstack (sidecar + ``connect --once``);
2. no-op resync of 100,000 small files (``connect --once`` again);
3. save-to-applied latency of single-file edits, watcher included
   (devstack ``connect`` in watch mode, syncthing; ``tar`` and rsync of one
   file as a floor);
4. bytes sent for a one-line edit to a 50 MB text file (the client's own
   counter, a byte-counting TCP proxy on the wire, and rsync ``--stats``);
5. the sidecar's resident memory, idle and during the initial sync.

``--only`` takes tool names (cp, tar, rsync, syncthing, devstack) and/or
measurement names (initial, noop, latency, bytes, rss); tools and
measurements intersect.

Every timed run writes into a destination that never existed; old trees
are moved aside under the work folder's ``trash/`` and deleted only at the
very end (ext4 here is slow at creating files soon after deleting many).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _peers
import _tree

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent
TOOLS = ("cp", "tar", "rsync", "syncthing", "devstack")
MEASURES = ("initial", "noop", "latency", "bytes", "rss")
TOKEN = "bench-token"


@dataclass(frozen=True)
class Sizes:
    files: int
    binaries: int
    binary_mib: tuple[int, int]
    noop_files: int
    saves: int
    syncthing_saves: int
    big_mb: int
    repeat: int


FULL = Sizes(
    files=10_000,
    binaries=20,
    binary_mib=(1, 4),
    noop_files=100_000,
    saves=100,
    syncthing_saves=12,
    big_mb=50,
    repeat=3,
)
QUICK = Sizes(
    files=400,
    binaries=3,
    binary_mib=(1, 1),
    noop_files=1_000,
    saves=10,
    syncthing_saves=3,
    big_mb=4,
    repeat=1,
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


# ------------------------------------------------------------------ context


@dataclass
class Ctx:
    work: Path
    sizes: Sizes
    only: frozenset[str]
    results: dict[str, Any] = field(default_factory=dict)
    _n: int = 0

    @property
    def runs(self) -> Path:
        return self.work / "runs"

    @property
    def trash(self) -> Path:
        return self.work / "trash"

    def wants(self, measure: str, tool: str | None = None) -> bool:
        tools = self.only & set(TOOLS)
        measures = self.only & set(MEASURES)
        if "rss" in measures:
            measures = measures | {"initial"}
            tools = tools or frozenset({"devstack"})
        if measures and measure not in measures:
            return False
        return tool is None or not tools or tool in tools

    def fresh(self, name: str) -> Path:
        """A destination path that never existed in this run."""
        self._n += 1
        path = self.runs / f"{name}-{self._n}"
        path.mkdir(parents=True)
        return path

    def discard(self, path: Path) -> None:
        """Move a tree aside; it is deleted at the very end."""
        if path.exists():
            self._n += 1
            self.trash.mkdir(parents=True, exist_ok=True)
            os.rename(path, self.trash / f"{path.name}-{self._n}")


# ----------------------------------------------------------------- devstack


def devstack(*args: str) -> list[str]:
    return [PY, "-m", "devstack.cli", *args]


def children_cpu() -> float:
    """User + system CPU seconds of every finished child process so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def vm_kib(pid: int, key: str) -> int:
    """VmRSS / VmHWM of a process in KiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sidecar:
    """``devstack sidecar`` as a real process on 127.0.0.1."""

    def __init__(self, workspace: Path, token_file: Path) -> None:
        self.workspace = workspace
        self.token_file = token_file
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.tail: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Sidecar:
        env = {**os.environ, "DEVSTACK_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            devstack(
                "sidecar",
                "--listen",
                "127.0.0.1:0",
                "--workspace",
                str(self.workspace),
                "--token-file",
                str(self.token_file),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        ready = threading.Event()

        def drain() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                self.tail = [*self.tail[-40:], line]
                if not ready.is_set() and '"sidecar.listening"' in line:
                    with contextlib.suppress(ValueError, KeyError):
                        self.port = int(json.loads(line)["port"])
                        ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(timeout) or self.proc.poll() is not None or not self.port:
            raise RuntimeError("the sidecar did not start:\n" + "\n".join(self.tail))
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RssSampler:
    """Polls a process's VmRSS every few ms in a thread; keeps the peak."""

    def __init__(self, pid: int, every: float = 0.01) -> None:
        self.pid = pid
        self.every = every
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, vm_kib(self.pid, "VmRSS"))
            time.sleep(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, vm_kib(self.pid, "VmHWM"))


def connect_once(ctx: Ctx, src: Path, sidecar: Sidecar, cache: Path) -> float:
    """Wall time of one ``devstack connect --once`` process."""
    t0 = time.perf_counter()
    done = subprocess.run(
        devstack(
            "connect",
            str(src),
            "--to",
            sidecar.address,
            "--token-file",
            str(ctx.work / "token"),
            "--once",
        ),
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
        cwd=REPO,
        timeout=1800,
    )
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"devstack connect --once failed ({done.returncode}):\n{done.stderr}")
    return took


def wait_until(cond: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def check_copy(src: Path, dst: Path, expected: int, *, full: bool) -> None:
    """Every tool must deliver the whole tree; ``full`` compares content too."""
    got = _tree.count_files(dst)
    if got != expected:
        raise RuntimeError(f"{dst}: {got} files, expected {expected}")
    if full:
        a = _tree.tree_digest(src)
        b = _tree.tree_digest(_strip_tool_state(dst))
        if a != b:
            raise RuntimeError(f"{dst} does not hold the same tree as {src}")


def _strip_tool_state(dst: Path) -> Path:
    """Tool state folders (.devstack, .stfolder) are not part of the tree."""
    for name in (".devstack", ".stversions"):
        p = dst / name
        if p.exists():
            os.rename(p, dst.parent / f"{dst.name}{name}-state")
    return dst


# ------------------------------------------------------------ 1. initial


def measure_initial(ctx: Ctx, src: Path, info: _tree.TreeInfo, rsync: _peers.Rsync) -> None:
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    load: list[float] = []
    rss_idle: list[int] = []
    rss_peak: list[int] = []
    whole: list[float] = []
    pair: _peers.SyncthingPair | None = None
    if ctx.wants("initial", "syncthing"):
        pair = _peers.SyncthingPair(ctx.work / "syncthing-initial")
        pair.start()
    if ctx.wants("initial", "rsync"):
        rsync.start_daemon()
    try:
        for rep in range(ctx.sizes.repeat):
            for name in ("cp", "tar", "rsync-pipe", "rsync-daemon", "devstack", "syncthing"):
                tool = name.split("-")[0]
                if not ctx.wants("initial", tool):
                    continue
                dst = ctx.fresh(f"initial-{name}")
                os.sync()  # no writeback of the previous run during this one
                load.append(os.getloadavg()[0])
                cpu0 = children_cpu()
                extra_cpu = 0.0
                if name == "cp":
                    took = _peers.timed(_peers.cp_cmd(src, dst))
                elif name == "tar":
                    took = _peers.timed(_peers.tar_cmd(src, dst))
                elif name == "rsync-pipe":
                    took = _peers.timed(rsync.pipe_cmd(src, dst))
                elif name == "rsync-daemon":
                    d0 = rsync.daemon_cpu()
                    took = _peers.timed(rsync.daemon_cmd(src, dst))
                    extra_cpu = rsync.daemon_cpu() - d0
                elif name == "syncthing":
                    assert pair is not None
                    fid = pair.share(src)
                    st0 = pair.cpu()
                    t0 = time.perf_counter()
                    pair.accept(fid, dst)
                    wait_until(functools.partial(pair.complete, fid), 1800, "syncthing", every=0.02)
                    took = time.perf_counter() - t0
                    extra_cpu = pair.cpu() - st0
                    pair.unshare(fid)
                else:
                    t0 = time.perf_counter()
                    sc = Sidecar(dst, ctx.work / "token").start()
                    try:
                        time.sleep(0.5)  # settle: "idle" is after start
                        rss_idle.append(vm_kib(sc.pid, "VmRSS"))
                        sc0 = _peers.tree_cpu(sc.pid)
                        cpu0 = children_cpu()
                        with RssSampler(sc.pid) as sampler:
                            took = connect_once(ctx, src, sc, ctx.fresh("cache"))
                        extra_cpu = _peers.tree_cpu(sc.pid) - sc0
                        rss_peak.append(sampler.peak_kib)
                        whole.append(time.perf_counter() - t0 - 0.5)
                    finally:
                        sc.stop()
                used = children_cpu() - cpu0 + extra_cpu
                check_copy(src, dst, info.files, full=rep == 0)
                times.setdefault(name, []).append(took)
                cpu.setdefault(name, []).append(used)
                log(f"initial {name} #{rep + 1}: {took:.3f} s (CPU {used:.2f} s)")
                ctx.discard(dst)
    finally:
        rsync.stop()
        if pair is not None:
            pair.stop()
    res: dict[str, Any] = {
        "tree": {"files": info.files, "dirs": info.dirs, "bytes": info.bytes},
        "runs_s": times,
        "median_s": {k: median(v) for k, v in times.items()},
        "cpu_runs_s": cpu,
        "cpu_median_s": {k: median(v) for k, v in cpu.items()},
        "loadavg_1m_before_runs": load,
    }
    rsyncs = [k for k in times if k.startswith("rsync")]
    if "devstack" in times and rsyncs:
        # Each repetition's devstack run beside the same repetition's rsync
        # runs (seconds apart): steadier than a ratio of medians on a busy box.
        res["ratio_runs"] = [
            d / min(times[k][i] for k in rsyncs) for i, d in enumerate(times["devstack"])
        ]
    if whole:
        res["devstack_whole_runs_s"] = whole
        res["median_s"]["devstack (sidecar start + connect)"] = median(whole)
    if rss_idle:
        ctx.results["rss"] = {
            "idle_kib": rss_idle,
            "initial_sync_peak_kib": rss_peak,
            "idle_median_mib": median([x / 1024 for x in rss_idle]),
            "peak_max_mib": max(rss_peak) / 1024,
        }
    ctx.results["initial"] = res


def measure_startup(ctx: Ctx) -> None:
    """How much of a connect run is the interpreter and imports alone."""
    runs = [
        _peers.timed(devstack("connect", "--help"), stdout=subprocess.DEVNULL, cwd=REPO)
        for _ in range(3)
    ]
    ctx.results["startup"] = {"connect_help_runs_s": runs, "median_s": median(runs)}


# ------------------------------------------------------------ 2. no-op


def measure_noop(ctx: Ctx, rsync: _peers.Rsync) -> None:
    n = ctx.sizes.noop_files
    src = ctx.work / "noop-src"
    log(f"noop: generating {n} small files")
    info = _tree.generate_small(src, files=n)
    res: dict[str, Any] = {"files": info.files, "bytes": info.bytes}
    if ctx.wants("noop", "devstack"):
        ws = ctx.fresh("noop-devstack")
        cache = ctx.fresh("cache")
        sc = Sidecar(ws, ctx.work / "token").start()
        try:
            with RssSampler(sc.pid) as sampler:
                first = connect_once(ctx, src, sc, cache)
            check_copy(src, ws, n, full=False)
            log(f"noop devstack initial: {first:.3f} s")
            runs = []
            with RssSampler(sc.pid) as sampler2:
                for i in range(ctx.sizes.repeat):
                    runs.append(connect_once(ctx, src, sc, cache))
                    log(f"noop devstack #{i + 1}: {runs[-1]:.3f} s")
        finally:
            sc.stop()
        res["devstack"] = {
            "initial_s": first,
            "runs_s": runs,
            "median_s": median(runs),
            "sidecar_peak_mib": max(sampler.peak_kib, sampler2.peak_kib) / 1024,
        }
        ctx.discard(ws)
    if ctx.wants("noop", "rsync"):
        dst = ctx.fresh("noop-rsync")
        first = _peers.timed(rsync.pipe_cmd(src, dst))
        runs = [_peers.timed(rsync.pipe_cmd(src, dst)) for _ in range(ctx.sizes.repeat)]
        log(f"noop rsync: initial {first:.3f} s, no-op {median(runs):.3f} s")
        res["rsync-pipe"] = {"initial_s": first, "runs_s": runs, "median_s": median(runs)}
        ctx.discard(dst)
    ctx.results["noop"] = res


# ------------------------------------------------------------ 3. latency


def _save(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _arrived(path: Path, data: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False


def _edits(src: Path, count: int, stamp: str) -> Iterator[tuple[str, bytes]]:
    """(relative path, new content) for ``count`` saves over a few files."""
    files = sorted(
        str(p.relative_to(src)) for p in src.rglob("*.py") if p.is_file() and "/" in str(p)
    )[:10]
    base = {f: (src / f).read_bytes() for f in files}
    for i in range(count):
        f = files[i % len(files)]
        yield f, f"# {stamp} save {i}\n".encode() + base[f]


def save_latencies(
    src: Path, dst: Path, count: int, stamp: str, *, timeout: float, gap: float
) -> list[float]:
    """Save a file in ``src``; time until ``dst`` holds the new content."""
    out: list[float] = []
    for rel, data in _edits(src, count, stamp):
        target = dst / rel
        t0 = time.perf_counter()
        _save(src / rel, data)
        deadline = t0 + timeout
        while not _arrived(target, data):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{rel}: not applied within {timeout}s")
            time.sleep(0.0005)
        out.append(time.perf_counter() - t0)
        time.sleep(gap)
    return out


def _lat_summary(xs: list[float]) -> dict[str, Any]:
    ms = [x * 1000 for x in xs]
    return {
        "saves": len(ms),
        "median_ms": median(ms),
        "p99_ms": pct(ms, 99),
        "min_ms": min(ms) if ms else math.nan,
        "max_ms": max(ms) if ms else math.nan,
        "runs_ms": ms,
    }


def measure_latency(ctx: Ctx, src0: Path, info: _tree.TreeInfo, rsync: _peers.Rsync) -> None:
    res: dict[str, Any] = {}
    src = ctx.work / "latency-src"
    subprocess.run(["cp", "-a", str(src0), str(src)], check=True)
    if ctx.wants("latency", "devstack"):
        ws = ctx.fresh("latency-devstack")
        sc = Sidecar(ws, ctx.work / "token").start()
        cache = ctx.fresh("cache")
        follow = subprocess.Popen(
            devstack(
                "connect", str(src), "--to", sc.address, "--token-file", str(ctx.work / "token")
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "XDG_CACHE_HOME": str(cache)},
            cwd=REPO,
        )
        try:
            wait_until(
                lambda: _tree.count_files(ws) >= info.files, 600, "the initial sync", every=0.2
            )
            time.sleep(0.5)
            xs = save_latencies(src, ws, ctx.sizes.saves, "devstack", timeout=30, gap=0.03)
            res["devstack"] = _lat_summary(xs)
            log(
                f"latency devstack: median {res['devstack']['median_ms']:.1f} ms, "
                f"p99 {res['devstack']['p99_ms']:.1f} ms"
            )
        finally:
            follow.terminate()
            try:
                follow.wait(20)
            except subprocess.TimeoutExpired:
                follow.kill()
            sc.stop()
        ctx.discard(ws)
    if ctx.wants("latency", "tar"):
        dst = ctx.fresh("latency-tar")
        subprocess.run(_peers.tar_cmd(src, dst), check=True)
        xs = []
        for rel, data in _edits(src, ctx.sizes.saves, "tar"):
            _save(src / rel, data)
            xs.append(_peers.timed(_peers.tar_cmd(src, dst, rel)))
            if not _arrived(dst / rel, data):
                raise RuntimeError(f"tar did not deliver {rel}")
        res["tar (one file, no watcher)"] = _lat_summary(xs)
        log(f"latency tar: median {res['tar (one file, no watcher)']['median_ms']:.1f} ms")
        ctx.discard(dst)
    if ctx.wants("latency", "rsync"):
        dst = ctx.fresh("latency-rsync")
        subprocess.run(rsync.pipe_cmd(src, dst), check=True)
        xs = []
        for rel, data in _edits(src, max(10, ctx.sizes.saves // 4), "rsync"):
            _save(src / rel, data)
            # -I: same-size saves within one second look unchanged to the quick check.
            cmd = ["rsync", "-aI", f"--rsh={rsync.rsh}", str(src / rel), f"localhost:{dst / rel}"]
            xs.append(_peers.timed(cmd))
            if not _arrived(dst / rel, data):
                raise RuntimeError(f"rsync did not deliver {rel}: {cmd}")
        res["rsync pipe (one file, no watcher)"] = _lat_summary(xs)
        ctx.discard(dst)
    if ctx.wants("latency", "syncthing"):
        pair = _peers.SyncthingPair(ctx.work / "syncthing-latency")
        pair.start()
        try:
            fid = pair.share(src, watch_delay_s=1)
            dst = ctx.fresh("latency-syncthing")
            pair.accept(fid, dst, watch_delay_s=1)
            wait_until(lambda: pair.complete(fid), 1800, "syncthing's initial sync")
            xs = save_latencies(
                src, dst, ctx.sizes.syncthing_saves, "syncthing", timeout=60, gap=0.2
            )
            res["syncthing (fsWatcherDelayS=1)"] = _lat_summary(xs)
            med = res["syncthing (fsWatcherDelayS=1)"]["median_ms"]
            log(f"latency syncthing: median {med:.0f} ms")
        finally:
            pair.stop()
    ctx.discard(src)
    ctx.results["latency"] = res


# ------------------------------------------------------------ 4. bytes


class CountingProxy:
    """A TCP proxy on 127.0.0.1 that counts the bytes each way."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.up = 0
        self.down = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await r.read(1 << 16):
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    w.write(data)
                    await w.drain()
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    w.close()

        # The session ends, or the benchmark closes the loop.
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await asyncio.gather(pump(reader, uwriter, True), pump(ureader, writer, False))


class Quiet:
    """A reporter that shows nothing (the benchmark prints its own lines)."""

    def round_started(self, plan: object, *, initial: bool) -> None: ...
    def progress(self, files: int, nbytes: int) -> None: ...
    def round_finished(self, stats: object) -> None: ...
    def event(self, event: object) -> None: ...
    def note(self, text: str) -> None: ...


def one_line_edit(path: Path) -> None:
    """Change one line in the middle of a text file (and its length)."""
    data = path.read_bytes()
    mid = len(data) // 2
    start = data.rfind(b"\n", 0, mid) + 1
    end = data.find(b"\n", mid)
    path.write_bytes(data[:start] + b"    edited = 'by the benchmark'  # one line" + data[end:])


async def _sync_through_proxy(src: Path, upstream_port: int, cache: Path) -> dict[str, Any]:
    from devstack.cli.syncer import Syncer, Target

    proxy = CountingProxy(upstream_port)
    await proxy.start()
    try:
        syncer = Syncer(
            src,
            Target(f"127.0.0.1:{proxy.port}", TOKEN),
            reporter=Quiet(),
            cache_path=cache,
        )
        t0 = time.perf_counter()
        code = await syncer.run(once=True)
        took = time.perf_counter() - t0
    finally:
        await proxy.close()
    if code != 0:
        raise RuntimeError(f"in-process sync exited {code}")
    return {
        "client_counter_bytes_sent": syncer.stats.bytes_sent,
        "wire_bytes_up": proxy.up,
        "wire_bytes_down": proxy.down,
        "files_synced": syncer.stats.files_synced,
        "seconds": took,
    }


def measure_bytes(ctx: Ctx, rsync: _peers.Rsync) -> None:
    size = ctx.sizes.big_mb * 1_000_000
    src = ctx.work / "bytes-src"
    src.mkdir()
    big = src / "big.log.txt"
    big.write_bytes(_tree.text_blob(size))
    res: dict[str, Any] = {"file_bytes": size}
    rsync_dst = ctx.fresh("bytes-rsync") if ctx.wants("bytes", "rsync") else None
    if rsync_dst is not None:
        subprocess.run(rsync.pipe_cmd(src, rsync_dst), check=True)
    ws = ctx.fresh("bytes-devstack") if ctx.wants("bytes", "devstack") else None
    sc = Sidecar(ws, ctx.work / "token").start() if ws is not None else None
    try:
        cache = ctx.fresh("cache")
        if sc is not None and ws is not None:
            connect_once(ctx, src, sc, cache)
            # A no-op session through the proxy: the fixed cost of a session.
            base = asyncio.run(_sync_through_proxy(src, sc.port, cache / "c.json"))
        one_line_edit(big)
        if sc is not None and ws is not None:
            got = asyncio.run(_sync_through_proxy(src, sc.port, cache / "c.json"))
            if (ws / big.name).read_bytes() != big.read_bytes():
                raise RuntimeError("devstack did not apply the one-line edit")
            got["noop_session_wire_up"] = base["wire_bytes_up"]
            got["noop_session_wire_down"] = base["wire_bytes_down"]
            res["devstack"] = got
            log(
                f"bytes devstack: counter {got['client_counter_bytes_sent']} B, "
                f"wire up {got['wire_bytes_up']} B, down {got['wire_bytes_down']} B"
            )
        if rsync_dst is not None:
            out = subprocess.run(
                rsync.pipe_cmd(src, rsync_dst, "--stats"),
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            if (rsync_dst / big.name).read_bytes() != big.read_bytes():
                raise RuntimeError("rsync did not apply the one-line edit")
            res["rsync-pipe"] = {
                "total_bytes_sent": _peers.Rsync.bytes_sent(out),
                "total_bytes_received": _received(out),
            }
            log(f"bytes rsync: sent {res['rsync-pipe']['total_bytes_sent']} B")
    finally:
        if sc is not None:
            sc.stop()
    for p in (ws, rsync_dst, src):
        if p is not None:
            ctx.discard(p)
    ctx.results["bytes"] = res


def _received(stats_output: str) -> int:
    import re

    m = re.search(r"Total bytes received:\s*([\d,.]+)", stats_output)
    return int(re.sub(r"[,.]", "", m.group(1))) if m else -1


# ------------------------------------------------------------ report


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    fs = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[1] == "/":
                fs = parts[2]
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rsync": _peers.Rsync.version(),
        "syncthing": _peers.SyncthingNode.version(),
        "filesystem": f"/ is {fs}",
    }


def _fmt_s(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.2f} s"


def targets(ctx: Ctx) -> list[tuple[str, str, str, str]]:
    """(what, target, measured, PASS/MISS/-) rows."""
    r = ctx.results
    rows: list[tuple[str, str, str, str]] = []
    ini = r.get("initial", {}).get("median_s", {})
    if "devstack" in ini:
        tree = r["initial"]["tree"]
        what = f"initial sync, {tree['files']:,} files / {tree['bytes'] / 1e6:.0f} MB"
        ref = ini.get("rsync-pipe") or ini.get("rsync-daemon")
        if ref:
            best = min(v for k, v in ini.items() if k.startswith("rsync"))
            ratio = ini["devstack"] / best
            rows.append(
                (
                    what + " (devstack connect / fastest rsync)",
                    "ratio <= 1.0",
                    f"{ratio:.2f} ({ini['devstack']:.2f} s vs {best:.2f} s; per run "
                    + ", ".join(f"{x:.2f}" for x in r["initial"].get("ratio_runs", []))
                    + ")",
                    "PASS" if ratio <= 1.0 else "MISS",
                )
            )
        else:
            rows.append((what, "ratio <= 1.0 vs rsync", f"{ini['devstack']:.2f} s", "-"))
    noop = r.get("noop", {}).get("devstack")
    if noop:
        m = noop["median_s"]
        rows.append(
            (
                f"no-op resync, {r['noop']['files']:,} files (connect --once)",
                "< 2 s",
                f"{m:.2f} s",
                "PASS" if m < 2 else "MISS",
            )
        )
    lat = r.get("latency", {}).get("devstack")
    if lat:
        rows.append(
            (
                f"save-to-applied, watcher included ({lat['saves']} saves)",
                "median < 20 ms",
                f"median {lat['median_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms",
                "PASS" if lat["median_ms"] < 20 else "MISS",
            )
        )
    by = r.get("bytes", {}).get("devstack")
    if by:
        mb = r["bytes"]["file_bytes"] / 1e6
        rows.append(
            (
                f"bytes sent, one-line edit to a {mb:.0f} MB file (wire, client to sidecar)",
                "< 64 KiB",
                f"{by['wire_bytes_up'] / 1024:.1f} KiB (client counter "
                f"{by['client_counter_bytes_sent'] / 1024:.1f} KiB)",
                "PASS" if by["wire_bytes_up"] < 64 * 1024 else "MISS",
            )
        )
    rows.append(
        (
            "save-to-reloaded (signal, supervise)",
            "report",
            "see bench/reload_latency.py",
            "-",
        )
    )
    rss = r.get("rss")
    if rss:
        rows.append(
            (
                "sidecar RSS idle / peak during initial sync",
                "idle < 60 MB",
                f"{rss['idle_median_mib']:.1f} MiB / {rss['peak_max_mib']:.1f} MiB",
                "PASS" if rss["idle_median_mib"] * 1.048576 < 60 else "MISS",
            )
        )
    return rows


def report(ctx: Ctx) -> str:
    r = ctx.results
    lines = ["## devstack sync benchmark", ""]
    m = r["machine"]
    lines.append(
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}, {m['filesystem']}, "
        f"Python {m['python']}, {m['rsync']}, syncthing {m['syncthing']}. "
        f"Run {r['started']}{' (--quick)' if r['quick'] else ''}."
    )
    lines += ["", "| what | target | measured | result |", "|---|---|---|---|"]
    for row in targets(ctx):
        lines.append("| " + " | ".join(row) + " |")
    ini = r.get("initial")
    if ini:
        t = ini["tree"]
        lines += [
            "",
            f"Initial sync of {t['files']:,} files in {t['dirs']:,} folders, "
            f"{t['bytes'] / 1e6:.1f} MB, median of {ctx.sizes.repeat} "
            "(each into a fresh destination):",
            "",
            "| method | median wall | runs | median CPU (all its processes) |",
            "|---|---|---|---|",
        ]
        runs = ini["runs_s"]
        for k, v in sorted(ini["median_s"].items(), key=lambda kv: kv[1]):
            rs = runs.get(k) or ini.get("devstack_whole_runs_s", [])
            c = ini["cpu_median_s"].get(k)
            lines.append(
                f"| {k} | {_fmt_s(v)} | {', '.join(f'{x:.2f}' for x in rs)} "
                f"| {_fmt_s(c) if c is not None else '-'} |"
            )
        lines.append(
            f"\n1-minute load average before the timed runs: "
            f"{min(ini['loadavg_1m_before_runs']):.2f} to {max(ini['loadavg_1m_before_runs']):.2f} "
            "(above ~0.5, something else shared the CPUs)."
        )
    st = r.get("startup")
    if st:
        lines.append(
            f"\n`devstack connect --help` alone (interpreter + imports): {_fmt_s(st['median_s'])}."
        )
    noop = r.get("noop")
    if noop:
        lines += ["", f"No-op resync of {noop['files']:,} small files (median):", ""]
        for k in ("devstack", "rsync-pipe"):
            if k in noop:
                lines.append(
                    f"- {k}: {_fmt_s(noop[k]['median_s'])} "
                    f"(initial sync of the same tree {_fmt_s(noop[k]['initial_s'])})"
                )
        if "devstack" in noop:
            lines.append(f"- sidecar peak RSS: {noop['devstack']['sidecar_peak_mib']:.1f} MiB")
    lat = r.get("latency")
    if lat:
        lines += ["", "| save-to-applied | saves | median | p99 | max |", "|---|---|---|---|---|"]
        for k, v in lat.items():
            lines.append(
                f"| {k} | {v['saves']} | {v['median_ms']:.1f} ms | {v['p99_ms']:.1f} ms "
                f"| {v['max_ms']:.1f} ms |"
            )
    by = r.get("bytes")
    if by:
        lines += ["", f"One-line edit to a {by['file_bytes'] / 1e6:.0f} MB text file:", ""]
        if "devstack" in by:
            d = by["devstack"]
            lines.append(
                f"- devstack: client counter {d['client_counter_bytes_sent']:,} B; wire "
                f"{d['wire_bytes_up']:,} B up, {d['wire_bytes_down']:,} B down "
                f"(a no-op session alone: {d['noop_session_wire_up']:,} B up, "
                f"{d['noop_session_wire_down']:,} B down)"
            )
        if "rsync-pipe" in by:
            d = by["rsync-pipe"]
            lines.append(
                f"- rsync --stats: total bytes sent {d['total_bytes_sent']:,} B, "
                f"received {d['total_bytes_received']:,} B"
            )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument(
        "--only", default="", help=f"comma-separated: {', '.join(TOOLS + MEASURES)}"
    )
    parser.add_argument("--repeat", type=int, help="repetitions (default 3, quick 1)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("DEVSTACK_BENCH_DIR", "/var/tmp/devstack-bench")),
        help="where trees go (default /var/tmp/devstack-bench; replaced)",
    )
    parser.add_argument("--json", type=Path, help="result file (default bench/out/sync-*.json)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder (no cleanup at the end)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        help="seconds to let the disk settle after the previous run deleted its trees "
        "(default 300, quick 0)",
    )
    args = parser.parse_args(argv)
    # SIGTERM runs the cleanup (stop syncthing and the rsync daemon) too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = frozenset(x.strip() for x in args.only.split(",") if x.strip())
    unknown = only - set(TOOLS) - set(MEASURES)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    sizes = QUICK if args.quick else FULL
    if args.repeat:
        sizes = Sizes(**{**sizes.__dict__, "repeat": args.repeat})
    work: Path = args.workdir.resolve()
    stamp = work.with_name(work.name + ".deleted-at")
    settle = args.settle if args.settle is not None else (0.0 if args.quick else 300.0)
    with contextlib.suppress(OSError, ValueError):
        wait = float(stamp.read_text()) + settle - time.time()
        if wait > 0:
            log(f"the last run deleted its trees recently: letting ext4 settle for {wait:.0f} s")
            time.sleep(wait)
    old = None
    if work.exists():  # move the previous run aside; delete it at the end
        old = work.with_name(f"{work.name}.old-{os.getpid()}-{time.time_ns()}")
        os.rename(work, old)
    work.mkdir(parents=True)
    ctx = Ctx(work, sizes, only)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ctx.results.update(started=started, quick=args.quick, only=sorted(only), sizes=sizes.__dict__)
    ctx.results["machine"] = machine()
    (work / "token").write_text(TOKEN)
    rsync = _peers.Rsync(work, ctx.runs)
    try:
        src = work / "src"
        log(f"generating {sizes.files} files")
        info = _tree.generate(
            src, files=sizes.files, binaries=sizes.binaries, binary_mib=sizes.binary_mib
        )
        # syncthing needs its folder marker; every tool copies the same tree.
        (src / ".stfolder").mkdir()
        if ctx.wants("initial"):
            measure_initial(ctx, src, info, rsync)
            if ctx.wants("initial", "devstack"):
                measure_startup(ctx)
        if ctx.wants("noop") and (ctx.wants("noop", "devstack") or ctx.wants("noop", "rsync")):
            measure_noop(ctx, rsync)
        if ctx.wants("latency"):
            measure_latency(ctx, src, info, rsync)
        if ctx.wants("bytes") and (ctx.wants("bytes", "devstack") or ctx.wants("bytes", "rsync")):
            measure_bytes(ctx, rsync)
    finally:
        rsync.stop()
        out = args.json or REPO / "bench" / "out" / f"sync-{started.replace(':', '')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(ctx.results, indent=2, default=str))
        if not args.keep:
            log("deleting the trees")
            shutil.rmtree(work, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            stamp.write_text(str(time.time()))
    text = report(ctx)
    print(text)
    (out.with_suffix(".md")).write_text(text)
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
