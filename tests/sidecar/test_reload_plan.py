"""The pure half of hot reload: planning steps for changed paths, and the
options and config file that make a ReloadConfig (tables of named cases)."""

from __future__ import annotations

import argparse
import signal
import textwrap
from pathlib import Path

import pytest

from devstack.core.errors import ConfigError
from devstack.sidecar import reload as rl
from devstack.sidecar.reload import RESTART, ReloadConfig, Rule, Step, plan

PIP = ("pip", "install", "-r", "requirements.txt")
NPM = ("npm", "run", "build")
CHAIN = (
    Rule(("requirements.txt",), (Step("exec", PIP), RESTART)),
    Rule(("*.py",), (RESTART,)),
    Rule(("assets/**",), (Step("exec", NPM),)),
    Rule(("setup.cfg",), (Step("exec", PIP),)),
)

PLAN_CASES: dict[
    str, tuple[list[str], tuple[tuple[tuple[str, ...], ...], bool, tuple[str, ...]]]
] = {
    "requirements.txt installs then restarts": (
        ["requirements.txt"],
        ((PIP,), True, ("requirements.txt",)),
    ),
    "a .py change only restarts, at any depth": (
        ["app/views.py"],
        ((), True, ("app/views.py",)),
    ),
    "assets rebuild without restart": (
        ["assets/site.css"],
        ((NPM,), False, ("assets/site.css",)),
    ),
    "an exec step named by two rules runs once, in rule order": (
        ["setup.cfg", "assets/a.css", "requirements.txt"],
        ((PIP, NPM), True, ("setup.cfg", "assets/a.css", "requirements.txt")),
    ),
    "many matches still mean one restart": (
        ["a.py", "b.py", "c/d.py"],
        ((), True, ("a.py", "b.py", "c/d.py")),
    ),
    "unmatched paths do nothing and are not listed": (
        ["README.md", "x.py"],
        ((), True, ("x.py",)),
    ),
    "nothing matched is an empty plan": (["README.md"], ((), False, ())),
    "no paths is an empty plan": ([], ((), False, ())),
}


@pytest.mark.parametrize("name", PLAN_CASES)
def test_plan(name: str) -> None:
    paths, (execs, restart, hit) = PLAN_CASES[name]
    p = plan(ReloadConfig(strategy="supervise", command=("x",), rules=CHAIN), paths)
    assert (p.execs, p.restart, p.paths) == (execs, restart, hit)
    assert p.empty == (not execs and not restart)


@pytest.mark.parametrize("strategy", ["none", "exec"])
def test_restart_does_nothing_under_none_and_exec(strategy: str) -> None:
    p = plan(ReloadConfig(strategy=strategy, rules=CHAIN), ["a.py", "requirements.txt"])
    assert (p.execs, p.restart) == ((PIP,), False)


def test_negated_globs_exclude_paths() -> None:
    rule = Rule(("*.py", "!tests/**"), (RESTART,))
    c = ReloadConfig(strategy="supervise", command=("x",), rules=(rule,))
    assert plan(c, ["app.py"]).restart
    assert not plan(c, ["tests/test_app.py"]).restart


# ------------------------------------------------------------- options


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    rl.add_arguments(p)
    return p.parse_args(argv)


def test_defaults_are_none_with_no_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVSTACK_RELOAD", raising=False)
    c = rl.config_from_args(parse([]))
    assert (c.strategy, c.rules, c.debounce_ms, c.signal) == ("none", (), 100, signal.SIGHUP)


