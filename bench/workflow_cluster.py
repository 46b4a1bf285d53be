"""``devstack up`` against a cluster, timed: from starting it to every Pod of
the Helmfile's releases Ready, on the testbed's real control plane
(tests/support/testbed.py: etcd, kube-apiserver, controller-manager,
scheduler, kwok as the kubelet), on 127.0.0.1 only.

The project is tests/data/workflow, deployed as tests/cluster/test_workflow.py
deploys it: ``devstack up hello`` installs the baselines db (2 replicas) and
cache, then api, then your copy ``hello--alice`` (the example chart with the
devstack library chart: the sidecar, its token Secret, the sync route, and a
pre-install provisioning hook whose pod tests/support/helm.py's JobRunner runs
here, against a moto server). Each run gets a fresh namespace and an empty
moto account.

The clock starts when the command starts and stops when an observer (this
process, listing the namespace's Pods and Deployments every 0.1 s) sees every
Deployment of every planned release with all its Pods Ready; when ``up``
exits is reported beside it. The peer, in the same runs and watched by the
same observer: the same releases, with the same values (devstack's own plan,
which is pure), installed with plain helm-python-sdk ``install`` calls in the
same order, one level after the other with a readiness wait of this script's
own (every Deployment of the level ready, polled every 0.1 s) in between: the
floor devstack's ``up`` is a multiple of. Runs alternate between the two.

Usage: .venv/bin/python bench/workflow_cluster.py [--runs 3] [--json PATH] [--keep]
Needs the testbed's binaries (``scripts/testbed build``) and helm-python-sdk.
stdout holds only the report (Markdown); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT), os.path.dirname(os.path.abspath(__file__))):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import _procs  # noqa: E402
import _workflow as W  # noqa: E402
import yaml  # noqa: E402

from devstack.cli.cluster_up import PlannedRelease, UpPlan, plan_up  # noqa: E402
from devstack.core.helmfile import load as load_helmfile  # noqa: E402
from tests.support.aws import Backend, running_moto  # noqa: E402
from tests.support.helm import JobRunner  # noqa: E402
from tests.support.testbed import (  # noqa: E402
    LOCAL_RUN_LABEL,
    Kube,
    Testbed,
    TestbedError,
    condition,
    missing_binaries,
    missing_message,
)

OWNER = "alice"
SERVICES = ("hello",)
INSTANCE = "app.kubernetes.io/instance"
#: The observer's and the peer's poll interval.
POLL = 0.1

Obj = dict[str, Any]


def plain(value: Any) -> Any:
    """Values as plain dicts and lists (what Helm's engine takes)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


# --- the project, the cluster ---------------------------------------------------------------


def prepare(root: Path, moto_endpoint: str) -> Path:
    """tests/data/workflow at ``root/project``, the example and library
    charts beside it (their dependency resolved), the provisioning hook aimed
    at moto with its pod run here; the Helmfile's path."""
    from tests.cli.test_workflow_plan import workflow_project

    workflow_project(root, prepare=True)
    values = {
        "devstack": {
            "provision": {"endpoint": moto_endpoint, "podLabels": {LOCAL_RUN_LABEL: "true"}}
        }
    }
    (root / "project" / "values" / "hello.yaml").write_text(yaml.safe_dump(values))
    return root / "project" / "helmfile.yaml"


def new_namespace(admin: Kube, prefix: str) -> str:
    """A namespace ready for Pods (its ``default`` ServiceAccount exists)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    deadline = time.monotonic() + 60
    while not admin.maybe(f"/api/v1/namespaces/{name}/serviceaccounts/default"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"namespace {name}: no default ServiceAccount after 60s")
        time.sleep(0.05)
    return name


def delete_namespace(admin: Kube, name: str) -> None:
    """Delete it and wait until it is gone, so that its clean-up is not in
    the next run's figures."""
    admin.delete(f"/api/v1/namespaces/{name}")
    deadline = time.monotonic() + 180
    while admin.maybe(f"/api/v1/namespaces/{name}") is not None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"namespace {name} still there 180s after its delete")
        time.sleep(0.2)


def deployment_ready(d: Obj) -> bool:
    """All replicas Ready and updated, the new generation seen."""
    spec, status = d.get("spec") or {}, d.get("status") or {}
    want = int(spec.get("replicas", 1))
    return (
        int(status.get("observedGeneration", 0)) >= int(d["metadata"].get("generation", 1))
        and int(status.get("updatedReplicas", 0)) == want
        and int(status.get("readyReplicas", 0)) == want
        and int(status.get("replicas", 0)) == want
    )


