"""A hostile client against the sidecar's server, as a real process over a
real gRPC connection: what it can make the sidecar hold (streams that never
send Hello, session slots, messages it never reads, Acks, ignore patterns,
log lines) is bounded, Exec refuses what no process can start with, and
SIGTERM stops the sidecar even while a session's disk thread is busy. After
each case nothing outside the workspace changed and the sidecar still
answers a valid Status."""

from __future__ import annotations

import resource
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from devstack.core.logging import CLIP_CHARS
from devstack.sidecar.server import (
    MAX_HANDSHAKES,
    MAX_IGNORE_PATTERNS,
    MAX_PATTERN_CHARS,
    MAX_SESSIONS,
    PROBLEMS_SHOWN,
)
from devstack.sync.v1 import sync_pb2 as pb
from devstack.sync.v1 import sync_pb2_grpc
from tests.support.rawclient import RawSession, delete_op, hello, run_exec, status, write_op
from tests.support.sync import Sidecar, tree_state, wait_until

TOKEN = "hostile-server-token"


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """The folder around the workspace, with something in it to keep."""
    (tmp_path / "box" / "ws").mkdir(parents=True)
    (tmp_path / "box" / "canary.txt").write_text("outside the workspace")
    (tmp_path / "token").write_text(TOKEN)
    return tmp_path / "box"


def outside(box: Path) -> dict[str, object]:
    """Everything in ``box`` but the workspace (never read: it may hold a
    file of terabytes)."""
    return {
        p.name: tree_state(p) if p.is_dir() else p.read_bytes()
        for p in box.iterdir()
        if p.name != "ws"
    }


def start(box: Path) -> Sidecar:
    return Sidecar(box / "ws", box.parent / "token").start()


@pytest.fixture
def sidecar(box: Path) -> Iterator[Sidecar]:
    sc = start(box)
    yield sc
    sc.stop()


def still_fine(sc: Sidecar, before: dict[str, object]) -> None:
    """Nothing outside the workspace changed and the sidecar answers Status."""
    assert outside(sc.workspace.parent) == before
    assert status(sc.address, TOKEN).workspace == "ws"


def silent(stop: threading.Event) -> Iterator[pb.ClientMessage]:
    """A request stream that sends nothing until ``stop``."""
    stop.wait()
    yield from ()


def log_chars(sc: Sidecar) -> int:
    return sum(len(line) + 1 for line in list(sc.raw))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def settled(count: Callable[[], int], *, quiet: int = 20) -> int:
    """``count()`` once it stopped changing for ``quiet`` polls in a row
    (a sidecar its client holds back makes no more progress)."""
    seen: list[int] = []

    def still() -> bool:
        seen.append(count())
        return len(seen) > quiet and len(set(seen[-quiet:])) == 1

    wait_until(still, 60, "the sidecar to stop making progress")
    return seen[-1]


# ------------------------------------------------------------ streams without Hello