OPTION_CASES: dict[str, tuple[list[str], dict[str, object]]] = {
    "supervise restarts on every path by default": (
        ["--reload", "supervise", "--command", "python app.py --port 8000"],
        {"command": ("python", "app.py", "--port", "8000"), "restart_for": ["any/file.txt"]},
    ),
    "--reload-on narrows what triggers": (
        ["--reload", "supervise", "--command", "app", "--reload-on", "*.py", "--reload-on", "*.j2"],
        {"restart_for": ["a.py", "t/x.j2"], "ignored": ["README.md"]},
    ),
    "signal by pid file with a named signal": (
        ["--reload", "signal", "--pid-file", "/run/app.pid", "--signal", "usr1"],
        {"signal": signal.SIGUSR1, "pid_file": "/run/app.pid", "restart_for": ["a"]},
    ),
    "signal by process name, numeric signal": (
        ["--reload", "signal", "--process-name", "gunicorn", "--signal", "15"],
        {"signal": signal.SIGTERM, "process_name": "gunicorn"},
    ),
    "exec runs its command and never restarts": (
        ["--reload", "exec", "--exec", "make assets"],
        {"execs_for_any": (("make", "assets"),), "restart": False},
    ),
    "supervise with --exec chains the step before the restart": (
        ["--reload", "supervise", "--command", "app", "--exec", "make assets"],
        {"execs_for_any": (("make", "assets"),), "restart": True},
    ),
    "readiness options": (
        [
            "--reload",
            "supervise",
            "--command",
            "app",
            "--ready-url",
            "http://127.0.0.1:8000/health",
            "--ready-line",
            "Listening on",
            "--ready-timeout",
            "5",
            "--grace-seconds",
            "1.5",
            "--reload-debounce-ms",
            "0",
        ],
        {
            "ready_url": "http://127.0.0.1:8000/health",
            "ready_line": "Listening on",
            "ready_timeout_seconds": 5.0,
            "grace_seconds": 1.5,
            "debounce_ms": 0,
        },
    ),
}


@pytest.mark.parametrize("name", OPTION_CASES)
def test_options(name: str) -> None:
    argv, want = OPTION_CASES[name]
    c = rl.config_from_args(parse(argv))
    for key, value in want.items():
        if key == "restart_for":
            assert all(plan(c, [p]).restart for p in value)  # type: ignore[attr-defined]
        elif key == "ignored":
            assert all(plan(c, [p]).empty for p in value)  # type: ignore[attr-defined]
        elif key == "execs_for_any":
            assert plan(c, ["any/file"]).execs == value
        elif key == "restart":
            assert plan(c, ["any/file"]).restart is value
        else:
            assert getattr(c, key) == value, key


def test_env_vars_supply_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVSTACK_RELOAD", "supervise")
    monkeypatch.setenv("DEVSTACK_COMMAND", "python app.py")
    monkeypatch.setenv("DEVSTACK_READY_URL", "http://127.0.0.1:9/")
    c = rl.config_from_args(parse([]))
    assert (c.strategy, c.command, c.ready_url) == (
        "supervise",
        ("python", "app.py"),
        "http://127.0.0.1:9/",
    )
    # The command line wins over the environment.
    assert rl.config_from_args(parse(["--command", "other"])).command == ("other",)


BAD_OPTIONS: dict[str, tuple[list[str], str]] = {
    "supervise without a command": (["--reload", "supervise"], "needs --command"),
    "signal without a target": (["--reload", "signal"], "needs --pid-file or --process-name"),
    "signal with two targets": (
        ["--reload", "signal", "--pid-file", "p", "--process-name", "n"],
        "not both",
    ),
    "exec without a command": (["--reload", "exec"], "needs --exec"),
    "unknown signal": (
        ["--reload", "signal", "--pid-file", "p", "--signal", "NOPE"],
        "--signal: unknown signal 'NOPE'",
    ),
    "unbalanced quotes": (["--reload", "supervise", "--command", "app 'x"], "--command: "),
    "negative debounce": (
        ["--reload", "supervise", "--command", "a", "--reload-debounce-ms", "-1"],
        "--reload-debounce-ms: expected a whole number >= 0",
    ),
    "ready url that is not http": (
        ["--reload", "supervise", "--command", "a", "--ready-url", "127.0.0.1:80"],
        "--ready-url: expected an http:// URL",
    ),
    "ready line that is not a regex": (
        ["--reload", "supervise", "--command", "a", "--ready-line", "("],
        "--ready-line: not a regular expression",
    ),
    "readiness without supervise": (
        ["--reload", "signal", "--pid-file", "p", "--ready-url", "http://127.0.0.1/"],
        "only apply to --reload supervise",
    ),
    "negative min ready seconds": (
        ["--reload", "supervise", "--command", "a", "--min-ready-seconds", "-1"],
        "--min-ready-seconds: expected a number >= 0",
    ),
    "min ready seconds without supervise": (
        ["--reload", "signal", "--pid-file", "p", "--min-ready-seconds", "2"],
        "--min-ready-seconds: only applies to --reload supervise",
    ),
}


@pytest.mark.parametrize(
    ("argv", "settle"),
    [
        ([], 1.0),
        (["--ready-url", "http://127.0.0.1:9/"], 0.0),
        (["--ready-line", "up"], 0.0),
        (["--min-ready-seconds", "0"], 0.0),
        (["--ready-url", "http://127.0.0.1:9/", "--min-ready-seconds", "2.5"], 2.5),
    ],
)
def test_how_long_a_restarted_app_must_stay_up(argv: list[str], settle: float) -> None:
    c = rl.config_from_args(parse(["--reload", "supervise", "--command", "a", *argv]))
    assert c.settle_seconds == settle


