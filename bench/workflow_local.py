"""The local stack's daily workflow, timed end to end on the example shop
(examples/shop: web -> api -> stock), real processes on 127.0.0.1 only.

``up``: from starting ``devstack up --local -f examples/shop`` (what ``make
up`` runs; fresh state each time) to the first routed request succeeding: a
``GET /`` of web through the stack's Traefik, tagged with the routing key as
``devstack curl web`` sends it, answered 200 by your copies of web, api and
stock (checked hop by hop). Repeated ``--runs`` times with Ctrl-C (which runs
``down``) between. The breakdown comes from ``up``'s own progress lines,
timestamped as they arrive: the AWS endpoint and provisioning, Traefik, every
process of every level ready, then the first routed request. The peer,
measured in the same runs: the same three apps started by hand (``python
app.py`` on free ports, in ``needs`` order, each waited for on its
``/healthz``): the floor devstack's start-up is a multiple of.

``reload``: on a running local stack with your copy of stock (``devstack up
--local stock --detach``) and ``devstack connect stock`` syncing in the
background, the time from saving a change to the response body of
``stock/app.py`` (its ``MESSAGE``) to the new code answering a tagged request
through Traefik, over ``--saves`` saves. Each sample also records when the
file landed in the copy's workspace (sync alone) and, from the sidecar's log,
when its reload started and when the restarted app was ready. The peer, in the
same run: ``bench/reload_latency.py``'s supervise measurement (a bare app under
a sidecar, no Traefik, the same reload debounce).

The project is copied into the work folder first, so the checkout's
``examples/shop`` (and a ``make up`` running from it) is never touched, and
Traefik listens on a free port.

Usage: .venv/bin/python bench/workflow_local.py up [--runs 5]
       .venv/bin/python bench/workflow_local.py reload [--saves 30]
Both take --json PATH (every raw figure) and --keep (keep the work folder).
stdout holds only the report (Markdown); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _procs
import _workflow as W
import reload_latency

from devstack.cli import localstack
from devstack.core.helmfile import load as load_helmfile
from devstack.core.ports import free_port
from devstack.sidecar.reload import DEFAULT_DEBOUNCE_MS

OWNER = "bench"
EXAMPLES = _procs.REPO / "examples"
#: The service whose copy ``reload`` edits, and the line it rewrites.
EDITED = "stock"
MESSAGE_LINE = re.compile(r"^MESSAGE = .*$", re.M)
#: The progress lines of ``devstack up --local`` the breakdown is read from.
MARKS = {
    "plan": "devstack up --local:",
    "aws": "  provisioning:",
    "traefik": "  routing:",
    "ready": "  ready:",
    "settled": "Ready.",
}


@dataclass(frozen=True)
class Work:
    root: Path
    logs: _procs.LogDir

    @property
    def helmfile(self) -> Path:
        return self.root / "project" / "shop" / "helmfile.yaml"

    def copy_project(self) -> None:
        """examples/shop and the chart its Helmfile names (``../chart``)."""
        for name in ("shop", "chart"):
            shutil.copytree(
                EXAMPLES / name,
                self.root / "project" / name,
                ignore=shutil.ignore_patterns("__pycache__", ".devstack"),
            )

    def state_file(self) -> Path:
        return self.helmfile.parent / ".devstack" / localstack.STATE_FILE

    def state(self) -> dict[str, Any] | None:
        try:
            raw: dict[str, Any] = json.loads(self.state_file().read_text())
        except (OSError, ValueError):
            return None  # not written yet, or being replaced
        return raw


def _env() -> dict[str, str]:
    """The caller's environment without devstack's own settings (the owner
    and the rest come from the command line)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVSTACK_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _devstack(work: Work, *args: str) -> list[str]:
    return _procs.devstack(*args, "-f", str(work.helmfile), "--owner", OWNER)


def _down(work: Work) -> None:
    """``devstack down --local`` (a no-op when nothing runs)."""
    _procs.run_logged(
        _devstack(work, "down", "--local"),
        work.logs.new("down"),
        env={"PYTHONUNBUFFERED": "1"},
        timeout=120,
        what="devstack down --local",
    )


# --- requests through the router ------------------------------------------------------------


