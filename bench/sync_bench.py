"""The sync benchmark: devstack beside cp, tar, rsync and syncthing, measured
in one run on this machine (processes and files on 127.0.0.1 and a work
folder; not a test: it prints numbers, it asserts only that every tool
delivered what it was asked to).

    .venv/bin/python bench/sync_bench.py [--quick] [--only NAME[,NAME...]]
        [--json PATH] [--markdown PATH]

Measures (see docs/benchmarks.md):

1. ``initial``: initial sync of a generated tree (10,000 files, ~100 MB) into
   a fresh destination with ``cp -a``, ``tar c | tar x``, rsync over a pipe
   and against a daemon, syncthing and devstack (sidecar + ``connect --once``,
   with ``--compress never`` and with the default), on loopback; devstack's
   CPU split between the two processes and ``connect --help`` alone;
1a. ``seeded``: the first connect of a new pod, whose workspace the chart
   seeded from the image (the same tree, other file times), no digest cache
   on the laptop: devstack beside ``rsync -a --checksum`` and ``rsync -a``,
   once after the sidecar's start-up hashing (a pod that started before
   you connect) and once the moment the sidecar listens (``devstack-cold``);
1b. ``link``: the same initial sync with every tool's traffic through one
   emulated link (toxiproxy, 20 ms round trip, 100 Mbit/s each way; see
   bench/_link.py): rsync ``-a`` and ``-az`` to a daemon, ``tar`` and
   ``tar z`` through a TCP stream, syncthing and devstack;
2. ``noop``: no-op resync of 100,000 small files (``connect --once`` again,
   and rsync again);
3. ``latency``: save-to-applied latency of single-file edits, watcher
   included (devstack ``connect`` in watch mode, syncthing; ``tar`` and
   rsync of the one file as a floor);
4. ``bytes``: bytes sent for a one-line edit to a 50 MB text file (counted
   on the wire by a TCP proxy between ``connect`` and the sidecar, and
   rsync ``--stats``);
5. ``reload``: save-to-reloaded latency with the ``signal`` and
   ``supervise`` strategies, end to end (bench/reload_latency.py);
6. ``rss``: the sidecar's resident memory, idle and during the initial sync.

``--only`` takes tool names (cp, tar, rsync, syncthing, devstack) and/or
measurement names; tools and measurements intersect. A peer that is not
installed is reported absent (``bench/run`` installs rsync and syncthing,
and builds toxiproxy; without it the link rows are reported absent).

stdout holds only the result table (Markdown); progress goes to stderr, and
every child process writes to its own log file under the work folder's
``logs/``, which is kept after the run.

Every timed run writes into a destination that never existed; old trees
are moved aside under the work folder's ``trash/`` and deleted only at the
very end (ext4 here is slow at creating files soon after deleting many).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _link
import _peers
import _procs
import _tree
import reload_latency

from devstack.core.ports import free_port

REPO = _procs.REPO
TOOLS = ("cp", "tar", "rsync", "syncthing", "devstack")
PEERS = ("cp", "tar", "rsync", "syncthing")
MEASURES = ("initial", "seeded", "link", "noop", "latency", "bytes", "reload", "rss")
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
    reload_saves: int
    reload_debounce_ms: tuple[int, ...]
    repeat: int
    link_calibration_mb: int
    asset_mib: int


FULL = Sizes(
    files=10_000,
    binaries=20,
    binary_mib=(1, 4),
    noop_files=100_000,
    saves=100,
    syncthing_saves=12,
    big_mb=50,
    reload_saves=30,
    reload_debounce_ms=(0, 100),
    repeat=3,
    link_calibration_mb=20,
    asset_mib=1024,
)
QUICK = Sizes(
    files=400,
    binaries=3,
    binary_mib=(1, 1),
    noop_files=1_000,
    saves=10,
    syncthing_saves=3,
    big_mb=4,
    reload_saves=4,
    reload_debounce_ms=(0, 100),
    repeat=1,
    link_calibration_mb=2,
    asset_mib=4,
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


median = reload_latency.median
pct = reload_latency.pct
wait_until = _procs.wait_until


# ------------------------------------------------------------------ context


@dataclass
class Ctx:
    work: Path
    sizes: Sizes
    only: frozenset[str]
    absent: frozenset[str]
    results: dict[str, Any] = field(default_factory=dict)
    _n: int = 0

    @property
    def runs(self) -> Path:
        return self.work / "runs"

    @property
    def trash(self) -> Path:
        return self.work / "trash"

    @functools.cached_property
    def logs(self) -> _procs.LogDir:
        return _procs.LogDir(self.work / "logs")

    @property
    def token_file(self) -> Path:
        return self.work / "token"

    def selected(self, measure: str, tool: str | None = None) -> bool:
        """``--only`` lets this measurement (of this tool) run."""
        tools = self.only & set(TOOLS)
        measures = self.only & set(MEASURES)
        if "rss" in measures:
            measures = measures | {"initial"}
            tools = tools or frozenset({"devstack"})
        if measures and measure not in measures:
            return False
        return tool is None or not tools or tool in tools

    def wants(self, measure: str, tool: str | None = None) -> bool:
        """Selected, and the tool is installed."""
        return self.selected(measure, tool) and tool not in self.absent

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


# ------------------------------------------------------------ /proc helpers


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


def sidecar(ctx: Ctx, workspace: Path) -> _procs.Sidecar:
    return _procs.Sidecar(workspace, ctx.token_file, ctx.logs).start()


def connect_once(ctx: Ctx, src: Path, address: str, cache: Path, *extra: str) -> float:
    return _procs.connect_once(src, address, ctx.token_file, cache, ctx.logs, *extra)


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
    """Tool state folders (.devstack, .stversions) are not part of the tree."""
    for name in (".devstack", ".stversions"):
        p = dst / name
        if p.exists():
            os.rename(p, dst.parent / f"{dst.name}{name}-state")
    return dst


# ------------------------------------------------------------ 1. initial


def measure_initial(ctx: Ctx, src: Path, info: _tree.TreeInfo, rsync: _peers.Rsync) -> None:
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    split: dict[str, dict[str, list[float]]] = {}
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
            for name in (
                "cp",
                "tar",
                "rsync-pipe",
                "rsync-daemon",
                "devstack",
                "devstack-raw",
                "syncthing",
            ):
                tool = name.split("-")[0]
                if not ctx.wants("initial", tool):
                    continue
                if name == "devstack":
                    time_startup(ctx)
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
                    sc = sidecar(ctx, dst)
                    try:
                        time.sleep(0.5)  # settle: "idle" is after start
                        raw = name == "devstack-raw"  # the same, without compression
                        if not raw:
                            rss_idle.append(vm_kib(sc.pid, "VmRSS"))
                        sc0 = _peers.tree_cpu(sc.pid)
                        cpu0 = children_cpu()
                        extra = ("--compress", "never") if raw else ()
                        with RssSampler(sc.pid) as sampler:
                            took = connect_once(ctx, src, sc.address, ctx.fresh("cache"), *extra)
                        # The connect process alone (reaped), then the
                        # sidecar's CPU during the sync; the sidecar's own
                        # start-up and shutdown are not part of either.
                        extra_cpu = children_cpu() - cpu0
                        sidecar_cpu = _peers.tree_cpu(sc.pid) - sc0
                        split.setdefault(name, {}).setdefault("connect", []).append(extra_cpu)
                        split[name].setdefault("sidecar", []).append(sidecar_cpu)
                        extra_cpu += sidecar_cpu
                        if not raw:
                            rss_peak.append(sampler.peak_kib)
                            whole.append(time.perf_counter() - t0 - 0.5)
                    finally:
                        sc.stop()
                    cpu0 = children_cpu()  # the sidecar was reaped: not counted again
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
        "devstack_cpu_runs_s": split,
        "devstack_cpu_median_s": {
            k: {proc: median(v) for proc, v in by.items()} for k, by in split.items()
        },
        "loadavg_1m_before_runs": load,
    }
    rsyncs = [k for k in times if k.startswith("rsync")]
    if "devstack" in times and rsyncs:
        # Each repetition's devstack run beside the same repetition's rsync
        # runs (seconds apart): steadier than a ratio of medians on a busy box.
        res["ratio_to_fastest_rsync_runs"] = [
            d / min(times[k][i] for k in rsyncs) for i, d in enumerate(times["devstack"])
        ]
    if whole:
        res["devstack_with_sidecar_start_runs_s"] = whole
        res["devstack_with_sidecar_start_median_s"] = median(whole)
    if rss_idle:
        ctx.results["rss"] = {
            "idle_kib": rss_idle,
            "initial_sync_peak_kib": rss_peak,
            "idle_median_bytes": median([x * 1024 for x in rss_idle]),
            "initial_sync_peak_bytes": max(rss_peak) * 1024,
        }
    ctx.results["initial"] = res


#: The seeded runs, in the order each repetition runs them.
SEEDED_RUNS = ("rsync-checksum", "rsync-a", "devstack", "devstack-cold", "devstack-laptop")


def measure_seeded(ctx: Ctx, src: Path, info: _tree.TreeInfo, rsync: _peers.Rsync) -> None:
    """The first connect of a new pod: its workspace holds the same tree,
    seeded from the image (same content and modes, other file times), and
    the laptop has no digest cache. devstack (default settings) beside
    ``rsync -a --checksum`` over a pipe, which compares content as devstack
    does, and plain ``rsync -a``, which rewrites every file whose time
    differs. ``devstack`` connects once the sidecar has hashed its seeded
    workspace at start-up (its ``workspace.warmed`` event), as it does while
    a new pod waits for its engineer; ``devstack-cold`` connects the moment
    the sidecar listens, so its first manifest stops that and hashes the
    rest itself; ``devstack-laptop`` is ``devstack`` again with the digest
    cache that run left on the laptop (the same tree and sync address: a
    pod that was replaced, its engineer's laptop as before)."""
    times: dict[str, list[float]] = {}
    for rep in range(ctx.sizes.repeat):
        port = free_port()  # one sync address a repetition: the laptop's cache is keyed by it
        laptop = ctx.fresh("cache")
        for name in SEEDED_RUNS:
            if not ctx.wants("seeded", name.split("-")[0]):
                continue
            dst = ctx.fresh(f"seeded-{name}")
            shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True, copy_function=shutil.copy)
            os.sync()
            if name == "rsync-checksum":
                took = _peers.timed(rsync.pipe_cmd(src, dst, "--checksum"))
            elif name == "rsync-a":
                took = _peers.timed(rsync.pipe_cmd(src, dst))
            else:
                sc = _procs.Sidecar(dst, ctx.token_file, ctx.logs, port=port).start()
                try:
                    if name != "devstack-cold":
                        _procs.wait_until(
                            lambda sc=sc: "workspace.warmed" in sc.log.read_text(errors="replace"),
                            120,
                            "the sidecar's start-up hashing",
                        )
                    cache = laptop if name != "devstack-cold" else ctx.fresh("cache")
                    took = connect_once(ctx, src, sc.address, cache)
                finally:
                    sc.stop()
            check_copy(src, dst, info.files, full=rep == 0)
            times.setdefault(name, []).append(took)
            log(f"seeded {name} #{rep + 1}: {took:.3f} s")
            ctx.discard(dst)
    ctx.results["seeded"] = {
        "runs_s": times,
        "median_s": {k: median(v) for k, v in times.items()},
    }
    if ctx.wants("seeded", "devstack"):
        measure_seeded_asset(ctx)


