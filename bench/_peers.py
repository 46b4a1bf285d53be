"""The peers devstack is measured against: ``cp -a``, ``tar c | tar x``,
rsync over a pipe and against a daemon, and syncthing (processes on
127.0.0.1 only; this module starts and stops them).

Nothing here reaches beyond loopback: the rsync "remote shell" is a local
stand-in for ssh, the rsync daemon binds 127.0.0.1, and every syncthing
instance has discovery, relays, NAT, usage and crash reporting, the browser
and upgrades turned off, listens on 127.0.0.1 and addresses its peer
explicitly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack.core.ports import free_port

RSH_SCRIPT = """#!/bin/sh
# A stand-in for ssh/kubectl exec: drop the options and the host name, then
# run the remote command (rsync --server ...) here, over the same pipes.
while [ $# -gt 0 ]; do
  case "$1" in
    -l|-p) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
shift
exec "$@"
"""


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its reaped children and its live
    descendants (user + system), from /proc."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_cpu(int(child))
    except (OSError, ValueError, IndexError):
        pass
    return total


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def timed(cmd: list[str], **kwargs: Any) -> float:
    """Run ``cmd`` to completion; its wall time in seconds."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, **kwargs)
    return time.perf_counter() - t0


def cp_cmd(src: Path, dst: Path) -> list[str]:
    return ["cp", "-a", f"{src}/.", str(dst)]


def tar_cmd(src: Path, dst: Path, *paths: str) -> list[str]:
    """``tar c | tar x`` through a pipe, as ``kubectl exec ... tar x`` does."""
    what = " ".join(f"'{p}'" for p in paths) if paths else "."
    return ["bash", "-o", "pipefail", "-c", f"tar -C '{src}' -cf - {what} | tar -C '{dst}' -xf -"]


