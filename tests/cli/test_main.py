"""The CLI's hygiene: `--version`, the bash completion script (driven
through a real bash), and output into a closed pipe ending quietly."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

DEVSTACK = str(Path(sys.executable).parent / "devstack")


def test_version_is_the_installed_distributions() -> None:
    out = subprocess.run([DEVSTACK, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"devstack {importlib.metadata.version('devstack')}"


def _complete(script: Path, line: str) -> list[str]:
    """What bash offers for ``line`` (the cursor at its end)."""
    words = line.split(" ")
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_devstack\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    out = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [w for w in out.stdout.splitlines() if w]


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "devstack.bash"
    out = subprocess.run(
        [DEVSTACK, "completion", "bash"], capture_output=True, text=True, check=True
    )
    path.write_text(out.stdout)
    return path


def test_bash_completes_subcommands_and_their_real_options(script: Path) -> None:
    assert _complete(script, "devstack conn") == ["connect"]
    assert set(_complete(script, "devstack ")) >= {"up", "connect", "agent", "completion"}
    # options come from the parser itself: the agent's --kubeconfig ...
    assert "--kubeconfig" in _complete(script, "devstack agent --kube")
    # ... and connect's, after other words
    offered = _complete(script, "devstack connect --to 127.0.0.1:1 --tok")
    assert offered and all(o.startswith("--tok") for o in offered)
    # an option of one command is not offered for another
    assert "--lease-name" not in _complete(script, "devstack connect --")
    assert "--lease-name" in _complete(script, "devstack agent --")


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`devstack … | head`: the reader is gone before devstack writes. No
    traceback; the exit code is SIGPIPE's (141), as for other tools."""
    for argv in (["completion", "bash"], ["--help"], ["agent", "--help"]):
        read, write = os.pipe()
        os.close(read)
        try:
            out = subprocess.run([DEVSTACK, *argv], stdout=write, stderr=subprocess.PIPE)
        finally:
            os.close(write)
        # argparse itself swallows a failed write of its help (exit 0)
        assert out.returncode == (0 if "--help" in argv else 141), argv
        assert b"Traceback" not in out.stderr and b"BrokenPipe" not in out.stderr, out.stderr


def test_every_commands_help_has_examples_for_users() -> None:
    """Help written for users: each command's --help ends with examples of
    how to run it, not only its options (the parser is the one devstack runs)."""
    from devstack.cli.completion import _subparsers
    from devstack.cli.main import COMMANDS, full_parser

    subs = _subparsers(full_parser())
    assert set(subs) == set(COMMANDS)
    missing = [name for name, sub in subs.items() if "examples:" not in (sub.epilog or "")]
    assert missing == []
    for name, sub in subs.items():
        assert f"devstack {name}" in (sub.epilog or ""), name
