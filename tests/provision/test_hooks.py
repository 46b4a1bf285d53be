"""Custom command hooks, run as real subprocesses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from devstack.provision.errors import HookError
from devstack.provision.hooks import redact, run_hook
from devstack.provision.spec import Hook

PAYLOAD = {"phase": "provision", "spec": {"sqs": [{"name": "jobs"}]}, "outputs": {"A": "1"}}


def hook(code: str, **kw: object) -> Hook:
    return Hook(name="h", command=(sys.executable, "-c", code), **kw)  # type: ignore[arg-type]


def test_a_hook_gets_the_payload_and_env_and_may_add_outputs(tmp_path: Path) -> None:
    code = (
        "import json, os, sys; d = json.load(sys.stdin); "
        "open('seen.json', 'w').write(json.dumps({'d': d, 'o': os.environ['DEVSTACK_OWNER'], "
        "'x': os.environ['EXTRA']})); "
        "print(json.dumps({'outputs': {'SEEDED': d['outputs']['A']}}))"
    )
    result = run_hook(
        hook(code, env={"EXTRA": "e"}), PAYLOAD, cwd=tmp_path, env={"DEVSTACK_OWNER": "alice"}
    )
    assert result.outputs == {"SEEDED": "1"}
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen == {"d": PAYLOAD, "o": "alice", "x": "e"}


def test_plain_stdout_adds_nothing(tmp_path: Path) -> None:
    assert run_hook(hook("print('seeded 3 rows')"), PAYLOAD, cwd=tmp_path, env={}).outputs == {}


@pytest.mark.parametrize(
    ("the_hook", "message"),
    [
        (hook("import sys; sys.exit('boom')"), "hook h: exited with status 1: boom"),
        (
            Hook(name="h", command=("no-such-command-xyz",)),
            "hook h: command not found: no-such-command-xyz",
        ),
        (hook("import time; time.sleep(30)", timeout_seconds=1), "hook h: timed out after 1s"),
        (
            hook('print(\'{"outputs": {"bad-name": "1"}}\')'),
            "hook h: output 'bad-name' is not an environment variable name",
        ),
        (hook("print('{\"outputs\": [1]}')"), "hook h: `outputs` must be a mapping"),
    ],
    ids=["non-zero exit", "missing command", "timeout", "bad output name", "bad outputs"],
)
def test_a_failing_hook_is_one_clear_error(the_hook: Hook, message: str, tmp_path: Path) -> None:
    with pytest.raises(HookError) as e:
        run_hook(the_hook, PAYLOAD, cwd=tmp_path, env={})
    assert str(e.value).startswith(message)


def test_a_failing_hook_never_quotes_a_secret(tmp_path: Path) -> None:
    """The hook is handed secrets (secretOutputs, the spec's values, the AWS key) and
    may print them; its failure message, which is logged and printed, hides them."""
    payload = {
        "phase": "provision",
        "spec": {
            "secrets": [{"name": "api-key", "value": "declared-secret-1"}],
            "parameters": [
                {"name": "/app/token", "value": "secure-param-2", "type": "SecureString"},
                {"name": "/app/flag", "value": "plain-flag"},
            ],
        },
        "outputs": {"DEVSTACK_SSM_APP_FLAG_VALUE": "plain-flag"},
        "secretOutputs": {"DEVSTACK_SECRET_DB_PASSWORD_VALUE": "generated-pw-3"},
    }
    code = (
        "import json, os, sys; d = json.load(sys.stdin); "
        "sys.stderr.write(json.dumps(d) + ' key=' + os.environ['AWS_SECRET_ACCESS_KEY']); "
        "sys.exit(3)"
    )
    with pytest.raises(HookError) as e:
        run_hook(hook(code), payload, cwd=tmp_path, env={"AWS_SECRET_ACCESS_KEY": "aws-key-4"})
    message = str(e.value)
    for secret in ("declared-secret-1", "secure-param-2", "generated-pw-3", "aws-key-4"):
        assert secret not in message
    assert "plain-flag" in message  # only secrets are hidden
    assert "key=***" in message


def test_redact_hides_the_longest_secret_whole() -> None:
    assert redact("token abc-abcdef and abc", ["abc", "abc-abcdef"]) == "token *** and ***"
