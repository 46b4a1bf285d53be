"""`devstack test SERVICE [-- CMD ...]`: the command line and the plan as
tables (declared command or `-- CMD`, string splitting, folders, env,
timeouts, every mistake as one line), then against a real `devstack sidecar`
process: the exit code passes through (0, 3, a signal's 128+N, 124 at the
timeout), stdout and stderr stream separately and as they come, the folder
and environment are honoured, Ctrl-C stops the command in the copy, and a
wrong token is refused with one line.

The sidecar is found as on the local stack: from the state file `devstack up
--local` writes (`.devstack/local.json`), written here by hand for one real
sidecar process (tests/scenarios/test_local_stack_test.py runs the whole
local stack; tests/cluster/test_workflow_test.py the cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.cli import localstack, testing
from devstack.cli.main import main
from devstack.cli.project import load_project
from devstack.core.errors import ConfigError
from devstack.core.helmfile import load
from tests.support.sync import Sidecar, devstack_cmd, wait_until

OWNER = "alice"


def write_project(root: Path, test: dict[str, Any] | None, *, name: str = "web") -> Path:
    """A Helmfile with one release whose `devstack.test` is ``test``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "chart").mkdir(exist_ok=True)
    (root / "chart" / "Chart.yaml").write_text("apiVersion: v2\nname: c\nversion: 0.1.0\n")
    values: dict[str, Any] = {"devstack": {"test": test}} if test is not None else {}
    release = {"name": name, "chart": "./chart", "values": [values]}
    helmfile = root / "helmfile.yaml"
    helmfile.write_text(yaml.safe_dump({"releases": [release]}, sort_keys=False))
    return helmfile


# --- the command line and the plan (pure) ----------------------------------------------------


@pytest.mark.parametrize(
    ("words", "options", "command"),
    [
        ([], [], []),
        (["--timeout", "5"], ["--timeout", "5"], []),
        (["--", "pytest", "-x"], [], ["pytest", "-x"]),
        (["--cwd", "x", "--", "make", "check"], ["--cwd", "x"], ["make", "check"]),
        # a later -- is the command's own
        (["--", "npm", "test", "--", "--watch"], [], ["npm", "test", "--", "--watch"]),
        (["--", "--"], [], ["--"]),
        # argparse drops a -- right after SERVICE: a first word that is no option
        # starts the command
        (["pytest", "-x", "--timeout", "3"], [], ["pytest", "-x", "--timeout", "3"]),
        (["sh", "-c", "x", "--", "b"], [], ["sh", "-c", "x", "--", "b"]),
    ],
)
def test_split_command(words: list[str], options: list[str], command: list[str]) -> None:
    assert testing.split_command(words) == (options, command)


@pytest.mark.parametrize(
    ("test", "command", "flags", "expected"),
    [
        # the declared argv list, at the workspace root, no limit
        ({"command": ["pytest", "-q"]}, [], {}, (("pytest", "-q"), "", {}, 0)),
        # a string is split as a shell would split it (no shell runs)
        (
            {"command": "python -m pytest -k 'not slow' \"a b\""},
            [],
            {},
            (("python", "-m", "pytest", "-k", "not slow", "a b"), "", {}, 0),
        ),
        # dir, env (typed values as YAML wrote them) and the timeout
        (
            {
                "command": "make test",
                "dir": "./services/web/",
                "env": {"A": "x", "N": 3, "ON": True, "OFF": False},
                "timeoutSeconds": 90,
            },
            [],
            {},
            (
                ("make", "test"),
                "services/web",
                {"A": "x", "N": "3", "ON": "true", "OFF": "false"},
                90,
            ),
        ),
        # -- CMD replaces only the command: dir, env and the timeout stay
        (
            {"command": "make test", "dir": "sub", "env": {"A": "x"}, "timeoutSeconds": 90},
            ["sh", "-c", "exit 3"],
            {},
            (("sh", "-c", "exit 3"), "sub", {"A": "x"}, 90),
        ),
        # no declared command at all: -- CMD is enough
        (None, ["true"], {}, (("true",), "", {}, 0)),
        # --cwd and --timeout win over dir and timeoutSeconds (0: never)
        (
            {"command": ["t"], "dir": "sub", "timeoutSeconds": 90},
            [],
            {"cwd": "other", "timeout": 0},
            (("t",), "other", {}, 0),
        ),
        ({"command": ["t"], "dir": "sub"}, [], {"cwd": "."}, (("t",), "", {}, 0)),
        # in a cluster, python is the container's
        ({"command": "python -m unittest"}, [], {}, (("python", "-m", "unittest"), "", {}, 0)),
        # on the local stack, devstack's own Python (as devstack.local.command)
        (
            {"command": "python3 -m unittest"},
            [],
            {"local": True},
            ((sys.executable, "-m", "unittest"), "", {}, 0),
        ),
        ({"command": ["pytest"]}, [], {"local": True}, (("pytest",), "", {}, 0)),
    ],
)
def test_plan(
    tmp_path: Path,
    test: dict[str, Any] | None,
    command: list[str],
    flags: dict[str, Any],
    expected: tuple[tuple[str, ...], str, dict[str, str], int],
) -> None:
    release = load(write_project(tmp_path, test)).release("web")
    got = testing.plan(release, command, **flags)
    assert (got.argv, got.cwd, dict(got.env), got.timeout) == expected
    req = got.request()
    assert (list(req.argv), req.cwd, dict(req.env), req.timeout_seconds) == (
        list(expected[0]),
        expected[1],
        expected[2],
        expected[3],
    )


