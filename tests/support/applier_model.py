"""Random programs against the sidecar's batch applier, and the invariant
they must keep: the one home of both for the property test
(tests/sidecar/test_applier_property.py) and the fuzzer
(tests/fuzz/fuzz_applier.py).

A program is drawn through a :class:`Chooser` (hypothesis' draws, or
atheris' ``FuzzedDataProvider``): a list of steps, each one of

- an app action, done directly on disk as the app would (never through a
  symlink): write or edit a file, make folders, a symlink with any target
  (absolute, escaping, ``..`` after a name), chmod a folder 000, make a
  fifo, remove something;
- a batch of sync ops (mkdir, write, symlink, rename, chmod, delete,
  adopt), staged the way the server stages them (inline, chunked, delta,
  short, corrupt, too long) and committed, or aborted; their
  ``expected``/``expected_absent`` are realistic (what the path holds now) or
  hostile (absent when something is there, unset, stale), some forced;
- a session start (a manifest scan, which forgets the ancestors of what is
  gone) or a sidecar restart (ancestors come back from the journal).

Paths are drawn near the ones drawn before, or as ``@k``: the k-th entry the
workspace holds when the step runs (see ``Runner.named``).

:func:`run` plays a program against a real :class:`Workspace` in a fresh
sandbox and returns the first :class:`Violation`, checked after every batch:

(a) no symlink in the workspace resolves outside it or into ``.devstack/``
    (followed as the kernel follows it, dangling ones lexically past the
    first missing name), unless an app symlink that sync never moved is on
    its way: the app's own links are its business; one sync moved is not.
(b) nothing outside the workspace changed (canaries beside it: path, mode,
    owner, size, mtime, content).
(c) nothing in the workspace has setuid, setgid or sticky bits (the app
    never sets them, so sync did).
(d) nothing half-written or astray: every file holds complete content
    someone sent, every entry is what sync last put at that path (moved with
    its renames) or what the app made there, staging is empty after commit or
    abort, an aborted batch changed nothing, and the applier raised nothing
    but ``UnsafePathError``, ``ProtocolError`` or ``WorkspaceIOError`` (and
    never hung).
(e) safe mode keeps what the app made or changed (files, symlinks, folders,
    fifos), following ``devstack.core.sync.conflict``: sync never removes or moves
    what it did not write, nor replaces a folder of it (it may overwrite an
    untracked file, or replace it with another kind); what the app changed it
    touches only when forced, and never moves; a fifo it never touches. What
    the app made is still there after every batch (at its folder's new place
    if sync moved the folder).

Who runs as whom. Root passes every permission check, so a folder the app
makes mode 000 would still be readable to a sidecar running as root. Run
as root, the sandbox belongs to uid/gid 65534 and the sidecar's and the
app's steps run with that effective uid (``os.seteuid``; root stays the
saved uid): the kernel empties the effective capability set when the
effective uid leaves 0 and fills it again from the permitted set when it
comes back (capabilities(7)), so the applier meets the permission checks of
a non-root sidecar, and the checker reads everything as root. Run as
another user, everyone is that user, and the checker opens up (chmod u+rwx)
what it cannot read and restores the modes afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes  # noqa: F401 (see below)
import dataclasses
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from devstack.core.errors import DevstackError, ProtocolError, UnsafePathError, WorkspaceIOError
from devstack.core.ignore import IgnoreRules
from devstack.core.manifest import Entry, Kind, hash_bytes
from devstack.core.paths import RESERVED_DIR
from devstack.core.sync.model import OpKind
from devstack.sidecar.workspace import Batch, Outcome, StagedOp, Workspace

# The interpreter may live where uid 65534 cannot read (/root/.pyenv): what
# the applier imports lazily (ctypes, for renameat2) is imported here, as root.

#: What the applier may raise; anything else is a violation.
DOCUMENTED = (UnsafePathError, ProtocolError, WorkspaceIOError)
PRIVILEGED = os.geteuid() == 0
#: The unprivileged identity the sidecar and the app get when run as root.
SIDECAR_UID = SIDECAR_GID = 65534
#: Where sandboxes go: tmpfs if there is one (a program makes and removes
#: dozens of folders, and removing folders on a disk mounted with
#: ``discard`` takes milliseconds each).
SANDBOXES = os.environ.get("APPLIER_TMP") or (
    "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else None
)
#: A batch that takes longer than this is hung (a blocking open, a loop):
#: generous, as a real hang never ends, and a loaded CI machine is slow.
HANG_SECONDS = 30.0

SEGMENTS = ("a", "b", "c")
DEPTHS = (1, 1, 1, 2, 2, 3, 4, 9, 11)  # deep chains exercise the folder caches
SYNC_DATA = (b"", b"s", b"sync-data", b"S" * 3000)
#: Lengths differ from every sync content: an edit in the same clock tick as
#: a sync write must not keep the digest cache's stat key.
APP_DATA = (b"APP-ONE", b"APP-EDIT-TWO!")
FILE_MODES = (0o644, 0o755, 0o4755, 0o2755, 0o1777, 0o7777, 0o600, 0o000)
DIR_MODES = (0o755, 0o7777, 0o2775, 0o1777, 0o700, 0o300, 0o000)
APP_MODES = (0o000, 0o755, 0o000, 0o300, 0o500)
SENDS = ("inline", "inline", "chunked", "delta", "short", "corrupt", "long")
EXPECTS = ("actual", "actual", "absent", "none", "stale")
#: Repeats weigh the choice (the first is the simplest).
OP_KINDS = (*("write", "mkdirs", "symlink", "rename", "delete") * 2, "chmod", "mkdir", "adopt")
APP_ACTIONS = ("write", "symlink", "mkdirs", "chmod", "write", "symlink", "delete", "fifo")
#: Absolute targets; {base} is the folder holding the workspace and the canaries.
ABSOLUTE = ("{base}/canary.txt", "{base}/outside", "{base}/outside/sub", "{base}", "{ws}/a")
MAX_STEPS = 14
MAX_OPS = 16


class Chooser(Protocol):
    """A source of choices: ``int(n)`` is in ``range(n)``; 0 is the
    simplest (what shrinking moves towards, what exhausted input gives)."""

    def int(self, n: int) -> int: ...


# ------------------------------------------------------------------ programs


@dataclass(frozen=True)
class Op:
    """One sync op as the program names it (``mkdirs``: a mkdir of every
    folder on the way, as the planner sends them)."""

    kind: str
    path: str
    source: str = ""  # rename: the path that moves
    target: str = ""  # symlink
    mode: int = 0
    data: int = 0  # write: index into SYNC_DATA
    send: str = "inline"
    expect: str = "actual"
    force: bool = False

    def __str__(self) -> str:
        what = {
            "write": lambda: f"{SYNC_DATA[self.data][:12]!r} {self.mode:#o} {self.send}",
            "symlink": lambda: f"-> {self.target}",
            "rename": lambda: f"<- {self.source}",
            "mkdir": lambda: f"{self.mode:#o}",
            "mkdirs": lambda: f"{self.mode:#o}",
            "chmod": lambda: f"{self.mode:#o}",
        }.get(self.kind, lambda: "")()
        force = " force" if self.force else ""
        return f"{self.kind} {self.path} {what} expect={self.expect}{force}".replace("  ", " ")


@dataclass(frozen=True)
class App:
    """An action of the app, straight on disk."""

    action: str
    path: str
    target: str = ""
    mode: int = 0
    data: int = 0

    def __str__(self) -> str:
        what = {
            "write": lambda: repr(APP_DATA[self.data]),
            "symlink": lambda: f"-> {self.target}",
            "chmod": lambda: f"{self.mode:#o}",
        }.get(self.action, lambda: "")()
        return f"app {self.action} {self.path} {what}".rstrip()


@dataclass(frozen=True)
class Commit:
    ops: tuple[Op, ...]
    abort: bool = False

    def __str__(self) -> str:
        head = "batch, aborted" if self.abort else "batch"
        return "\n".join([head + ":", *(f"    {op}" for op in self.ops)])


@dataclass(frozen=True)
class Sidecar:
    what: str  # "session" (a manifest scan) or "restart"

    def __str__(self) -> str:
        return f"sidecar {self.what}"


Step = App | Commit | Sidecar


@dataclass(frozen=True)
class Program:
    replica: bool
    steps: tuple[Step, ...]

    def __repr__(self) -> str:
        mode = "replica" if self.replica else "safe"
        return "\n".join([f"<program, {mode} mode>", *(f"  {s}" for s in self.steps)])


class _Draw:
    """Draws a program's parts; paths mostly near those drawn before (the
    same, a child, the parent, a sibling), so ops meet each other's work."""

    def __init__(self, c: Chooser) -> None:
        self.c = c
        self.pool: list[str] = []

    def pick(self, options: tuple[str, ...] | tuple[int, ...]) -> str | int:
        return options[self.c.int(len(options))]

    def path(self, *, fresh: bool = False, known: bool = False) -> str:
        """A path; likelier one that is not there yet (a new name beside or
        below a recent path) if ``fresh``, a recent one or its parent if
        ``known``."""
        c = self.c
        how = c.int(8)
        if fresh:
            how = (0, 3, 5, 5, 3, 2, 7, 7)[how]
        elif known:
            how = (2, 2, 4, 4, 6, 6, 6, 0)[how]
        if not self.pool and how < 6:
            how = 0
        seg = str(self.pick(SEGMENTS))
        if how >= 6:  # what is there when it runs: see Runner.named
            path = f"@{c.int(64)}" + (f"/{seg}" if how == 7 else "")
        elif how <= 1:
            depth = int(self.pick(DEPTHS))
            path = "/".join([seg, *(str(self.pick(SEGMENTS)) for _ in range(depth - 1))])
        else:
            near = self.pool[-1 - c.int(min(len(self.pool), 8))]
            head = near.rpartition("/")[0]
            path = {
                2: near,
                3: f"{near}/{seg}",
                4: (head.rpartition("/")[0] if c.int(3) == 2 else head) or near,
                5: f"{head}/{seg}".lstrip("/"),
            }[how]
        self.pool.append(path)
        return path

    def target(self, path: str, *, app: bool = False) -> str:
        """A symlink target: for sync mostly ones ``check_link_target`` lets
        through, for the app mostly ones it refuses (one '..' too many,
        absolute, '..' after a name)."""
        c = self.c
        form = (2, 2, 3, 4, 0, 1)[c.int(6)] if app else (0, 0, 0, 0, 0, 1, 2, 3, 4)[c.int(9)]
        names = self.path() if c.int(4) else ""
        if form <= 1:  # 1: one '..' too many
            ups = c.int(path.count("/") + 1) if form == 0 else path.count("/") + 1
            return "/".join([".."] * ups + ([names] if names else [])) or "."
        if form == 2:
            return str(self.pick(ABSOLUTE))
        if form == 3:
            return "/".join([*path.split("/")[:-1], "..", "..", "canary.txt"])
        return f"{names or 'a'}/{'../' * (names.count('/') + 2)}canary.txt"

    def op(self) -> Op:
        c = self.c
        kind = str(self.pick(OP_KINDS))
        path = self.path(known=kind == "rename")
        expect = str(self.pick(EXPECTS))
        force = c.int(8) == 7
        if kind == "write":
            mode = int(self.pick(FILE_MODES))
            data, send = c.int(len(SYNC_DATA)), str(self.pick(SENDS))
            return Op(kind, path, mode=mode, data=data, send=send, expect=expect, force=force)
        if kind == "symlink":
            return Op(kind, path, target=self.target(path), expect=expect, force=force)
        if kind == "rename":
            return Op(kind, self.path(fresh=True), source=path, expect=expect, force=force)
        if kind in ("mkdir", "mkdirs", "chmod"):
            modes = FILE_MODES + DIR_MODES if kind == "chmod" else DIR_MODES
            return Op(kind, path, mode=int(self.pick(modes)), expect=expect, force=force)
        return Op(kind, path, expect=expect, force=force)

    def app(self) -> App:
        action = str(self.pick(APP_ACTIONS))
        path = self.path()
        if action == "write":
            return App(action, path, data=self.c.int(len(APP_DATA)))
        if action == "symlink":
            return App(action, path, target=self.target(path, app=True))
        if action == "chmod":
            return App(action, path, mode=int(self.pick(APP_MODES)))
        return App(action, path)