def measure_seeded_asset(ctx: Ctx) -> None:
    """A seeded first connect whose image holds one large asset
    (``asset_mib`` of random bytes), the laptop's digest cache warm: once
    the moment the sidecar listens (its manifest hashes the asset first)
    and once after its start-up hashing."""
    src = ctx.fresh("asset-src")
    with open(src / "asset.bin", "wb") as f:
        for _ in range(ctx.sizes.asset_mib):
            f.write(os.urandom(1 << 20))
    port = free_port()
    laptop = ctx.fresh("cache")
    times: dict[str, list[float]] = {}
    for rep in range(ctx.sizes.repeat + 1):  # the first fills the laptop's cache, untimed
        for name in ("devstack-cold", "devstack"):
            dst = ctx.fresh(f"asset-{name}")
            shutil.copytree(src, dst, copy_function=shutil.copy, dirs_exist_ok=True)
            os.sync()
            sc = _procs.Sidecar(dst, ctx.token_file, ctx.logs, port=port).start()
            try:
                if name == "devstack":
                    _procs.wait_until(
                        lambda sc=sc: "workspace.warmed" in sc.log.read_text(errors="replace"),
                        300,
                        "the sidecar's start-up hashing",
                    )
                took = connect_once(ctx, src, sc.address, laptop)
            finally:
                sc.stop()
            check_copy(src, dst, 1, full=rep == 0)
            if rep:
                times.setdefault(name, []).append(took)
                log(f"seeded asset {name} #{rep}: {took:.3f} s")
            ctx.discard(dst)
    ctx.discard(src)
    ctx.results["seeded_asset"] = {
        "mib": ctx.sizes.asset_mib,
        "runs_s": times,
        "median_s": {k: median(v) for k, v in times.items()},
    }