def test_streams_that_never_send_hello_end_at_the_deadline(
    box: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEVSTACK_HELLO_TIMEOUT", "1")
    sc = start(box)
    before = outside(box)
    stop = threading.Event()
    try:
        with grpc.insecure_channel(sc.address) as ch:
            stub = sync_pb2_grpc.SyncStub(ch)
            calls = [stub.Session(silent(stop)) for _ in range(30)]
            # While they wait, a client that says Hello is served.
            s = RawSession(sc.address, TOKEN)
            s.batch(1, write_op("kept", b"written"))
            assert s.commit(1).applied == 1
            s.close()
            wait_until(lambda: all(c.done() for c in calls), what="the silent streams to end")
            for call in calls:
                assert call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "no Hello within 1 s" in (call.details() or "")
        wait_until(lambda: len(sc.events("session.hello_timeout")) == 30, what="30 log lines")
        assert (sc.workspace / "kept").read_bytes() == b"written"
        still_fine(sc, before)
    finally:
        stop.set()
        sc.stop()


def test_at_most_max_handshakes_streams_wait_for_hello(
    box: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEVSTACK_HELLO_TIMEOUT", "300")  # none ends by the deadline here
    sc = start(box)
    before = outside(box)
    stop = threading.Event()
    try:
        with grpc.insecure_channel(sc.address) as ch:
            stub = sync_pb2_grpc.SyncStub(ch)
            calls = [stub.Session(silent(stop)) for _ in range(MAX_HANDSHAKES + 5)]
            wait_until(lambda: sum(c.done() for c in calls) == 5, what="5 streams refused")
            for call in [c for c in calls if c.done()]:
                assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "waiting to send Hello" in (call.details() or "")
            # The others still wait; Status and the open sessions are served...
            assert status(sc.address, TOKEN).sessions == 0
            # ...but a new session waits for the flood to end.
            with pytest.raises(grpc.RpcError) as e:
                RawSession(sc.address, TOKEN)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert sum(c.done() for c in calls) == 5
            for call in calls:
                call.cancel()

        def opens() -> bool:
            try:
                RawSession(sc.address, TOKEN).close()
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False
            return True

        wait_until(opens, what="a session once the silent streams are gone")
        still_fine(sc, before)
    finally:
        stop.set()
        sc.stop()


# ------------------------------------------------------------ client-chosen strings


def test_a_megabyte_client_id_grows_the_log_by_a_few_kb(sidecar: Sidecar) -> None:
    before = outside(sidecar.workspace.parent)
    huge = "C" * (1 << 20)
    chars = log_chars(sidecar)
    with pytest.raises(grpc.RpcError) as e:
        RawSession(sidecar.address, "wrong", client_id=huge)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    wait_until(lambda: bool(sidecar.events("auth.refused")), what="the refusal's log line")
    assert log_chars(sidecar) - chars < 2 * 1024
    with pytest.raises(grpc.RpcError) as e:
        RawSession(sidecar.address, TOKEN, client_id=huge, workspace=huge)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not 'CCC" in (e.value.details() or "")
    assert len(e.value.details() or "") < 2 * CLIP_CHARS
    # Accepted, with a path of a megabyte that is refused.
    s = RawSession(sidecar.address, TOKEN, client_id=huge)
    long_path = "../" + "p" * (1 << 20)
    s.batch(1, delete_op(long_path), write_op("fine", b"ok"))
    ack = s.commit(1)
    s.close()
    assert ack.applied == 1
    [problem] = ack.problems
    assert (problem.path, problem.reason) == (long_path, "unsafe-path")  # whole: the client's key
    assert len(problem.message) <= CLIP_CHARS + 30
    wait_until(lambda: bool(sidecar.events("session.closed")), what="the session to close")
    assert sidecar.events("auth.refused") and sidecar.events("sync.rejected")
    assert log_chars(sidecar) - chars < 8 * 1024
    still_fine(sidecar, before)


# ------------------------------------------------------------ session slots


def hello_on(stub: sync_pb2_grpc.SyncStub) -> grpc.RpcError | pb.ServerMessage:
    """A Hello on an open channel: the first answer, or the refusal."""
    call = stub.Session(iter([hello(TOKEN)]))
    try:
        return next(call)
    except grpc.RpcError as e:
        return e
    finally:
        call.cancel()


def test_concurrent_hellos_never_open_more_than_max_sessions(sidecar: Sidecar) -> None:
    before = outside(sidecar.workspace.parent)
    for i in range(2000):  # a manifest that takes a moment to build and send
        (sidecar.workspace / f"f{i:04}").write_text(f"file {i}\n")
    RawSession(sidecar.address, TOKEN).close()  # digests are cached now
    wait_until(lambda: status(sidecar.address, TOKEN).sessions == 0, what="its slot back")
    n = 50
    ready = threading.Barrier(n)

    def attempt(_: int) -> RawSession | grpc.RpcError:
        ready.wait()
        try:
            return RawSession(sidecar.address, TOKEN)
        except grpc.RpcError as e:
            return e

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(attempt, range(n)))
    welcomed = [r for r in results if isinstance(r, RawSession)]
    refused = [r for r in results if isinstance(r, grpc.RpcError)]
    try:
        assert len(welcomed) == MAX_SESSIONS
        assert {(e.code(), e.details()) for e in refused} == {
            (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many sessions")
        }
        assert status(sidecar.address, TOKEN).sessions == MAX_SESSIONS
    finally:
        for s in welcomed:
            s.close()
    wait_until(lambda: status(sidecar.address, TOKEN).sessions == 0, what="slots given back")
    # Cancelled at once, wherever the sidecar is with them: each slot comes back.
    with grpc.insecure_channel(sidecar.address) as ch:
        stub = sync_pb2_grpc.SyncStub(ch)
        for _ in range(2 * MAX_SESSIONS):
            stub.Session(iter([hello(TOKEN)])).cancel()
        wait_until(lambda: status(sidecar.address, TOKEN).sessions == 0, what="slots given back")
        # A manifest that fails (no descriptor left) gives its slot back too.
        assert sidecar.proc is not None
        pid = sidecar.proc.pid
        limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (3, limits[1]))
        try:
            for _ in range(MAX_SESSIONS + 2):
                e = hello_on(stub)
                assert isinstance(e, grpc.RpcError)
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "EMFILE" in (e.details() or "")
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    sessions = [RawSession(sidecar.address, TOKEN) for _ in range(MAX_SESSIONS)]
    for s in sessions:
        s.close()
    still_fine(sidecar, before)


# ------------------------------------------------------------ backpressure


def test_a_client_that_does_not_read_is_held_back(sidecar: Sidecar) -> None:
    """600 batches of 12 conflicts at paths of 3,800 bytes each (an Ack of
    ~100 KB), sent without reading: the sidecar stops reading too, so its
    memory stays bounded (it grew by 156 MB before); once the client reads,
    every batch is acknowledged, in order."""
    assert sidecar.proc is not None
    before = outside(sidecar.workspace.parent)
    deep = "/".join(["d" * 250] * 15)
    (sidecar.workspace / deep).mkdir(parents=True)
    theirs = [f"{deep}/f{i:02}" for i in range(12)]
    for p in theirs:
        (sidecar.workspace / p).write_bytes(b"the app's")
    batches = 600
    go = threading.Event()
    pulled: list[int] = []

    def requests() -> Iterator[pb.ClientMessage]:
        yield hello(TOKEN)
        go.wait()
        for seq in range(1, batches + 1):
            ops = [write_op(f"n{seq:04}", b"new"), *(write_op(p, b"sync's") for p in theirs)]
            yield pb.ClientMessage(batch=pb.Batch(seq=seq, ops=ops))
            yield pb.ClientMessage(commit=pb.Commit(seq=seq))
            pulled.append(seq)

    with grpc.insecure_channel(sidecar.address) as ch:
        call = sync_pb2_grpc.SyncStub(ch).Session(requests())
        assert next(call).WhichOneof("msg") == "welcome"
        while not next(call).manifest.last:
            pass
        rss = rss_bytes(sidecar.proc.pid)
        go.set()
        applied = settled(lambda: len(sidecar.events("batch.applied")))
        assert applied < batches / 2 and len(pulled) < batches / 2
        assert rss_bytes(sidecar.proc.pid) - rss < 40 << 20
        assert sidecar.events("session.backpressure")
        # Now it reads: everything is acknowledged, in order.
        acks = [m.ack for m in call if m.WhichOneof("msg") == "ack"]
    assert [a.seq for a in acks] == list(range(1, batches + 1))
    assert {(a.applied, len(a.problems), a.problems_omitted) for a in acks} == {(1, 12, 0)}
    assert {p.reason for p in acks[-1].problems} == {"conflict"}
    assert len(list(sidecar.workspace.glob("n*"))) == batches
    for p in theirs:
        assert (sidecar.workspace / p).read_bytes() == b"the app's"
    still_fine(sidecar, before)


# ------------------------------------------------------------ Acks


def test_an_ack_of_60000_problems_stays_under_the_message_limit(sidecar: Sidecar) -> None:
    before = outside(sidecar.workspace.parent)
    bad = [delete_op(f"../{'e' * 30}{i}") for i in range(60_000)]
    good = [write_op(f"good{i}", f"good {i}".encode()) for i in range(5)]
    s = RawSession(sidecar.address, TOKEN)
    s.batch(1, *bad[:30_000], *good, *bad[30_000:])
    ack = s.commit(1)
    s.close()
    assert ack.applied == 5
    assert 0 < ack.problems_omitted < 60_000
    assert len(ack.problems) + ack.problems_omitted == 60_000
    assert ack.problems[0].path == "../" + "e" * 30 + "0"
    assert {p.reason for p in ack.problems} == {"unsafe-path"}
    for i in range(5):
        assert (sidecar.workspace / f"good{i}").read_text() == f"good {i}"
    wait_until(lambda: bool(sidecar.events("sync.more_problems")), what="the summary line")
    assert len(sidecar.events("sync.rejected")) == PROBLEMS_SHOWN
    [more] = sidecar.events("sync.more_problems")
    assert more["problems"] == 60_000 - PROBLEMS_SHOWN
    still_fine(sidecar, before)


# ------------------------------------------------------------ ignore patterns


def test_ignore_patterns_are_bounded(sidecar: Sidecar) -> None:
    before = outside(sidecar.workspace.parent)
    (sidecar.workspace / "build7").mkdir()
    (sidecar.workspace / "build7" / "out.o").write_text("ignored")
    (sidecar.workspace / "kept.txt").write_text("kept")
    patterns = [f"build{i}/" for i in range(MAX_IGNORE_PATTERNS)]
    for ignore, says in [
        ([*patterns, "one-too-many"], f"at most {MAX_IGNORE_PATTERNS}"),
        (["x" * (MAX_PATTERN_CHARS + 1)], f"at most {MAX_PATTERN_CHARS}"),
    ]:
        with pytest.raises(grpc.RpcError) as e:
            RawSession(sidecar.address, TOKEN, ignore=ignore)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in (e.value.details() or "")
    assert len(sidecar.events("session.refused")) == 2
    # Just under the bound: while its rules compile, others are served.
    with ThreadPoolExecutor(1) as pool:
        opening = pool.submit(RawSession, sidecar.address, TOKEN, ignore=patterns)
        assert status(sidecar.address, TOKEN).workspace == "ws"
        s = opening.result(60)
    assert "kept.txt" in s.manifest and not any(p.startswith("build7") for p in s.manifest)
    s.close()
    still_fine(sidecar, before)


# ------------------------------------------------------------ Exec


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        (["echo", "a\0b"], {}, "argument 1 holds a NUL byte"),
        (["ec\0ho"], {}, "argument 0 holds a NUL byte"),
        (["env"], {"A": "x\0y"}, "'A' holds a NUL byte"),
        (["env"], {"A\0B": "x"}, "holds a NUL byte"),
        (["env"], {"A=B": "x"}, "'A=B' is not an environment variable name"),
    ],
)
def test_exec_with_a_nul_byte_is_invalid_argument(
    sidecar: Sidecar, argv: list[str], env: dict[str, str], says: str
) -> None:
    before = outside(sidecar.workspace.parent)
    with pytest.raises(grpc.RpcError) as e:
        run_exec(sidecar.address, TOKEN, argv, env=env)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (e.value.details() or "")
    wait_until(lambda: bool(sidecar.events("exec.refused")), what="one log line")
    assert not any("Traceback" in line for line in sidecar.raw)
    assert not sidecar.events("exec.start")
    still_fine(sidecar, before)


