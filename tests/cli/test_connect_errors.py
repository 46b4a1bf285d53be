"""How `devstack connect` meets a sidecar that refuses or fails: what it
retries, what it gives up on, and the one line it prints. The sidecar here is
a recording stand-in on real gRPC (tests/support/fakesidecar.py), for the
status codes the real one does not produce on demand."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devstack.cli.channel import BROKEN_STREAM_DETAILS, classify
from devstack.cli.syncer import RetryPolicy, Stats, Syncer, Target
from devstack.core.errors import PeerFailedError, UnreachableError
from devstack.core.plan import Plan
from devstack.core.sync.retry import NoAnswerError, RefusedConnectionError, UnknownHostError
from devstack.sync.v1 import sync_pb2 as pb
from tests.support.fakesidecar import Failure, FakeSidecar
from tests.support.net import free_port
from tests.support.sync import QuietReporter, devstack_cmd


@pytest.fixture
def fake() -> Iterator[FakeSidecar]:
    sc = FakeSidecar().start()
    yield sc
    sc.stop()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    s = tmp_path / "src"
    s.mkdir()
    (s / "a.txt").write_text("a\n")
    return s


def connect(
    src: Path, address: str, *extra: str, log_level: str | None = None
) -> subprocess.CompletedProcess[str]:
    token = src.parent / "token"
    token.write_text("tok")
    env = {**os.environ, "XDG_CACHE_HOME": str(src.parent / ".cache")}
    if log_level is not None:
        env["DEVSTACK_LOG_LEVEL"] = log_level
    return subprocess.run(
        devstack_cmd("connect", str(src), "--to", address, "--token-file", str(token), *extra),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


#: A session whose first write raced the sidecar's abort: grpc replaced the
#: status with its own (grpc/grpc#36066), so it reads as a dropped connection.
_LOST_STATUS = "broke mid-stream); reconnecting"


def error_line(stderr: str, *, lost_status_ok: bool = False) -> str:
    """The one line that says what went wrong: the last, and the only one
    beyond the reporter's own lines (and, with ``lost_status_ok``, lines of
    sessions whose status grpc lost)."""
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("devstack connect: "), stderr
    others = [ln for ln in lines[:-1] if ln.startswith(("devstack", "disconnected"))]
    if lost_status_ok:
        others = [ln for ln in others if _LOST_STATUS not in ln]
    assert not others, stderr
    return lines[-1]


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    ],
)
@pytest.mark.parametrize(
    ("stage", "once"),
    [("hello", True), ("hello", False), ("manifest", True), ("manifest", False)],
    ids=["handshake-once", "handshake-watch", "connected-once", "connected-watch"],
)
def test_a_refusal_is_permanent_one_line_exit_2(
    fake: FakeSidecar, src: Path, code: grpc.StatusCode, stage: str, once: bool
) -> None:
    fake.failure = Failure(code, "no, and it never will", stage)
    r = connect(src, fake.address, *(["--once"] if once else []))
    assert r.returncode == 2
    # Refused once connected, the first batch may race the refusal and lose
    # its status to grpc's; that session alone is retried, as a dropped one.
    line = error_line(r.stderr, lost_status_ok=stage == "manifest")
    assert "no, and it never will" in line and code.name in line
    if stage == "hello":
        assert r.stderr.count("\n") == 1
    assert fake.sessions == 1 + r.stderr.count(_LOST_STATUS)  # a refusal is never retried


@pytest.mark.parametrize("once", [True, False], ids=["once", "watch"])
def test_an_internal_failure_is_retried_a_few_times_then_one_line(
    fake: FakeSidecar, src: Path, once: bool
) -> None:
    fake.failure = Failure(grpc.StatusCode.INTERNAL, "the sidecar tripped over itself")
    r = connect(src, fake.address, *(["--once"] if once else []), log_level="info")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and '"level": "error"' not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("devstack connect: ")
    assert "the sidecar tripped over itself" in last
    retries = [
        json.loads(line)
        for line in r.stderr.splitlines()
        if line.startswith("{") and '"connect.retry"' in line
    ]
    # Every session but the last was retried; the last ones failed in a
    # row. A write that races the sidecar's abort can lose its status to
    # grpc's own "Internal error from Core" (grpc/grpc#36066): that session
    # counts as a dropped connection, which starts the count again.
    assert fake.sessions == len(retries) + 1
    in_a_row = RetryPolicy().failure_attempts - 1
    dropped = [x for x in retries if x["failure"] == "dropped"]
    if "3 failures in a row" in last:
        assert [x["failure"] for x in retries[-in_a_row:]] == ["peer-failed"] * in_a_row
    else:
        # Under load, enough sessions lost their status for --once's bound
        # on attempts to come first: that bound, and only because of them.
        assert once and dropped and f"giving up after {fake.sessions} attempts" in last, last
    for x in retries:
        assert x["failure"] in ("peer-failed", "dropped"), x
    for x in dropped:
        assert "broke mid-stream" in x["error"], x


def run_syncer(
    src: Path, address: str, *, once: bool, stop_after_sessions: int = 0, fake: FakeSidecar
) -> int:
    policy = RetryPolicy(first_delay=0.01, max_delay=0.05, once_attempts=4)

    async def main() -> int:
        syncer = Syncer(
            src,
            Target(address, "tok"),
            reporter=QuietReporter(),
            cache_path=src.parent / "cache.json",
            retry=policy,
        )
        task = asyncio.create_task(syncer.run(once=once))
        if stop_after_sessions:
            while fake.sessions < stop_after_sessions and not task.done():
                await asyncio.sleep(0.01)
            syncer.stop()
        return await asyncio.wait_for(task, 60)

    return asyncio.run(main())


def test_unavailable_after_connecting_retries_while_watching(fake: FakeSidecar, src: Path) -> None:
    fake.failure = Failure(grpc.StatusCode.UNAVAILABLE, "pod restarting")
    # Watching, it keeps trying (well past --once's bound) until stopped.
    assert run_syncer(src, fake.address, once=False, stop_after_sessions=10, fake=fake) == 0
    assert fake.sessions >= 10


def test_unavailable_under_once_gives_up_after_bounded_attempts(
    fake: FakeSidecar, src: Path
) -> None:
    fake.failure = Failure(grpc.StatusCode.UNAVAILABLE, "pod restarting")
    with pytest.raises(UnreachableError, match="giving up after 4 attempts"):
        run_syncer(src, fake.address, once=True, fake=fake)
    assert fake.sessions == 4


def test_chunks_never_exceed_the_sidecars_limit(fake: FakeSidecar, src: Path) -> None:
    fake.max_chunk_bytes = 64 * 1024
    big = os.urandom(1_000_000)
    mid = os.urandom(100_000)  # inline under our own limit, not under the sidecar's
    (src / "big.bin").write_bytes(big)
    (src / "mid.bin").write_bytes(mid)
    r = connect(src, fake.address, "--once")
    assert r.returncode == 0, r.stderr
    sizes, content = fake.files["big.bin"]
    assert content == big and max(sizes) <= 64 * 1024
    sizes, content = fake.files["mid.bin"]
    assert content == mid and max(sizes) <= 64 * 1024
    assert fake.inline["a.txt"] == b"a\n"


def test_an_ack_that_could_not_list_every_problem_makes_connect_read_the_workspace_again(
    fake: FakeSidecar, src: Path
) -> None:
    """An op an Ack leaves unlisted may or may not have been applied:
    ``connect`` trusts none of them and reconnects for a fresh manifest."""
    fake.omit_problems = 60_000
    done = connect(src, fake.address, "--once")
    assert done.returncode == 0, done.stderr
    assert fake.sessions == 2
    assert "reading the workspace again" in done.stderr
    assert fake.inline["a.txt"] == b"a\n"


def test_hello_carries_the_workspace_name(fake: FakeSidecar, src: Path) -> None:
    assert connect(src, fake.address, "--once", "--workspace", "shop").returncode == 0
    assert fake.hellos[-1].workspace == "shop"
    env_run = subprocess.run(
        devstack_cmd(
            "connect", str(src), "--to", fake.address,
            "--token-file", str(src.parent / "token"), "--once",
        ),
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "XDG_CACHE_HOME": str(src.parent / ".cache"),
             "DEVSTACK_WORKSPACE_NAME": "cart"},
    )  # fmt: skip
    assert env_run.returncode == 0, env_run.stderr
    assert fake.hellos[-1].workspace == "cart"


def test_the_token_never_shows_in_a_repr() -> None:
    t = Target("127.0.0.1:1", "s3cr3t-t0ken", authority="x.localtest.me")
    assert "s3cr3t-t0ken" not in repr(t) and "s3cr3t-t0ken" not in str(t)
    assert "127.0.0.1:1" in repr(t)


def test_a_stream_that_broke_under_a_write_is_a_dropped_connection_not_a_failure() -> None:
    """grpc.aio turns a write on a stream the network just cut into
    ``INTERNAL: Internal error from Core`` (grpc/grpc#36066); counted as a
    sidecar failure, three flaky cuts in a row would end ``connect``."""
    broke = classify(grpc.StatusCode.INTERNAL, BROKEN_STREAM_DETAILS, "127.0.0.1:1")
    assert isinstance(broke, UnreachableError)
    assert "broke mid-stream" in str(broke)
    failed = classify(grpc.StatusCode.INTERNAL, "disk on fire", "127.0.0.1:1")
    assert isinstance(failed, PeerFailedError)


class Quiet:
    """A reporter that keeps nothing: these tests read what ``run`` raises."""

    def round_started(self, plan: Plan, *, initial: bool) -> None: ...
    def progress(self, files: int, nbytes: int) -> None: ...
    def round_finished(self, stats: Stats) -> None: ...
    def event(self, event: pb.Event) -> None: ...
    def note(self, text: str) -> None: ...


def first_connect(
    src: Path, target: Target, *, once: bool = False, timeout: float = 10.0
) -> tuple[BaseException, float]:
    """What a first connect to ``target`` raises, and how long it took."""
    syncer = Syncer(
        src, target, reporter=QuietReporter(), cache_path=src.parent / "c", connect_timeout=timeout
    )
    started = time.monotonic()
    with pytest.raises(UnreachableError) as e:
        asyncio.run(syncer.run(once=once))
    return e.value, time.monotonic() - started


@pytest.mark.parametrize(
    ("address", "kind", "says"),
    [
        (None, RefusedConnectionError, "connection refused, nothing listens there"),
        ("nohost.invalid:7070", UnknownHostError, "unknown host 'nohost.invalid'"),
    ],
    ids=["refused", "unknown-host"],
)
@pytest.mark.parametrize("once", [True, False], ids=["once", "watch"])
def test_a_first_connect_fails_at_once_and_says_which(
    src: Path, address: str | None, kind: type, says: str, once: bool
) -> None:
    """Not after the 10 s connect timeout, and not as "no answer": at once,
    watching too (a sidecar that was never reached is a wrong address)."""
    address = address or f"127.0.0.1:{free_port()}"
    err, took = first_connect(src, Target(address, "tok"), once=once)
    assert isinstance(err, kind), err
    assert str(err).startswith(f"cannot reach the sidecar at {address}: {says}"), err
    assert "--to" in str(err) and "no answer" not in str(err)
    assert took < 5, f"took {took:.1f} s: it waited for the connect timeout"


def test_the_one_line_of_a_refused_first_connect(src: Path) -> None:
    r = connect(src, f"127.0.0.1:{free_port()}")
    assert r.returncode == 2
    line = error_line(r.stderr)
    assert "connection refused, nothing listens there (start the sidecar" in line
    assert r.stderr.count("\n") == 1


def test_tls_to_a_plain_sidecar_says_what_is_likely_wrong(fake: FakeSidecar, src: Path) -> None:
    """The port takes TCP connections but gRPC cannot connect: no answer
    in the connect timeout, and the likely cause."""
    err, _ = first_connect(src, Target(fake.address, "tok", tls=True), timeout=1.0)
    assert isinstance(err, NoAnswerError), err
    assert "no answer in 1 s" in str(err) and "--tls on one side only" in str(err)
    assert fake.sessions == 0