def draw_program(c: Chooser) -> Program:
    """A program, every choice made through ``c``."""
    d = _Draw(c)
    replica = c.int(5) == 4
    steps: list[Step] = []
    while len(steps) < MAX_STEPS and c.int(8):
        kind = c.int(8)
        if kind <= 2:
            steps.append(d.app())
        elif kind == 7:
            steps.append(Sidecar("restart" if c.int(2) else "session"))
        else:
            ops: list[Op] = []
            while len(ops) < MAX_OPS and (not ops or c.int(6)):
                ops.append(d.op())
            steps.append(Commit(tuple(ops), abort=c.int(10) == 9))
    return Program(replica, tuple(steps))


# ------------------------------------------------------------------ running


class Hang(BaseException):
    """A step of the applier that never returned (BaseException: no broad
    ``except`` in the applier swallows it)."""


class _Watchdog:
    """Interrupts the main thread (SIGVTALRM, which neither pytest-timeout
    nor libFuzzer use) when an armed step outlives ``HANG_SECONDS``: a
    blocking syscall returns EINTR and the handler raises :class:`Hang`
    there. Polls twice a second, so arming costs nothing."""

    def __init__(self) -> None:
        self._deadline = 0.0  # 0: not armed
        self._main = threading.main_thread().ident
        signal.signal(signal.SIGVTALRM, self._fire)
        if PRIVILEGED:
            os.setgroups([])  # once: the unprivileged steps get no supplementary groups
        threading.Thread(target=self._run, name="applier-watchdog", daemon=True).start()

    def _fire(self, signum: int, frame: object) -> None:
        if self._deadline and time.monotonic() > self._deadline:
            self._deadline = 0.0
            raise Hang(f"a step of the applier took more than {HANG_SECONDS:g} s")

    def _run(self) -> None:
        assert self._main is not None
        while True:
            time.sleep(0.5)
            if self._deadline and time.monotonic() > self._deadline:
                signal.pthread_kill(self._main, signal.SIGVTALRM)

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        self._deadline = time.monotonic() + HANG_SECONDS
        try:
            yield
        finally:
            self._deadline = 0.0