def pods_ready(admin: Kube, namespace: str, releases: Sequence[str]) -> dict[str, bool]:
    """Per release: it has Deployments, and as many Ready Pods (hook pods
    aside) as they ask for replicas."""
    deployments = admin.get(f"/apis/apps/v1/namespaces/{namespace}/deployments")["items"]
    pods = admin.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"!{LOCAL_RUN_LABEL}")
    out: dict[str, bool] = {}
    for release in releases:
        mine = [
            d for d in deployments if (d["metadata"].get("labels") or {}).get(INSTANCE) == release
        ]
        want = sum(int((d.get("spec") or {}).get("replicas", 1)) for d in mine)
        ready = sum(
            1
            for p in pods["items"]
            if (p["metadata"].get("labels") or {}).get(INSTANCE) == release
            and condition(p, "Ready") == "True"
        )
        out[release] = bool(mine) and ready >= want
    return out


@dataclass
class Observer:
    """Polls the namespace from its start until every release has its Pods
    Ready; :attr:`ready_at` (seconds from ``t0``) for each release and for all."""

    testbed: Testbed
    namespace: str
    releases: Sequence[str]
    t0: float
    ready_at: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Observer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _loop(self) -> None:
        try:
            with self.testbed.admin() as kube:
                while not self._stop.is_set():
                    got = pods_ready(kube, self.namespace, self.releases)
                    now = time.perf_counter() - self.t0
                    for release, ok in got.items():
                        if ok:
                            self.ready_at.setdefault(release, now)
                    if all(got.values()):
                        self.ready_at["all"] = now
                        return
                    self._stop.wait(POLL)
        except BaseException as e:  # reported by wait()
            self.error = e

    def wait(self, timeout: float, alive: Callable[[], None] = lambda: None) -> float:
        deadline = time.monotonic() + timeout
        while "all" not in self.ready_at:
            if self.error is not None:
                raise RuntimeError(f"the observer failed: {self.error!r}") from self.error
            alive()
            if time.monotonic() > deadline:
                missing = sorted(set(self.releases) - set(self.ready_at))
                raise RuntimeError(f"{self.namespace}: not Ready after {timeout:.0f}s: {missing}")
            time.sleep(0.02)
        return self.ready_at["all"]


# --- one run of each ------------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    testbed: Testbed
    admin: Kube
    aws: Backend
    helmfile: Path
    work: Path
    logs: _procs.LogDir

    def plan(self, namespace: str) -> UpPlan:
        helmfile = load_helmfile(self.helmfile)
        return plan_up(helmfile, OWNER, list(SERVICES), set(), namespace=namespace)


@contextlib.contextmanager
def _hooks(bench: Bench, namespace: str) -> Iterator[JobRunner]:
    with JobRunner(bench.testbed, bench.work / f"jobs-{namespace}", namespace=namespace) as r:
        yield r


def _hook_check(runner: JobRunner, namespace: str) -> float:
    """The hook pods ran and succeeded; how long they ran here, in seconds."""
    if not runner.runs:
        raise RuntimeError(f"{namespace}: the provisioning hook never ran")
    for run in runner.runs:
        if run.returncode != 0:
            raise RuntimeError(f"{namespace}: hook {run.job} exited {run.returncode}: {run.stderr}")
    return sum((run.reported - run.started).total_seconds() for run in runner.runs)


def devstack_once(bench: Bench) -> dict[str, Any]:
    """``devstack up hello`` in a fresh namespace until every Pod is Ready."""
    ns = new_namespace(bench.admin, "bench-devstack")
    bench.aws.wipe()
    plan = bench.plan(ns)
    releases = [r.release for r in plan.releases]
    cmd = _procs.devstack(
        "up", *SERVICES, "-f", str(bench.helmfile), "--kubeconfig",
        str(bench.testbed.admin_kubeconfig), "-n", ns, "--owner", OWNER,
    )  # fmt: skip
    out_log = bench.logs.new("devstack-up")
    lines: list[tuple[float, str]] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVSTACK_", "KUBE"))}
    env["XDG_CACHE_HOME"] = str(bench.work / "cache")
    with _hooks(bench, ns) as runner, open(out_log, "ab") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, text=True, env=env
        )

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append((time.perf_counter() - t0, line.rstrip("\n")))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()

        def alive() -> None:
            if proc.poll() not in (None, 0):
                said = "\n".join(line for _, line in lines[-20:])
                raise RuntimeError(f"devstack up exited {proc.returncode}:\n{said}")

        try:
            with Observer(bench.testbed, ns, releases, t0) as seen:
                all_ready = seen.wait(600, alive)
            proc.wait(300)
            exited = time.perf_counter() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader.join(10)
        if proc.returncode != 0:
            said = "\n".join(line for _, line in lines[-20:])
            raise RuntimeError(f"devstack up exited {proc.returncode}:\n{said}")
        hook = _hook_check(runner, ns)
    first = next((t for t, line in lines if ": installing" in line), float("nan"))
    said_ready = {
        r: next((t for t, line in lines if line == f"{r}: ready"), float("nan")) for r in releases
    }
    delete_namespace(bench.admin, ns)
    return {
        "namespace": ns,
        "all_ready": all_ready,
        "exited": exited,
        "first_install": first,
        "hook_s": hook,
        "pods_ready": dict(seen.ready_at),
        "up_said_ready": said_ready,
        "levels": [[r.release for r in level] for level in plan.levels],
    }


