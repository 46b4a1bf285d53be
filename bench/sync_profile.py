"""Where an initial sync spends its time: the two devstack processes
profiled on loopback (not a test: it prints numbers).

    .venv/bin/python bench/sync_profile.py [--files 10000] [--binaries 20]
        [--repeat 3] [--top 15] [--json PATH] [--markdown PATH]

On the generated tree of the sync benchmark (``bench/_tree.py``: 10,000
files, ~99 MB), into a freshly started ``devstack sidecar`` each time:

1. ``cpu``: wall time and CPU seconds of the ``connect --once`` process and
   of the sidecar (during the sync, its start-up excluded), ``--compress
   never`` and the default, interleaved with ``rsync -a`` over a pipe (both
   of its processes) and ``tar c | tar x`` in the same repetitions; the
   sidecar's CPU per 1,000 files; ``devstack connect --help`` alone;
2. ``profile``: one ``--compress never`` run and one default run sampled by
   py-spy (both processes at once, on-CPU samples only, ``--nonblocking``
   so the sampler does not pause them): top functions by self and by
   cumulative (inclusive) time, for the client and for the sidecar;
3. ``syscalls``: one ``--compress never`` run and one rsync run under
   ``strace -c -f``: system calls per file by name, for each process;
4. ``digest``: hashlib SHA-256 and BLAKE2b, and BLAKE3 and XXH3-128 where
   their modules are installed, in MB/s on this CPU, over 3 KB buffers
   (the median file here) and 1 MiB ones.

``bench/run sync-profile`` installs py-spy, blake3 and xxhash into the venv
(not the project's dependencies) and strace with apt-get when missing. A
missing tool's part is reported absent and the rest runs. stdout holds only
the Markdown report.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import hashlib
import importlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _peers
import _procs
import _tree
import sync_bench

REPO = _procs.REPO
TOKEN = "bench-token"
log = sync_bench.log
median = sync_bench.median


def py_spy() -> str | None:
    """py-spy from the venv, or on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.is_file() else shutil.which("py-spy")


class Work:
    """The work folder: fresh destinations, logs, the token."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = _procs.LogDir(root / "logs")
        self.token = root / "token"
        self.token.write_text(TOKEN)
        self._n = 0

    def fresh(self, name: str) -> Path:
        self._n += 1
        path = self.root / "runs" / f"{name}-{self._n}"
        path.mkdir(parents=True)
        return path


@contextlib.contextmanager
def sidecar(work: Work, workspace: Path) -> Iterator[_procs.Sidecar]:
    sc = _procs.Sidecar(workspace, work.token, work.logs).start()
    try:
        time.sleep(0.3)  # past its start-up
        yield sc
    finally:
        sc.stop()


def user_sys(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a live process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def children_user_sys() -> tuple[float, float]:
    """User and system CPU seconds of every reaped child so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime, ru.ru_stime


def connect_cmd(work: Work, src: Path, address: str, compress: str) -> list[str]:
    return _procs.connect_cmd(
        src,
        address,
        work.token,
        "--once",
        *(("--compress", "never") if compress == "never" else ()),
    )


def run(cmd: list[str], work: Work, name: str, cache: Path | None = None) -> float:
    env = {"XDG_CACHE_HOME": str(cache)} if cache is not None else None
    return _procs.run_logged(cmd, work.logs.new(name), env=env, what=name)


# ------------------------------------------------------------ 1. CPU