def time_startup(ctx: Ctx) -> None:
    """How much of a connect run is the interpreter and imports alone: one
    ``connect --help`` per repetition, beside that repetition's devstack runs."""
    took = _peers.timed(_procs.devstack("connect", "--help"), stdout=subprocess.DEVNULL, cwd=REPO)
    runs = ctx.results.setdefault("startup", {}).setdefault("connect_help_runs_s", [])
    runs.append(took)
    ctx.results["startup"]["median_s"] = median(runs)


# ------------------------------------------------------------ 1b. the link

#: The runs over the emulated link, in the order each repetition runs them;
#: the tool is the name's first word.
LINK_RUNS = ("rsync-a", "rsync-az", "tar-gzip", "tar", "devstack", "devstack-raw", "syncthing")
#: devstack's default run is compared with the best of these.
LINK_BEST_OF = ("rsync-a", "rsync-az", "tar-gzip")


def measure_link(ctx: Ctx, src: Path, info: _tree.TreeInfo, rsync: _peers.Rsync) -> None:
    """The initial sync again, every tool's traffic through one emulated
    link (toxiproxy: half the round trip as latency and the rate cap, each
    way), repetitions interleaved like the loopback runs."""
    shape = _link.Shape()
    res: dict[str, Any] = {
        "shape": {"rtt_ms": shape.rtt_ms, "mbit_s": shape.mbit_s},
        "tree": {"files": info.files, "dirs": info.dirs, "bytes": info.bytes},
    }
    ctx.results["link"] = res
    binary = _link.toxiproxy_binary()
    if binary is None:
        res["absent"] = f"toxiproxy-server is not built: {_link.BUILD_HINT}"
        log(f"link: {res['absent']}")
        return
    runs = [n for n in LINK_RUNS if ctx.wants("link", n.split("-")[0])]
    link = _link.Link(binary, ctx.logs.new("toxiproxy"), shape)
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    relay_cpu: dict[str, list[float]] = {}
    split: dict[str, dict[str, list[float]]] = {}
    pair: _peers.SyncthingPair | None = None
    try:
        res["calibration"] = cal = link.calibrate(ctx.sizes.link_calibration_mb * 1_000_000)
        packed = _link.gzip_stream_bytes(src)
        res["floor"] = {
            "gzip6_stream_bytes": packed,
            "gzip6_stream_s": shape.ideal_s(packed),
            "raw_s": shape.ideal_s(info.bytes),
        }
        log(
            f"link: round trip {cal['rtt_ms']:.1f} ms, raw transfer "
            f"{cal['transfer_mbit_s']:.1f} Mbit/s ({cal['transfer_s']:.2f} s, "
            f"ideal {cal['ideal_s']:.2f} s)"
        )
        rsync_port = 0
        if any(n.startswith("rsync") for n in runs):
            rsync.start_daemon()
            rsync_port = link.via(rsync.port, "rsyncd")
        if "syncthing" in runs:
            proxied: list[int] = []

            def via(port: int) -> int:
                proxied.append(link.via(port, "syncthing"))
                return proxied[-1]

            pair = _peers.SyncthingPair(ctx.work / "syncthing-link", via=via)
            pair.start()
            # Whichever side dialled, it dialled a proxy: the dialler reports its port.
            seen = pair.addresses()
            if not any(a.endswith(f":{p}") for a in seen for p in proxied):
                raise RuntimeError(f"syncthing connected around the link: {seen}")
        with _link.listener() as tar_listener:
            tar_port = link.via(int(tar_listener.getsockname()[1]), "tar")
            for rep in range(ctx.sizes.repeat):
                for name in runs:
                    dst = ctx.fresh(f"link-{name}")
                    os.sync()
                    relay0 = link.cpu()
                    cpu0 = children_cpu()
                    extra_cpu = 0.0
                    if name in ("rsync-a", "rsync-az"):
                        flags = ("-z",) if name == "rsync-az" else ()
                        d0 = rsync.daemon_cpu()
                        took = _peers.timed(rsync.daemon_cmd(src, dst, *flags, port=rsync_port))
                        extra_cpu = rsync.daemon_cpu() - d0
                    elif name in ("tar", "tar-gzip"):
                        took = _link.tar_over(
                            tar_port, tar_listener, src, dst, gzip=name == "tar-gzip"
                        )
                    elif name == "syncthing":
                        assert pair is not None
                        fid = pair.share(src)
                        st0 = pair.cpu()
                        t0 = time.perf_counter()
                        pair.accept(fid, dst)
                        wait_until(
                            functools.partial(pair.complete, fid), 1800, "syncthing", every=0.02
                        )
                        took = time.perf_counter() - t0
                        extra_cpu = pair.cpu() - st0
                        pair.unshare(fid)
                    else:
                        sc = sidecar(ctx, dst)
                        try:
                            address = f"127.0.0.1:{link.via(sc.port, 'sidecar')}"
                            extra = ("--compress", "never") if name == "devstack-raw" else ()
                            sc0 = _peers.tree_cpu(sc.pid)
                            relay0 = link.cpu()
                            cpu0 = children_cpu()
                            took = connect_once(ctx, src, address, ctx.fresh("cache"), *extra)
                            connect_cpu = children_cpu() - cpu0
                            sidecar_cpu = _peers.tree_cpu(sc.pid) - sc0
                        finally:
                            sc.stop()
                        by = split.setdefault(name, {})
                        by.setdefault("connect", []).append(connect_cpu)
                        by.setdefault("sidecar", []).append(sidecar_cpu)
                        extra_cpu = connect_cpu + sidecar_cpu
                        cpu0 = children_cpu()  # the sidecar was reaped: not counted again
                    used = children_cpu() - cpu0 + extra_cpu
                    relay = link.cpu() - relay0
                    check_copy(src, dst, info.files, full=rep == 0)
                    times.setdefault(name, []).append(took)
                    cpu.setdefault(name, []).append(used)
                    relay_cpu.setdefault(name, []).append(relay)
                    log(
                        f"link {name} #{rep + 1}: {took:.3f} s "
                        f"(CPU {used:.2f} s, toxiproxy {relay:.2f} s)"
                    )
                    ctx.discard(dst)
    finally:
        rsync.stop()
        if pair is not None:
            pair.stop()
        link.stop()
    res.update(
        runs_s=times,
        median_s={k: median(v) for k, v in times.items()},
        cpu_runs_s=cpu,
        cpu_median_s={k: median(v) for k, v in cpu.items()},
        toxiproxy_cpu_runs_s=relay_cpu,
        devstack_cpu_median_s={
            k: {proc: median(v) for proc, v in by.items()} for k, by in split.items()
        },
    )
    best = [k for k in LINK_BEST_OF if k in times]
    if "devstack" in times and best:
        res["ratio_to_best_runs"] = [
            d / min(times[k][i] for k in best) for i, d in enumerate(times["devstack"])
        ]


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
        sc = sidecar(ctx, ws)
        try:
            with RssSampler(sc.pid) as sampler:
                first = connect_once(ctx, src, sc.address, cache)
            check_copy(src, ws, n, full=False)
            log(f"noop devstack initial: {first:.3f} s")
            runs = []
            with RssSampler(sc.pid) as sampler2:
                for i in range(ctx.sizes.repeat):
                    runs.append(connect_once(ctx, src, sc.address, cache))
                    log(f"noop devstack #{i + 1}: {runs[-1]:.3f} s")
        finally:
            sc.stop()
        res["devstack"] = {
            "initial_s": first,
            "runs_s": runs,
            "median_s": median(runs),
            "sidecar_peak_bytes": max(sampler.peak_kib, sampler2.peak_kib) * 1024,
        }
        ctx.discard(ws)
    if ctx.wants("noop", "rsync"):
        dst = ctx.fresh("noop-rsync")
        first = _peers.timed(rsync.pipe_cmd(src, dst))
        runs = [_peers.timed(rsync.pipe_cmd(src, dst)) for _ in range(ctx.sizes.repeat)]
        log(f"noop rsync: initial {first:.3f} s, no-op {median(runs):.3f} s")
        res["rsync-pipe"] = {"initial_s": first, "runs_s": runs, "median_s": median(runs)}
        ctx.discard(dst)
    ctx.discard(src)
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