@pytest.mark.parametrize("name", BAD_OPTIONS)
def test_bad_options_are_one_clear_error(name: str) -> None:
    argv, message = BAD_OPTIONS[name]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as e:
        rl.config_from_args(parse(argv))
    assert "\n" not in str(e.value)


# ------------------------------------------------------------- config file

EXAMPLE = """
strategy: supervise
command: python app.py
debounceMs: 20
rules:
  - match: ["requirements.txt"]
    steps: [{exec: "pip install -r requirements.txt"}, restart]
  - match: ["**/*.py"]
    steps: [restart]
"""


def test_load_config_reads_the_documented_example(tmp_path: Path) -> None:
    f = tmp_path / "reload.yaml"
    f.write_text(EXAMPLE)
    c = rl.load_config(f)
    assert (c.strategy, c.command, c.debounce_ms) == ("supervise", ("python", "app.py"), 20)
    p = plan(c, ["requirements.txt"])
    assert (p.execs, p.restart) == ((PIP,), True)
    p = plan(c, ["pkg/mod.py"])
    assert (p.execs, p.restart) == ((), True)
    assert plan(c, ["README.md"]).empty


def test_docs_show_the_same_example() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "reload.md"
    assert textwrap.dedent(EXAMPLE).strip() in docs.read_text()


def test_command_line_wins_over_the_file(tmp_path: Path) -> None:
    f = tmp_path / "reload.yaml"
    f.write_text(EXAMPLE)
    c = rl.config_from_args(parse(["--reload-config", str(f), "--command", "python other.py"]))
    assert (c.strategy, c.command, c.debounce_ms) == ("supervise", ("python", "other.py"), 20)
    assert plan(c, ["requirements.txt"]).execs == (PIP,)


def test_file_may_hold_every_option(tmp_path: Path) -> None:
    f = tmp_path / "reload.yaml"
    f.write_text(
        textwrap.dedent(
            """
            strategy: signal
            processName: nginx
            signal: HUP
            reloadOn: ["conf/**"]
            exec: [nginx, -t]
            graceSeconds: 2
            """
        )
    )
    c = rl.load_config(f)
    assert (c.strategy, c.process_name, c.signal, c.grace_seconds) == (
        "signal",
        "nginx",
        signal.SIGHUP,
        2.0,
    )
    p = plan(c, ["conf/site.conf"])
    assert (p.execs, p.restart) == ((("nginx", "-t"),), True)
    assert plan(c, ["html/index.html"]).empty


BAD_FILES: dict[str, tuple[str, str]] = {
    "rules is not a list": ("rules: {}", "rules: expected a list"),
    "match is not a glob": ("rules: [{match: 3}]", r"rules\[0\]\.match"),
    "unknown step": ("rules: [{match: '*.py', steps: [reboot]}]", r"rules\[0\]\.steps\[0\]"),
    "empty exec": (
        "rules: [{match: '*.py', steps: [{exec: ''}]}]",
        r"rules\[0\]\.steps\[0\]\.exec: empty",
    ),
    "unknown rule key": ("rules: [{match: '*.py', run: x}]", r"rules\[0\]: unknown key 'run'"),
    "unknown top-level key": ("strategy: none\nbogus: 1", "unknown key 'bogus'"),
    "bad strategy": ("strategy: restart", "strategy: expected one of"),
    "debounce is not a number": ("debounceMs: soon", "debounceMs: expected a whole number"),
    "both reloadOn and rules": (
        "reloadOn: ['*.py']\nrules: [{match: '*.py'}]",
        "either --reload-on or rules",
    ),
    "not YAML": ("{{{", "not valid YAML"),
    "not a mapping": ("- a\n- b", "expected a mapping at the top"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_config_file_names_the_field(tmp_path: Path, name: str) -> None:
    text, field = BAD_FILES[name]
    f = tmp_path / "reload.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=field) as e:
        rl.load_config(f)
    assert str(f) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=field):
        rl.config_from_args(parse(["--reload-config", str(f)]))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such reload config file"):
        rl.load_config(tmp_path / "absent.yaml")


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    f = tmp_path / "reload.yaml"
    f.write_text("")
    assert rl.load_config(f) == ReloadConfig()
