"""A real OCI registry on 127.0.0.1 for the ``oci://`` chart tests:
go-containerregistry's registry (``crane registry serve``, built by
``scripts/testbed build registry``), in memory, on a port it chooses; charts
are pushed to it through Helm's engine (``push``, as ``helm push`` does).

Does I/O: starts a process, which listens on 127.0.0.1 only.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import helm_python
import httpx

from tests.support.chart_repo import PLAIN
from tests.support.net import wait_until
from tests.support.testbed import binary_paths

BUILD_HINT = (
    "the OCI registry is not built: run `scripts/testbed build registry` "
    "(Go and the Go module proxy; see docs/testing.md)"
)


@dataclass
class Registry:
    #: ``127.0.0.1:<port>``
    host: str
    log: Path
    marks: int = 0

    def push(self, *versions: str, chart: Path = PLAIN, path: str = "charts") -> None:
        """Package ``chart`` at each of ``versions`` and push it to
        ``oci://<host>/<path>/<name>``."""
        out = self.log.parent / "oci-packages"
        out.mkdir(exist_ok=True)
        for version in versions:
            archive = helm_python.package(str(chart), destination=str(out), version=version)
            helm_python.push(archive, f"oci://{self.host}/{path}", plain_http=True)

    def requests(self) -> list[str]:
        """``METHOD path`` of every request the registry logged, in order."""
        text = self.log.read_text(errors="replace")
        return re.findall(r"\b((?:GET|HEAD|PUT|POST|PATCH|DELETE) /v2/\S*)", text)

    def settled(self) -> list[str]:
        """:meth:`requests`, once every request answered so far is in the log:
        the registry logs a request just after answering it, so this asks
        for a marker of its own and waits until the marker is logged."""
        self.marks += 1
        marker = f"/v2/devstack-mark-{self.marks}/tags/list"
        httpx.get(f"http://{self.host}{marker}", timeout=10)
        wait_until(lambda: f"GET {marker}" in self.requests(), timeout=10, interval=0.02)
        return [r for r in self.requests() if "/devstack-mark-" not in r]

    def downloads(self) -> list[str]:
        """The blobs (a chart's config and its archive) served, in order."""
        return [r for r in self.settled() if r.startswith("GET ") and "/blobs/" in r]


@contextmanager
def running_registry(workdir: Path) -> Iterator[Registry]:
    """A started registry; an AssertionError saying how to build it when its
    binary is missing."""
    binary = binary_paths().get("crane")
    assert binary is not None and binary.is_file(), BUILD_HINT
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "registry.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(binary), "registry", "serve", "--address", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        port: list[str] = []

        def serving() -> bool:
            assert process.poll() is None, log.read_text(errors="replace")[-2000:]
            port[:] = re.findall(r"serving on port (\d+)", log.read_text(errors="replace"))
            return bool(port)

        wait_until(serving, timeout=30, interval=0.05)
        yield Registry(f"127.0.0.1:{port[0]}", log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