def measure_latency(ctx: Ctx, src0: Path, info: _tree.TreeInfo, rsync: _peers.Rsync) -> None:
    res: dict[str, Any] = {}
    src = ctx.work / "latency-src"
    subprocess.run(["cp", "-a", str(src0), str(src)], check=True)
    summary = reload_latency.summary_ms
    if ctx.wants("latency", "devstack"):
        ws = ctx.fresh("latency-devstack")
        sc = sidecar(ctx, ws)
        follow = _procs.Connect(src, sc.address, ctx.token_file, ctx.fresh("cache"), ctx.logs)
        follow.start()
        try:

            def synced() -> bool:
                follow.check()
                return _tree.count_files(ws) >= info.files

            wait_until(synced, 600, "the initial sync", every=0.2)
            time.sleep(0.5)
            xs = save_latencies(src, ws, ctx.sizes.saves, "devstack", timeout=30, gap=0.03)
            res["devstack"] = summary(xs)
            log(
                f"latency devstack: median {res['devstack']['median_ms']:.1f} ms, "
                f"p99 {res['devstack']['p99_ms']:.1f} ms"
            )
        finally:
            follow.stop()
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
        res["tar-one-file"] = summary(xs)
        log(f"latency tar one file: median {res['tar-one-file']['median_ms']:.1f} ms")
        ctx.discard(dst)
    if ctx.wants("latency", "rsync"):
        dst = ctx.fresh("latency-rsync")
        subprocess.run(rsync.pipe_cmd(src, dst), check=True)
        xs = []
        for rel, data in _edits(src, ctx.sizes.saves, "rsync"):
            _save(src / rel, data)
            # -I: same-size saves within one second look unchanged to the quick check.
            cmd = ["rsync", "-aI", f"--rsh={rsync.rsh}", str(src / rel), f"localhost:{dst / rel}"]
            xs.append(_peers.timed(cmd))
            if not _arrived(dst / rel, data):
                raise RuntimeError(f"rsync did not deliver {rel}: {cmd}")
        res["rsync-one-file"] = summary(xs)
        log(f"latency rsync one file: median {res['rsync-one-file']['median_ms']:.1f} ms")
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
            res["syncthing"] = {**summary(xs), "fsWatcherDelayS": 1}
            log(f"latency syncthing: median {res['syncthing']['median_ms']:.0f} ms")
        finally:
            pair.stop()
    ctx.discard(src)
    ctx.results["latency"] = res


# ------------------------------------------------------------ 4. bytes