@pytest.mark.parametrize(
    ("test", "command", "flags", "message"),
    [
        (
            None,
            [],
            {},
            "release web declares no test command: set devstack.test.command in its values "
            "({helmfile}:2), or give one: devstack test web -- CMD",
        ),
        (
            {"command": "   "},
            [],
            {},
            "release web declares no test command: set devstack.test.command in its values "
            "({helmfile}:2), or give one: devstack test web -- CMD",
        ),
        (
            {"command": "pytest -k 'unclosed"},
            [],
            {},
            "release web ({helmfile}:2): devstack.test.command: No closing quotation",
        ),
        (
            {"command": "t", "dir": "../up"},
            [],
            {},
            "release web: devstack.test.dir: must be a folder inside the workspace "
            "('../up': '..' segments are not allowed)",
        ),
        (
            {"command": "t"},
            [],
            {"cwd": "/etc"},
            "--cwd '/etc': must be a folder inside the workspace "
            "('/etc': absolute paths are not allowed)",
        ),
    ],
)
def test_plan_mistakes(
    tmp_path: Path,
    test: dict[str, Any] | None,
    command: list[str],
    flags: dict[str, Any],
    message: str,
) -> None:
    helmfile = write_project(tmp_path, test)
    release = load(helmfile).release("web")
    with pytest.raises(ConfigError) as e:
        testing.plan(release, command, **flags)
    assert str(e.value) == message.format(helmfile=helmfile)