class Router:
    """``GET PATH`` through the local Traefik with ``Host`` and the routing
    key as ``devstack curl`` sends them, over one keep-alive connection
    (reconnecting after an error); ``None`` while nothing answers."""

    def __init__(self, url: str, host: str, *, tagged: bool = True) -> None:
        hostport = url.split("//", 1)[1]
        self.addr, _, port = hostport.partition(":")
        self.port = int(port or 80)
        self.headers = {"Host": host}
        if tagged:
            self.headers["baggage"] = f"devstack-route={OWNER}"
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str = "/") -> tuple[int, bytes] | None:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.addr, self.port, timeout=30)
            self.conn.request("GET", path, headers=self.headers)
            resp = self.conn.getresponse()
            body = resp.read()
            if resp.will_close:
                self.close()
            return resp.status, body
        except (OSError, http.client.HTTPException):
            self.close()
            return None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _json(body: bytes) -> Any:
    with contextlib.suppress(ValueError):
        return json.loads(body)
    return None


def chain(doc: Any) -> list[dict[str, Any]]:
    """The hops of a shop response: web's, then api's inside it, then stock's."""
    out: list[dict[str, Any]] = []
    while isinstance(doc, dict) and doc.get("service"):
        out.append(doc)
        nested = [v for v in doc.values() if isinstance(v, dict) and v.get("service")]
        doc = nested[0] if nested else None
    return out


def _http_ok(url: str) -> bool:
    status = localstack.http_status(url, timeout=2)
    return status is not None and 200 <= status < 400


# --- up ---------------------------------------------------------------------------------------


@dataclass
class Lines:
    """A child's stdout lines, each with the moment it arrived (a thread reads them)."""

    proc: subprocess.Popen[str]
    t0: float
    seen: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.seen.append((time.perf_counter() - self.t0, line.rstrip("\n")))

    def first(self, prefix: str) -> float | None:
        return next((t for t, line in list(self.seen) if line.startswith(prefix)), None)

    def last(self, prefix: str) -> float | None:
        found = [t for t, line in list(self.seen) if line.startswith(prefix)]
        return found[-1] if found else None

    def join(self) -> None:
        self._thread.join(10)


def _wait(cond: Callable[[], Any], timeout: float, what: str, every: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def up_once(work: Work, poll: float) -> dict[str, Any]:
    """One ``devstack up --local`` from fresh state to the first routed
    request, then Ctrl-C; its timings in seconds from the start."""
    if work.state_file().exists():
        raise RuntimeError(f"{work.state_file()} exists: the last run did not stop cleanly")
    port = free_port()
    err_log = work.logs.new("up-local")
    cmd = _devstack(work, "up", "--local", "--port", str(port))
    with open(err_log, "ab") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=work.helmfile.parent,
            env=_env(),
        )
    lines = Lines(proc, t0)
    out: dict[str, Any] = {}
    try:

        def alive() -> None:
            if proc.poll() is not None:
                said = "\n".join(line for _, line in lines.seen[-20:])
                raise RuntimeError(
                    f"devstack up --local exited {proc.returncode}\n{said}\n{_procs.tail(err_log)}"
                )

        def front() -> tuple[str, str, int] | None:
            alive()
            state = work.state()
            if not state or not state.get("services"):
                return None
            s = state["services"][-1]  # the front service: last in deploy order
            return str(state["router_url"]), str(s["host"]), len(state["services"])

        router_url, host, depth = _wait(front, 120, "the state file", poll)
        router = Router(router_url, host)
        answer: tuple[int, bytes] | None = None
        deadline = time.monotonic() + 300
        while True:
            answer = router.get("/")
            if answer is not None and answer[0] == 200:
                out["routed"] = time.perf_counter() - t0
                break
            alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no routed answer within 300s (last: {answer})")
            time.sleep(poll)
        router.close()
        owners = [hop.get("owner") for hop in chain(_json(answer[1]))]
        if owners != [OWNER] * depth:
            raise RuntimeError(f"the routed request did not go through your copies: {owners}")

        def settled() -> float | None:
            alive()
            return lines.first(MARKS["settled"])

        _wait(settled, 180, "'Ready.' from up", poll)
        for key in ("plan", "aws", "traefik", "settled"):
            out[key] = lines.first(MARKS[key])
        out["ready"] = lines.last(MARKS["ready"])
        out["levels"] = sum(1 for _, line in lines.seen if line.startswith(MARKS["ready"]))
        stop0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)  # Ctrl-C: up stops the syncs and runs down
        proc.wait(120)
        out["stop"] = time.perf_counter() - stop0
        lines.join()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = work.state_file().exists()
        if left:  # a failed or killed run: stop what it started
            _down(work)
    if left:
        raise RuntimeError("Ctrl-C left the local stack's state behind (devstack down ran)")
    return out