class CountingProxy:
    """A TCP proxy on 127.0.0.1 that counts the bytes each way (threads, so
    a ``devstack connect`` process can talk through it)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.up = 0
        self.down = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._socks: list[socket.socket] = []
        self._pumps: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> CountingProxy:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()
        for t in self._pumps:
            t.join(10)
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._socks += [client, upstream]
            for a, b, up in ((client, upstream, True), (upstream, client, False)):
                t = threading.Thread(target=self._pump, args=(a, b, up), daemon=True)
                self._pumps.append(t)
                t.start()

    def _pump(self, a: socket.socket, b: socket.socket, up: bool) -> None:
        try:
            while data := a.recv(1 << 16):
                with self._lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                b.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                b.shutdown(socket.SHUT_WR)


def one_line_edit(path: Path) -> None:
    """Change one line in the middle of a text file (and its length)."""
    data = path.read_bytes()
    mid = len(data) // 2
    start = data.rfind(b"\n", 0, mid) + 1
    end = data.find(b"\n", mid)
    path.write_bytes(data[:start] + b"    edited = 'by the benchmark'  # one line" + data[end:])


def _session_through_proxy(ctx: Ctx, src: Path, upstream_port: int) -> dict[str, Any]:
    """One ``devstack connect --once`` process through a counting proxy."""
    with CountingProxy(upstream_port) as proxy:
        took = connect_once(ctx, src, proxy.address, ctx.fresh("cache"))
    return {"wire_bytes_up": proxy.up, "wire_bytes_down": proxy.down, "seconds": took}


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
    sc = sidecar(ctx, ws) if ws is not None else None
    try:
        if sc is not None:
            connect_once(ctx, src, sc.address, ctx.fresh("cache"))
            # A no-op session through the proxy: the fixed cost of a session.
            base = _session_through_proxy(ctx, src, sc.port)
        one_line_edit(big)
        if sc is not None and ws is not None:
            got = _session_through_proxy(ctx, src, sc.port)
            if (ws / big.name).read_bytes() != big.read_bytes():
                raise RuntimeError("devstack did not apply the one-line edit")
            got["noop_session_wire_bytes_up"] = base["wire_bytes_up"]
            got["noop_session_wire_bytes_down"] = base["wire_bytes_down"]
            res["devstack"] = got
            log(
                f"bytes devstack: wire up {got['wire_bytes_up']} B, down {got['wire_bytes_down']} B"
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
    m = re.search(r"Total bytes received:\s*([\d,.]+)", stats_output)
    return int(re.sub(r"[,.]", "", m.group(1))) if m else -1


# ------------------------------------------------------------ 5. reload


def measure_reload(ctx: Ctx) -> None:
    res: dict[str, Any] = {}
    for debounce in ctx.sizes.reload_debounce_ms:
        for strategy in reload_latency.STRATEGIES:
            base = ctx.fresh(f"reload-{strategy}-{debounce}")
            got = reload_latency.end_to_end(
                reload_latency.Setup(base, ctx.token_file, ctx.logs),
                strategy=strategy,
                saves=ctx.sizes.reload_saves,
                debounce_ms=debounce,
            )
            res.setdefault(strategy, {})[str(debounce)] = got
            log(
                f"reload {strategy} (debounce {debounce} ms): median {got['median_ms']:.1f} ms, "
                f"p99 {got['p99_ms']:.1f} ms"
            )
            ctx.discard(base)
    ctx.results["reload"] = res


# ------------------------------------------------------------ the table


@dataclass(frozen=True)
class Row:
    """One figure of the summary table: devstack's value, and the peer's
    value measured in the same run where the figure has a peer."""

    key: str
    what: str
    unit: str  # "s", "ms", "B" or "MB"
    devstack: float
    peer: str = ""  # "" when the figure has no peer
    peer_value: float | None = None
    peer_status: str = ""  # "measured", "absent" (not installed), "not run" (--only)
    target: str = "report"
    passed: bool | None = None  # None: nothing to pass

    @property
    def ratio(self) -> float | None:
        if self.peer_value is None or not self.peer_value > 0:
            return None
        return self.devstack / self.peer_value

    @property
    def result(self) -> str:
        return "-" if self.passed is None else ("PASS" if self.passed else "MISS")

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "result": self.result}


def _peer(ctx: Ctx, tool: str, value: float | None) -> dict[str, Any]:
    if value is not None:
        return {"peer_value": value, "peer_status": "measured"}
    return {"peer_status": "absent" if tool in ctx.absent else "not run"}


def _ratio_row(
    ctx: Ctx,
    key: str,
    what: str,
    dev: float,
    tool: str,
    label: str,
    value: float | None,
    limit: float | None,
    *,
    target: str = "report",
) -> Row:
    """devstack's seconds beside a peer's; PASS/MISS when ``limit`` is a
    ratio the issue sets."""
    peer = _peer(ctx, tool, value)
    ratio = dev / value if value else None
    return Row(
        key,
        what,
        "s",
        dev,
        label,
        **peer,
        target=f"ratio <= {limit}" if limit is not None else target,
        passed=(ratio <= limit) if limit is not None and ratio is not None else None,
    )


def _initial_rows(ctx: Ctx) -> list[Row]:
    """Loopback: ``--compress never`` against each peer (the issue's
    targets), the default settings against each, devstack's CPU and start-up."""
    out: list[Row] = []
    ini = ctx.results.get("initial", {})
    med = ini.get("median_s", {})
    tree = ini.get("tree", {})
    what = f"initial sync, {tree.get('files', 0):,} files / {tree.get('bytes', 0) / 1e6:.0f} MB"
    raw = med.get("devstack-raw")
    if raw is not None:
        for key, tool, label, limit in (
            ("rsync-pipe", "rsync", "rsync over a pipe", 1.0),
            ("rsync-daemon", "rsync", "rsync daemon on 127.0.0.1", None),
            ("tar", "tar", "tar c | tar x", 1.0),
            ("cp", "cp", "cp -a (the floor)", None),
        ):
            out.append(
                _ratio_row(
                    ctx,
                    f"initial-raw:{key}",
                    what + ", loopback, `--compress never` (no peer compresses)",
                    raw,
                    tool,
                    label,
                    med.get(key),
                    limit,
                )
            )
    dev = med.get("devstack")
    if dev is not None:
        for key, tool, label in (
            ("rsync-pipe", "rsync", "rsync over a pipe"),
            ("rsync-daemon", "rsync", "rsync daemon on 127.0.0.1"),
            ("tar", "tar", "tar c | tar x"),
            ("cp", "cp", "cp -a"),
            ("syncthing", "syncthing", "syncthing"),
        ):
            out.append(
                _ratio_row(
                    ctx,
                    f"initial:{key}",
                    what + ", loopback, default settings",
                    dev,
                    tool,
                    label,
                    med.get(key),
                    None,
                )
            )
    st = ctx.results.get("startup")
    if st:
        out.append(
            Row("startup", "`devstack connect --help`, interpreter included", "s", st["median_s"])
        )
    files = tree.get("files", 0)
    for name, how in (("devstack", "default settings"), ("devstack-raw", "`--compress never`")):
        by = ini.get("devstack_cpu_median_s", {}).get(name)
        if by and files:
            out.append(
                Row(
                    f"sidecar-cpu:{name}",
                    f"sidecar CPU per 1,000 files applied, initial sync, {how}",
                    "ms",
                    by["sidecar"] * 1000 / (files / 1000),
                )
            )
    return out