@pytest.fixture
def no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing below may reach a cluster: there is none."""
    monkeypatch.setenv("DEVSTACK_OWNER", OWNER)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    for name in ("DEVSTACK_SIDECAR", "DEVSTACK_AUTHORITY"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("argv", "test", "message"),
    [
        (
            ["test", "web"],
            None,
            "devstack test: release web declares no test command: set devstack.test.command "
            "in its values ({helmfile}:2), or give one: devstack test web -- CMD",
        ),
        (
            ["test", "nope"],
            {"command": "t"},
            "devstack test: {helmfile} declares no service 'nope' (it declares: web)",
        ),
        (
            ["test", "web", "--cwd", "sub", "pytest", "-x"],
            {"command": "t"},
            "devstack test: the command goes after the options and --: devstack test web "
            "[options] -- CMD ...",
        ),
        (
            ["test", "web", "--local"],
            {"command": "t"},
            "devstack test: no local stack runs: start it with `devstack up --local`",
        ),
        # options after SERVICE are still ours
        (
            ["test", "web", "--local", "--cwd", "/x", "--", "true"],
            {"command": "t"},
            "devstack test: --cwd '/x': must be a folder inside the workspace "
            "('/x': absolute paths are not allowed)",
        ),
    ],
)
def test_one_line_for_each_mistake(
    tmp_path: Path,
    no_cluster: None,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    test: dict[str, Any] | None,
    message: str,
) -> None:
    helmfile = write_project(tmp_path / "p", test)
    assert main([argv[0], "-f", str(helmfile), *argv[1:]]) == 2
    assert capsys.readouterr().err == message.format(helmfile=helmfile) + "\n"


@pytest.mark.parametrize("value", ["-1", "soon", str(2**32)])
def test_a_bad_timeout_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str], no_cluster: None
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["test", "web", "--timeout", value])
    assert e.value.code == 2
    assert "--timeout" in capsys.readouterr().err


def test_help_is_written_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["test", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: devstack test [options] SERVICE [-- CMD ...]")
    for example in (
        "devstack test web ",
        "devstack test web -- pytest",
        "devstack test web --timeout",
        "devstack test web --to 127.0.0.1:8080",
        "devstack.test.command",
        "timeoutSeconds",
    ):
        assert example in out


# --- against a real sidecar ------------------------------------------------------------------


class Copy:
    """A project whose local-stack state names one real sidecar as alice's copy of web."""

    def __init__(self, root: Path, sidecar: Sidecar, helmfile: Path) -> None:
        self.root = root
        self.sidecar = sidecar
        self.helmfile = helmfile

    @property
    def workspace(self) -> Path:
        return self.sidecar.workspace

    @property
    def folder(self) -> Path:
        """Where commands run: the declared ``dir``."""
        return self.workspace / "sub"

    def args(self, *extra: str) -> list[str]:
        return devstack_cmd("test", "web", "-f", str(self.helmfile), "--owner", OWNER, *extra)

    def run(self, *extra: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return self.run_argv(self.args(*extra), timeout=timeout)

    def run_argv(self, argv: list[str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env())
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def popen(self, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.args(*extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )

    def write_state(self, token_file: Path) -> None:
        proj = load_project(argparse.Namespace(file=str(self.helmfile), owner=OWNER))
        copy = localstack.CopyState(
            name=f"web--{OWNER}",
            port=0,
            url="",
            ready_url="",
            sidecar=self.sidecar.address,
            token_file=str(token_file),
            workspace=str(self.workspace),
            source=str(self.root),
            app_log="",
            sidecar_log="",
            preview_url="",
        )
        service = localstack.ServiceState(
            service="web", host="web.localtest.me", port=0, url="", ready_url="", log="",
            preview_url="", copy=copy,
        )  # fmt: skip
        state = localstack.LocalState(
            owner=OWNER, helmfile=str(self.helmfile), dir=str(self.root / ".devstack" / "local"),
            router_url="", domain="localtest.me", services=[service],
        )  # fmt: skip
        path = localstack.state_path(proj)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state.as_json()))
        assert localstack.read_state(proj) == state


def env() -> dict[str, str]:
    out = {**os.environ, "DEVSTACK_OWNER": OWNER}
    for name in ("DEVSTACK_SIDECAR", "DEVSTACK_AUTHORITY", "KUBECONFIG"):
        out.pop(name, None)
    return out


DECLARED = {
    # stdout and stderr apart, the folder and the environment, and an exit code
    "command": ["sh", "-c", 'echo "$GREETING from $(pwd)"; echo "to stderr $N" >&2; exit 3'],
    "dir": "sub",
    "env": {"GREETING": "hello", "N": 7},
}


@pytest.fixture
def copy(tmp_path: Path) -> Iterator[Copy]:
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    token = tmp_path / "token"
    token.write_text("s3cret")
    helmfile = write_project(tmp_path / "project", DECLARED)
    sc = Sidecar(ws, token).start()
    c = Copy(tmp_path / "project", sc, helmfile)
    c.write_state(token)
    yield c
    sc.stop()


def test_the_declared_command_runs_in_its_folder_with_its_env(copy: Copy) -> None:
    done = copy.run()
    assert done.returncode == 3, done.stderr
    assert done.stdout == f"hello from {(copy.workspace / 'sub').resolve()}\n"
    assert done.stderr == "to stderr 7\n"
    # --cwd moves it; the declared env stays with a command given after --
    (copy.workspace / "other").mkdir()
    done = copy.run("--cwd", "other", "--", "sh", "-c", 'echo "$GREETING in $(pwd)"')
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"hello in {(copy.workspace / 'other').resolve()}\n"
    # a folder the workspace lacks is one line
    done = copy.run("--cwd", "missing", "--", "true")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "'missing' is not a folder in the workspace" in done.stderr


@pytest.mark.parametrize(
    ("command", "flags", "code", "stdout", "stderr"),
    [
        (["true"], [], 0, "", ""),
        (["sh", "-c", "echo out; exit 3"], [], 3, "out\n", ""),
        # killed by a signal: 128+N, as a shell reports it, and one line saying so
        (
            ["sh", "-c", "kill -TERM $$"],
            [],
            128 + signal.SIGTERM,
            "",
            "devstack test: exit 143: killed by SIGTERM\n",
        ),
        (
            ["sh", "-c", "kill -KILL $$"],
            [],
            128 + signal.SIGKILL,
            "",
            "devstack test: exit 137: killed by SIGKILL (often the out-of-memory killer)\n",
        ),
        # a program that does not exist: 127
        (
            ["no-such-program-here"],
            [],
            127,
            "",
            "devstack test: no-such-program-here: exit 127: command not found\n",
        ),
    ],
    ids=["0", "3", "SIGTERM", "SIGKILL", "not-found"],
)
def test_the_exit_code_passes_through(
    copy: Copy, command: list[str], flags: list[str], code: int, stdout: str, stderr: str
) -> None:
    done = copy.run(*flags, "--", *command)
    assert (done.returncode, done.stdout, done.stderr) == (code, stdout, stderr)


@pytest.mark.parametrize(
    "after",
    [
        # -- right after SERVICE; a later -- is the command's own
        ["web", "--", "sh", "-c", 'echo "$@"', "sh", "a", "--", "b"],
        # options after SERVICE, then --
        ["web", "--timeout", "30", "--", "sh", "-c", 'echo "$@"', "sh", "a", "--", "b"],
        # no -- at all: the first word that is no option starts the command
        ["web", "sh", "-c", 'echo "$@"', "sh", "a", "--", "b"],
    ],
    ids=["dashes", "options-then-dashes", "no-dashes"],
)
def test_the_command_after_service(copy: Copy, after: list[str]) -> None:
    argv = devstack_cmd("test", "-f", str(copy.helmfile), "--owner", OWNER, *after)
    done = copy.run_argv(argv)
    assert (done.returncode, done.stdout, done.stderr) == (0, "a -- b\n", "")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed and not reaped yet, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def test_a_timeout_kills_the_command_and_exits_124(copy: Copy) -> None:
    script = "echo $$ > pid; echo started; exec sleep 600"
    done = copy.run("--timeout", "1", "--", "sh", "-c", script)
    assert done.returncode == 124
    assert done.stdout == "started\n"
    assert done.stderr == (
        "devstack test: killed after 1s timeout "
        "(give it longer with --timeout or devstack.test.timeoutSeconds)\n"
    )
    pid = int((copy.folder / "pid").read_text())
    wait_until(lambda: not alive(pid), 30, "the timed-out command to be gone")


def test_output_streams_as_it_comes(copy: Copy) -> None:
    # The command waits for a file the test makes only once it has read the
    # first line: the line arrived while the command still ran.
    script = "echo first; while [ ! -e go ]; do sleep 0.05; done; echo second; echo late >&2"
    proc = copy.popen("--", "sh", "-c", script)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == "first\n"
        assert proc.poll() is None
        (copy.folder / "go").touch()
        assert proc.stdout.read() == "second\n"
        assert proc.stderr.read() == "late\n"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_stops_the_command_in_the_copy_and_exits_130(copy: Copy) -> None:
    proc = copy.popen("--", "sh", "-c", "echo $$ > pid; echo started; exec sleep 600")
    err: list[str] = []
    try:
        assert proc.stdout is not None and proc.stderr is not None
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read()))  # type: ignore[union-attr]
        reader.start()
        assert proc.stdout.readline() == "started\n"
        pid = int((copy.folder / "pid").read_text())
        assert alive(pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        reader.join(30)
        assert "Traceback" not in err[0], err[0]
        # the sidecar saw the call cancelled and killed the command
        wait_until(lambda: not alive(pid), 30, "the command to be killed by the sidecar")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_wrong_token_is_refused_with_one_line(copy: Copy, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token")
    copy.write_state(wrong)
    done = copy.run("--", "touch", "ran")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        f"devstack test: the sidecar at {copy.sidecar.address} refused the token"
    )
    assert not (copy.folder / "ran").exists()