def by_hand_once(work: Work, poll: float) -> dict[str, Any]:
    """The peer: each app of the plan as ``python app.py`` on a free port, in
    ``needs`` order, each waited for on its readiness path."""
    helmfile = load_helmfile(work.helmfile)
    the_plan = localstack.plan(helmfile, work.helmfile.parent, OWNER, [])
    procs: list[subprocess.Popen[bytes]] = []
    ready: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        for s in the_plan.services:
            port = free_port()
            env = {**_env(), "LOCAL": "1", "PORT": str(port), "DEVSTACK_SERVICE": s.name}
            env.update({k: localstack.expand(v, env) for k, v in s.env.items()})
            argv = localstack.command_argv(s.argv, env)
            proc = _procs.spawn(argv, work.logs.new(f"by-hand-{s.name}"), cwd=s.source, env=env)
            procs.append(proc)
            url = f"http://127.0.0.1:{port}{s.ready_path}"

            def up(p: subprocess.Popen[bytes] = proc, u: str = url, name: str = s.name) -> bool:
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited {p.returncode} (python app.py)")
                return _http_ok(u)

            _wait(up, 60, f"{s.name} on {url}", poll)
            ready[s.name] = time.perf_counter() - t0
    finally:
        for p in procs:
            _procs.stop(p, timeout=10)
    return {"ready": max(ready.values()), "each": ready, "services": list(ready)}


def run_up(args: argparse.Namespace, work: Work) -> tuple[str, dict[str, Any]]:
    work.copy_project()
    poll = args.poll_ms / 1000
    runs: list[dict[str, Any]] = []
    peers: list[dict[str, Any]] = []
    load: list[float] = []
    for i in range(1, args.runs + 1):
        load.append(W.loadavg())
        W.log(f"up {i}/{args.runs}: devstack up --local -f examples/shop")
        runs.append(up_once(work, poll))
        W.log(f"up {i}/{args.runs}: first routed request at {runs[-1]['routed']:.2f} s")
        peers.append(by_hand_once(work, poll))
        W.log(f"up {i}/{args.runs}: the apps by hand ready at {peers[-1]['ready']:.2f} s")
    routed = W.spread([r["routed"] for r in runs])
    peer = W.spread([p["ready"] for p in peers])
    order = ("plan", "aws", "traefik", "ready", "routed", "settled")
    steps = {key: W.spread([r[key] for r in runs if r.get(key) is not None]) for key in order}
    # each step alone: from the step before it (that the run has) to it
    took: dict[str, list[float]] = {key: [] for key in order}
    for r in runs:
        before = 0.0
        for key in order:
            if r.get(key) is not None:
                took[key].append(r[key] - before)
                before = r[key]
    step_took = {key: W.spread(v) for key, v in took.items()}
    stop = W.spread([r["stop"] for r in runs])
    each = [W.ratio(r["routed"], p["ready"]) for r, p in zip(runs, peers, strict=True)]
    result: dict[str, Any] = {
        "benchmark": "workflow-local-up",
        "machine": W.machine(),
        "loadavg_1m_before_runs": load,
        "runs": runs,
        "by_hand": peers,
        "routed_s": routed,
        "by_hand_s": peer,
        "ratio": W.ratio(routed["median"], peer["median"]),
        "ratios_each_run": each,
        "steps_s": steps,
        "step_took_s": step_took,
        "stop_s": stop,
    }
    services = " -> ".join(reversed(peers[0]["services"]))
    md = [
        f"### devstack up --local: start to the first routed request ({args.runs} runs)",
        "",
        W.machine(),
        W.load_line(load),
        "",
        "| what | median | min | max | runs |",
        "|---|---|---|---|---|",
        _row(
            f"`devstack up --local -f examples/shop` -> first routed request ({services}, "
            "your copies, through Traefik)",
            routed,
        ),
        _row(
            "peer, same runs: the three apps by hand (`python app.py`, needs order, "
            "each `/healthz`)",
            peer,
        ),
        f"| devstack / peer (medians) | {result['ratio']:.1f} | "
        f"{min(each):.1f} | {max(each):.1f} | " + ", ".join(f"{x:.1f}" for x in each) + " |",
        "",
        "Where `up`'s time goes (seconds from its start; its progress lines, timestamped "
        "as they arrive):",
        "",
        "| step | at (median) | min | max | the step alone (median) |",
        "|---|---|---|---|---|",
    ]
    labels = {
        "plan": "Helmfile read, plan made (interpreter start-up and imports included)",
        "aws": "moto answering, `devstack provision` run for the baseline and for you",
        "traefik": "Traefik answering `/ping`",
        "ready": f"every process ready ({runs[0]['levels']} levels: baselines and your copies)",
        "routed": "first routed request answered 200 through Traefik",
        "settled": "initial sync of each copy settled (`Ready.` printed)",
    }
    for key, label in labels.items():
        s = steps[key]
        if not s["n"]:
            continue
        md.append(f"| {label} | {W.seconds(s['median'])} | {W.seconds(s['min'])} "
                  f"| {W.seconds(s['max'])} | {W.seconds(step_took[key]['median'])} |")  # fmt: skip
    md += [
        "",
        "Ctrl-C to every process stopped and the state removed: "
        f"median {W.seconds(stop['median'])}.",
        "",
    ]
    return "\n".join(md), result


