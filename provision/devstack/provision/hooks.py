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
a timeout or a command that cannot be started fails the run.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.core.logging import get_logger
from devstack.provision.errors import HookError
from devstack.provision.outputs import check_names
from devstack.provision.spec import Hook

log = get_logger("provision.hooks")

_TAIL = 2000


@dataclass(frozen=True)
class HookResult:
    name: str
    outputs: Mapping[str, str] = field(default_factory=dict)


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
        tail = (proc.stderr or proc.stdout or "").strip()[-_TAIL:]
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
