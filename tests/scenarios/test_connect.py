"""Stories of `devstack connect` against a real `devstack sidecar`, both as
processes on loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.cli.syncer import EXIT_UNSETTLED, ONCE_ROUNDS, RetryPolicy, Stats, Syncer, Target
from devstack.core.manifest import DigestCache
from devstack.core.plan import Plan
from devstack.sync.v1 import sync_pb2 as pb
from tests.support.rawclient import status
from tests.support.sync import (
    ConnectProcess,
    QuietReporter,
    Sidecar,
    connect_follow,
    connect_once,
    tree_state,
    wait_until,
)
from tests.support.tcpproxy import TcpProxy

#: Watching tests must not be rescued by the periodic full rescan: a dead
#: watcher has to fail them.
NO_RESCAN = ("--rescan-interval", "100000")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Path, Sidecar]]:
    src = tmp_path / "src"
    ws = tmp_path / "ws"
    src.mkdir()
    ws.mkdir()
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    sc = Sidecar(ws, token).start()
    yield src, sc
    sc.stop()


def make_tree(src: Path) -> None:
    (src / "app" / "static").mkdir(parents=True)
    (src / "app" / "main.py").write_text("print('hi')\n")
    (src / "app" / "static" / "logo.bin").write_bytes(os.urandom(70_000))
    (src / "empty-dir").mkdir()
    (src / "run.sh").write_text("#!/bin/sh\necho run\n")
    os.chmod(src / "run.sh", 0o755)
    (src / "ünïcödé naïve 名前.txt").write_text("unicode ✓\n")
    os.symlink("app/main.py", src / "main-link")
    (src / "large.dat").write_bytes(os.urandom(3 * 1024 * 1024))
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: main\n")
    (src / "app" / "__pycache__").mkdir()
    (src / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"junk")


def expected_state(src: Path) -> dict[str, object]:
    """``tree_state`` of the source tree, minus what is ignored."""
    return {
        k: v
        for k, v in tree_state(src).items()
        if not k.startswith(".git") and "__pycache__" not in k
    }


def synced(src: Path, ws: Path) -> None:
    """The workspace equals the source tree, minus what is ignored."""
    assert tree_state(ws) == expected_state(src)


def test_initial_sync_then_noop(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    make_tree(src)
    r = connect_once(src, sc)
    assert r.returncode == 0, r.stderr
    synced(src, sc.workspace)
    assert not (sc.workspace / ".git").exists()
    written = status(sc.address, "tok-123").files_written
    r = connect_once(src, sc)
    assert r.returncode == 0, r.stderr
    assert "initial sync: 0 change(s)" in r.stderr
    assert status(sc.address, "tok-123").files_written == written


def test_every_kind_of_change_while_watching(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    make_tree(src)
    proc = connect_follow(src, sc, *NO_RESCAN)
    try:
        wait_until(lambda: (sc.workspace / "large.dat").exists(), 60, "initial sync")
        steps = [
            lambda: (src / "new.txt").write_text("created\n"),
            lambda: (src / "app" / "main.py").write_text("print('changed')\n"),
            lambda: os.remove(src / "app" / "static" / "logo.bin"),
            lambda: os.rename(src / "new.txt", src / "renamed.txt"),
            lambda: os.makedirs(src / "deep" / "er" / "est"),
            lambda: (src / "deep" / "er" / "est" / "leaf.py").write_text("x = 1\n"),
            lambda: os.chmod(src / "renamed.txt", 0o700),
            lambda: (os.remove(src / "main-link"), os.symlink("renamed.txt", src / "main-link")),
            lambda: (src / "emoji-🚀.bin").write_bytes(bytes(range(256)) * 10),
            lambda: os.rename(src / "app" / "static", src / "app" / "assets"),
            lambda: os.rmdir(src / "empty-dir"),
            lambda: (src / "large.dat").write_bytes(
                (src / "large.dat").read_bytes()[:-10] + b"0123456789"
            ),
        ]
        for step in steps:
            step()
            wait_same_filtered(src, sc.workspace)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def wait_same_filtered(
    src: Path,
    ws: Path,
    proc: ConnectProcess | None = None,
    sc: Sidecar | None = None,
    timeout: float = 30.0,
) -> None:
    """Wait for the workspace to match; on a timeout, say which paths differ
    and what ``proc`` (a watching ``connect``) printed last."""

    def ok() -> bool:
        try:
            synced(src, ws)
            return True
        except (AssertionError, FileNotFoundError):
            return False

    try:
        wait_until(ok, timeout, "the workspace to match")
    except AssertionError as e:
        want, have = expected_state(src), tree_state(ws)
        differ = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
        said = "\n".join(proc.lines[-40:]) if proc is not None else "-"
        logged = "\n".join(sc.raw[-30:]) if sc is not None else "-"
        raise AssertionError(
            f"{e}; paths that differ: {differ[:20]}\n"
            f"connect printed:\n{said}\nthe sidecar logged:\n{logged}"
        ) from None


def test_wrong_token_is_one_clear_line(env: tuple[Path, Sidecar], tmp_path: Path) -> None:
    src, sc = env
    (src / "a").write_text("a")
    bad = tmp_path / "bad-token"
    bad.write_text("nope")
    r = connect_once(src, sc, bad)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("devstack connect: ")
    assert "refused the token" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (sc.workspace / "a").exists()


def test_unreachable_and_bad_path_are_one_clear_line(
    env: tuple[Path, Sidecar], tmp_path: Path
) -> None:
    src, sc = env
    dead = Sidecar(sc.workspace, sc.token_file)
    dead.port = 1  # nothing listens there
    r = connect_once(src, dead, timeout=60)
    assert r.returncode == 2 and "cannot reach the sidecar" in r.stderr
    assert "Traceback" not in r.stderr
    f = tmp_path / "file"
    f.write_text("x")
    r = connect_once(f, sc)
    assert r.returncode == 2 and "is not a directory" in r.stderr
    r = connect_once(tmp_path / "missing", sc)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_sidecar_restart_converges_without_resending(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    make_tree(src)
    proc = connect_follow(src, sc, *NO_RESCAN)
    try:
        wait_same_filtered(src, sc.workspace)
        sc.restart()  # same port; the connection drops
        (src / "after-restart.txt").write_text("new\n")
        wait_same_filtered(src, sc.workspace)
        # Only the new file was written by the restarted sidecar.
        wait_until(lambda: status(sc.address, "tok-123").files_written == 1, 10, "status")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)


def landed(ws: Path, src: Path, pattern: str) -> list[Path]:
    """The files of ``pattern`` in the workspace, each checked whole."""
    found = sorted(ws.glob(pattern))
    for p in found:
        assert p.read_bytes() == (src / p.name).read_bytes(), f"{p.name} is half-written"
    return found


def test_killed_client_mid_sync_leaves_no_half_file_and_converges(
    env: tuple[Path, Sidecar],
) -> None:
    src, sc = env
    for i in range(40):
        (src / f"f{i:02}.bin").write_bytes(os.urandom(512 * 1024))
    # The proxy stops forwarding half-way through, inside a file's chunks:
    # the kill lands mid-sync, not after it.
    proxy = TcpProxy(sc.port).start()
    try:
        proxy.stall_after(10 * 1024 * 1024 + 100_000)
        proc = ConnectProcess(src, proxy.address, sc.token_file, *NO_RESCAN)
        assert proxy.tripped.wait(120), "the sync never got half-way"
        proc.proc.kill()
        proc.proc.wait()
        assert len(landed(sc.workspace, src, "f*.bin")) < 40
    finally:
        proxy.stop()
    r = connect_once(src, sc)
    assert r.returncode == 0, r.stderr
    synced(src, sc.workspace)
    staging = sc.workspace / ".devstack" / "staging"
    wait_until(lambda: os.listdir(staging) == [], 10, "staging to be empty")


@pytest.mark.parametrize("once", [True, False], ids=["once", "watch"])
def test_ctrl_c_during_the_initial_sync_stops_it_there(
    env: tuple[Path, Sidecar], once: bool
) -> None:
    src, sc = env
    n = 50
    for i in range(n):  # 200 MB that does not compress: seconds to send
        (src / f"big{i:02}.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    proc = ConnectProcess(src, sc.address, sc.token_file, *(("--once",) if once else NO_RESCAN))
    wait_until(lambda: any(sc.workspace.glob("big*.bin")), 120, "the first file to land")
    code = proc.stop(signal.SIGINT, timeout=120)
    # --once did not reach matching trees: 130. Watching, Ctrl-C is how it ends: 0.
    assert code == (130 if once else 0), proc.stderr
    assert "Traceback" not in proc.stderr
    # It stopped where it was: the rest of the tree never went.
    assert len(landed(sc.workspace, src, "big*.bin")) < n
    # The sidecar dropped the uncommitted batch, and the next run converges.
    staging = sc.workspace / ".devstack" / "staging"
    wait_until(lambda: os.listdir(staging) == [], 30, "staging to be empty")
    r = connect_once(src, sc)
    assert r.returncode == 0, r.stderr
    synced(src, sc.workspace)


@pytest.mark.parametrize(
    "cuts",
    [1, RetryPolicy().failure_attempts + 1],
    ids=["once", "more-times-in-a-row-than-sidecar-failures-are-tolerated"],
)
def test_a_connection_cut_mid_batch_reconnects_and_resends_nothing_unchanged(
    env: tuple[Path, Sidecar], cuts: int
) -> None:
    """The network cuts the stream under a write, ``cuts`` times in a row:
    the same ``connect`` reconnects each time (a cut is a dropped
    connection, never a sidecar failure) and converges."""
    src, sc = env
    n = 30
    for i in range(n):
        (src / f"part{i:02}.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    proxy = TcpProxy(sc.port).start()
    proc: ConnectProcess | None = None
    try:
        proxy.cut_after(25 * 1024 * 1024)  # inside the 13th file
        proc = ConnectProcess(src, proxy.address, sc.token_file, *NO_RESCAN)
        for cut in range(1, cuts + 1):
            assert proxy.tripped.wait(120), f"cut {cut} never happened"
            if cut == 1:
                assert len(landed(sc.workspace, src, "part*.bin")) < n
            wait_until(
                lambda p=proc, k=cut: len(p.events("connect.retry")) >= k,
                60,
                f"retry {cut}",
            )
            proxy.restore()
            if cut < cuts:  # the next session gets 5 MB through, then is cut
                proxy.cut_after(5 * 1024 * 1024)
        wait_same_filtered(src, sc.workspace, proc, sc, timeout=120)
        assert proc.proc.poll() is None, proc.stderr  # the same process reconnected
        assert any(line.startswith("disconnected (") for line in proc.lines)
        assert not any("giving up" in line for line in proc.lines), proc.stderr
        # Every file was written exactly once: what landed before a cut
        # was not sent again.
        assert status(sc.address, "tok-123").files_written == n
        assert proc.stop() == 0
    finally:
        if proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
        proxy.stop()


def test_once_exits_4_when_the_tree_keeps_changing(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    log = src / "build.log"
    log.write_text("x")

    class Churn:
        """A build that appends to its log after every round."""

        def __init__(self) -> None:
            self.rounds = 0
            self.notes: list[str] = []

        def round_started(self, plan: Plan, *, initial: bool) -> None: ...
        def progress(self, files: int, nbytes: int) -> None: ...
        def event(self, event: pb.Event) -> None: ...

        def round_finished(self, stats: Stats) -> None:
            self.rounds += 1
            log.write_text("x" * (self.rounds + 1))

        def note(self, text: str) -> None:
            self.notes.append(text)

    churn = Churn()
    syncer = Syncer(
        src, Target(sc.address, "tok-123"), reporter=churn, cache_path=src.parent / "c.json"
    )
    assert asyncio.run(syncer.run(once=True)) == EXIT_UNSETTLED
    assert churn.rounds == ONCE_ROUNDS
    assert any("still changing" in n for n in churn.notes)
    # Once it holds still, --once gets there.
    r = connect_once(src, sc)
    assert r.returncode == 0, r.stderr
    assert (sc.workspace / "build.log").read_text() == log.read_text()


def test_a_wrong_workspace_name_is_refused_in_one_line(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    (src / "a").write_text("a")
    r = connect_once(src, sc, None, "--workspace", "billing")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("devstack connect: ")
    assert "serves workspace 'ws', not 'billing'" in r.stderr
    assert not (sc.workspace / "a").exists()
    r = connect_once(src, sc, None, env={"DEVSTACK_WORKSPACE_NAME": "ws"})
    assert r.returncode == 0, r.stderr
    assert (sc.workspace / "a").read_text() == "a"


def test_the_token_never_reaches_the_output(env: tuple[Path, Sidecar], tmp_path: Path) -> None:
    src, sc = env
    make_tree(src)
    debug = {"DEVSTACK_LOG_LEVEL": "debug"}
    r = connect_once(src, sc, env=debug)
    assert r.returncode == 0, r.stderr
    assert '"event": "connect.session"' in r.stderr  # the debug log did run
    assert "tok-123" not in r.stderr + r.stdout
    bad = tmp_path / "bad-token"
    bad.write_text("wr0ng-s3cret\n")
    r = connect_once(src, sc, bad, env=debug)
    assert r.returncode == 2
    assert "wr0ng-s3cret" not in r.stderr + r.stdout


def test_the_digest_cache_is_saved_while_running(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    make_tree(src)
    proc = ConnectProcess(src, sc.address, sc.token_file, *NO_RESCAN)
    cache_dir = src.parent / ".cache" / "devstack"

    def cached() -> set[str]:
        for f in cache_dir.glob("manifest-*.json"):
            return set(DigestCache.load(f))  # a torn or missing file reads as empty
        return set()

    try:
        wait_same_filtered(src, sc.workspace)
        wait_until(lambda: {"large.dat", "app/main.py"} <= cached(), 60, "the cache on disk")
    finally:
        proc.proc.kill()  # no chance to save at exit
        proc.proc.wait()
    assert {"large.dat", "app/main.py", "run.sh", "app/static/logo.bin"} <= cached()


def test_a_path_ignored_by_a_nested_gitignore_stays_in_the_pod(
    env: tuple[Path, Sidecar],
) -> None:
    src, sc = env
    (src / "web" / "dist").mkdir(parents=True)
    (src / "web" / "app.js").write_text("app\n")
    (src / "web" / "dist" / "bundle.js").write_text("built\n")
    assert connect_once(src, sc).returncode == 0
    assert (sc.workspace / "web" / "dist" / "bundle.js").exists()
    # From now on the team ignores the build output, and a clean removes it here.
    (src / "web" / ".gitignore").write_text("dist/\n")
    shutil.rmtree(src / "web" / "dist")
    (src / "web" / "app.js").write_text("app v2\n")
    r = connect_once(src, sc)
    assert r.returncode == 0, r.stderr
    assert (sc.workspace / "web" / "app.js").read_text() == "app v2\n"
    assert (sc.workspace / "web" / ".gitignore").read_text() == "dist/\n"
    assert (sc.workspace / "web" / "dist" / "bundle.js").read_text() == "built\n"


def test_app_change_is_reported_as_conflict_not_overwritten(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    (src / "config.yaml").write_text("v: 1\n")
    assert connect_once(src, sc).returncode == 0
    (sc.workspace / "config.yaml").write_text("v: app\n")  # the app writes it
    (src / "config.yaml").write_text("v: 2\n")
    r = connect_once(src, sc)
    assert r.returncode == 3
    assert "config.yaml" in r.stderr and "changed" in r.stderr
    assert (sc.workspace / "config.yaml").read_text() == "v: app\n"
    r = connect_once(src, sc, None, "--force")
    assert r.returncode == 0, r.stderr
    assert (sc.workspace / "config.yaml").read_text() == "v: 2\n"


def test_seeded_workspace_syncs_incrementally(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    make_tree(src)
    # The image already holds most of the tree, plus files of its own.
    for rel, (kind, _, data) in tree_state(src).items():
        if rel.startswith(".git") or "__pycache__" in rel or rel == "app/main.py":
            continue
        p = sc.workspace / rel
        if kind == "dir":
            p.mkdir(parents=True, exist_ok=True)
        elif kind == "file":
            p.write_bytes(data)
            os.chmod(p, os.stat(src / rel).st_mode & 0o7777)
        else:
            os.symlink(data.decode(), p)
    (sc.workspace / "installed-by-image.txt").write_text("keep me")
    r = connect_once(src, sc)
    assert r.returncode == 0, r.stderr
    assert status(sc.address, "tok-123").files_written == 1  # only app/main.py
    assert (sc.workspace / "installed-by-image.txt").read_text() == "keep me"


def _sync_once(src: Path, sc: Sidecar, **kw: object) -> Syncer:
    syncer = Syncer(
        src,
        Target(sc.address, "tok-123"),
        reporter=QuietReporter(),
        cache_path=src.parent / "cache-of-this-story",
        **kw,  # type: ignore[arg-type]
    )
    assert asyncio.run(syncer.run(once=True)) == 0
    return syncer


def test_compress_never_auto_always_decide_what_goes_on_the_wire(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    text = b"def handler(request):\n    return respond(request, status=200)\n" * 12_000
    (src / "big.py").write_bytes(text)  # compressible, in chunks
    (src / "small.txt").write_bytes(text[:100_000])  # compressible, inline
    (src / "noise.bin").write_bytes(os.urandom(600_000))  # incompressible
    (src / "packed.png").write_bytes(text[:200_000])  # compressible, named as compressed
    total = sum(p.stat().st_size for p in src.iterdir())
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    sent: dict[str, int] = {}
    for mode in ("never", "auto", "always"):
        ws = tmp_path / f"ws-{mode}"
        ws.mkdir()
        sc = Sidecar(ws, token).start()
        try:
            sent[mode] = _sync_once(src, sc, compress=mode).stats.bytes_sent
            synced(src, ws)
        finally:
            sc.stop()
        (src.parent / "cache-of-this-story").unlink()
    assert sent["never"] == total
    # auto: the text shrinks, the noise and the .png go as they are.
    assert 600_000 + 200_000 < sent["auto"] < 600_000 + 200_000 + 100_000
    # always: the .png's content is compressed too.
    assert sent["always"] < sent["auto"] - 150_000


def test_a_renamed_file_moves_no_bytes_even_before_it_is_hashed(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    (src / "a.txt").write_bytes(b"some content worth keeping\n" * 100)
    (src / "other.txt").write_bytes(b"x" * 2700)  # the same size: not the same file
    _sync_once(src, sc)
    os.rename(src / "a.txt", src / "b.txt")
    (src / "new.txt").write_bytes(b"new")
    syncer = _sync_once(src, sc)
    # b.txt was new to the cache, and small: its digest was found only because
    # the workspace had lost a file of its size, and the move became a rename.
    assert syncer.stats.bytes_sent == len(b"new")
    synced(src, sc.workspace)


def test_compress_takes_only_its_three_values(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    r = connect_once(src, sc, None, "--compress", "fast")
    assert r.returncode == 2 and "invalid choice: 'fast'" in r.stderr
    (src / "a").write_text("a" * 1000)
    r = connect_once(src, sc, None, "--compress", "never")
    assert r.returncode == 0, r.stderr
    assert (sc.workspace / "a").read_text() == "a" * 1000
