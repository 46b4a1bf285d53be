"""Custom hooks: user commands run with the spec and outputs as JSON (does I/O).

A hook (``devstack.aws.hooks[]``) runs after the resources exist (phase
``provision``) and/or before they are deleted (phase ``teardown``). It gets,
on stdin, one JSON document::

    {"phase": "provision", "release": "shop", "owner": "alice",
     "region": "us-east-1", "endpoint": "http://...:4566",
     "spec": {...as declared...},
     "outputs": {"DEVSTACK_SQS_JOBS_URL": "...", ...},
     "secretOutputs": {"DEVSTACK_SECRET_DB_PASSWORD_VALUE": "...", ...}}

and the usual environment plus ``DEVSTACK_RELEASE``, ``DEVSTACK_OWNER``,
``DEVSTACK_PHASE``, ``AWS_ENDPOINT_URL`` and ``AWS_REGION``. It runs in the
spec file's folder. If its stdout is a JSON object with ``outputs`` (a mapping
of variable names to strings), those are added to the outputs. A non-zero exit,
a timeout or a command that cannot be started fails the run; the error quotes
the end of its output with every secret the hook was given (``secretOutputs``,
secret values of the spec, the AWS secret key) replaced by ``***``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.core.logging import get_logger
from devstack.provision.errors import HookError
from devstack.provision.outputs import check_names
from devstack.provision.spec import Hook

log = get_logger("provision.hooks")

_TAIL = 2000
#: Environment variables whose values are credentials.
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
REDACTED = "***"


@dataclass(frozen=True)
class HookResult:
    name: str
    outputs: Mapping[str, str] = field(default_factory=dict)


def known_secrets(payload: Mapping[str, Any], env: Mapping[str, str]) -> set[str]:
    """Every secret value a hook is handed: its ``secretOutputs``, the spec's secret
    values and SecureString parameters, and the AWS secret key of its environment."""
    found = {str(v) for v in (payload.get("secretOutputs") or {}).values()}
    spec = payload.get("spec") or {}
    for item in spec.get("secrets") or ():
        if isinstance(item, Mapping) and item.get("value") is not None:
            found.add(str(item["value"]))
    for item in spec.get("parameters") or ():
        if isinstance(item, Mapping) and item.get("type") == "SecureString":
            found.add(str(item.get("value", "")))
    found |= {env[k] for k in _SECRET_ENV if env.get(k)}
    return {v for v in found if v}


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret replaced by ``***`` (longest first, so a secret
    that contains another is hidden whole)."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def run_hook(
    hook: Hook,
    payload: Mapping[str, Any],
    *,
    cwd: Path | None,
    env: Mapping[str, str],
) -> HookResult:
    """Run ``hook`` with ``payload`` on stdin; its outputs, if it printed any."""
    full_env = {**os.environ, **env, **hook.env}
    log.info("provision.hook_started", hook=hook.name, phase=payload.get("phase"))
    try:
        proc = subprocess.run(
            list(hook.command),
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            cwd=cwd,
            env=full_env,
            timeout=hook.timeout_seconds,
            check=False,
        )
    except FileNotFoundError as e:
        raise HookError(f"hook {hook.name}: command not found: {hook.command[0]}") from e
    except PermissionError as e:
        raise HookError(f"hook {hook.name}: not executable: {hook.command[0]}") from e
    except subprocess.TimeoutExpired as e:
        raise HookError(f"hook {hook.name}: timed out after {hook.timeout_seconds}s") from e
    if proc.returncode != 0:
        # redact before cutting, so that no part of a secret survives at the edge
        output = redact(proc.stderr or proc.stdout or "", known_secrets(payload, full_env))
        tail = output.strip()[-_TAIL:]
        raise HookError(
            f"hook {hook.name}: exited with status {proc.returncode}"
            + (f": {tail}" if tail else "")
        )
    outputs = _outputs(hook.name, proc.stdout)
    log.info("provision.hook_finished", hook=hook.name, outputs=sorted(outputs))
    return HookResult(hook.name, outputs)


def _outputs(name: str, stdout: str) -> dict[str, str]:
    text = stdout.strip()
    if not text.startswith("{"):
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return {}
    if not isinstance(doc, dict) or "outputs" not in doc:
        return {}
    outputs = doc["outputs"]
    if not isinstance(outputs, dict):
        raise HookError(f"hook {name}: `outputs` must be a mapping of names to strings")
    problems = check_names(outputs, source=f"hook {name}")
    if problems:
        raise HookError("; ".join(problems))
    return {str(k): str(v) for k, v in outputs.items()}