def _row(label: str, s: dict[str, Any]) -> str:
    runs = ", ".join(f"{x:.2f}" for x in s["values"])
    return (
        f"| {label} | {W.seconds(s['median'])} | {W.seconds(s['min'])} "
        f"| {W.seconds(s['max'])} | {runs} |"
    )


# --- reload -----------------------------------------------------------------------------------

_EVENT = re.compile(r"^(\S+Z) \[\s*\w+\s*\] (reload\.(?:started|finished|failed))\b(.*)$")


def reload_events(log: Path) -> list[tuple[str, float, str]]:
    """``(kind, wall time, rest of line)`` of the sidecar's reload events
    (its console log: an ISO UTC timestamp, the level, the event)."""
    out: list[tuple[str, float, str]] = []
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            m = _EVENT.match(line)
            if m:
                when = dt.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
                out.append((m.group(2), when, m.group(3)))
    return out


def _reloads_after(log: Path, finished: int) -> list[tuple[str, float, str]] | None:
    """The sidecar's reload events once more than ``finished`` reloads have finished."""
    events = reload_events(log)
    return events if sum(e[0] == "reload.finished" for e in events) > finished else None


def _save(path: Path, data: bytes) -> None:
    """An in-place save, as most editors do it."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@contextlib.contextmanager
def local_stack_with_copy(work: Work) -> Iterator[tuple[dict[str, Any], float]]:
    """``devstack up --local EDITED --detach`` and ``devstack connect EDITED``
    in the background; the state, and how long ``up`` took."""
    took = _procs.run_logged(
        _devstack(work, "up", "--local", EDITED, "--detach", "--port", "0"),
        work.logs.new("up-local-detach"),
        env={"PYTHONUNBUFFERED": "1"},
        timeout=300,
        what="devstack up --local --detach",
    )
    follow: subprocess.Popen[bytes] | None = None
    try:
        state = work.state()
        if state is None:
            raise RuntimeError(f"devstack up --local --detach wrote no {work.state_file()}")
        follow = _procs.spawn(
            _devstack(work, "connect", EDITED),
            work.logs.new("connect"),
            cwd=work.helmfile.parent,
            env={"XDG_CACHE_HOME": str(work.root / "cache")},
        )
        yield state, took
        if follow.poll() is not None:
            raise RuntimeError(f"devstack connect exited {follow.returncode}")
    finally:
        _procs.stop(follow, timeout=20)
        _down(work)


def run_reload(args: argparse.Namespace, work: Work) -> tuple[str, dict[str, Any]]:
    work.copy_project()
    poll = args.poll_ms / 1000
    source = work.helmfile.parent / EDITED / "app.py"
    original = source.read_text()
    if not MESSAGE_LINE.search(original):
        raise RuntimeError(f"{source} has no MESSAGE line to edit")
    load = [W.loadavg()]
    samples: list[dict[str, float]] = []
    steady: dict[str, list[float]] = {"router": [], "direct": []}
    W.log(f"reload: devstack up --local {EDITED} --detach, devstack connect {EDITED}")
    with local_stack_with_copy(work) as (state, up_took):
        s = next(x for x in state["services"] if x["service"] == EDITED)
        copy = s["copy"]
        router = Router(state["router_url"], s["host"])
        workspace = Path(copy["workspace"]) / "app.py"
        sidecar_log = Path(copy["sidecar_log"])
        try:
            for i in range(args.saves + 1):  # save 0: untimed, the whole path works
                want = f"edited by the benchmark, save {i} at {time.time():.6f}"
                data = MESSAGE_LINE.sub(f'MESSAGE = "{want}"', original).encode()
                finished0 = sum(e[0] == "reload.finished" for e in reload_events(sidecar_log))
                wall, t0 = time.time(), time.perf_counter()
                _save(source, data)
                deadline = time.monotonic() + 60
                while workspace.read_bytes() != data:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"save {i} never reached {workspace}")
                    time.sleep(0.0005)
                applied = time.perf_counter() - t0
                while True:
                    sent = time.perf_counter()
                    got = router.get("/")
                    if got is not None and got[0] == 200:
                        hops = chain(_json(got[1]))
                        if hops and hops[0].get("message") == want:
                            break
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"save {i}: the new code did not answer through Traefik in 60s "
                            f"(last: {got})\n{_procs.tail(sidecar_log)}"
                        )
                    time.sleep(poll)
                answered = time.perf_counter() - t0
                request = time.perf_counter() - sent
                # the reload that served it, from the sidecar's own log
                events: list[tuple[str, float, str]] = _wait(
                    partial(_reloads_after, sidecar_log, finished0),
                    30,
                    "the sidecar's reload.finished",
                    0.01,
                )
                mine = [e for e in events if e[1] >= wall - 0.001]
                if any(e[0] == "reload.failed" for e in mine):
                    raise RuntimeError(f"save {i}: the reload failed\n{_procs.tail(sidecar_log)}")
                if i == 0:
                    W.log(f"reload: the path works (save 0 answered in {answered * 1000:.0f} ms)")
                    time.sleep(args.gap)
                    continue
                started = next((e[1] for e in mine if e[0] == "reload.started"), None)
                finished = next((e[1] for e in mine if e[0] == "reload.finished"), None)
                if started is None or finished is None:
                    raise RuntimeError(
                        f"save {i}: no reload of its own in the sidecar's log "
                        f"{sidecar_log}\n{_procs.tail(sidecar_log)}"
                    )
                samples.append(
                    {
                        "applied": applied,
                        "reload_started": started - wall,
                        "app_ready": finished - wall,
                        "answered": answered,
                        "answering_request": request,
                    }
                )
                time.sleep(args.gap)
            for _ in range(20):  # what one request costs, the app up and steady
                t = time.perf_counter()
                got = router.get("/")
                steady["router"].append(time.perf_counter() - t)
                if got is None or got[0] != 200:
                    raise RuntimeError(f"a steady request through Traefik failed: {got}")
            direct = Router(copy["url"], s["host"])
            for _ in range(20):
                t = time.perf_counter()
                got = direct.get("/")
                steady["direct"].append(time.perf_counter() - t)
                if got is None or got[0] != 200:
                    raise RuntimeError(f"a steady request to the copy's port failed: {got}")
            direct.close()
        finally:
            router.close()
    W.log(f"reload: {len(samples)} saves done; the peer, bench/reload_latency.py supervise")
    load.append(W.loadavg())
    peer: dict[str, Any] = {}
    if args.peer_saves:
        (work.root / "token").write_text("bench-token")
        setup = reload_latency.Setup(work.root / "peer", work.root / "token", work.logs)
        peer = reload_latency.end_to_end(
            setup, strategy="supervise", saves=args.peer_saves, debounce_ms=DEFAULT_DEBOUNCE_MS
        )
    figures = {k: W.spread([x[k] for x in samples]) for k in samples[0]} if samples else {}
    peer_s = W.spread([x / 1000 for x in peer.get("runs_ms", [])])
    result = {
        "benchmark": "workflow-local-reload",
        "machine": W.machine(),
        "loadavg_1m_before_runs": load,
        "up_detach_s": up_took,
        "debounce_ms": DEFAULT_DEBOUNCE_MS,
        "poll_ms": args.poll_ms,
        "saves": samples,
        "figures_s": figures,
        "peer_reload_latency_supervise": peer,
        "peer_s": peer_s,
        "steady_request_s": {k: W.spread(v) for k, v in steady.items()},
    }
    md = [
        f"### devstack connect on the local stack: save to new code answering through "
        f"Traefik ({len(samples)} saves)",
        "",
        W.machine(),
        W.load_line(load),
        "",
        f"`devstack up --local {EDITED} --detach` (examples/shop: the baselines of all three, "
        f"your copy of {EDITED}) took {up_took:.2f} s; `devstack connect {EDITED}` synced in "
        f"the background. Each save rewrites `MESSAGE` in `{EDITED}/app.py`; the sidecar "
        f"restarts your copy (supervise, the default {DEFAULT_DEBOUNCE_MS} ms debounce), and "
        f"a tagged `GET /` of {EDITED} through Traefik is polled every {args.poll_ms:g} ms "
        "until the new message comes back.",
        "",
        "| from the save to ... | saves | median | p90 | p99 | max |",
        "|---|---|---|---|---|---|",
    ]
    labels = {
        "applied": "the file in your copy's workspace (sync alone: watcher, batch, the "
        "sidecar's write)",
        "reload_started": f"the sidecar starting the reload (after its {DEFAULT_DEBOUNCE_MS} "
        "ms debounce)",
        "app_ready": "the restarted app ready (the sidecar's readiness probe answered)",
        "answered": "**the new code answering through Traefik** (tagged request)",
        "answering_request": "(of which the answering request itself, the restarted app's "
        "first: not from the save)",
    }
    for key, label in labels.items():
        md.append(_ms_row(label, figures.get(key)))
    if peer:
        md.append(
            _ms_row(
                f"peer, same run: `bench/reload_latency.py` supervise, debounce "
                f"{DEFAULT_DEBOUNCE_MS} ms (a bare app under a sidecar, no Traefik)",
                peer_s,
            )
        )
    if figures:
        a, t = figures["applied"]["median"], figures["answered"]["median"]
        md += [
            "",
            f"Through Traefik / sync alone (medians): {W.ratio(t, a):.1f}"
            + (
                f"; through Traefik / the bare app's reload: {W.ratio(t, peer_s['median']):.2f}."
                if peer
                else "."
            ),
        ]
    md += [
        "",
        "| one request, the app up and steady (20 requests) | median | p90 | max |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("router", f"GET / of your copy of {EDITED} through Traefik"),
        ("direct", "the same request straight to your copy's port"),
    ):
        s = result["steady_request_s"][key]
        md.append(f"| {label} | {W.millis(s['median'])} | {W.millis(s['p90'])} "
                  f"| {W.millis(s['max'])} |")  # fmt: skip
    md.append("")
    return "\n".join(md), result


def _ms_row(label: str, s: dict[str, Any] | None) -> str:
    if not s:
        return f"| {label} | 0 | - | - | - | - |"
    return (
        f"| {label} | {s['n']} | {W.millis(s['median'])} | {W.millis(s['p90'])} "
        f"| {W.millis(s['p99'])} | {W.millis(s['max'])} |"
    )


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  bench/workflow_local.py up --runs 5          start to first routed request, 5 runs\n"
        "  bench/workflow_local.py reload --saves 30    save to new code through Traefik\n"
        "  bench/workflow_local.py reload --saves 30 --peer-saves 0 --json out.json\n"
        "  ./bench/run workflow-local up                the same through bench/run\n",
    )
    sub = ap.add_subparsers(dest="what", required=True)
    up = sub.add_parser("up", help="start to the first routed request, N runs")
    up.add_argument("--runs", type=int, default=5, help="repetitions (default 5)")
    up.add_argument("--poll-ms", type=float, default=10, help="poll interval (default 10)")
    rl = sub.add_parser("reload", help="save to the new code answering through Traefik")
    rl.add_argument("--saves", type=int, default=30, help="timed saves (default 30)")
    rl.add_argument(
        "--peer-saves",
        type=int,
        default=None,
        help="saves of the reload_latency.py peer (default: --saves; 0: no peer)",
    )
    rl.add_argument("--poll-ms", type=float, default=2, help="poll interval (default 2)")
    rl.add_argument("--gap", type=float, default=0.3, help="seconds between saves (default 0.3)")
    for p in (up, rl):
        p.add_argument("--json", type=Path, default=None, help="write every raw figure here")
        p.add_argument("--keep", action="store_true", help="keep the work folder and its logs")
    args = ap.parse_args(argv)
    if args.what == "reload" and args.peer_saves is None:
        args.peer_saves = args.saves
    root = Path(tempfile.mkdtemp(prefix=f"devstack-workflow-{args.what}-"))
    work = Work(root, _procs.LogDir(root / "logs"))
    ok = False
    try:
        if args.what == "up":
            md, result = run_up(args, work)
        else:
            md, result = run_reload(args, work)
        W.emit(md, result, args.json)
        ok = True
    finally:
        if args.keep or not ok:
            W.log(f"work folder and logs: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
