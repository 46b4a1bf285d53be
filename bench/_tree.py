"""Deterministic source trees for the sync benchmark (filesystem writes only).

``generate`` builds a repository-like tree: many small source-like text files
in nested folders plus a few binaries of a few MB. The same ``seed`` and
sizes always give byte-identical trees, so runs on different machines (and
different tools in one run) sync exactly the same content.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

_WORDS = [
    "def",
    "class",
    "return",
    "import",
    "from",
    "self",
    "value",
    "result",
    "items",
    "config",
    "request",
    "response",
    "handler",
    "client",
    "server",
    "error",
    "context",
    "async",
    "await",
    "yield",
    "lambda",
    "None",
    "True",
    "False",
    "for",
    "in",
    "if",
    "else",
    "elif",
    "while",
    "try",
    "except",
    "finally",
    "with",
    "as",
    "raise",
    "pass",
    "break",
    "continue",
    "user",
    "order",
    "payment",
    "invoice",
    "cart",
    "session",
    "token",
    "route",
    "service",
    "cluster",
    "pod",
    "sync",
    "manifest",
    "digest",
    "batch",
    "chunk",
    "commit",
    "offset",
    "length",
    "buffer",
    "stream",
    "reader",
    "writer",
    "logger",
    "metrics",
    "trace",
    "span",
    "baggage",
    "header",
    "middleware",
    "ingress",
    "secret",
    "volume",
]
_TEXT_EXT = (".py", ".py", ".py", ".ts", ".go", ".md", ".json", ".yaml", ".txt", ".html")
_BIN_EXT = (".png", ".jar", ".woff2", ".gz", ".zip")


@dataclass(frozen=True)
class TreeInfo:
    """What ``generate`` made."""

    files: int
    dirs: int
    bytes: int


def _corpus(rng: random.Random, size: int) -> bytes:
    """Source-like lines: indented identifiers and punctuation."""
    lines: list[str] = []
    total = 0
    while total < size:
        indent = "    " * rng.randrange(4)
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(2, 11)))
        line = f"{indent}{words}{rng.choice(('', ':', '(x)', ' = 1', ',', ' # note'))}\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()


def text_blob(size: int, *, seed: int = 7) -> bytes:
    """``size`` bytes of source-like text (for the large-file delta test)."""
    rng = random.Random(seed)
    block = _corpus(rng, 1 << 20)
    reps = size // len(block) + 1
    out = bytearray()
    for i in range(reps):
        # Vary each repetition so the file has no long exact repeats.
        out += b"# part %d\n" % i
        out += block[(i * 7919) % len(block) :] + block[: (i * 7919) % len(block)]
    return bytes(out[:size])


def generate(
    root: Path,
    *,
    files: int = 10_000,
    binaries: int = 20,
    text_median: int = 3000,
    binary_mib: tuple[int, int] = (1, 4),
    fanout: int = 12,
    seed: int = 1,
) -> TreeInfo:
    """Write a tree of ``files`` files under ``root`` (which must not exist).

    ``files - binaries`` text files have log-normal sizes around
    ``text_median`` bytes (64 B to 256 KiB) in folders nested two to four
    levels deep, about ``fanout`` files per folder; ``binaries`` incompressible
    files of ``binary_mib`` MiB sit under ``assets/``.
    """
    rng = random.Random(seed)
    corpus = _corpus(rng, 2 << 20)
    root.mkdir(parents=True)
    n_text = max(0, files - binaries)
    n_dirs = max(1, n_text // fanout)
    folders: list[str] = []
    made: set[str] = set()
    for i in range(n_dirs):
        depth = rng.randrange(2, 5)
        parts = [f"pkg{i % 23:02d}", f"mod{(i // 23) % 17:02d}"]
        parts += [f"{rng.choice(_WORDS)}{j}" for j in range(depth - 2)]
        folder = "/".join(parts)
        folders.append(folder)
        made.add(folder)
    for folder in sorted(made):
        (root / folder).mkdir(parents=True, exist_ok=True)
    total = 0
    mu = math.log(text_median)
    for i in range(n_text):
        size = int(min(256 * 1024, max(64, rng.lognormvariate(mu, 1.0))))
        start = rng.randrange(0, len(corpus) - size)
        name = f"{rng.choice(_WORDS)}_{i}{rng.choice(_TEXT_EXT)}"
        path = root / folders[i % len(folders)] / name
        path.write_bytes(corpus[start : start + size])
        total += size
        if i % 97 == 0:
            os.chmod(path, 0o755)  # a few executables
    if binaries:
        (root / "assets").mkdir()
    for i in range(binaries):
        size = rng.randint(binary_mib[0] * 1024 * 1024, binary_mib[1] * 1024 * 1024)
        (root / "assets" / f"blob{i:03d}{rng.choice(_BIN_EXT)}").write_bytes(rng.randbytes(size))
        total += size
    dirs = sum(1 for _ in root.rglob("*") if _.is_dir())
    return TreeInfo(files=n_text + binaries, dirs=dirs, bytes=total)


def generate_small(root: Path, *, files: int, per_dir: int = 100, seed: int = 2) -> TreeInfo:
    """``files`` small text files (100-600 bytes), ``per_dir`` per folder:
    the shape of a big checkout for the no-op resync test."""
    rng = random.Random(seed)
    corpus = _corpus(rng, 1 << 20)
    root.mkdir(parents=True)
    total = 0
    dirs = 0
    for i in range(files):
        if i % per_dir == 0:
            folder = root / f"d{i // (per_dir * 50):03d}" / f"s{(i // per_dir) % 50:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            dirs += 1
        size = rng.randrange(100, 600)
        start = rng.randrange(0, len(corpus) - size)
        (folder / f"f{i}.py").write_bytes(corpus[start : start + size])
        total += size
    return TreeInfo(files=files, dirs=dirs, bytes=total)


def tree_digest(root: Path) -> str:
    """One digest over every path, mode and content under ``root`` (sorted)."""
    h = hashlib.blake2b(digest_size=16)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            h.update(f"{rel}\0{st.st_mode:o}\0".encode())
            with open(full, "rb") as f:
                h.update(hashlib.blake2b(f.read(), digest_size=16).digest())
        for name in sorted(dirnames):
            h.update(f"{os.path.relpath(os.path.join(dirpath, name), root)}/\0".encode())
    return h.hexdigest()


def count_files(root: Path) -> int:
    """Regular files under ``root``, the sidecar's ``.devstack`` and
    syncthing's ``.stfolder``/``.stversions`` left out."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == os.fspath(root):
            dirnames[:] = [
                d for d in dirnames if d not in (".devstack", ".stfolder", ".stversions")
            ]
        n += len(filenames)
    return n