_watchdog: _Watchdog | None = None


@contextlib.contextmanager
def as_sidecar() -> Iterator[None]:
    """Run as the sidecar's (and the app's) unprivileged user; see the
    module docstring. Nothing to change when not run as root."""
    global _watchdog
    if _watchdog is None:
        _watchdog = _Watchdog()
    if not PRIVILEGED:
        with _watchdog.armed():
            yield
        return
    os.setegid(SIDECAR_GID)
    os.seteuid(SIDECAR_UID)
    try:
        with _watchdog.armed():
            yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@dataclass(frozen=True)
class Violation:
    """The invariant broken (its letter, see the module docstring), what
    was seen, and the program up to there with each op's outcome."""

    key: str
    what: str
    trace: tuple[str, ...]

    def __str__(self) -> str:
        return "\n".join([f"({self.key}) {self.what}", "after:", *self.trace])


#: Violations to look past (by key, e.g. ``APPLIER_SKIP=d-staging,e-op``),
#: to hunt for others while a known one is not fixed yet.
SKIP = frozenset(os.environ.get("APPLIER_SKIP", "").split(","))


class Found(Exception):
    """A violation: ``key`` is its rule's letter and a name (a-escape,
    b-outside, c-mode, d-raised, d-hang, d-abort, d-staging, d-content,
    d-stray, e-op, e-lost)."""

    def __init__(self, key: str, what: str) -> None:
        super().__init__(f"({key}) {what}")
        self.key, self.what = key, what