def _link_rows(ctx: Ctx) -> list[Row]:
    """Over the emulated link: default settings against the best of rsync
    ``-a``, rsync ``-az`` and tar through gzip (the issue's target), then
    against each peer, and ``--compress never`` against the same best."""
    out: list[Row] = []
    link = ctx.results.get("link", {})
    med = link.get("median_s", {})
    if "devstack" not in med and "devstack-raw" not in med:
        return out
    tree = link["tree"]
    shape = _link.Shape(**link["shape"])
    what = (
        f"initial sync, {tree.get('files', 0):,} files / {tree.get('bytes', 0) / 1e6:.0f} MB, "
        f"emulated link ({shape.describe()})"
    )
    best = min((k for k in LINK_BEST_OF if k in med), key=lambda k: med[k], default=None)
    best_label = "best of rsync -a, rsync -az, tar | gzip"
    labels = {
        "rsync-a": "rsync -a (daemon protocol)",
        "rsync-az": "rsync -az (daemon protocol)",
        "tar-gzip": "tar cz | tar xz",
        "tar": "tar c | tar x",
        "syncthing": "syncthing",
    }
    for name, how, limit in (
        ("devstack", "default settings", 0.8),
        ("devstack-raw", "`--compress never`", None),
    ):
        if name not in med:
            continue
        out.append(
            _ratio_row(
                ctx,
                "link:best" if name == "devstack" else "link-raw:best",
                f"{what}, {how}",
                med[name],
                "rsync",
                f"{best_label} ({labels[best]})" if best else best_label,
                med[best] if best else None,
                limit,
            )
        )
        if name != "devstack":
            continue
        floor = link.get("floor")
        if floor:
            out.append(
                Row(
                    "link:floor",
                    f"{what}, {how}",
                    "s",
                    med[name],
                    "floor: the tree through one gzip -6 stream, at the link's rate",
                    peer_value=floor["gzip6_stream_s"],
                    peer_status="measured",
                )
            )
        for key, label in labels.items():
            out.append(
                _ratio_row(
                    ctx,
                    f"link:{key}",
                    f"{what}, {how}",
                    med[name],
                    key.split("-")[0],
                    label,
                    med.get(key),
                    None,
                )
            )
    return out


def _seeded_rows(ctx: Ctx) -> list[Row]:
    med = ctx.results.get("seeded", {}).get("median_s", {})
    dev = med.get("devstack")
    if dev is None:
        return []
    what = (
        "first connect into a workspace seeded with the same tree (other file times), "
        "after the sidecar's start-up hashing, no digest cache on the laptop, default settings"
    )
    rows = [
        _ratio_row(ctx, f"seeded:{key}", what, dev, "rsync", label, med.get(key), None)
        for key, label in (
            ("rsync-checksum", "rsync -a --checksum over a pipe (compares content)"),
            ("rsync-a", "rsync -a over a pipe (rewrites each file whose time differs)"),
        )
    ]
    asset = ctx.results.get("seeded_asset", {})
    asset_med = asset.get("median_s", {})
    if asset_med.get("devstack") is not None:
        rows.append(
            _ratio_row(
                ctx,
                "seeded-asset:cold-sidecar",
                f"first connect into a seeded workspace of one {asset.get('mib')} MiB asset, "
                "the laptop's digest cache warm, after the sidecar's start-up hashing",
                asset_med["devstack"],
                "devstack",
                "devstack the moment the sidecar listens (its manifest hashes the asset)",
                asset_med.get("devstack-cold"),
                None,
            )
        )
    for key, what_, value in (
        (
            "seeded-cold:rsync-checksum",
            "the same, connecting the moment the sidecar listens (no digest cached on either side)",
            med.get("devstack-cold"),
        ),
        (
            "seeded-laptop:rsync-checksum",
            "the same after the sidecar's start-up hashing, with the laptop's digest cache "
            "(a replaced pod, the same laptop)",
            med.get("devstack-laptop"),
        ),
    ):
        if value is None:
            continue
        rows.append(
            _ratio_row(
                ctx,
                key,
                what_,
                value,
                "rsync",
                "rsync -a --checksum over a pipe (compares content)",
                med.get("rsync-checksum"),
                None,
            )
        )
    return rows


def rows(ctx: Ctx) -> list[Row]:
    r = ctx.results
    out: list[Row] = []
    out += _initial_rows(ctx)
    out += _seeded_rows(ctx)
    out += _link_rows(ctx)
    noop = r.get("noop", {})
    if "devstack" in noop:
        m = noop["devstack"]["median_s"]
        out.append(
            Row(
                "noop:rsync-pipe",
                f"no-op resync, {noop['files']:,} files",
                "s",
                m,
                "rsync over a pipe",
                **_peer(ctx, "rsync", noop.get("rsync-pipe", {}).get("median_s")),
                target="< 2 s",
                passed=m < 2,
            )
        )
    lat = r.get("latency", {})
    if "devstack" in lat:
        dev = lat["devstack"]
        n = dev["saves"]
        for stat, target in (("median", "< 20 ms"), ("p99", "report")):
            for key, tool, label in (
                ("syncthing", "syncthing", "syncthing, fsWatcherDelayS=1"),
                ("tar-one-file", "tar", "tar of the one file (floor)"),
                ("rsync-one-file", "rsync", "rsync of the one file (floor)"),
            ):
                value = dev[f"{stat}_ms"]
                other = lat.get(key)
                out.append(
                    Row(
                        f"latency-{stat}:{key}",
                        f"save-to-applied {stat}, watcher included ({n} saves)",
                        "ms",
                        value,
                        label,
                        **_peer(ctx, tool, other[f"{stat}_ms"] if other else None),
                        target=target,
                        passed=value < 20 if stat == "median" else None,
                    )
                )
    by = r.get("bytes", {})
    if "devstack" in by:
        up = by["devstack"]["wire_bytes_up"]
        rs = by.get("rsync-pipe", {}).get("total_bytes_sent")
        out.append(
            Row(
                "bytes:rsync-pipe",
                f"bytes sent, one-line edit to a {by['file_bytes'] / 1e6:.0f} MB file",
                "B",
                float(up),
                "rsync --stats, total bytes sent",
                **_peer(ctx, "rsync", float(rs) if rs is not None else None),
                target="< 64 KiB",
                passed=up < 64 * 1024,
            )
        )
    rel = r.get("reload", {})
    for strategy in reload_latency.STRATEGIES:
        if strategy not in rel:
            continue
        debounce = min(rel[strategy], key=int)
        got = rel[strategy][debounce]
        for stat in ("median", "p99"):
            out.append(
                Row(
                    f"reload-{stat}:{strategy}",
                    f"save-to-reloaded {stat}, `{strategy}`, debounce {debounce} ms "
                    f"({got['saves']} saves)",
                    "ms",
                    got[f"{stat}_ms"],
                )
            )
    rss = r.get("rss")
    if rss:
        idle = rss["idle_median_bytes"]
        out.append(
            Row(
                "rss-idle",
                "sidecar RSS, idle",
                "MB",
                idle / 1e6,
                target="< 60 MB",
                passed=idle < 60e6,
            )
        )
        out.append(
            Row(
                "rss-initial-sync",
                "sidecar RSS, peak during the initial sync",
                "MB",
                rss["initial_sync_peak_bytes"] / 1e6,
            )
        )
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value / 1024:.1f} KiB ({value:,.0f} B)"


