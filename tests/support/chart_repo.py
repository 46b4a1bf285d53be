"""A real Helm chart repository on 127.0.0.1 for the tests: a folder of
chart archives packaged by Helm's engine (``package``, as ``helm package``
does) with the ``index.yaml`` Helm writes for it (``repo_index_generate``, as
``helm repo index`` does), served by a threaded ``http.server`` that records
every request, so a test can tell what was downloaded and how often."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import helm_python

from tests.support.net import free_port

#: The small chart the repository serves (a Deployment and a Service).
PLAIN = Path(__file__).resolve().parents[1] / "data" / "workflow" / "charts" / "plain"


@dataclass
class ChartRepo:
    root: Path
    url: str = ""
    #: (path, status) of every request, in order.
    requests: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, *versions: str, chart: Path = PLAIN) -> None:
        """Package ``chart`` at each of ``versions`` and index the folder again."""
        for version in versions:
            helm_python.package(str(chart), destination=str(self.root), version=version)
        helm_python.repo_index_generate(str(self.root))

    def log(self) -> list[tuple[str, int]]:
        with self.lock:
            return list(self.requests)

    def downloads(self) -> list[str]:
        """The chart archives served (status 200), in order."""
        return [p for p, status in self.log() if p.endswith(".tgz") and status == 200]


class _Handler(SimpleHTTPRequestHandler):
    repo: ChartRepo

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        with self.repo.lock:
            self.repo.requests.append((self.path, int(code)))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: requests are in ChartRepo.requests


@contextmanager
def serve_repo(root: Path) -> Iterator[ChartRepo]:
    """Serve ``root`` (created if need be) as a chart repository on a free
    port of 127.0.0.1."""
    root.mkdir(parents=True, exist_ok=True)
    repo = ChartRepo(root)
    handler = type("Handler", (_Handler,), {"repo": repo})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    server.daemon_threads = True
    repo.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield repo
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def refused_url() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"
