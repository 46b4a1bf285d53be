"""Outputs: variable names, where secret values go, and files. The
Kubernetes sink on the real API server: tests/cluster/test_provision_outputs.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from devstack.provision import outputs, spec
from devstack.provision.desired import desired_state
from devstack.provision.names import PhysicalName
from devstack.provision.plan import Observed


def states() -> list[tuple[object, Observed]]:
    raw = {
        "s3": [{"name": "uploads"}],
        "sqs": [{"name": "jobs", "deadLetter": {"maxReceiveCount": 1}}],
        "sns": [{"name": "events"}],
        "secrets": [{"name": "db-password", "value": "pw"}],
        "parameters": [
            {"name": "/app/flag", "value": "on"},
            {"name": "/app/token", "value": "tok", "type": "SecureString"},
        ],
    }
    out = []
    for d in desired_state(spec.parse(raw, owner="alice"), owner="alice", release="r"):
        if d.kind == "parameters":
            ids = {"value": str(d.props["value"]), "type": str(d.props["type"])}
        else:
            ids = {
                "s3": {"arn": f"arn:aws:s3:::{d.physical}"},
                "sqs": {"url": f"http://aws/q/{d.physical}", "arn": f"arn:sqs:{d.physical}"},
                "sns": {"arn": f"arn:sns:{d.physical}"},
                "secrets": {"arn": f"arn:sm:{d.physical}", "value": "pw"},
            }[d.kind]
        out.append((d, Observed(d.kind, PhysicalName(d.physical), {}, {}, ids)))
    return out


def test_variables_come_from_declared_names_and_secrets_stay_secret() -> None:
    got = outputs.compute(states(), endpoint="http://ls:4566", region="eu-west-1")  # type: ignore[arg-type]
    assert got.config == {
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://ls:4566",
        "DEVSTACK_S3_UPLOADS_BUCKET": "alice-uploads",
        "DEVSTACK_S3_UPLOADS_ARN": "arn:aws:s3:::alice-uploads",
        "DEVSTACK_SQS_JOBS_DLQ_URL": "http://aws/q/alice-jobs-dlq",
        "DEVSTACK_SQS_JOBS_DLQ_ARN": "arn:sqs:alice-jobs-dlq",
        "DEVSTACK_SQS_JOBS_DLQ_NAME": "alice-jobs-dlq",
        "DEVSTACK_SQS_JOBS_URL": "http://aws/q/alice-jobs",
        "DEVSTACK_SQS_JOBS_ARN": "arn:sqs:alice-jobs",
        "DEVSTACK_SQS_JOBS_NAME": "alice-jobs",
        "DEVSTACK_SNS_EVENTS_ARN": "arn:sns:alice-events",
        "DEVSTACK_SNS_EVENTS_NAME": "alice-events",
        "DEVSTACK_SECRET_DB_PASSWORD_NAME": "alice-db-password",
        "DEVSTACK_SECRET_DB_PASSWORD_ARN": "arn:sm:alice-db-password",
        "DEVSTACK_SSM_APP_FLAG_NAME": "/alice/app/flag",
        "DEVSTACK_SSM_APP_FLAG_VALUE": "on",
        "DEVSTACK_SSM_APP_TOKEN_NAME": "/alice/app/token",
    }
    assert got.secret == {
        "DEVSTACK_SECRET_DB_PASSWORD_VALUE": "pw",
        "DEVSTACK_SSM_APP_TOKEN_VALUE": "tok",
    }


def test_no_endpoint_means_real_aws_and_no_endpoint_variable() -> None:
    got = outputs.compute([], endpoint=None, region="us-east-1")
    assert "AWS_ENDPOINT_URL" not in got.config


@pytest.mark.parametrize("name", ["aws.env", "aws.json"])
def test_file_sink_round_trips_and_is_private(tmp_path: Path, name: str) -> None:
    tricky = outputs.Outputs({"A": 'it\'s $HOME `x` "q"', "B": "plain"}, {"S": "p w"})
    path = tmp_path / "sub" / name
    sink = outputs.FileSink(path)
    sink.write(tricky)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    if name.endswith(".env"):
        script = f'set -a; . \'{path}\'; printf \'%s\\n%s\\n%s\' "$A" "$B" "$S"'
        got = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env={}).stdout
        assert got.split("\n") == ['it\'s $HOME `x` "q"', "plain", "p w"]
    else:
        import json

        assert json.loads(path.read_text()) == {**tricky.config, **tricky.secret}
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temp files left
    sink.delete()
    assert not path.exists()
    sink.delete()  # twice is fine
