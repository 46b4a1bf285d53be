"""``devstack logs SERVICE`` in a cluster: the app's output, read from the
pods of your copy (the Helm release ``<service>--<owner>``) or of the
baseline, through the API server's ``pods/log`` (``follow=true`` streams).

Pure:

- :func:`parse_duration` (``--since``), :func:`label_selector` (a workload's
  ``spec.selector`` as a label selector);
- :func:`choose_containers`: the app container by default (the pod's
  ``kubectl.kubernetes.io/default-container``, else the first container that
  is not the devstack sidecar), ``-c NAME``, or every container;
- :func:`container_state`: whether a container has output to read yet, and
  why not;
- :func:`line_prefix`, :func:`split_timestamp`, :class:`Lines`,
  :func:`log_query`: how lines are asked for, told apart and labelled.

The shell: :func:`find_release` (the release's pods' selectors, from Helm's
record and the live workloads) and :class:`PodLogs`, which reads every
chosen container once, or follows them: a container that restarts is
followed again, a pod that appears (a replacement) is followed too, each
said on stderr. Lines are asked for with timestamps, so a stream opened again
starts after the last line shown (``sinceTime``) and repeats nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import re
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from devstack.agent.kube import (
    GoneError,
    KubeApi,
    KubeForbiddenError,
    KubeRequestError,
    NotFoundError,
    Resource,
)
from devstack.cli.project import Project
from devstack.cli.releases import (
    WORKLOADS,
    decode_release,
    helm_records,
    manifest_docs,
    one_line,
    release_namespace,
    workload_docs,
)
from devstack.core.errors import ConfigError, DevstackError, PermanentError, TemporaryError
from devstack.core.logging import get_logger
from devstack.core.owner import copy_name

Obj = dict[str, Any]

log = get_logger("devstack.cli.logs")

PODS = Resource(group="", version="v1", plural="pods", kind="Pod")

#: The library chart's sidecar container: never the default.
SIDECAR_CONTAINER = "devstack-sidecar"
#: kubectl's annotation naming a pod's default container.
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"

#: How often a stream that ended is looked at again while following (the
#: container restarting, the connection dropped), and how often the pods are
#: looked at while waiting for one to start.
RECHECK_SECONDS = 1.0
#: How long the stream of a deleted pod may still deliver its last lines.
GONE_GRACE_SECONDS = 2.0


class LogsError(PermanentError):
    """The log cannot be read: nothing deployed, nothing started, refused."""

    reason = "logs-failed"


# --- options (pure) ------------------------------------------------------------------

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?$")


def parse_duration(text: str) -> int:
    """``--since``: a Go-style duration (``30s``, ``5m``, ``2h``, ``1h30m``)
    in whole seconds, more than 0."""
    found = _DURATION.match(text.strip())
    if not text.strip() or found is None or not any(found.groups()):
        raise ConfigError(f"--since {text}: give a duration such as 30s, 5m, 2h or 1h30m")
    h, m, s = (int(g or 0) for g in found.groups())
    seconds = h * 3600 + m * 60 + s
    if seconds <= 0:
        raise ConfigError(f"--since {text}: give a duration of at least 1s")
    return seconds


@dataclass(frozen=True)
class LogOptions:
    """What ``devstack logs`` asks for, as kubectl's flags say it."""

    follow: bool = False
    tail: int | None = None
    since_seconds: int | None = None
    container: str | None = None
    all_containers: bool = False
    prefix: bool = False
    timestamps: bool = False
    wait_timeout: float = 60.0


# --- pods and containers (pure) ------------------------------------------------------


def label_selector(selector: Mapping[str, Any], *, what: str = "the workload") -> str:
    """A workload's ``spec.selector`` (``matchLabels``, ``matchExpressions``)
    as a label selector string."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or ():
        key, op = str(e.get("key")), str(e.get("operator"))
        values = ",".join(sorted(str(v) for v in e.get("values") or ()))
        if op == "In":
            parts.append(f"{key} in ({values})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise LogsError(f"{what}: selector operator {op!r} is not one Kubernetes knows")
    if not parts:
        raise LogsError(f"{what} has an empty selector (it would select every pod)")
    return ",".join(parts)


def pod_name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name"))


def pod_uid(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return str(meta.get("uid") or meta.get("name"))


def containers_of(pod: Mapping[str, Any]) -> list[str]:
    """The pod's containers (not its init containers), in spec order."""
    return [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or ()]


