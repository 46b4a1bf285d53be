"""Outputs: what the app reads as environment variables, and where they go.

:func:`compute` (pure) turns the provisioned resources into variables whose
names come from the declared names only (``DEVSTACK_SQS_JOBS_URL``), so an
owner's copy of a service reads the same variables as the baseline.
Non-secret values go to a ConfigMap; secret values (Secrets Manager values,
SecureString parameters) only ever go to a Secret or a local file.

Sinks (I/O) write them: :class:`FileSink` (JSON, or dotenv when the path ends
in ``.env``; mode 0600) and :class:`KubernetesSink` (a ConfigMap and a Secret,
through the :class:`KubeWriter` seam).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from devstack.core.logging import get_logger
from devstack.provision import names
from devstack.provision.plan import Desired, Observed

log = get_logger("provision.outputs")

ENV_NAME_RE: Final = re.compile(r"^[A-Z_][A-Z0-9_]*$")

#: kind -> the token in its variable names.
KIND_TOKENS: Final = {
    "s3": "S3",
    "sqs": "SQS",
    "sns": "SNS",
    "dynamodb": "DYNAMODB",
    "secrets": "SECRET",
    "parameters": "SSM",
}


@dataclass(frozen=True)
class Outputs:
    """Environment variables: ``config`` may be shown, ``secret`` never."""

    config: Mapping[str, str] = field(default_factory=dict)
    secret: Mapping[str, str] = field(default_factory=dict)

    def merged(self) -> dict[str, str]:
        return {**self.config, **self.secret}

    def with_config(self, extra: Mapping[str, str]) -> Outputs:
        return Outputs({**self.config, **extra}, self.secret)

    def with_secret(self, extra: Mapping[str, str]) -> Outputs:
        return Outputs(self.config, {**self.secret, **extra})


def compute(
    resources: Sequence[tuple[Desired, Observed]],
    *,
    endpoint: str | None,
    region: str,
) -> Outputs:
    """The variables for ``resources`` (each declared resource with its state).

    ==========  ===========================================================
    kind        variables (``<NAME>`` is the declared name, upper-cased,
                other characters as ``_``)
    ==========  ===========================================================
    s3          ``DEVSTACK_S3_<NAME>_BUCKET``, ``_ARN``
    sqs         ``DEVSTACK_SQS_<NAME>_URL``, ``_ARN``, ``_NAME``
                (a generated dead-letter queue is ``<NAME>_DLQ``)
    sns         ``DEVSTACK_SNS_<NAME>_ARN``, ``_NAME``
    dynamodb    ``DEVSTACK_DYNAMODB_<NAME>_TABLE``, ``_ARN``
    secrets     ``DEVSTACK_SECRET_<NAME>_NAME``, ``_ARN``; ``_VALUE`` (secret)
    parameters  ``DEVSTACK_SSM_<NAME>_NAME``, ``_VALUE`` (secret if SecureString)
    ==========  ===========================================================

    Plus ``AWS_REGION``, ``AWS_DEFAULT_REGION`` and, with an endpoint,
    ``AWS_ENDPOINT_URL``, which the AWS SDKs read by themselves.
    """
    config: dict[str, str] = {"AWS_REGION": region, "AWS_DEFAULT_REGION": region}
    if endpoint:
        config["AWS_ENDPOINT_URL"] = endpoint
    secret: dict[str, str] = {}
    for d, o in resources:
        token = KIND_TOKENS[d.kind]

        def env(what: str) -> str:
            return names.env_name(token, d.declared, what)  # noqa: B023

        ids = o.ids
        if d.kind == "s3":
            config[env("BUCKET")] = o.physical
            config[env("ARN")] = ids.get("arn", f"arn:aws:s3:::{o.physical}")
        elif d.kind == "sqs":
            config[env("URL")] = ids["url"]
            config[env("ARN")] = ids["arn"]
            config[env("NAME")] = o.physical
        elif d.kind == "sns":
            config[env("ARN")] = ids["arn"]
            config[env("NAME")] = o.physical
        elif d.kind == "dynamodb":
            config[env("TABLE")] = o.physical
            config[env("ARN")] = ids["arn"]
        elif d.kind == "secrets":
            config[env("NAME")] = o.physical
            config[env("ARN")] = ids["arn"]
            if "value" in ids:
                secret[env("VALUE")] = ids["value"]
        elif d.kind == "parameters":
            config[env("NAME")] = o.physical
            if ids.get("type") == "SecureString":
                secret[env("VALUE")] = ids["value"]
            else:
                config[env("VALUE")] = ids["value"]
    return Outputs(config, secret)


def check_names(values: Mapping[str, str], *, source: str) -> list[str]:
    """Problems with variables a hook or plugin returned."""
    problems = []
    for k, v in values.items():
        if not isinstance(k, str) or not ENV_NAME_RE.match(k):
            problems.append(f"{source}: output {k!r} is not an environment variable name")
        elif not isinstance(v, str):
            problems.append(f"{source}: output {k} must be a string")
    return problems


# ---------------------------------------------------------------- rendering


def to_json(outputs: Outputs) -> str:
    return json.dumps(outputs.merged(), indent=2, sort_keys=True) + "\n"


def to_dotenv(outputs: Outputs) -> str:
    """``KEY='value'`` lines, single-quoted so a shell or dotenv loader reads
    them back verbatim."""
    lines = []
    for k, v in sorted(outputs.merged().items()):
        lines.append(f"{k}='" + v.replace("'", "'\\''") + "'")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- sinks


class OutputsSink(Protocol):
    """Where outputs go."""

    def write(self, outputs: Outputs) -> None: ...

    def delete(self) -> None: ...

    def describe(self) -> str: ...


class FileSink:
    """A local file: dotenv when the name ends in ``.env``, JSON otherwise.
    Written atomically, readable by its owner only (it may hold secrets)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return str(self.path)

    def write(self, outputs: Outputs) -> None:
        text = to_dotenv(outputs) if self.path.name.endswith(".env") else to_json(outputs)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