def measure_cpu(work: Work, src: Path, info: _tree.TreeInfo, repeat: int) -> dict[str, Any]:
    rsync = _peers.Rsync(work.root, work.root / "runs") if shutil.which("rsync") else None
    names = ["devstack-raw", "devstack", "tar", *(["rsync-pipe"] if rsync else [])]
    runs: dict[str, dict[str, list[float]]] = {n: collections.defaultdict(list) for n in names}
    for rep in range(repeat):
        for name in names:
            dst = work.fresh(f"cpu-{name}")
            os.sync()
            got = runs[name]
            if name.startswith("devstack"):
                compress = "never" if name == "devstack-raw" else "auto"
                with sidecar(work, dst) as sc:
                    su0, ss0 = user_sys(sc.pid)
                    cu0, cs0 = children_user_sys()
                    cmd = connect_cmd(work, src, sc.address, compress)
                    got["wall_s"].append(run(cmd, work, "connect", work.fresh("cache")))
                    cu, cs = children_user_sys()
                    su, ss = user_sys(sc.pid)
                    got["connect_cpu_s"].append(cu - cu0 + cs - cs0)
                    got["connect_sys_s"].append(cs - cs0)
                    got["sidecar_cpu_s"].append(su - su0 + ss - ss0)
                    got["sidecar_sys_s"].append(ss - ss0)
            else:
                cu0, cs0 = children_user_sys()
                if name == "tar":
                    cmd = _peers.tar_cmd(src, dst)
                else:
                    assert rsync is not None
                    cmd = rsync.pipe_cmd(src, dst)
                got["wall_s"].append(_peers.timed(cmd))
                cu, cs = children_user_sys()
                got["cpu_s"].append(cu - cu0 + cs - cs0)
                got["sys_s"].append(cs - cs0)
            sync_bench.check_copy(src, dst, info.files, full=rep == 0)
            log(f"cpu {name} #{rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in got.items()))
    out: dict[str, Any] = {"runs": {k: dict(v) for k, v in runs.items()}}
    out["median"] = {k: {m: median(v) for m, v in by.items()} for k, by in runs.items()}
    for name in ("devstack-raw", "devstack"):
        med = out["median"][name]
        med["sidecar_cpu_ms_per_1000_files"] = med["sidecar_cpu_s"] * 1e6 / info.files
    helps = []
    for _ in range(2 * repeat - 1):  # 5 at the default 3 repetitions
        c0 = sum(children_user_sys())
        wall = _peers.timed(_procs.devstack("connect", "--help"), stdout=subprocess.DEVNULL)
        helps.append((wall, sum(children_user_sys()) - c0))
    out["connect_help"] = {
        "wall_runs_s": [w for w, _ in helps],
        "median_wall_s": median([w for w, _ in helps]),
        "median_cpu_s": median([c for _, c in helps]),
    }
    return out


# ------------------------------------------------------------ 2. py-spy

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    for root in ("core/", "cli/", "sidecar/", "proto/"):
        i = path.find("/" + root + "devstack/")
        if i >= 0:
            return path[i + 1 + len(root) :]
    return path


#: Frames every stack passes through (the interpreter's start, thread
#: bootstrap, the CLI's entry point): left out of the cumulative table.
_SPINE = re.compile(
    r"\(<frozen |\((?:\.\d+/)?threading\.py\)|^(?:main|main_entry|<module>) "
    r"\(devstack/cli/(?:main|__main__)\.py\)|\(\.\d+/asyncio/(?:runners|base_events|events)\.py\)"
)


class Profile:
    """py-spy's raw (collapsed) stacks, aggregated: self samples per
    function (the innermost frame), inclusive samples per function (each
    function once per stack, however deep it recurses), and the samples
    spent importing modules."""

    def __init__(self, text: str) -> None:
        self.total = 0
        self.imports = 0
        self.self_: collections.Counter[str] = collections.Counter()
        self.incl: collections.Counter[str] = collections.Counter()
        for line in text.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            names = []
            for frame in stack.split(";"):
                m = _FRAME.match(frame)
                names.append(f"{m['func']} ({_short(m['file'])})" if m else frame)
            self.total += n
            if any(x.startswith("_find_and_load (") for x in names):
                self.imports += n
            self.self_[names[-1]] += n
            for name in set(names):
                self.incl[name] += n

    def cumulative(self, top: int) -> list[tuple[str, int]]:
        return [kv for kv in self.incl.most_common() if not _SPINE.search(kv[0])][:top]


def profile_run(
    work: Work, src: Path, info: _tree.TreeInfo, compress: str, rate: int, top: int
) -> dict[str, Any]:
    spy = py_spy()
    assert spy is not None
    dst = work.fresh(f"profile-{compress}")
    out_dir = work.root / "profiles"
    out_dir.mkdir(exist_ok=True)
    files = {p: out_dir / f"{p}-{compress}.txt" for p in ("sidecar", "connect")}
    flags = ["--rate", str(rate), "--format", "raw", "--nonblocking", "--full-filenames"]
    flags.append("--nolineno")
    os.sync()
    with sidecar(work, dst) as sc:
        su0, ss0 = user_sys(sc.pid)
        attach = _procs.spawn(
            [spy, "record", *flags, "--output", str(files["sidecar"]), "--pid", str(sc.pid)],
            work.logs.new("py-spy-sidecar"),
        )
        time.sleep(1.0)  # py-spy is attached and sampling
        cmd = [spy, "record", *flags, "--output", str(files["connect"]), "--"]
        cmd += connect_cmd(work, src, sc.address, compress)
        wall = run(cmd, work, "py-spy-connect", work.fresh("cache"))
        su, ss = user_sys(sc.pid)
        attach.send_signal(signal.SIGINT)  # py-spy writes its file and exits
        attach.wait(60)
    sync_bench.check_copy(src, dst, info.files, full=False)
    res: dict[str, Any] = {
        "compress": compress,
        "rate_hz": rate,
        "wall_s_under_py_spy": wall,
        # /proc's figure for the same window: py-spy sees Python threads
        # only (not gRPC's own C threads), so it samples less than this.
        "sidecar_cpu_s_proc": su - su0 + ss - ss0,
    }
    for proc, path in files.items():
        prof = Profile(path.read_text())
        res[proc] = {
            "cpu_s_sampled": prof.total / rate,
            "imports_s_sampled": prof.imports / rate,
            "self_top": [(f, n / rate) for f, n in prof.self_.most_common(top)],
            "cumulative_top": [(f, n / rate) for f, n in prof.cumulative(top)],
            "file": str(path),
        }
        log(f"profile {compress} {proc}: {prof.total} samples ({prof.total / rate:.2f} s on CPU)")
    return res


# ------------------------------------------------------------ 3. syscalls

_STRACE_ROW = re.compile(
    r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(?P<calls>\d+)\s+(?:(?P<errors>\d+)\s+)?(?P<name>\w+)\s*$"
)


def parse_strace_c(text: str) -> dict[str, int]:
    """``strace -c``'s summary: calls per system call name."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        m = _STRACE_ROW.match(line)
        if m and m["name"] != "total":
            calls[m["name"]] = calls.get(m["name"], 0) + int(m["calls"])
    return calls


def _per_file(calls: dict[str, int], files: int, top: int) -> dict[str, Any]:
    total = sum(calls.values())
    return {
        "calls": total,
        "per_file": total / files,
        "top_per_file": [(k, v / files) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])][
            :top
        ],
    }


def syscall_run(work: Work, src: Path, info: _tree.TreeInfo, top: int) -> dict[str, Any]:
    out_dir = work.root / "strace"
    out_dir.mkdir(exist_ok=True)
    res: dict[str, Any] = {}
    dst = work.fresh("strace-devstack")
    with sidecar(work, dst) as sc:
        tids = [p.name for p in Path(f"/proc/{sc.pid}/task").iterdir()]
        side = out_dir / "sidecar.txt"
        tracer = _procs.spawn(
            ["strace", "-c", "-f", "-o", str(side), *(a for t in tids for a in ("-p", t))],
            work.logs.new("strace-sidecar"),
        )
        time.sleep(1.0)  # attached
        client = out_dir / "connect.txt"
        cmd = ["strace", "-c", "-f", "-o", str(client), "--"]
        cmd += connect_cmd(work, src, sc.address, "never")
        run(cmd, work, "strace-connect", work.fresh("cache"))
        time.sleep(0.5)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(60)
    sync_bench.check_copy(src, dst, info.files, full=False)
    res["devstack-raw"] = {
        "connect": _per_file(parse_strace_c(client.read_text()), info.files, top),
        "sidecar": _per_file(parse_strace_c(side.read_text()), info.files, top),
    }
    if shutil.which("rsync"):
        rsync = _peers.Rsync(work.root, work.root / "runs")
        dst = work.fresh("strace-rsync")
        both = out_dir / "rsync.txt"
        subprocess.run(
            ["strace", "-c", "-f", "-o", str(both), "--", *rsync.pipe_cmd(src, dst)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        res["rsync-pipe"] = {"both": _per_file(parse_strace_c(both.read_text()), info.files, top)}
    return res


# ------------------------------------------------------------ 4. staging

STAGINGS = ("in-place", "per-file-staging", "folder-staging")


def _tree_listing(src: Path) -> tuple[list[str], list[tuple[str, int, bytes]]]:
    """Every folder (parents first) and every file with its mode and bytes."""
    dirs: list[str] = []
    files: list[tuple[str, int, bytes]] = []
    for root, dnames, fnames in os.walk(src):
        dnames.sort()
        rel = os.path.relpath(root, src)
        if rel != ".":
            dirs.append(rel)
        for f in sorted(fnames):
            path = Path(root, f)
            mode = path.stat().st_mode & 0o777
            files.append((os.path.normpath(os.path.join(rel, f)), mode, path.read_bytes()))
    return dirs, files


def write_tree(dst: Path, dirs: list[str], files: list[tuple[str, int, bytes]], how: str) -> None:
    """Write the tree into the empty folder ``dst`` one of three ways, with
    the system calls the applier would make: ``in-place`` (create each
    file at its path: no atomicity, the floor); ``per-file-staging`` (what
    the sidecar does: each file created in one staging folder and renamed
    to its path); ``folder-staging`` (the whole new tree built in a
    staging folder, then each top-level entry renamed into place)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    staging = dst.parent / f"{dst.name}.staging"
    staging.mkdir()
    top = dst if how != "folder-staging" else staging
    for d in dirs:
        os.mkdir(top / d)
    if how == "per-file-staging":
        sfd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        dfd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i, (rel, mode, data) in enumerate(files):
                name = f".{i}.tmp"
                fd = os.open(name, flags, mode, dir_fd=sfd)
                os.write(fd, data)
                os.close(fd)
                os.rename(name, rel, src_dir_fd=sfd, dst_dir_fd=dfd)
        finally:
            os.close(sfd)
            os.close(dfd)
    else:
        tfd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for rel, mode, data in files:
                fd = os.open(rel, flags, mode, dir_fd=tfd)
                os.write(fd, data)
                os.close(fd)
        finally:
            os.close(tfd)
        if how == "folder-staging":
            for name in os.listdir(staging):
                os.rename(staging / name, dst / name)
    os.rmdir(staging)


def measure_staging(work: Work, src: Path, repeat: int) -> dict[str, Any]:
    """The three ways of :func:`write_tree`, interleaved, in this process:
    wall time and its user and system CPU."""
    dirs, files = _tree_listing(src)
    runs: dict[str, dict[str, list[float]]] = {h: collections.defaultdict(list) for h in STAGINGS}
    for rep in range(repeat):
        for how in STAGINGS:
            dst = work.fresh(f"staging-{how}")
            os.sync()
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            write_tree(dst, dirs, files, how)
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            got = runs[how]
            got["wall_s"].append(wall)
            got["user_s"].append(r1.ru_utime - r0.ru_utime)
            got["sys_s"].append(r1.ru_stime - r0.ru_stime)
            log(f"staging {how} #{rep + 1}: {wall:.2f} s (sys {got['sys_s'][-1]:.2f} s)")
    return {
        "files": len(files),
        "dirs": len(dirs),
        "runs": {k: dict(v) for k, v in runs.items()},
        "median": {k: {m: median(v) for m, v in by.items()} for k, by in runs.items()},
    }


# ------------------------------------------------------------ 5. digest


def digests() -> dict[str, Callable[[bytes], bytes]]:
    """The digest functions this interpreter has: name -> one-shot function."""
    out: dict[str, Callable[[bytes], bytes]] = {
        "sha256": lambda b: hashlib.sha256(b).digest(),
        "blake2b-256": lambda b: hashlib.blake2b(b, digest_size=32).digest(),
        "blake2b-128": lambda b: hashlib.blake2b(b, digest_size=16).digest(),
    }
    with contextlib.suppress(ImportError):
        blake3 = importlib.import_module("blake3").blake3
        out["blake3"] = lambda b: blake3(b).digest()
        out["blake3 (max_threads=1)"] = lambda b: blake3(b, max_threads=1).digest()
    with contextlib.suppress(ImportError):
        xxh3 = importlib.import_module("xxhash").xxh3_128_digest
        out["xxh3-128"] = lambda b: bytes(xxh3(b))
    return out


def measure_digest(seconds: float = 0.4) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for size in (3_000, 1 << 20):
        buf = os.urandom(size)
        for name, fn in digests().items():
            best = 0.0
            for _ in range(3):
                n = 0
                t0 = time.perf_counter()
                while (took := time.perf_counter() - t0) < seconds:
                    fn(buf)
                    n += 1
                best = max(best, n * size / took)
            res.setdefault(name, {})[str(size)] = {
                "mb_s": best / 1e6,
                "us_per_call": size / best * 1e6,
            }
    return res


def _tree_files(root: Path) -> Iterator[tuple[str, bytes]]:
    """(path, content) of every regular file under ``root``, depth first in
    name order, leaving out what ``connect`` ignores by default."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in (".git", "__pycache__", ".venv"))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    yield os.path.relpath(path, root), f.read()


def measure_compression(trees: list[Path]) -> list[dict[str, Any]]:
    """Bytes each way of compressing sends for a whole tree: devstack's
    session stream and its file-by-file zlib (``ContentEncoder``, ``auto``,
    in chunks as ``connect`` sends large files), and one gzip -6 stream over
    every file (what ``rsync -z`` and ``tar | gzip`` send, near enough)."""
    import zlib

    from devstack.core.protocol import MAX_CHUNK_BYTES, ContentEncoder, StreamCompressor

    out = []
    for root in trees:
        stream = StreamCompressor()
        gz = zlib.compressobj(6)
        files = raw = by_stream = by_zlib = by_gzip = 0
        took = {"stream": 0.0, "zlib": 0.0}
        for path, data in _tree_files(root):
            files += 1
            raw += len(data)
            by_gzip += len(gz.compress(data))
            pieces = [data[k : k + MAX_CHUNK_BYTES] for k in range(0, len(data), MAX_CHUNK_BYTES)]
            for name, enc in (
                ("stream", ContentEncoder(path, len(data), "auto", stream)),
                ("zlib", ContentEncoder(path, len(data), "auto")),
            ):
                t0 = time.perf_counter()
                sent = sum(len(enc.encode(piece)[0]) for piece in pieces)
                took[name] += time.perf_counter() - t0
                if name == "stream":
                    by_stream += sent
                else:
                    by_zlib += sent
        by_gzip += len(gz.flush())
        out.append(
            {
                "tree": str(root),
                "files": files,
                "bytes": raw,
                "stream_bytes": by_stream,
                "zlib_bytes": by_zlib,
                "gzip_stream_bytes": by_gzip,
                "stream_s": took["stream"],
                "zlib_s": took["zlib"],
            }
        )
    return out


# ------------------------------------------------------------ report


def _top_table(title: str, rows: list[tuple[str, float]], total: float) -> list[str]:
    lines = [f"| {title} | s | share |", "|---|---|---|"]
    for name, secs in rows:
        share = secs / total * 100 if total else 0.0
        lines.append(f"| `{name}` | {secs:.2f} | {share:.0f}% |")
    return lines


def report(res: dict[str, Any]) -> str:
    m = res["machine"]
    t = res["tree"]
    lines = [
        "### devstack initial-sync profile",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}, {m['filesystem']}, "
        f"Python {m['python']}, rsync {m['rsync']}. Run {res['started']}. Tree: "
        f"{t['files']:,} files in {t['dirs']:,} folders, {t['bytes'] / 1e6:.1f} MB, loopback. "
        f"1-minute load average before: {res['loadavg_1m']:.2f}.",
    ]
    cpu = res.get("cpu")
    if cpu:
        lines += [
            "",
            f"CPU, median of {res['repeat']} interleaved repetitions (each into a fresh "
            "destination; the sidecar's start-up excluded):",
            "",
            "| run | wall | connect CPU (of it kernel) | sidecar CPU (of it kernel) "
            "| sidecar CPU per 1,000 files | CPU, all processes (of it kernel) |",
            "|---|---|---|---|---|---|",
        ]
        for name, med in cpu["median"].items():
            if name.startswith("devstack"):
                both = med["connect_cpu_s"] + med["sidecar_cpu_s"]
                both_sys = med["connect_sys_s"] + med["sidecar_sys_s"]
                lines.append(
                    f"| {name} | {med['wall_s']:.2f} s "
                    f"| {med['connect_cpu_s']:.2f} s ({med['connect_sys_s']:.2f} s) "
                    f"| {med['sidecar_cpu_s']:.2f} s ({med['sidecar_sys_s']:.2f} s) "
                    f"| {med['sidecar_cpu_ms_per_1000_files']:.0f} ms "
                    f"| {both:.2f} s ({both_sys:.2f} s) |"
                )
            else:
                lines.append(
                    f"| {name} | {med['wall_s']:.2f} s | - | - | - "
                    f"| {med['cpu_s']:.2f} s ({med['sys_s']:.2f} s) |"
                )
        h = cpu["connect_help"]
        lines.append(
            f"\n`devstack connect --help`, interpreter included: {h['median_wall_s']:.3f} s wall, "
            f"{h['median_cpu_s']:.3f} s CPU (median of {len(h['wall_runs_s'])})."
        )
    for prof in res.get("profiles", []):
        lines += [
            "",
            f"py-spy, `--compress {prof['compress']}`, {prof['rate_hz']} Hz, on-CPU samples "
            f"(wall under the sampler {prof['wall_s_under_py_spy']:.2f} s):",
        ]
        for proc in ("connect", "sidecar"):
            p = prof[proc]
            total = p["cpu_s_sampled"]
            seen = f"{total:.2f} s on CPU sampled"
            if proc == "sidecar":
                seen += (
                    f" of {prof['sidecar_cpu_s_proc']:.2f} s by /proc (py-spy sees Python "
                    "threads only, not gRPC's C threads)"
                )
            seen += f"; importing modules: {p['imports_s_sampled']:.2f} s"
            lines += ["", f"{proc}: {seen}.", ""]
            lines += _top_table(f"{proc}, self", p["self_top"], total)
            lines.append("")
            lines += _top_table(f"{proc}, cumulative", p["cumulative_top"], total)
    if "profiles_absent" in res:
        lines += ["", f"py-spy profiles: absent ({res['profiles_absent']})."]
    sc = res.get("syscalls")
    if sc:
        lines += [
            "",
            "System calls per file (`strace -c -f`, `--compress never`; rsync: both of its "
            "processes):",
            "",
            "| process | per file | top calls per file |",
            "|---|---|---|",
        ]
        for tool, procs in sc.items():
            for proc, got in procs.items():
                tops = ", ".join(f"{k} {v:.2f}" for k, v in got["top_per_file"])
                lines.append(f"| {tool} {proc} | {got['per_file']:.1f} | {tops} |")
    if "syscalls_absent" in res:
        lines += ["", f"System calls: absent ({res['syscalls_absent']})."]
    stg = res.get("staging")
    if stg:
        lines += [
            "",
            f"Writing the same {stg['files']:,} files and {stg['dirs']:,} folders from one Python "
            "thread, three ways (median of the repetitions, interleaved):",
            "",
            "| how | wall | user CPU | system CPU | per file |",
            "|---|---|---|---|---|",
        ]
        for how, med in stg["median"].items():
            lines.append(
                f"| {how} | {med['wall_s']:.2f} s | {med['user_s']:.2f} s | {med['sys_s']:.2f} s "
                f"| {med['wall_s'] * 1e6 / stg['files']:.0f} µs |"
            )
    dig = res.get("digest")
    if dig:
        lines += [
            "",
            "Digests on this CPU, one thread, best of 3:",
            "",
            "| digest | 3 KB buffers | 1 MiB buffers |",
            "|---|---|---|",
        ]
        for name, by in dig.items():
            small, big = by["3000"], by[str(1 << 20)]
            lines.append(
                f"| {name} | {small['mb_s']:.0f} MB/s ({small['us_per_call']:.1f} µs a call) "
                f"| {big['mb_s']:.0f} MB/s |"
            )
    comp = res.get("compression")
    if comp:
        lines += [
            "",
            "Bytes sent with compression (`--compress auto`), each tree whole; one gzip -6 "
            "stream is about what `rsync -z` and `tar | gzip` send:",
            "",
            "| tree | files | bytes | session stream (zstd) | file by file (zlib) "
            "| one gzip -6 stream | stream / zlib | stream / gzip |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for t in comp:
            mb = 1e6
            lines.append(
                f"| {t['tree']} | {t['files']:,} | {t['bytes'] / mb:.1f} MB "
                f"| {t['stream_bytes'] / mb:.2f} MB ({t['stream_s']:.2f} s) "
                f"| {t['zlib_bytes'] / mb:.2f} MB ({t['zlib_s']:.2f} s) "
                f"| {t['gzip_stream_bytes'] / mb:.2f} MB "
                f"| {t['stream_bytes'] / t['zlib_bytes']:.2f} "
                f"| {t['stream_bytes'] / t['gzip_stream_bytes']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def _stamped(path: Path) -> float:
    """The time a run wrote into its ``.deleted-at`` stamp (0: none)."""
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--binaries", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--top", type=int, default=15, help="functions per table")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--digest-seconds", type=float, default=0.4, help="time per digest and buffer size"
    )
    parser.add_argument(
        "--only",
        default="cpu,profile,syscalls,staging,digest,compression",
        help="comma-separated: cpu, profile, syscalls, staging, digest, compression",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("DEVSTACK_BENCH_DIR", "/var/tmp/devstack-bench")).with_name(
            "devstack-profile"
        ),
        help="trees, logs and raw profiles (default /var/tmp/devstack-profile; replaced)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=300.0,
        help="seconds to let the disk settle after this or the sync benchmark last deleted "
        "its trees (default 300; ext4 here is slow at creating files soon after deleting many)",
    )
    parser.add_argument(
        "--trees",
        type=Path,
        nargs="*",
        default=[],
        help="more trees for the compression part (a real checkout), beside the bench tree",
    )
    parser.add_argument("--json", type=Path, help="default bench/out/profile-<time>.json")
    parser.add_argument("--markdown", type=Path, help="default: the JSON path with .md")
    args = parser.parse_args(argv)
    parts = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = parts - {"cpu", "profile", "syscalls", "staging", "digest", "compression"}
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root: Path = args.workdir.resolve()
    stamp = root.with_name(root.name + ".deleted-at")
    bench_dir = Path(os.environ.get("DEVSTACK_BENCH_DIR", "/var/tmp/devstack-bench"))
    stamps = (stamp, bench_dir.with_name(bench_dir.name + ".deleted-at"))
    wait = max((_stamped(p) for p in stamps), default=0.0) + args.settle - time.time()
    if wait > 0:
        log(f"trees were deleted recently: letting ext4 settle for {wait:.0f} s")
        time.sleep(wait)
    old = None
    if root.exists():  # moved aside now, deleted at the end
        old = root.with_name(f"{root.name}.old-{os.getpid()}-{time.time_ns()}")
        os.rename(root, old)
    root.mkdir(parents=True)
    work = Work(root)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    res: dict[str, Any] = {
        "started": started,
        "machine": sync_bench.machine(),
        "repeat": args.repeat,
        "loadavg_1m": os.getloadavg()[0],
    }
    src = root / "src"
    log(f"generating {args.files} files")
    info = _tree.generate(src, files=args.files, binaries=args.binaries, binary_mib=(1, 4))
    res["tree"] = {"files": info.files, "dirs": info.dirs, "bytes": info.bytes}
    if "digest" in parts:
        res["digest"] = measure_digest(args.digest_seconds)
    if "compression" in parts:
        res["compression"] = measure_compression([src, *args.trees])
    if "cpu" in parts:
        res["cpu"] = measure_cpu(work, src, info, args.repeat)
    if "profile" in parts:
        if py_spy() is None:
            res["profiles_absent"] = "py-spy is not installed: .venv/bin/pip install py-spy"
        else:
            res["profiles"] = [
                profile_run(work, src, info, c, args.rate, args.top) for c in ("never", "auto")
            ]
    if "syscalls" in parts:
        if shutil.which("strace") is None:
            res["syscalls_absent"] = "strace is not installed: apt-get install strace"
        else:
            res["syscalls"] = syscall_run(work, src, info, 8)
    if "staging" in parts:
        res["staging"] = measure_staging(work, src, args.repeat)
    out = args.json or REPO / "bench" / "out" / f"profile-{started.replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    text = report(res)
    print(text, end="")
    md = args.markdown or out.with_suffix(".md")
    md.write_text(text)
    shutil.rmtree(root / "runs", ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    stamp.write_text(str(time.time()))
    log(f"results: {out} and {md}; raw profiles and logs: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