def _fmt_s(x: float | None) -> str:
    return _fmt(x, "s")


def _cell(text: str) -> str:
    """A Markdown table cell: a literal ``|`` must not end it."""
    return text.replace("|", "\\|")


def summary_table(table: list[Row]) -> list[str]:
    lines = [
        "| what | devstack | peer, same run | devstack / peer | target | result |",
        "|---|---|---|---|---|---|",
    ]
    for row in table:
        if not row.peer:
            peer = "-"
        elif row.peer_value is None:
            peer = f"{row.peer}: {row.peer_status}"
        else:
            peer = f"{row.peer}: {_fmt(row.peer_value, row.unit)}"
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        cells = (row.what, _fmt(row.devstack, row.unit), peer, ratio, row.target, row.result)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _cpu_split(by_run: dict[str, dict[str, float]], files: int) -> list[str]:
    """Where devstack's CPU went: the connect process and the sidecar."""
    out = []
    for name, by in by_run.items():
        per = by["sidecar"] * 1e6 / files if files else math.nan
        out.append(
            f"- {name} CPU (median): connect {by['connect']:.2f} s, sidecar "
            f"{by['sidecar']:.2f} s ({per:.0f} ms per 1,000 files; start-up excluded)"
        )
    return out


def _link_report(ctx: Ctx) -> list[str]:
    link = ctx.results.get("link")
    if not link:
        return []
    shape = _link.Shape(**link["shape"])
    lines = ["", f"Initial sync over the emulated link ({shape.describe()}, toxiproxy):", ""]
    if "absent" in link:
        return [*lines, f"- absent: {link['absent']}"]
    cal = link["calibration"]
    lines += [
        f"The link, measured in this run: round trip {cal['rtt_ms']:.1f} ms; a raw TCP "
        f"transfer of {cal['transfer_bytes'] / 1e6:.0f} MB took {cal['transfer_s']:.2f} s "
        f"({cal['transfer_mbit_s']:.1f} Mbit/s; ideal {cal['ideal_s']:.2f} s).",
        "",
        "| method | median wall | runs | median CPU (all its processes) | toxiproxy CPU |",
        "|---|---|---|---|---|",
    ]
    runs = link["runs_s"]
    for k, v in sorted(link["median_s"].items(), key=lambda kv: kv[1]):
        c = link["cpu_median_s"].get(k)
        relay = median(link["toxiproxy_cpu_runs_s"].get(k, []))
        lines.append(
            f"| {k} | {_fmt_s(v)} | {', '.join(f'{x:.2f}' for x in runs[k])} | {_fmt_s(c)} "
            f"| {_fmt_s(relay)} |"
        )
    floor = link.get("floor")
    if floor:
        best = min(
            (link["median_s"][k] for k in LINK_BEST_OF if k in link["median_s"]), default=None
        )
        reach = (
            f"; the floor / the best peer's median: {floor['gzip6_stream_s'] / best:.2f}"
            if best
            else ""
        )
        lines.append(
            f"\nThe floor: the tree is {link['tree']['bytes'] / 1e6:.1f} MB "
            f"({floor['raw_s']:.2f} s at the link's rate); through one gzip -6 stream it is "
            f"{floor['gzip6_stream_bytes'] / 1e6:.1f} MB ({floor['gzip6_stream_s']:.2f} s), "
            f"the least a tool that compresses as well as gzip has to move{reach}."
        )
    if "ratio_to_best_runs" in link:
        lines.append(
            "\ndevstack / best of rsync -a, rsync -az and tar | gzip, each repetition: "
            + ", ".join(f"{x:.2f}" for x in link["ratio_to_best_runs"])
            + "."
        )
    if link.get("devstack_cpu_median_s"):
        lines += ["", *_cpu_split(link["devstack_cpu_median_s"], link["tree"]["files"])]
    return lines