def fail(key: str, what: str) -> None:
    if key not in SKIP:
        raise Found(key, what)


@dataclass
class Item:
    """Something the app made that safe mode keeps: a file (its bytes), a
    symlink (its target), a folder or a fifo. ``created``: sync had not
    written that path when the app made it (untracked); otherwise the app
    edited what sync wrote (dirty)."""

    kind: str  # file | symlink | folder | fifo
    content: bytes | str
    created: bool

    def may(self, deed: str, *, force: bool) -> bool:
        """Whether safe mode lets sync do ``deed`` (overwrite: new content or
        mode, the same kind; replace: another kind; remove; move) to it. As
        the README and ``devstack.core.sync.conflict`` put it: sync never removes or
        moves what it did not write, nor replaces a folder of it; what the
        app changed it touches only when forced, and never moves; a fifo it
        never touches at all."""
        if self.kind == "fifo":
            return False
        if not self.created:
            return force and deed != "move"
        return deed == "overwrite" or (deed == "replace" and self.kind != "folder")

    def holds(self, entry: Entry | None, is_fifo: bool) -> bool:
        if self.kind == "fifo":
            return is_fifo
        if entry is None:
            return False
        if self.kind == "folder":
            return entry.kind == Kind.DIRECTORY
        if self.kind == "symlink":
            return entry.kind == Kind.SYMLINK and entry.target == self.content
        assert isinstance(self.content, bytes)
        return entry.kind == Kind.FILE and entry.digest == hash_bytes(self.content)


def _brief(expected: Entry | None, absent: bool) -> str:
    if expected is None:
        return "nothing" if absent else "unset"
    what = expected.target or expected.digest.hex()[:8]
    return f"{expected.kind.name.lower()} {what}".rstrip()


def _under(p: str, folder: str) -> bool:
    return p == folder or p.startswith(folder + "/")


def _moved(p: str, src: str, dst: str) -> str:
    return dst + p[len(src) :]


@dataclass
class Model:
    """What the program knows about who made what in the workspace."""

    replica: bool
    items: dict[str, Item] = field(default_factory=dict)
    #: The sidecar's ancestors as they should be: path -> (kind, digest or
    #: target) of what sync last wrote there, moved along with its renames.
    synced: dict[str, Value] = field(default_factory=dict)
    #: The app's symlinks that sync never moved: path -> target.
    app_links: dict[str, str] = field(default_factory=dict)
    #: Digests of complete content anyone sent or wrote.
    known: set[bytes] = field(default_factory=lambda: {hash_bytes(b"")})
    #: What sync did that safe mode forbids, found while following a batch.
    broken: list[str] = field(default_factory=list)

    def unmade(self, p: str) -> None:
        """The app removed ``p`` (the sidecar keeps its ancestor, if any,
        until a manifest scan finds the path gone)."""
        self.items.pop(p, None)
        self.app_links.pop(p, None)

    def made(self, p: str, kind: str, content: bytes | str = "") -> None:
        """The app made ``p`` or changed it: dirty where the sidecar holds
        an ancestor (unless it is that again), untracked elsewhere."""
        prior = self.items.pop(p, None)
        if self.synced.get(p) == _value(kind, content):
            return  # just what sync wrote: synced
        created = prior.created if prior is not None else p not in self.synced
        self.items[p] = Item(kind, content, created)

    def touch(self, p: str, op: StagedOp, deed: str) -> None:
        """Sync did ``deed`` to what was at ``p``: note it if safe mode keeps
        it from that."""
        item = self.items.get(p)
        if item is None or self.replica or item.may(deed, force=op.force):
            return
        whose = "made" if item.created else "changed"
        src = f"{op.from_path} -> " if op.from_path else ""
        did = {"remove": "removed", "move": "moved", "overwrite": "overwrote"}.get(deed, "replaced")
        self.broken.append(
            f"sync {did} {p!r}, a {item.kind} the app {whose} ({item.content!r}), by "
            f"{op.kind} {src}{op.path} (expected {_brief(op.expected, op.expected_absent)}"
            f"{', forced' if op.force else ''})"
        )

    def applied(self, op: StagedOp) -> None:
        """Follow an op the applier says it applied."""
        p = op.path
        item = self.items.get(p)
        now = _value(item.kind, item.content) if item else None
        assert op.entry is not None or op.kind in ("delete", "rename")
        if op.kind in ("write", "mkdir", "symlink", "chmod"):
            assert op.entry is not None
            entry = _recorded(op.entry)
            if item is not None:
                same = op.kind == "chmod" or item.kind == entry[0]
                self.touch(p, op, "overwrite" if same else "replace")
            self.unmade(p)
            if op.kind == "chmod":  # the content stays; its ancestor is what is there
                entry = now or self.synced.get(p) or entry
            self.synced[p] = entry
        elif op.kind == "delete":
            self.touch(p, op, "remove")
            self.unmade(p)
            self.synced.pop(p, None)
        elif op.kind == "adopt":  # the laptop holds the very same: sync's from now
            assert op.entry is not None
            self.items.pop(p, None)  # (a link stays where the app put it)
            self.synced[p] = _recorded(op.entry)
        elif op.kind == "rename" and op.from_path != p:
            src = op.from_path
            self.touch(src, op, "move")
            moving = self.items.get(src)
            was = _value(moving.kind, moving.content) if moving else None
            for q in [q for q in self.items if _under(q, p)]:
                self.touch(q, op, "replace")  # only a replica renames over something
                del self.items[q]
            # What the app made in a moved folder moves along; the app's
            # links in it are sync's to keep inside from now on.
            for q in [q for q in self.items if _under(q, src)]:
                self.items[_moved(q, src, p)] = self.items.pop(q)
            self.app_links = {
                q: t for q, t in self.app_links.items() if not (_under(q, p) or _under(q, src))
            }
            moved = {q: v for q, v in self.synced.items() if _under(q, src)}
            self.synced = {q: v for q, v in self.synced.items() if not _under(q, p)}
            for q, v in moved.items():
                del self.synced[q]
                self.synced[_moved(q, src, p)] = v
            # The sidecar records what it moved as sync's at the new place.
            top = was or moved.get(src)
            if top is not None:
                self.synced[p] = top
            self.items.pop(p, None)


