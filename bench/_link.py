"""The emulated laptop-to-cluster link for the sync benchmark: toxiproxy
(built by ``scripts/testbed build toxiproxy``) on 127.0.0.1, each proxy with
the same toxics in both directions: half the round trip as latency and the
bandwidth cap (20 ms round trip, 100 Mbit/s each way by default).

This machine's kernel has no ``netem``, so the latency cannot come from
``tc``; toxiproxy's ``bandwidth`` toxic proved accurate here (a raw TCP
transfer through it runs at 99 Mbit/s of the 100), and :meth:`Link.calibrate`
measures it again in every run, so the report shows what the link really
was.

Every peer crosses a proxy of the same :class:`Link`: rsync's daemon
protocol, tar's stream (:func:`tar_over`), syncthing's connections and
devstack's gRPC stream. Nothing here reaches beyond loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _peers

REPO = Path(__file__).resolve().parent.parent
BUILD_HINT = "scripts/testbed build toxiproxy"


def toxiproxy_binary() -> Path | None:
    """``toxiproxy-server`` as ``scripts/testbed bin`` names it, if built."""
    try:
        out = subprocess.run(
            [str(REPO / "scripts" / "testbed"), "bin"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        name, _, path = line.partition(" ")
        if name == "toxiproxy-server" and Path(path).is_file():
            return Path(path)
    return None


@dataclass(frozen=True)
class Shape:
    """What the link emulates: a round trip and a rate, each way."""

    rtt_ms: float = 20.0
    mbit_s: float = 100.0

    @property
    def latency_ms(self) -> int:
        """Added in each direction."""
        return round(self.rtt_ms / 2)

    @property
    def rate_kb_s(self) -> int:
        """toxiproxy's ``bandwidth`` rate: KB (1,000 bytes) per second."""
        return round(self.mbit_s * 1e6 / 8 / 1000)

    def ideal_s(self, size: int) -> float:
        """The least a one-way transfer of ``size`` bytes on an open
        connection can take: the bytes at the rate, plus the one-way delay."""
        return size * 8 / (self.mbit_s * 1e6) + self.rtt_ms / 2000

    def describe(self) -> str:
        return f"{self.rtt_ms:g} ms round trip, {self.mbit_s:g} Mbit/s each way"