class Rsync:
    """rsync over a pipe (a local remote-shell stand-in) and against a daemon
    on 127.0.0.1 serving ``root``."""

    def __init__(self, work: Path, root: Path) -> None:
        self.work = work
        self.root = root
        self.rsh = work / "local-rsh"
        self.rsh.write_text(RSH_SCRIPT)
        self.rsh.chmod(0o755)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.port = 0

    def pipe_cmd(self, src: Path, dst: Path, *extra: str) -> list[str]:
        return ["rsync", "-a", f"--rsh={self.rsh}", *extra, f"{src}/", f"localhost:{dst}/"]

    def start_daemon(self) -> None:
        self.port = free_port()
        conf = self.work / "rsyncd.conf"
        conf.write_text(
            f"pid file = {self.work / 'rsyncd.pid'}\n"
            f"lock file = {self.work / 'rsyncd.lock'}\n"
            "use chroot = no\n"
            "uid = 0\n"
            "gid = 0\n"
            "[bench]\n"
            f"path = {self.root}\n"
            "read only = no\n"
        )
        self.daemon = subprocess.Popen(
            [
                "rsync",
                "--daemon",
                "--no-detach",
                f"--config={conf}",
                "--address=127.0.0.1",
                f"--port={self.port}",
                f"--log-file={self.work / 'rsyncd.log'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def daemon_cpu(self) -> float:
        """CPU seconds the daemon and the servers it forked used so far."""
        return tree_cpu(self.daemon.pid) if self.daemon is not None else 0.0

    def daemon_cmd(self, src: Path, dst: Path, *extra: str, port: int | None = None) -> list[str]:
        """``rsync -a`` to the daemon, or to ``port`` (a proxy in front of it)."""
        rel = dst.relative_to(self.root)
        to = self.port if port is None else port
        return ["rsync", "-a", *extra, f"{src}/", f"rsync://127.0.0.1:{to}/bench/{rel}/"]

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            self.daemon.wait(10)

    @staticmethod
    def version() -> str:
        if shutil.which("rsync") is None:
            return "absent"
        out = subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout
        words = out.split()
        return words[2] if len(words) > 2 else "?"

    @staticmethod
    def bytes_sent(stats_output: str) -> int:
        """``Total bytes sent`` from ``rsync --stats``."""
        m = re.search(r"Total bytes sent:\s*([\d,.]+)", stats_output)
        if m is None:
            raise RuntimeError(f"no 'Total bytes sent' in rsync output:\n{stats_output}")
        return int(re.sub(r"[,.]", "", m.group(1)))


# ---------------------------------------------------------------- syncthing

_OFF = {
    "globalAnnounceEnabled": "false",
    "localAnnounceEnabled": "false",
    "relaysEnabled": "false",
    "natEnabled": "false",
    "crashReportingEnabled": "false",
    "startBrowser": "false",
    "urAccepted": "-1",
    "urSeen": "3",
    "autoUpgradeIntervalH": "0",
    "stunKeepaliveStartS": "0",
    "announceLANAddresses": "false",
    "setLowPriority": "false",
}


class SyncthingNode:
    """One syncthing instance with its own home, REST API on 127.0.0.1."""

    def __init__(self, home: Path, name: str) -> None:
        self.home = home
        self.name = name
        self.gui_port = free_port()
        self.listen_port = free_port()
        self.apikey = f"bench-{name}-{os.getpid()}"
        self.proc: subprocess.Popen[bytes] | None = None
        out = subprocess.run(
            [
                "syncthing",
                "generate",
                f"--home={home}",
                "--no-default-folder",
                "--skip-port-probing",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        m = re.search(r"Device ID:\s*(\S+)", out.stdout + out.stderr)
        if m is None:
            raise RuntimeError(f"syncthing generate printed no device id: {out.stdout}")
        self.device_id = m.group(1)

    def configure(self, peer: SyncthingNode, peer_port: int | None = None) -> None:
        """Loopback only, nothing that phones home, the peer by address
        (its listening port, or ``peer_port``: a proxy in front of it)."""
        path = self.home / "config.xml"
        tree = ET.parse(path)
        cfg = tree.getroot()
        opts = cfg.find("options")
        assert opts is not None
        for key, value in _OFF.items():
            el = opts.find(key)
            if el is None:
                el = ET.SubElement(opts, key)
            el.text = value
        for el in opts.findall("listenAddress"):
            opts.remove(el)
        listen = ET.SubElement(opts, "listenAddress")
        listen.text = f"tcp://127.0.0.1:{self.listen_port}"
        for el in opts.findall("globalAnnounceServer"):
            opts.remove(el)
        gui = cfg.find("gui")
        assert gui is not None
        gui.set("tls", "false")
        addr = gui.find("address")
        apikey = gui.find("apikey")
        assert addr is not None and apikey is not None
        addr.text = f"127.0.0.1:{self.gui_port}"
        apikey.text = self.apikey
        dev = ET.SubElement(
            cfg,
            "device",
            {
                "id": peer.device_id,
                "name": peer.name,
                "compression": "metadata",
                "introducer": "false",
            },
        )
        to = peer.listen_port if peer_port is None else peer_port
        ET.SubElement(dev, "address").text = f"tcp://127.0.0.1:{to}"
        ET.SubElement(dev, "autoAcceptFolders").text = "false"
        # Put the new device before <gui> so the file keeps its usual order.
        cfg.remove(dev)
        cfg.insert(list(cfg).index(gui), dev)
        tree.write(path)

    def start(self) -> None:
        env = {
            **os.environ,
            "STNOUPGRADE": "1",
            "STNORESTART": "1",
            "STNODEFAULTFOLDER": "1",
            "HOME": str(self.home),
        }
        self.proc = subprocess.Popen(
            [
                "syncthing",
                "serve",
                f"--home={self.home}",
                "--no-browser",
                "--no-upgrade",
                "--no-restart",
                "--no-default-folder",
                f"--logfile={self.home / 'syncthing.log'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.get("/rest/system/ping")
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise RuntimeError(f"syncthing {self.name} did not start (see {self.home})")

    def _req(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.gui_port}{path}",
            data=data,
            method=method,
            headers={"X-API-Key": self.apikey, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.strip() else None

    def get(self, path: str) -> Any:
        return self._req("GET", path)

    def add_folder(
        self, folder_id: str, path: Path, *, kind: str, peer: SyncthingNode, watch_delay_s: int
    ) -> None:
        self._req(
            "POST",
            "/rest/config/folders",
            {
                "id": folder_id,
                "label": folder_id,
                "path": str(path),
                "type": kind,
                "devices": [{"deviceID": self.device_id}, {"deviceID": peer.device_id}],
                "fsWatcherEnabled": True,
                "fsWatcherDelayS": watch_delay_s,
                "rescanIntervalS": 3600,
            },
        )

    def remove_folder(self, folder_id: str) -> None:
        self._req("DELETE", f"/rest/config/folders/{folder_id}")

    def status(self, folder_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/rest/db/status?folder={folder_id}")
        return result

    def connected_to(self, peer: SyncthingNode) -> bool:
        conns = self.get("/rest/system/connections")["connections"]
        return bool(conns.get(peer.device_id, {}).get("connected"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @staticmethod
    def version() -> str:
        if shutil.which("syncthing") is None:
            return "absent"
        out = subprocess.run(["syncthing", "--version"], capture_output=True, text=True).stdout
        return out.split()[1] if out else "?"


class SyncthingPair:
    """Two instances on 127.0.0.1: ``a`` sends (the laptop), ``b`` receives.
    With ``via`` (listening port -> the port of a proxy in front of it),
    each addresses the other through that proxy, so whichever of them
    dials, the connection crosses it."""

    def __init__(self, work: Path, via: Callable[[int], int] | None = None) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.a = SyncthingNode(work / "a", "a")
        self.b = SyncthingNode(work / "b", "b")
        self.a.configure(self.b, None if via is None else via(self.b.listen_port))
        self.b.configure(self.a, None if via is None else via(self.a.listen_port))
        self._n = 0

    def start(self, timeout: float = 60.0) -> None:
        self.a.start()
        self.b.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.a.connected_to(self.b) and self.b.connected_to(self.a):
                return
            time.sleep(0.1)
        raise RuntimeError("the two syncthing instances did not connect on 127.0.0.1")

    def addresses(self) -> set[str]:
        """The remote address each side reports for its connection to the other."""
        out = set()
        for node, peer in ((self.a, self.b), (self.b, self.a)):
            conn = node.get("/rest/system/connections")["connections"].get(peer.device_id, {})
            out.add(str(conn.get("address", "")))
        return out

    def share(self, src: Path, *, watch_delay_s: int = 1) -> str:
        """Add ``src`` on the sender and wait until it is scanned; the
        folder id to accept on the receiver."""
        self._n += 1
        fid = f"bench{self._n}"
        self.a.add_folder(fid, src, kind="sendonly", peer=self.b, watch_delay_s=watch_delay_s)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                st = self.a.status(fid)
                if st.get("state") == "idle" and st.get("globalFiles", 0) > 0:
                    return fid
            except urllib.error.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"syncthing did not finish scanning {src}")

    def accept(self, fid: str, dst: Path, *, watch_delay_s: int = 1) -> None:
        self.b.add_folder(fid, dst, kind="receiveonly", peer=self.a, watch_delay_s=watch_delay_s)

    def complete(self, fid: str) -> bool:
        """The receiver has everything the sender announced."""
        try:
            st = self.b.status(fid)
        except urllib.error.HTTPError:
            return False
        want = self.a.status(fid)
        return bool(
            st.get("state") == "idle"
            and st.get("needTotalItems", 1) == 0
            and st.get("globalFiles") == want.get("localFiles")
            and st.get("localFiles") == want.get("localFiles")
            and st.get("localBytes") == want.get("localBytes")
        )

    def cpu(self) -> float:
        """CPU seconds both instances used so far."""
        return sum(tree_cpu(n.proc.pid) for n in (self.a, self.b) if n.proc is not None)

    def unshare(self, fid: str) -> None:
        self.b.remove_folder(fid)
        self.a.remove_folder(fid)

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()