def default_container(pod: Mapping[str, Any]) -> str | None:
    """The app's container: the one kubectl's annotation names, else the
    first that is not the devstack sidecar (else the first)."""
    names = containers_of(pod)
    annotated = ((pod.get("metadata") or {}).get("annotations") or {}).get(
        DEFAULT_CONTAINER_ANNOTATION
    )
    if annotated in names:
        return str(annotated)
    apps = [n for n in names if n != SIDECAR_CONTAINER]
    return apps[0] if apps else (names[0] if names else None)


def choose_containers(pod: Mapping[str, Any], options: LogOptions) -> list[str]:
    """The containers of ``pod`` to read: every one (``--all-containers``),
    the one ``-c`` names (none when this pod has no such container), or the
    app's."""
    names = containers_of(pod)
    if options.all_containers:
        return names
    if options.container:
        return [options.container] if options.container in names else []
    chosen = default_container(pod)
    return [chosen] if chosen else []


@dataclass(frozen=True)
class ContainerState:
    """Whether a container has output to read (it runs, or ran), whether it
    runs now, how often it restarted, and why it has no output yet."""

    started: bool
    running: bool
    restarts: int
    reason: str = ""


def _scheduling_reason(pod: Mapping[str, Any]) -> str:
    for c in (pod.get("status") or {}).get("conditions") or ():
        if c.get("type") == "PodScheduled" and c.get("status") != "True":
            why = c.get("message") or c.get("reason") or ""
            return f"not scheduled: {why}" if why else "not scheduled"
    return "not scheduled"


def container_state(pod: Mapping[str, Any], container: str) -> ContainerState:
    """Where ``container`` of ``pod`` is, from the pod's status (pure)."""
    if not (pod.get("spec") or {}).get("nodeName"):
        return ContainerState(False, False, 0, _scheduling_reason(pod))
    status = pod.get("status") or {}
    for s in status.get("containerStatuses") or ():
        if s.get("name") != container:
            continue
        state = s.get("state") or {}
        restarts = int(s.get("restartCount") or 0)
        if state.get("running") is not None:
            return ContainerState(True, True, restarts)
        if state.get("terminated") is not None:
            return ContainerState(True, False, restarts)
        waiting = state.get("waiting") or {}
        if (s.get("lastState") or {}).get("terminated") is not None:
            # waiting to run again: its last run's output is there to read
            return ContainerState(True, False, restarts, str(waiting.get("reason") or ""))
        return ContainerState(False, False, restarts, str(waiting.get("reason") or "waiting"))
    return ContainerState(False, False, 0, str(status.get("phase") or "Pending"))


# --- lines (pure) ----------------------------------------------------------------------


def line_prefix(pod: str, container: str, *, pods: bool, containers: bool) -> bytes:
    """kubectl's ``--prefix`` (``[pod/NAME/CONTAINER] ``) when lines come from
    several pods; ``[CONTAINER] `` from one pod's several containers."""
    if pods:
        return f"[pod/{pod}/{container}] ".encode()
    if containers:
        return f"[{container}] ".encode()
    return b""


_STAMP = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) ")


def split_timestamp(line: bytes) -> tuple[int | None, bytes, bytes]:
    """A line the server stamped (``timestamps=true``): its time in
    nanoseconds since the epoch, the stamp (with its space) and the rest.
    ``(None, b"", line)`` when it bears no stamp."""
    found = _STAMP.match(line)
    if found is None:
        return None, b"", line
    seconds, fraction, zone = (g.decode() if g else "" for g in found.groups())
    zone = "+00:00" if zone == "Z" else zone
    when = datetime.datetime.fromisoformat(seconds + zone)
    ns = int(when.timestamp()) * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))
    return ns, line[: found.end()], line[found.end() :]