class Link:
    """A running ``toxiproxy-server``; :meth:`via` puts an upstream behind it."""

    def __init__(self, binary: Path, log: Path, shape: Shape = Shape()) -> None:
        self.shape = shape
        self.api_port = _peers.free_port()
        self._n = 0
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(binary), "-host", "127.0.0.1", "-port", str(self.api_port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"toxiproxy-server exited {self.proc.returncode} (see {log})")
            try:
                self._req("GET", "/version")
                return
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"toxiproxy-server did not answer (see {log})") from None
                time.sleep(0.05)

    def _req(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError:  # /version answers in plain text
            return raw.decode(errors="replace")

    def via(self, upstream_port: int, name: str = "p") -> int:
        """A proxy on a free 127.0.0.1 port to ``upstream_port``, with the
        link's latency and bandwidth each way; its port."""
        self._n += 1
        proxy = f"{name}-{self._n}"
        port = _peers.free_port()
        self._req(
            "POST",
            "/proxies",
            {
                "name": proxy,
                "listen": f"127.0.0.1:{port}",
                "upstream": f"127.0.0.1:{upstream_port}",
            },
        )
        for stream in ("upstream", "downstream"):
            for kind, attrs in (
                ("latency", {"latency": self.shape.latency_ms, "jitter": 0}),
                ("bandwidth", {"rate": self.shape.rate_kb_s}),
            ):
                self._req(
                    "POST",
                    f"/proxies/{proxy}/toxics",
                    {
                        "name": f"{kind}_{stream}",
                        "type": kind,
                        "stream": stream,
                        "attributes": attrs,
                    },
                )
        return port

    def cpu(self) -> float:
        """CPU seconds toxiproxy used so far (it relays every byte)."""
        return _peers.tree_cpu(self.proc.pid)

    def calibrate(self, size: int = 20_000_000, pings: int = 20) -> dict[str, float]:
        """Measure the link: the median round trip of a small message, and
        a raw one-way TCP transfer of ``size`` bytes, timed until the last
        byte arrived at the far end."""
        with _Sink() as sink:
            port = self.via(sink.port, "calibrate")
            with socket.create_connection(("127.0.0.1", port)) as c:
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                rtts = []
                for _ in range(pings):
                    t0 = time.perf_counter()
                    c.sendall(b"P")
                    if c.recv(1) != b"P":
                        raise RuntimeError("the calibration echo did not come back")
                    rtts.append(time.perf_counter() - t0)
            chunk = b"\0" * (1 << 16)
            with socket.create_connection(("127.0.0.1", port)) as c:
                c.sendall(b"S")  # a sink, not an echo
                t0 = time.perf_counter()
                sent = 0
                while sent < size:
                    c.sendall(chunk)
                    sent += len(chunk)
            arrived = sink.wait_total(sent, 600)
        took = arrived - t0
        return {
            "rtt_ms": statistics.median(rtts) * 1000,
            "transfer_bytes": float(sent),
            "transfer_s": took,
            "transfer_mbit_s": sent * 8 / took / 1e6,
            "ideal_s": self.shape.ideal_s(sent),
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _Sink:
    """A TCP server for :meth:`Link.calibrate`: a connection whose first
    byte is ``P`` echoes every byte; ``S`` swallows everything and records
    when its last byte arrived."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._done: list[tuple[int, float]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            first = conn.recv(1)
            if first == b"P":
                conn.sendall(first)
                while data := conn.recv(1 << 16):
                    conn.sendall(data)
                return
            total = 0
            last = time.perf_counter()
            while data := conn.recv(1 << 16):
                total += len(data)
                last = time.perf_counter()
            with self._cond:
                self._done.append((total, last))
                self._cond.notify_all()

    def wait_total(self, size: int, timeout: float) -> float:
        """When a swallowed transfer of at least ``size`` bytes ended."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for total, last in self._done:
                    if total >= size:
                        return last
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"the calibration transfer did not arrive in {timeout}s")
                self._cond.wait(left)


def gzip_stream_bytes(root: Path, level: int = 6) -> int:
    """The bytes of every file under ``root`` through one zlib stream at
    ``level`` (what ``tar c | gzip`` sends, headers aside): with the
    incompressible files in it, the least a compressing tool has to move."""
    z = zlib.compressobj(level)
    total = 0
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    total += len(z.compress(f.read()))
    return total + len(z.flush())


def tar_over(link_port: int, listener: socket.socket, src: Path, dst: Path, *, gzip: bool) -> float:
    """``tar c | (the link) | tar x``: the sender's stdout is a TCP
    connection to ``link_port``, a proxy whose upstream is ``listener``;
    the receiver's stdin is the connection accepted there. Wall time until
    both tars exited; raises if either failed."""
    z = "z" if gzip else ""
    t0 = time.perf_counter()
    out = socket.create_connection(("127.0.0.1", link_port))
    listener.settimeout(30)
    try:
        conn, _ = listener.accept()
    except BaseException:
        out.close()
        raise
    with conn, out:
        rx = subprocess.Popen(["tar", "-C", str(dst), f"-x{z}f", "-"], stdin=conn.fileno())
        tx = subprocess.Popen(["tar", "-C", str(src), f"-c{z}f", "-", "."], stdout=out.fileno())
    # Only the children hold the sockets now: the sender's exit is the EOF.
    codes = (tx.wait(1800), rx.wait(1800))
    took = time.perf_counter() - t0
    if codes != (0, 0):
        raise RuntimeError(f"tar over the link exited {codes} (sender, receiver)")
    return took


@contextlib.contextmanager
def listener() -> Any:
    """A listening socket on a free 127.0.0.1 port (for :func:`tar_over`)."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield server
    finally:
        server.close()