def helm_once(bench: Bench) -> dict[str, Any]:
    """The peer: helm-python-sdk ``install`` of each planned release, level
    by level, waiting for each level's Deployments ready before the next."""
    import helm_python

    ns = new_namespace(bench.admin, "bench-helm")
    bench.aws.wipe()
    plan = bench.plan(ns)
    releases = [r.release for r in plan.releases]
    level_ready: list[float] = []
    installed: dict[str, float] = {}
    with _hooks(bench, ns) as runner:
        t0 = time.perf_counter()
        with Observer(bench.testbed, ns, releases, t0) as seen:
            for level in plan.levels:
                for r in level:
                    _install(helm_python, bench, ns, r)
                    installed[r.release] = time.perf_counter() - t0
                _wait_level(bench.admin, ns, [r.release for r in level])
                level_ready.append(time.perf_counter() - t0)
            all_ready = seen.wait(600)
        hook = _hook_check(runner, ns)
    delete_namespace(bench.admin, ns)
    return {
        "namespace": ns,
        "all_ready": all_ready,
        "exited": level_ready[-1],
        "installed": installed,
        "hook_s": hook,
        "level_ready": level_ready,
        "pods_ready": dict(seen.ready_at),
    }


def _install(helm_python: Any, bench: Bench, namespace: str, r: PlannedRelease) -> None:
    if r.chart_path is None:
        raise RuntimeError(f"{r.release}: not a local chart ({r.chart})")
    config = helm_python.Config(
        kubeconfig_path=str(bench.testbed.admin_kubeconfig), namespace=namespace
    )
    try:
        config.install(r.chart_path, r.release, plain(r.values), timeout=300)
    finally:
        config.close()


def _wait_level(admin: Kube, namespace: str, releases: Sequence[str]) -> None:
    deadline = time.monotonic() + 300
    while True:
        items = admin.get(f"/apis/apps/v1/namespaces/{namespace}/deployments")["items"]
        mine = [d for d in items if (d["metadata"].get("labels") or {}).get(INSTANCE) in releases]
        found = {(d["metadata"].get("labels") or {}).get(INSTANCE) for d in mine}
        if found == set(releases) and all(deployment_ready(d) for d in mine):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{namespace}: {list(releases)} not ready in 300s")
        time.sleep(POLL)


# --- the report -----------------------------------------------------------------------------