# ------------------------------------------------------------ shutdown


def read_chars(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def test_sigterm_stops_the_sidecar_while_a_session_thread_is_busy(sidecar: Sidecar) -> None:
    """The app made a 4 TiB sparse file: a new session's manifest hashes it
    on the session's thread for an hour. SIGTERM still stops the sidecar
    after its grace, with status 0."""
    assert sidecar.proc is not None
    pid = sidecar.proc.pid
    before = outside(sidecar.workspace.parent)
    with (sidecar.workspace / "disk.img").open("wb") as f:
        f.truncate(4 << 40)
    stop = threading.Event()

    def requests() -> Iterator[pb.ClientMessage]:
        yield hello(TOKEN)
        stop.wait()

    try:
        with grpc.insecure_channel(sidecar.address) as ch:
            call = sync_pb2_grpc.SyncStub(ch).Session(requests())
            start = read_chars(pid)
            wait_until(lambda: read_chars(pid) - start > 256 << 20, what="the thread to read")
            still_fine(sidecar, before)
            sidecar.proc.send_signal(signal.SIGTERM)
            assert sidecar.proc.wait(60) == 0
            call.cancel()
    finally:
        stop.set()
    wait_until(lambda: bool(sidecar.events("sidecar.stopped")), what="the last log line")
    names = [e["event"] for e in sidecar.log]
    order = ["sidecar.stopping", "sidecar.threads_abandoned", "sidecar.stopped"]
    assert [n for n in names if n in order] == order