_KINDS = {Kind.FILE: "file", Kind.SYMLINK: "symlink", Kind.DIRECTORY: "folder"}
#: An ancestor as the model keeps it: (kind, the file's digest or the link's target).
Value = tuple[str, bytes | str]


def _value(kind: str, content: bytes | str) -> Value:
    """The ancestor sync would record for an item of ``kind`` holding ``content``."""
    if kind == "file":
        assert isinstance(content, bytes)
        return kind, hash_bytes(content)
    return kind, content if kind == "symlink" else ""


def _on_disk(path: str, st: os.stat_result, data: bytes) -> Value:
    if stat.S_ISREG(st.st_mode):
        return "file", hash_bytes(data)
    if stat.S_ISLNK(st.st_mode):
        return "symlink", os.readlink(path)
    return "folder" if stat.S_ISDIR(st.st_mode) else "fifo", ""


def _recorded(entry: Entry) -> Value:
    return _KINDS[entry.kind], entry.digest if entry.kind == Kind.FILE else entry.target


class Sandbox:
    """A fresh folder holding the workspace ``ws/`` and canaries beside it."""

    def __init__(self) -> None:
        self.base = os.path.realpath(tempfile.mkdtemp(prefix="applier-", dir=SANDBOXES))
        self.root = os.path.join(self.base, "ws")
        os.mkdir(self.root)
        os.makedirs(os.path.join(self.base, "outside", "sub"))
        for name in ("canary.txt", "outside/canary", "outside/sub/canary"):
            with open(os.path.join(self.base, name), "wb") as f:
                f.write(b"canary " + name.encode())
        if PRIVILEGED:
            for dirpath, dirnames, filenames in os.walk(self.base):
                for n in ["", *dirnames, *filenames]:
                    os.chown(os.path.join(dirpath, n), SIDECAR_UID, SIDECAR_GID)
        #: Modes the checker changed to read what it could not (not root).
        self._opened: list[tuple[str, int]] = []

    def close(self) -> None:
        self.restore()
        for dirpath, dirnames, _ in os.walk(self.base):  # rmtree needs to list
            for n in dirnames:
                p = os.path.join(dirpath, n)
                if not os.path.islink(p):
                    os.chmod(p, 0o700)
        shutil.rmtree(self.base)

    def full(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def substitute(self, target: str) -> str:
        return target.format(base=self.base, ws=self.root)

    # ----------------------------------------------------- the checker's view

    def _open_up(self, path: str, need: int) -> None:
        """Make ``path`` readable to the checker (not root: we own it)."""
        if PRIVILEGED or os.access(path, need, follow_symlinks=False):
            return
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        os.chmod(path, mode | 0o700)
        self._opened.append((path, mode))

    def restore(self) -> None:
        while self._opened:
            path, mode = self._opened.pop()
            os.chmod(path, mode)

    def read(self, path: str) -> bytes:
        self._open_up(path, os.R_OK)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def tree(self, top: str, skip: str) -> dict[str, os.stat_result]:
        """Every entry below ``top`` by relative path ('' for ``top``),
        never following a symlink; the top-level name ``skip`` left out."""
        out = {"": os.lstat(top)}
        stack = [""]
        while stack:
            rel = stack.pop()
            full = os.path.join(top, rel) if rel else top
            self._open_up(full, os.R_OK | os.X_OK)
            for name in sorted(os.listdir(full)):
                r = f"{rel}/{name}" if rel else name
                if r == skip:
                    continue
                st = out[r] = os.lstat(os.path.join(top, r))
                if stat.S_ISDIR(st.st_mode):
                    stack.append(r)
        return out

    def snapshot(self, top: str, skip: str) -> dict[str, tuple[object, ...]]:
        """(mode, owner, size, mtime, content) of everything below ``top``."""
        out: dict[str, tuple[object, ...]] = {}
        for rel, st in self.tree(top, skip).items():
            full = os.path.join(top, rel) if rel else top
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = hash_bytes(self.read(full))
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(full)
            out[rel] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, content)
        return out

    def entry(self, rel: str) -> Entry | None:
        """What a laptop that is in sync believes is at ``rel`` (a manifest
        lists no fifos, and nothing under a symlink)."""
        path = self.root
        for part in rel.split("/")[:-1]:
            path = os.path.join(path, part)
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    return None
            except OSError:
                return None
            self._open_up(path, os.R_OK | os.X_OK)
        path = os.path.join(path, rel.rsplit("/", 1)[-1])
        try:
            st = os.lstat(path)
        except OSError:
            return None
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            return Entry(rel, Kind.DIRECTORY, 0, mode)
        if stat.S_ISLNK(st.st_mode):
            return Entry(rel, Kind.SYMLINK, 0, 0o777, b"", os.readlink(path))
        if stat.S_ISREG(st.st_mode):
            data = self.read(path)
            return Entry(rel, Kind.FILE, len(data), mode, hash_bytes(data))
        return None

    def resolve(self, path: str) -> tuple[str | None, list[str]]:
        """Where ``path`` leads, following symlinks as the kernel does and
        past the first missing name lexically (what a link would reach
        once the app makes those folders), and the symlinks on the way;
        None for a loop. Checked against the kernel where the path exists."""
        where, links, hops = "/", list[str](), 0
        pending = path.split("/")
        while pending:
            seg = pending.pop(0)
            if seg in ("", "."):
                continue
            if seg == "..":
                where = os.path.dirname(where)
                continue
            nxt = os.path.join(where, seg)
            try:
                link = os.readlink(nxt)
            except OSError:
                where = nxt
                continue
            hops += 1
            if hops > 40:
                return None, links
            links.append(nxt)
            if link.startswith("/"):
                where = "/"
            pending = link.split("/") + pending
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return where, links
        try:
            kernel = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        assert kernel == where, f"the checker resolves {path} to {where}, the kernel to {kernel}"
        return where, links