def since_time(ns: int) -> str:
    """``sinceTime`` (RFC 3339, whole seconds: what the API takes) at or
    before ``ns``."""
    when = datetime.datetime.fromtimestamp(ns // 1_000_000_000, tz=datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Lines:
    """Chunks in, whole lines out (each ending in ``\\n``)."""

    _partial: bytes = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        return [line + b"\n" for line in lines]

    def rest(self) -> list[bytes]:
        """What is left when the stream ends (a last line without ``\\n``)."""
        left, self._partial = self._partial, b""
        return [left + b"\n"] if left else []


def log_query(
    container: str, options: LogOptions, *, first: bool, after: int | None
) -> dict[str, str | int | bool]:
    """The ``pods/log`` query: always with timestamps; ``--tail`` and
    ``--since`` only for the ``first`` read of a container that was there
    when the command started; ``after``: only lines from that time on."""
    query: dict[str, str | int | bool] = {"container": container, "timestamps": True}
    if options.follow:
        query["follow"] = True
    if first and options.tail is not None and options.tail >= 0:
        query["tailLines"] = options.tail
    if first and options.since_seconds:
        query["sinceSeconds"] = options.since_seconds
    if after is not None:
        query["sinceTime"] = since_time(after)
    return query


def forbidden(verb: str, resource: str, namespace: str, error: BaseException) -> LogsError:
    """A 403 as one line naming the RBAC permission that is missing."""
    return LogsError(
        f"forbidden: your kube user may not {verb} {resource} in namespace {namespace}: "
        f"its RBAC role needs verb {verb!r} on resource {resource!r} ({one_line(error)})"
    )


# --- the release's pods (shell) ------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The release whose pods ``logs`` reads, and how to find them."""

    service: str
    release: str
    namespace: str
    #: One label selector per workload of the release.
    selectors: tuple[str, ...]
    baseline: bool = False


async def find_release(api: KubeApi, project: Project, service: str, *, baseline: bool) -> Target:
    """Your copy of ``service`` (``<service>--<owner>``), or its baseline:
    its namespace and its workloads' pod selectors (from the live objects)."""
    try:
        declared = project.helmfile.release(service)
    except KeyError:
        known = ", ".join(r.name for r in project.helmfile.releases) or "none"
        raise ConfigError(
            f"{project.helmfile.path} declares no service {service!r} (it declares: {known})"
        ) from None
    name = service if baseline else copy_name(service, project.owner)
    ns = release_namespace(project, declared.namespace)
    try:
        record = (await helm_records(api, ns)).get(name)
    except DevstackError as e:
        if isinstance(e.__cause__, KubeForbiddenError):
            raise forbidden("list", "secrets", ns, e.__cause__) from e
        raise
    if record is None:
        if baseline:
            raise LogsError(
                f"no baseline of {service} in namespace {ns} (`devstack up` deploys it "
                f"for the services that need it; your copy: drop --baseline)"
            )
        raise LogsError(
            f"no copy of {service} deployed for {project.owner} in namespace {ns}: "
            f"run `devstack up {service}`"
        )
    docs = manifest_docs(str(decode_release(record).get("manifest") or ""))
    selectors = []
    for w in workload_docs(docs):
        meta = w.get("metadata") or {}
        kind, wname = str(w["kind"]), str(meta["name"])
        resource = WORKLOADS[kind]
        try:
            live = await api.get_or_none(
                resource, namespace=str(meta.get("namespace") or ns), name=wname
            )
        except KubeForbiddenError as e:
            raise forbidden("get", resource.plural, ns, e) from e
        if live is None:
            continue
        selector = (live.get("spec") or {}).get("selector") or {}
        selectors.append(label_selector(selector, what=f"{kind} {wname}"))
    if not selectors:
        raise LogsError(f"release {name} in namespace {ns} has no workloads: no pods, no logs")
    return Target(service, name, ns, tuple(dict.fromkeys(selectors)), baseline)


# --- reading and following (shell) ---------------------------------------------------


class Output(Protocol):
    """Where the lines go (stdout): each ``write`` a whole line; ``flush``
    after each chunk the server sent, so what arrives is shown at once."""

    def write(self, data: bytes) -> None: ...

    def flush(self) -> None: ...


@dataclass
class _Cursor:
    """How far one container's output was shown."""

    #: ``--tail``/``--since`` still apply: nothing was read yet.
    first: bool
    #: The time of the last line shown (nanoseconds since the epoch).
    last: int | None = None


@dataclass
class _Pod:
    """A pod being followed: its latest state, whether it was there when the
    command started (``--tail``/``--since`` apply to it), and an event set at
    each change."""

    obj: Obj
    first: bool
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class PodLogs:
    """Reads (or follows) the chosen containers of a release's pods."""

    def __init__(
        self,
        api: KubeApi,
        target: Target,
        options: LogOptions,
        out: Output,
        notice: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._target = target
        self._options = options
        self._out = out
        self._notice = notice
        self._clock = clock
        self._pods: dict[str, _Pod] = {}
        self._followers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._failed: asyncio.Future[None] | None = None
        self._said: set[str] = set()
        self._several_pods = options.prefix

    @property
    def _what(self) -> str:
        t = self._target
        return f"the baseline {t.release}" if t.baseline else t.release

    # --- the pods ----------------------------------------------------------------------

    async def _list(self, selector: str) -> tuple[list[Obj], str]:
        try:
            return await self._api.list(
                PODS, namespace=self._target.namespace, label_selector=selector
            )
        except KubeForbiddenError as e:
            raise forbidden("list", "pods", self._target.namespace, e) from e

    async def list_pods(self) -> list[Obj]:
        """Every pod of the release's workloads, by name."""
        found: dict[str, Obj] = {}
        for selector in self._target.selectors:
            for pod in (await self._list(selector))[0]:
                found.setdefault(pod_uid(pod), pod)
        return sorted(found.values(), key=pod_name)

    def _sources(self, pods: Iterable[Obj]) -> list[tuple[Obj, str]]:
        return [(p, c) for p in pods for c in choose_containers(p, self._options)]

    def _check_container(self, pods: Sequence[Obj]) -> None:
        c = self._options.container
        if c and pods and not self._sources(pods):
            names = sorted({n for p in pods for n in containers_of(p)})
            raise ConfigError(
                f"{self._what}'s pods have no container {c!r} (they have: {', '.join(names)})"
            )

    async def wait_started(self) -> list[Obj]:
        """The pods, once at least one chosen container has output; a
        progress line on stderr meanwhile; :class:`LogsError` after
        ``--wait-timeout`` seconds."""
        deadline = self._clock() + self._options.wait_timeout
        said = ""
        while True:
            pods = await self.list_pods()
            self._check_container(pods)
            sources = self._sources(pods)
            if any(container_state(p, c).started for p, c in sources):
                return pods
            if sources:
                pod, c = sources[0]
                why = f"{pod_name(pod)}: {container_state(pod, c).reason}"
            else:
                why = "no pod yet"
            if why != said:
                self._notice(f"waiting for a pod of {self._what} to start ({why})")
                said = why
            if self._clock() >= deadline:
                raise LogsError(
                    f"no pod of {self._what} started in {self._options.wait_timeout:g}s ({why}): "
                    f"see `kubectl -n {self._target.namespace} describe pods -l "
                    f"{self._target.selectors[0]}`, or wait longer with --wait-timeout"
                )
            await asyncio.sleep(RECHECK_SECONDS)

    # --- one stream ----------------------------------------------------------------------

    async def _stream(self, pod: str, container: str, cursor: _Cursor) -> None:
        """Copy one ``pods/log`` answer to the output, moving ``cursor`` on as
        lines are shown (so a stream that breaks off is resumed where it
        did). Lines at or before the cursor's ``last`` are skipped."""
        path = PODS.path(namespace=self._target.namespace, name=pod) + "/log"
        after = cursor.last
        query = log_query(container, self._options, first=cursor.first, after=after)
        prefix = line_prefix(
            pod,
            container,
            pods=self._several_pods,
            containers=self._options.all_containers,
        )
        lines = Lines()
        try:
            async for chunk in self._api.stream(path, query=query):
                cursor.first = False
                for line in lines.feed(chunk):
                    self._show(prefix, line, cursor, after)
                self._out.flush()
            cursor.first = False
            for line in lines.rest():
                self._show(prefix, line, cursor, after)
            self._out.flush()
        except KubeForbiddenError as e:
            raise forbidden("get", "pods/log", self._target.namespace, e) from e

    def _show(self, prefix: bytes, line: bytes, cursor: _Cursor, after: int | None) -> None:
        ns, stamp, text = split_timestamp(line)
        if ns is not None and after is not None and ns <= after:
            return  # shown before the stream was opened again
        self._out.write(prefix + (stamp if self._options.timestamps else b"") + text)
        if ns is not None:
            cursor.last = ns

    # --- read once -----------------------------------------------------------------------

    async def read(self) -> int:
        """Every chosen container's output so far, pod by pod; 0, or 1 when
        one of several could not be read (said on stderr)."""
        pods = await self.wait_started()
        sources = self._sources(pods)
        self._several_pods = self._several_pods or len({pod_uid(p) for p, _ in sources}) > 1
        failed = 0
        for pod, c in sources:
            state = container_state(pod, c)
            if not state.started:
                self._notice(f"pod {pod_name(pod)}, container {c}: not started ({state.reason})")
                continue
            try:
                await self._stream(pod_name(pod), c, _Cursor(first=True))
            except (KubeRequestError, NotFoundError, TemporaryError) as e:
                if len(sources) == 1:
                    raise LogsError(
                        f"cannot read the log of pod {pod_name(pod)}, container {c}: {one_line(e)}"
                    ) from e
                self._notice(f"pod {pod_name(pod)}, container {c}: {one_line(e)}")
                failed += 1
        return 1 if failed else 0

    # --- follow --------------------------------------------------------------------------

    async def follow(self) -> None:
        """Follow until cancelled (Ctrl-C) or refused: every chosen container
        of every pod, pods that come later included."""
        pods = await self.wait_started()
        self._several_pods = self._several_pods or len(pods) > 1
        self._failed = asyncio.get_running_loop().create_future()
        for pod in pods:
            self._pods[pod_uid(pod)] = _Pod(pod, first=True)
            self._start_followers(pod_uid(pod))
        for selector in self._target.selectors:
            self._spawn(self._watch(selector, {pod_uid(p) for p in pods}))
        try:
            await self._failed
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or self._failed is None or self._failed.done():
            return
        error = task.exception()
        if error is not None:
            self._failed.set_exception(error)

    def _say_once(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            self._notice(text)

    def _start_followers(self, uid: str) -> None:
        entry = self._pods[uid]
        for c in choose_containers(entry.obj, self._options):
            if (uid, c) in self._followers or not container_state(entry.obj, c).started:
                continue
            if not entry.first:
                self._notice(f"following pod {pod_name(entry.obj)} (container {c})")
            self._followers[(uid, c)] = self._spawn(self._follow(uid, c, first=entry.first))

    def _seen(self, pod: Obj) -> None:
        uid = pod_uid(pod)
        entry = self._pods.get(uid)
        if entry is None:
            if (pod.get("metadata") or {}).get("deletionTimestamp"):
                return  # going away before it was ever followed
            entry = self._pods[uid] = _Pod(pod, first=False)
            self._notice(f"new pod {pod_name(pod)}")
        entry.obj = pod
        entry.changed.set()
        self._start_followers(uid)

    def _gone(self, uid: str) -> None:
        entry = self._pods.pop(uid, None)
        if entry is None:
            return
        self._notice(f"pod {pod_name(entry.obj)} is gone")
        entry.changed.set()
        for key in [k for k in self._followers if k[0] == uid]:
            task = self._followers.pop(key)
            # its stream may still bring the last lines; then it stops
            asyncio.get_running_loop().call_later(GONE_GRACE_SECONDS, task.cancel)

    async def _watch(self, selector: str, known: set[str]) -> None:
        """The pods of one workload: new ones, changes, deletions."""
        rv: str | None = None
        mine = set(known)
        while True:
            try:
                if rv is None:
                    items, rv = await self._list(selector)
                    listed = {pod_uid(p) for p in items}
                    for uid in mine - listed:
                        self._gone(uid)
                    mine = listed
                    for pod in items:
                        self._seen(pod)
                async for event in self._api.watch(
                    PODS,
                    namespace=self._target.namespace,
                    resource_version=rv,
                    label_selector=selector,
                ):
                    obj = event["object"]
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                    if event["type"] == "BOOKMARK":
                        continue
                    if event["type"] == "DELETED":
                        mine.discard(pod_uid(obj))
                        self._gone(pod_uid(obj))
                    else:
                        mine.add(pod_uid(obj))
                        self._seen(obj)
            except GoneError:
                rv = None
            except KubeForbiddenError as e:
                raise forbidden("watch", "pods", self._target.namespace, e) from e
            except TemporaryError as e:
                log.debug("logs.watch_retry", selector=selector, error=one_line(e))
                await asyncio.sleep(RECHECK_SECONDS)
                rv = None

    async def _follow(self, uid: str, container: str, *, first: bool) -> None:
        """One container of one pod: stream, and when the stream ends (the
        container stopped, the connection dropped) wait until it runs again
        and go on after the last line shown."""
        entry = self._pods[uid]
        name = pod_name(entry.obj)
        restarts = container_state(entry.obj, container).restarts
        cursor = _Cursor(first=first)
        while True:
            try:
                await self._stream(name, container, cursor)
            except NotFoundError:
                return  # the pod is gone
            except KubeRequestError as e:
                self._say_once(f"pod {name}, container {container}: {one_line(e)} (trying again)")
            except TemporaryError as e:
                log.debug("logs.stream_retry", pod=name, container=container, error=one_line(e))
            while True:
                entry.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(entry.changed.wait(), RECHECK_SECONDS)
                if uid not in self._pods:
                    return
                state = container_state(entry.obj, container)
                if state.restarts > restarts:
                    restarts = state.restarts
                    self._notice(
                        f"container {container} of pod {name} restarted "
                        f"(restart {restarts}): following it"
                    )
                if state.running:
                    break
