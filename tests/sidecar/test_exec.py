"""``Exec`` against a real sidecar process: programs that cannot start get
the exit code a shell would give them with a readable reason, and neither
the command's environment nor the sidecar's log ever shows a secret."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.rawclient import run_exec
from tests.support.sync import Sidecar

TOKEN = "exec-token-value"


@pytest.fixture
def sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sidecar]:
    ws = tmp_path / "ws"
    ws.mkdir()
    token = tmp_path / "token"
    token.write_text(TOKEN)
    monkeypatch.setenv("DEVSTACK_TOKEN_FILE", str(token))
    sc = Sidecar(ws, token).start()
    yield sc
    sc.stop()


def test_a_script_without_a_shebang_exits_126_with_a_reason(sidecar: Sidecar) -> None:
    script = sidecar.workspace / "build.sh"
    script.write_text("echo built\n")  # no #! line: the kernel says ENOEXEC
    script.chmod(0o755)
    _, _, ex = run_exec(sidecar.address, TOKEN, ["./build.sh"])
    assert (ex.code, ex.reason) == (126, "not-executable")
    assert ex.message.startswith("./build.sh: exit 126")
    assert "#!" in ex.message


def test_a_file_without_the_x_bit_exits_126(sidecar: Sidecar) -> None:
    (sidecar.workspace / "run.sh").write_text("#!/bin/sh\necho hi\n")
    _, _, ex = run_exec(sidecar.address, TOKEN, ["./run.sh"])
    assert (ex.code, ex.reason) == (126, "not-executable")
    assert "permission denied" in ex.message


def test_a_missing_program_exits_127(sidecar: Sidecar) -> None:
    _, _, ex = run_exec(sidecar.address, TOKEN, ["no-such-program-devstack"])
    assert (ex.code, ex.reason) == (127, "command-not-found")
    assert ex.message == "no-such-program-devstack: exit 127: command not found"


def test_the_command_gets_no_token_and_its_environment_is_never_logged(
    sidecar: Sidecar,
) -> None:
    out, _, ex = run_exec(
        sidecar.address,
        TOKEN,
        ["sh", "-c", "env; echo API_KEY=$API_KEY"],
        env={"API_KEY": "hunter2-api-key"},
    )
    assert ex.code == 0
    text = out.decode()
    assert "API_KEY=hunter2-api-key" in text
    assert "DEVSTACK_TOKEN_FILE" not in text and TOKEN not in text
    assert not any("hunter2-api-key" in line or TOKEN in line for line in sidecar.raw)