class Runner:
    """Plays one program (see :func:`run`)."""

    def __init__(self, program: Program, box: Sandbox) -> None:
        self.program = program
        self.box = box
        self.model = Model(program.replica)
        self.trace = [repr(program).splitlines()[0]]
        self.seq = 0
        self.done = False
        with as_sidecar():
            self.ws: Workspace | None = Workspace(Path(box.root), replica=program.replica)
        self.outside = box.snapshot(box.base, "ws")

    def close(self) -> None:
        if self.ws is not None:
            with as_sidecar():
                self.ws.close()

    def play(self) -> None:
        for step in self.program.steps:
            if self.done:
                break
            if isinstance(step, App):
                step = dataclasses.replace(
                    step, path=self.named(step.path), target=self.named(step.target)
                )
                self.trace.append(f"  {step}")
                with as_sidecar():
                    done = self.app(step)
                if not done:
                    self.trace[-1] += "   (not possible)"
            elif isinstance(step, Sidecar):
                self.trace.append(f"  {step}")
                self.sidecar(step.what)
            else:
                named = self.named
                ops = [
                    dataclasses.replace(
                        o, path=named(o.path), source=named(o.source), target=named(o.target)
                    )
                    for o in step.ops
                ]
                step = dataclasses.replace(step, ops=tuple(ops))
                self.trace.append(f"  {step}")
                self.batch(step)

    def named(self, path: str) -> str:
        """``@k`` (in a path or a link's target) names the k-th entry the
        workspace holds now (in order, modulo their number): programs are
        drawn blind, and this is how they get at what is there."""
        if "@" not in path:
            return path
        entries = sorted(self.box.tree(self.box.root, RESERVED_DIR))[1:] or ["a"]
        self.box.restore()
        return re.sub(r"@(\d+)", lambda k: entries[int(k[1]) % len(entries)], path)

    # ---------------------------------------------------------------- the app

    def app(self, a: App) -> bool:
        """Do ``a`` on disk as the app would (never through a symlink);
        False if it cannot (a folder on the way is unreadable, or is not a
        folder)."""
        box, m, p = self.box, self.model, a.path
        full = box.full(p)
        try:
            if not self.make_parents(p, make=a.action not in ("chmod", "delete")):
                return False
            if a.action == "chmod":
                if os.path.islink(full):
                    return False
                os.chmod(full, a.mode)
                return True
            if a.action == "delete":
                if os.path.isdir(full) and not os.path.islink(full):
                    os.rmdir(full)
                else:
                    os.unlink(full)
                m.unmade(p)
                return True
            if a.action == "mkdirs":
                os.mkdir(full)
                m.made(p, "folder")
                return True
            if a.action == "fifo":
                os.mkfifo(full)
                m.made(p, "fifo")
                return True
            if os.path.islink(full):
                os.unlink(full)  # ln -sf; and a new file rather than one through it
                m.unmade(p)
            if a.action == "symlink":
                target = box.substitute(a.target)
                os.symlink(target, full)
                m.app_links[p] = target
                m.made(p, "symlink", target)
                return True
            data = APP_DATA[a.data]
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
            fd = os.open(full, flags, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            m.known.add(hash_bytes(data))
            m.made(p, "file", data)
            return True
        except OSError:
            return False

    def make_parents(self, rel: str, *, make: bool) -> bool:
        """Whether the folders above ``rel`` are folders, not symlinks (the
        app's steps never go through one); with ``make``, make the missing
        ones as the app would (``mkdir -p``)."""
        path, at = self.box.root, ""
        for part in rel.split("/")[:-1]:
            path, at = os.path.join(path, part), f"{at}/{part}".lstrip("/")
            if make and not os.path.lexists(path):
                os.mkdir(path)
                self.model.made(at, "folder")
            elif os.path.islink(path) or not os.path.isdir(path):
                return False
        return True

    def broke(self, key: str, what: str) -> None:
        """The applier raised or hung: what it left is unknown, so the
        program ends here."""
        self.done = True
        fail(key, what)

    # ---------------------------------------------------------------- sidecar

    def sidecar(self, what: str) -> None:
        try:
            with as_sidecar():
                assert self.ws is not None
                if what == "session":
                    self.ws.manifest(IgnoreRules())
                else:
                    ws, self.ws = self.ws, None
                    ws.close()
                    self.ws = Workspace(Path(self.box.root), replica=self.program.replica)
        except DevstackError as e:
            self.trace[-1] += f"   -> {type(e).__name__}: {e}"
            return
        except Hang as e:
            return self.broke("d-hang", f"sidecar {what}: {e}")
        except Exception as e:
            return self.broke("d-raised", f"sidecar {what} raised {type(e).__name__}: {e}")
        if what == "session":  # it forgets the ancestors of paths gone (fifos too)
            m = self.model
            m.synced = {p: v for p, v in m.synced.items() if self.box.entry(p)}
            self.box.restore()

    # ---------------------------------------------------------------- batches

    def stage(self, commit: Commit) -> tuple[list[StagedOp], list[Callable[[Batch], None]]]:
        """The batch's ops, and its content as the server stages it: inline
        content in one ``inline_many``, then chunks and copy ranges."""
        box = self.box
        ops: list[StagedOp] = []
        inline: list[tuple[int, bytes]] = []
        later: list[Callable[[Batch], None]] = []
        for op in commit.ops:
            paths = [op.path]
            if op.kind == "mkdirs":
                parts = op.path.split("/")
                paths = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            for path in paths:
                i = len(ops)
                actual = box.entry(op.source if op.kind == "rename" else path)
                expected = {
                    "actual": actual,
                    "stale": Entry(path, Kind.FILE, 5, 0o644, hash_bytes(b"stale")),
                }.get(op.expect)
                absent = op.expect == "absent" or (op.expect == "actual" and actual is None)
                kind = OpKind(op.kind.removesuffix("s"))
                s = StagedOp(i, kind, path, None, expected, absent, op.source, op.force)
                if op.kind in ("mkdir", "mkdirs"):
                    mode = op.mode if path == op.path else 0o755
                    s = s._replace(entry=Entry(path, Kind.DIRECTORY, 0, mode))
                elif op.kind == "symlink":
                    target = box.substitute(op.target)
                    s = s._replace(entry=Entry(path, Kind.SYMLINK, 0, 0o777, b"", target))
                elif op.kind in ("rename", "chmod", "adopt"):
                    s = s._replace(entry=(actual or Entry(path, Kind.FILE))._replace(path=path))
                    if op.kind == "chmod":
                        assert s.entry is not None
                        s = s._replace(entry=s.entry._replace(mode=op.mode))
                    if op.kind == "adopt" and op.expect == "stale":
                        s = s._replace(entry=expected)
                elif op.kind == "write":
                    s, steps = self.stage_write(op, s, actual, inline)
                    later += steps
                ops.append(s)
        return ops, [lambda b: b.inline_many(inline, lambda op, d: d), *later]

    def stage_write(
        self, op: Op, s: StagedOp, actual: Entry | None, inline: list[tuple[int, bytes]]
    ) -> tuple[StagedOp, list[Callable[[Batch], None]]]:
        """The write op with its entry, and the steps that stage its content."""
        data = SYNC_DATA[op.data]
        i = s.index
        if op.send == "delta":
            old = b""
            if actual is not None and actual.kind == Kind.FILE:
                old = self.box.read(self.box.full(s.path))
            keep = len(old) // 2 if op.data % 2 else len(old)
            data = old[:keep] + data
            entry = Entry(s.path, Kind.FILE, len(data), op.mode, hash_bytes(data))
            s = s._replace(entry=entry, delta=True, chunked=True)
            self.model.known.add(hash_bytes(data))
            lit = data[keep:]
            copy = [lambda b: b.copy(i, 0, keep)] if keep else []
            return s, [*copy, lambda b: b.write(i, lit)]
        s = s._replace(entry=Entry(s.path, Kind.FILE, len(data), op.mode, hash_bytes(data)))
        self.model.known.add(hash_bytes(data))
        if op.send == "chunked":
            s = s._replace(chunked=True)
            half = len(data) // 2
            return s, [lambda b: b.write(i, data[:half]), lambda b: b.write(i, data[half:])]
        sent = {
            "short": data[:-1],
            "corrupt": bytes(x ^ 1 for x in data) or b"?",
            "long": data + b"!",
        }.get(op.send, data)
        inline.append((i, sent))
        return s, []

    def batch(self, commit: Commit) -> None:
        box, m = self.box, self.model
        self.seq += 1
        ops, steps = self.stage(commit)
        box.restore()
        before = box.snapshot(box.root, RESERVED_DIR)
        box.restore()
        outcomes: list[Outcome] | None = None
        batch: Batch | None = None
        committing = False
        assert self.ws is not None
        try:
            with as_sidecar():
                batch = self.ws.open_batch(self.seq, ops)
                try:
                    for fn in steps:
                        fn(batch)
                except DOCUMENTED:  # the server ends the session, the batch with it
                    batch.abort()
                    raise
                if commit.abort:
                    batch.abort()
                else:
                    committing = True
                    outcomes = batch.commit()
        except DOCUMENTED as e:
            self.trace.append(f"    -> {type(e).__name__}: {e}")
        except (Hang, Exception) as e:
            if batch is not None:
                with as_sidecar(), contextlib.suppress(Exception):
                    batch.abort()  # its descriptors, at least
            if isinstance(e, Hang):
                return self.broke("d-hang", f"batch {self.seq}: {e}")
            return self.broke("d-raised", f"batch {self.seq} raised {type(e).__name__}: {e}")
        if committing and outcomes is None:
            self.done = True  # what applied is unknown: check what needs no model, then stop
        elif outcomes is None:
            if box.snapshot(box.root, RESERVED_DIR) != before:
                fail("d-abort", f"batch {self.seq} was discarded, yet the workspace changed")
        else:
            for s, o in zip(ops, outcomes, strict=True):
                result = "applied" if o.applied else f"{o.reason}: {o.message}"
                self.trace.append(f"    {s.kind} {s.path}: {result}")
            for s, o in zip(ops, outcomes, strict=True):
                if o.applied:
                    m.applied(s)
        try:
            self.check()
        finally:
            box.restore()

    # ---------------------------------------------------------------- checks

    def check(self) -> None:
        """The invariant, the gravest breach first."""
        box, m = self.box, self.model
        if self.outside != (now := box.snapshot(box.base, "ws")):
            changed = sorted(
                p for p in self.outside.keys() | now.keys() if self.outside.get(p) != now.get(p)
            )
            fail("b-outside", f"outside the workspace, changed: {changed}")
        tree = box.tree(box.root, RESERVED_DIR)
        inside, reserved = box.root + "/", os.path.join(box.root, RESERVED_DIR)
        for rel, st in tree.items():
            if not stat.S_ISLNK(st.st_mode):
                continue
            end, links = box.resolve(box.full(rel))
            if end is None or (_under(end, box.root) and not _under(end, reserved)):
                continue
            rels = [q.removeprefix(inside) for q in links if q.startswith(inside)]
            if any(m.app_links.get(q) == os.readlink(box.full(q)) for q in rels):
                continue  # an app link that sync never moved leads there
            where = "into .devstack/" if end.startswith(inside) else "outside the workspace"
            chain = " -> ".join(f"{q} ({os.readlink(box.full(q))})" for q in rels)
            fail("a-escape", f"{rel!r} resolves {where}, to {end}: {chain}")
        for rel, st in tree.items():
            if rel and stat.S_IMODE(st.st_mode) & 0o7000:
                fail("c-mode", f"{rel!r} has mode {stat.S_IMODE(st.st_mode):#o}")
        if not m.replica and not self.done:
            for what in m.broken:
                fail("e-op", what)
            m.broken.clear()
            for p, item in m.items.items():
                self.check_item(p, item)
        for rel, st in tree.items():
            data = box.read(box.full(rel)) if stat.S_ISREG(st.st_mode) else b""
            if hash_bytes(data) not in m.known:
                fail("d-content", f"{rel!r} holds what nobody sent: {data[:40]!r}")
            if not rel or self.done:
                continue
            have = _on_disk(box.full(rel), st, data)
            made = m.items.get(rel)
            if have != m.synced.get(rel) and not (made and have == _value(made.kind, made.content)):
                fail("d-stray", f"{rel!r} holds {have}: neither sync nor the app put that there")
        if left := os.listdir(os.path.join(box.root, RESERVED_DIR, "staging")):
            fail("d-staging", f"left in .devstack/staging after batch {self.seq}: {left}")

    def check_item(self, p: str, item: Item) -> None:
        box = self.box
        entry = box.entry(p)
        try:
            is_fifo = stat.S_ISFIFO(os.lstat(box.full(p)).st_mode)
        except OSError:
            is_fifo = False
        if item.holds(entry, is_fifo):
            return
        seen: object = "a fifo" if is_fifo else "nothing"
        if entry is not None:
            seen = {Kind.FILE: lambda: box.read(box.full(p))[:40]}.get(
                entry.kind, lambda: f"a {entry.kind.name.lower()} {entry.target}".rstrip()
            )()
        whose = "made" if item.created else "changed"
        fail("e-lost", f"{p!r}, a {item.kind} the app {whose} ({item.content!r}), is {seen!r}")


def run(program: Program) -> Violation | None:
    """Play ``program`` in a fresh sandbox; the first violation, or None."""
    box = Sandbox()
    runner: Runner | None = None
    try:
        runner = Runner(program, box)
        runner.play()
    except Found as e:
        assert runner is not None
        return Violation(e.key, e.what, tuple(runner.trace))
    finally:
        try:
            if runner is not None:
                runner.close()
        finally:
            box.close()
    return None


def check(program: Program) -> None:
    """Raise ``AssertionError`` with the violation and its trace, if any."""
    violation = run(program)
    if violation is not None:
        raise AssertionError(str(violation))


__all__ = ["Chooser", "Program", "Violation", "check", "draw_program", "run"]