def report(runs: list[dict[str, Any]], peers: list[dict[str, Any]], extra: dict[str, Any]) -> str:
    dev = W.spread([r["all_ready"] for r in runs])
    peer = W.spread([p["all_ready"] for p in peers])
    each = [W.ratio(r["all_ready"], p["all_ready"]) for r, p in zip(runs, peers, strict=True)]
    levels = runs[0]["levels"]
    shape = " -> ".join("{" + ", ".join(level) + "}" for level in levels)

    def row(label: str, s: dict[str, Any]) -> str:
        vals = ", ".join(f"{x:.2f}" for x in s["values"])
        return (
            f"| {label} | {W.seconds(s['median'])} | {W.seconds(s['min'])} "
            f"| {W.seconds(s['max'])} | {vals} |"
        )

    md = [
        f"### devstack up against the testbed: start to every Pod Ready ({len(runs)} runs)",
        "",
        W.machine(),
        W.load_line(extra["loadavg_1m_before_runs"]),
        f"Testbed up in {extra['testbed_startup_s']:.1f} s (not in any figure).",
        "",
        f"`devstack up hello` of tests/data/workflow: {shape} (db has 2 replicas; "
        f"hello--{OWNER} runs its provisioning hook first). Each run in a fresh namespace.",
        "",
        "| what | median | min | max | runs |",
        "|---|---|---|---|---|",
        row("`devstack up hello` -> every Pod Ready", dev),
        row("`devstack up hello` -> the command exited", W.spread([r["exited"] for r in runs])),
        row(
            "peer, same runs: helm-python-sdk `install` per release, level by level, "
            "own readiness wait -> every Pod Ready",
            peer,
        ),
        "| devstack / peer (every Pod Ready, medians) "
        f"| {W.ratio(dev['median'], peer['median']):.2f} "
        f"| {min(each):.2f} | {max(each):.2f} | " + ", ".join(f"{x:.2f}" for x in each) + " |",
        "",
        "When each release had every Pod Ready (median seconds from the start; the observer's "
        "view, both the same way):",
        "",
        "| release | devstack up | peer | `up` printed `ready` |",
        "|---|---|---|---|",
    ]
    for level in levels:
        for release in level:
            d = W.spread([r["pods_ready"][release] for r in runs])
            p = W.spread([x["pods_ready"][release] for x in peers])
            said = W.spread([r["up_said_ready"][release] for r in runs])
            md.append(
                f"| {release} | {W.seconds(d['median'])} | {W.seconds(p['median'])} "
                f"| {W.seconds(said['median'])} |"
            )
    first = W.spread([r["first_install"] for r in runs])
    hook_dev = W.spread([r["hook_s"] for r in runs])
    hook_peer = W.spread([p["hook_s"] for p in peers])
    md += [
        "",
        f"`devstack up` printed its first `installing` line at {W.seconds(first['median'])} "
        "(median: interpreter start-up, the Helmfile, the plan, the cluster's Helm releases "
        f"read). hello--{OWNER}'s provisioning hook pod (`devstack provision` against moto, "
        f"run here by JobRunner) ran {W.seconds(hook_dev['median'])} under `devstack up`, "
        f"{W.seconds(hook_peer['median'])} under the peer (medians).",
        "",
    ]
    return "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  bench/workflow_cluster.py --runs 3 --json out.json\n"
        "  ./bench/run workflow-cluster        builds the testbed's binaries first (cached)\n",
    )
    ap.add_argument("--runs", type=int, default=3, help="runs of each (default 3)")
    ap.add_argument("--json", type=Path, default=None, help="write every raw figure here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder and its logs")
    args = ap.parse_args(argv)
    missing = missing_binaries()
    if missing:
        print(f"workflow_cluster: {missing_message(missing)}", file=sys.stderr)
        return 2
    try:
        import helm_python  # noqa: F401
    except ImportError:
        print(
            "workflow_cluster: helm-python-sdk is missing: pip install 'devstack[deploy]' "
            "(./scripts/bootstrap installs it)",
            file=sys.stderr,
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="devstack-workflow-cluster-"))
    logs = _procs.LogDir(work / "logs")
    ok = False
    try:
        W.log("starting the testbed")
        testbed = Testbed.start(work / "testbed")
        try:
            with running_moto(work) as endpoint, testbed.admin() as admin:
                bench = Bench(
                    testbed, admin, Backend("moto", endpoint, True), prepare(work, endpoint),
                    work, logs,
                )  # fmt: skip
                runs: list[dict[str, Any]] = []
                peers: list[dict[str, Any]] = []
                load: list[float] = []
                for i in range(1, args.runs + 1):
                    load.append(W.loadavg())
                    runs.append(devstack_once(bench))
                    W.log(
                        f"run {i}/{args.runs}: devstack up: all Ready at "
                        f"{runs[-1]['all_ready']:.2f} s"
                    )
                    load.append(W.loadavg())
                    peers.append(helm_once(bench))
                    W.log(
                        f"run {i}/{args.runs}: helm peer: all Ready at "
                        f"{peers[-1]['all_ready']:.2f} s"
                    )
        finally:
            testbed.stop()
        extra: dict[str, Any] = {
            "loadavg_1m_before_runs": load,
            "testbed_startup_s": testbed.startup_seconds,
        }
        result: dict[str, Any] = {
            "benchmark": "workflow-cluster",
            "machine": W.machine(),
            **extra,
            "devstack": runs,
            "helm": peers,
            "devstack_all_ready_s": W.spread([r["all_ready"] for r in runs]),
            "helm_all_ready_s": W.spread([p["all_ready"] for p in peers]),
        }
        result["ratio"] = W.ratio(
            result["devstack_all_ready_s"]["median"], result["helm_all_ready_s"]["median"]
        )
        W.emit(report(runs, peers, extra), result, args.json)
        ok = True
    except TestbedError as e:
        print(f"workflow_cluster: the testbed did not start: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep or not ok:
            W.log(f"work folder and logs: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