def report(ctx: Ctx, table: list[Row]) -> str:
    r = ctx.results
    lines = ["### devstack sync benchmark", ""]
    m = r["machine"]
    lines.append(
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}, {m['filesystem']}, "
        f"Python {m['python']}, rsync {m['rsync']}, syncthing {m['syncthing']}. "
        f"Run {r['started']}{' (--quick)' if r['quick'] else ''}"
        f"{' --only ' + ','.join(r['only']) if r['only'] else ''}."
    )
    lines += ["", *summary_table(table)]
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
            c = ini["cpu_median_s"].get(k)
            lines.append(
                f"| {k} | {_fmt_s(v)} | {', '.join(f'{x:.2f}' for x in runs[k])} | {_fmt_s(c)} |"
            )
        if "devstack_with_sidecar_start_median_s" in ini:
            lines.append(
                "| devstack, sidecar start included | "
                f"{_fmt_s(ini['devstack_with_sidecar_start_median_s'])} | "
                + ", ".join(f"{x:.2f}" for x in ini["devstack_with_sidecar_start_runs_s"])
                + " | - |"
            )
        if "ratio_to_fastest_rsync_runs" in ini:
            lines.append(
                "\ndevstack / fastest rsync, each repetition: "
                + ", ".join(f"{x:.2f}" for x in ini["ratio_to_fastest_rsync_runs"])
                + "."
            )
        lines.append(
            f"\n1-minute load average before the timed runs: "
            f"{min(ini['loadavg_1m_before_runs']):.2f} to "
            f"{max(ini['loadavg_1m_before_runs']):.2f} "
            "(above ~0.5, something else shared the CPUs)."
        )
    if ini and ini.get("devstack_cpu_median_s"):
        lines.append("")
        lines += _cpu_split(ini["devstack_cpu_median_s"], ini["tree"]["files"])
    st = r.get("startup")
    if st:
        lines.append(
            f"\n`devstack connect --help` alone (interpreter + imports): {_fmt_s(st['median_s'])}."
        )
    lines += _link_report(ctx)
    noop = r.get("noop")
    if noop and ("devstack" in noop or "rsync-pipe" in noop):
        lines += ["", f"No-op resync of {noop['files']:,} small files (median):", ""]
        for k in ("devstack", "rsync-pipe"):
            if k in noop:
                lines.append(
                    f"- {k}: {_fmt_s(noop[k]['median_s'])} "
                    f"(initial sync of the same tree {_fmt_s(noop[k]['initial_s'])})"
                )
        if "devstack" in noop:
            peak = noop["devstack"]["sidecar_peak_bytes"]
            lines.append(f"- sidecar peak RSS: {_fmt(peak / 1e6, 'MB')}")
    lat = r.get("latency")
    if lat:
        lines += [
            "",
            "| save-to-applied | saves | median | p99 | max |",
            "|---|---|---|---|---|",
        ]
        for k, v in lat.items():
            lines.append(
                f"| {k} | {v['saves']} | {v['median_ms']:.1f} ms | {v['p99_ms']:.1f} ms "
                f"| {v['max_ms']:.1f} ms |"
            )
    by = r.get("bytes")
    if by and ("devstack" in by or "rsync-pipe" in by):
        lines += ["", f"One-line edit to a {by['file_bytes'] / 1e6:.0f} MB text file:", ""]
        if "devstack" in by:
            d = by["devstack"]
            lines.append(
                f"- devstack, on the wire: {d['wire_bytes_up']:,} B up, "
                f"{d['wire_bytes_down']:,} B down (a no-op session alone: "
                f"{d['noop_session_wire_bytes_up']:,} B up, "
                f"{d['noop_session_wire_bytes_down']:,} B down)"
            )
        if "rsync-pipe" in by:
            d = by["rsync-pipe"]
            lines.append(
                f"- rsync --stats: total bytes sent {d['total_bytes_sent']:,} B, "
                f"received {d['total_bytes_received']:,} B"
            )
    rel = r.get("reload")
    if rel:
        lines += [
            "",
            "| save-to-reloaded | debounce | saves | median | p90 | p99 | max |",
            "|---|---|---|---|---|---|---|",
        ]
        for strategy, by_debounce in rel.items():
            for debounce, v in sorted(by_debounce.items(), key=lambda kv: int(kv[0])):
                lines.append(
                    f"| {strategy} | {debounce} ms | {v['saves']} | {v['median_ms']:.1f} ms "
                    f"| {v['p90_ms']:.1f} ms | {v['p99_ms']:.1f} ms | {v['max_ms']:.1f} ms |"
                )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ main


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


def _clean(work: Path, old: Path | None) -> None:
    """Delete the trees; keep ``logs/``."""
    for child in work.iterdir():
        if child.name == "logs":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
        help="where trees and logs go (default /var/tmp/devstack-bench; replaced)",
    )
    parser.add_argument(
        "--json", type=Path, help="write the results as JSON here (default bench/out/sync-*.json)"
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        help="write the Markdown tables here (default: the JSON path with .md)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the trees too (no cleanup at the end)"
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
    absent = frozenset(t for t in PEERS if shutil.which(t) is None)
    ctx = Ctx(work, sizes, only, absent)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ctx.results.update(
        started=started,
        quick=args.quick,
        only=sorted(only),
        sizes=sizes.__dict__,
        peers={t: ("absent" if t in absent else "present") for t in PEERS},
        logs=str(ctx.logs.root),
    )
    ctx.results["machine"] = machine()
    for t in sorted(absent):
        log(f"{t} is not installed: reported absent (bench/run installs it)")
    ctx.token_file.write_text(TOKEN)
    rsync = _peers.Rsync(work, ctx.runs)
    out = args.json or REPO / "bench" / "out" / f"sync-{started.replace(':', '')}.json"
    try:
        src = work / "src"
        info = _tree.TreeInfo(files=0, dirs=0, bytes=0)
        if any(ctx.selected(m) for m in ("initial", "seeded", "link", "latency")):
            log(f"generating {sizes.files} files")
            info = _tree.generate(
                src, files=sizes.files, binaries=sizes.binaries, binary_mib=sizes.binary_mib
            )
            # syncthing needs its folder marker; every tool copies the same tree.
            (src / ".stfolder").mkdir()
        if ctx.selected("initial"):
            measure_initial(ctx, src, info, rsync)
        if ctx.selected("seeded"):
            measure_seeded(ctx, src, info, rsync)
        if ctx.selected("link"):
            measure_link(ctx, src, info, rsync)
        if ctx.wants("noop", "devstack") or ctx.wants("noop", "rsync"):
            measure_noop(ctx, rsync)
        if ctx.selected("latency"):
            measure_latency(ctx, src, info, rsync)
        if ctx.wants("bytes", "devstack") or ctx.wants("bytes", "rsync"):
            measure_bytes(ctx, rsync)
        if ctx.wants("reload", "devstack"):
            measure_reload(ctx)
    finally:
        rsync.stop()
        table = rows(ctx)
        ctx.results["table"] = [row.as_json() for row in table]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(ctx.results, indent=2, default=str))
        if not args.keep:
            log("deleting the trees")
            _clean(work, old)
            stamp.write_text(str(time.time()))
    text = report(ctx, table)
    print(text, end="")
    md = args.markdown or out.with_suffix(".md")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)
    log(f"results: {out} and {md}; child process logs: {ctx.logs.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