class KubeWriter(Protocol):
    """The Kubernetes seam (implemented over :mod:`devstack.agent.kube`)."""

    def apply_config_map(
        self, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> None: ...

    def apply_secret(
        self, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> None: ...

    def delete_config_map(self, namespace: str, name: str) -> None: ...

    def delete_secret(self, namespace: str, name: str) -> None: ...


def labels(*, release: str, owner: str) -> dict[str, str]:
    """The labels of the outputs objects."""
    out = {names.TAG_MANAGED_BY: names.MANAGED_BY, names.TAG_RELEASE: release}
    if owner:
        out[names.TAG_OWNER] = owner
    return out


class KubernetesSink:
    """A ConfigMap (non-secret values) and, when named, a Secret (secret values).
    Without a Secret, secret values are not written anywhere (and a warning
    names them)."""

    def __init__(
        self,
        writer: KubeWriter,
        *,
        namespace: str,
        config_map: str,
        secret: str | None,
        labels: Mapping[str, str],
    ) -> None:
        self.writer = writer
        self.namespace = namespace
        self.config_map = config_map
        self.secret = secret
        self.labels = dict(labels)

    def describe(self) -> str:
        where = f"ConfigMap {self.namespace}/{self.config_map}"
        if self.secret:
            where += f" and Secret {self.namespace}/{self.secret}"
        return where

    def write(self, outputs: Outputs) -> None:
        self.writer.apply_config_map(self.namespace, self.config_map, outputs.config, self.labels)
        if self.secret:
            self.writer.apply_secret(self.namespace, self.secret, outputs.secret, self.labels)
        elif outputs.secret:
            log.warning(
                "provision.secret_outputs_skipped",
                variables=sorted(outputs.secret),
                hint="pass --outputs-secret NAME to write them to a Secret",
            )

    def delete(self) -> None:
        self.writer.delete_config_map(self.namespace, self.config_map)
        if self.secret:
            self.writer.delete_secret(self.namespace, self.secret)


class MultiSink:
    """Several sinks at once (a file and Kubernetes)."""

    def __init__(self, sinks: Sequence[OutputsSink]) -> None:
        self.sinks = list(sinks)

    def describe(self) -> str:
        return ", ".join(s.describe() for s in self.sinks)

    def write(self, outputs: Outputs) -> None:
        for s in self.sinks:
            s.write(outputs)

    def delete(self) -> None:
        for s in self.sinks:
            s.delete()
