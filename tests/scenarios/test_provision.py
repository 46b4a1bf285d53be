"""Stories of `devstack provision`, each run against real LocalStack and against moto.

An app team declares the AWS resources of their service; the hook (or an
engineer on a laptop) runs `devstack provision`; the app reads the outputs.
Every check reads AWS back with its own boto3 clients, never through the
provisioning code. DynamoDB runs on moto only: LocalStack's DynamoDB downloads
an engine on first use and fails offline (see test_provision_moto_only.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from devstack.cli.main import main
from tests.support.aws import ROOT, Backend, aws, localstack_endpoint, moto_endpoint  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

OWNER_TAG = "devstack.dev/owner"
RELEASE_TAG = "devstack.dev/release"

SPEC: dict[str, Any] = {
    "s3": [
        {
            "name": "uploads",
            "versioning": True,
            "cors": [
                {
                    "allowedOrigins": ["*"],
                    "allowedMethods": ["GET", "PUT"],
                    "allowedHeaders": ["*"],
                    "maxAgeSeconds": 3000,
                }
            ],
        }
    ],
    "sqs": [
        {
            "name": "jobs",
            "attributes": {"VisibilityTimeout": "30"},
            "deadLetter": {"maxReceiveCount": 5},
        },
        {"name": "orders", "fifo": True, "contentBasedDeduplication": True},
    ],
    "sns": [{"name": "events", "subscriptions": [{"queue": "jobs", "rawMessageDelivery": True}]}],
    "secrets": [{"name": "db-password", "generate": {"length": 24}}],
    "parameters": [
        {"name": "/app/flag", "value": "on"},
        {"name": "/app/token", "value": "t0ken", "type": "SecureString"},
    ],
}


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """`devstack provision` configures structlog to print to the sys.stderr of
    the moment (pytest's capture): undo that after each test."""
    yield
    structlog.reset_defaults()


def write_values(path: Path, spec: dict[str, Any]) -> Path:
    """Helm values with the spec under devstack.aws, as an app chart has them."""
    path.write_text(yaml.safe_dump({"devstack": {"enabled": True, "aws": spec}}))
    return path


def provision(capsys: pytest.CaptureFixture[str], aws: Backend, *args: str) -> tuple[int, str, str]:  # noqa: F811
    rc = main(["provision", "--endpoint", aws.endpoint, "--region", aws.region, *args])
    out, err = capsys.readouterr()
    return rc, out, err


def read_env(path: Path) -> dict[str, str]:
    """Read a dotenv file back the way a shell would."""
    script = f"set -a; . '{path}'; env -0"
    raw = subprocess.run(["sh", "-c", script], capture_output=True, check=True, env={}).stdout
    pairs = (item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if k.startswith(("DEVSTACK_", "AWS_"))}


def test_create_then_rerun_changes_nothing(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    values = write_values(tmp_path / "values.yaml", SPEC)
    env_file = tmp_path / "aws.env"

    # The hook runs for the first time: everything is created.
    rc, out, _ = provision(
        capsys, aws, "--spec", str(values), "--release", "shop", "--outputs-file", str(env_file)
    )
    assert rc == 0, out
    assert aws.queue_names() == {"jobs", "jobs-dlq", "orders.fifo"}
    assert aws.bucket_names() == {"uploads"}
    assert aws.topic_names() == {"events"}
    assert aws.secret_names() == {"db-password"}
    assert aws.parameter_names() == {"/app/flag", "/app/token"}
    assert out.count("create ") == 8

    # ...as declared: attributes, dead-letter queue, FIFO, versioning, CORS, subscription.
    jobs = aws.queue_attributes("jobs")
    assert jobs["VisibilityTimeout"] == "30"
    redrive = json.loads(jobs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(":jobs-dlq")
    assert int(redrive["maxReceiveCount"]) == 5
    orders = aws.queue_attributes("orders.fifo")
    assert orders["FifoQueue"] == "true"
    assert orders["ContentBasedDeduplication"] == "true"
    s3 = aws.client("s3")
    assert s3.get_bucket_versioning(Bucket="uploads")["Status"] == "Enabled"
    cors = s3.get_bucket_cors(Bucket="uploads")["CORSRules"]
    assert cors[0]["AllowedMethods"] == ["GET", "PUT"]
    assert cors[0]["MaxAgeSeconds"] == 3000
    sns = aws.client("sns")
    topic_arn = next(t["TopicArn"] for t in sns.list_topics()["Topics"])
    subs = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    assert [s["Endpoint"].rsplit(":", 1)[-1] for s in subs] == ["jobs"]
    attrs = sns.get_subscription_attributes(SubscriptionArn=subs[0]["SubscriptionArn"])
    assert attrs["Attributes"]["RawMessageDelivery"] == "true"

    # ...and tagged as the release's (the baseline has no owner tag).
    tags = aws.client("sqs").list_queue_tags(
        QueueUrl=aws.client("sqs").get_queue_url(QueueName="jobs")["QueueUrl"]
    )["Tags"]
    assert tags[RELEASE_TAG] == "shop"
    assert OWNER_TAG not in tags

    # The app reads the outputs, and they are the real resources.
    env = read_env(env_file)
    assert (
        env["DEVSTACK_SQS_JOBS_URL"]
        == aws.client("sqs").get_queue_url(QueueName="jobs")["QueueUrl"]
    )
    assert env["DEVSTACK_SQS_JOBS_ARN"] == jobs["QueueArn"]
    assert env["DEVSTACK_SQS_JOBS_DLQ_ARN"] == redrive["deadLetterTargetArn"]
    assert env["DEVSTACK_SQS_ORDERS_NAME"] == "orders.fifo"
    assert env["DEVSTACK_S3_UPLOADS_BUCKET"] == "uploads"
    assert env["DEVSTACK_SNS_EVENTS_ARN"] == topic_arn
    assert env["DEVSTACK_SSM_APP_FLAG_VALUE"] == "on"
    assert env["DEVSTACK_SSM_APP_TOKEN_VALUE"] == "t0ken"
    assert env["AWS_ENDPOINT_URL"] == aws.endpoint
    password = aws.client("secretsmanager").get_secret_value(SecretId="db-password")
    assert env["DEVSTACK_SECRET_DB_PASSWORD_VALUE"] == password["SecretString"]
    assert len(password["SecretString"]) == 24
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    # Secret values are never printed.
    assert password["SecretString"] not in out
    assert "t0ken" not in out

    # A message sent through the topic lands, raw, in the queue the app reads.
    sns.publish(TopicArn=topic_arn, Message="hello")
    got = aws.client("sqs").receive_message(
        QueueUrl=env["DEVSTACK_SQS_JOBS_URL"], WaitTimeSeconds=5
    )
    assert [m["Body"] for m in got["Messages"]] == ["hello"]

    # The hook runs again (helm upgrade): nothing changes, the secret keeps its value.
    before = aws.everything()
    rc, out, _ = provision(
        capsys, aws, "--spec", str(values), "--release", "shop", "--outputs-file", str(env_file)
    )
    assert rc == 0
    assert out.count("unchanged ") == 8
    assert "create " not in out
    assert "update " not in out
    assert aws.everything() == before
    assert read_env(env_file) == env


def test_a_changed_spec_converges(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    values = write_values(tmp_path / "values.yaml", SPEC)
    assert provision(capsys, aws, "--spec", str(values), "--release", "shop")[0] == 0

    changed = json.loads(json.dumps(SPEC))
    changed["s3"][0]["versioning"] = False
    changed["s3"][0]["cors"] = []
    changed["sqs"][0]["attributes"]["VisibilityTimeout"] = "45"
    changed["sqs"][0]["deadLetter"]["maxReceiveCount"] = 9
    changed["sns"][0]["subscriptions"] = [{"queue": "orders2"}]
    changed["sqs"].append({"name": "orders2"})
    changed["secrets"].append({"name": "api-key", "value": "one"})
    changed["parameters"][0]["value"] = "off"
    write_values(values, changed)

    rc, out, _ = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 0, out
    assert aws.queue_attributes("jobs")["VisibilityTimeout"] == "45"
    redrive = json.loads(aws.queue_attributes("jobs")["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == 9
    assert aws.client("s3").get_bucket_versioning(Bucket="uploads")["Status"] == "Suspended"
    sns = aws.client("sns")
    topic_arn = next(t["TopicArn"] for t in sns.list_topics()["Topics"])
    subs = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    assert [s["Endpoint"].rsplit(":", 1)[-1] for s in subs] == ["orders2"]
    assert aws.client("ssm").get_parameter(Name="/app/flag")["Parameter"]["Value"] == "off"
    assert (
        aws.client("secretsmanager").get_secret_value(SecretId="api-key")["SecretString"] == "one"
    )
    assert "update        sqs jobs" in out
    assert "create        sqs orders2" in out

    # A secret's declared value changes: updated, and the value is not printed.
    changed["secrets"][1]["value"] = "two"
    write_values(values, changed)
    rc, out, _ = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 0
    assert "value: (secret changed)" in out
    assert "'two'" not in out
    assert (
        aws.client("secretsmanager").get_secret_value(SecretId="api-key")["SecretString"] == "two"
    )

    # A queue dropped from the spec is reported as stale and kept until teardown.
    del changed["sqs"][2]
    changed["sns"][0]["subscriptions"] = []
    write_values(values, changed)
    rc, out, _ = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 0
    assert "stale         sqs orders2" in out
    assert "orders2" in aws.queue_names()


def test_each_owner_gets_their_own_copy(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    values = write_values(tmp_path / "values.yaml", SPEC)
    baseline_env, alice_env = tmp_path / "baseline.env", tmp_path / "alice.env"
    assert (
        provision(
            capsys,
            aws,
            "--spec",
            str(values),
            "--release",
            "shop",
            "--outputs-file",
            str(baseline_env),
        )[0]
        == 0
    )
    baseline = aws.everything()

    # alice installs her copy of the chart with devstack.owner=alice.
    rc, out, _ = provision(
        capsys,
        aws,
        "--spec",
        str(values),
        "--release",
        "shop-alice",
        "--owner",
        "alice",
        "--outputs-file",
        str(alice_env),
    )
    assert rc == 0, out
    alice = aws.everything() - baseline
    assert alice == {
        "sqs alice-jobs",
        "sqs alice-jobs-dlq",
        "sqs alice-orders.fifo",
        "s3 alice-uploads",
        "sns alice-events",
        "secrets alice-db-password",
        "parameters /alice/app/flag",
        "parameters /alice/app/token",
    }
    # Same variable names, her resources.
    b, a = read_env(baseline_env), read_env(alice_env)
    assert set(a) == set(b)
    assert a["DEVSTACK_SQS_JOBS_URL"].endswith("/alice-jobs")
    assert b["DEVSTACK_SQS_JOBS_URL"].endswith("/jobs")
    sqs = aws.client("sqs")
    tags = sqs.list_queue_tags(QueueUrl=a["DEVSTACK_SQS_JOBS_URL"])["Tags"]
    assert tags[OWNER_TAG] == "alice"
    assert tags[RELEASE_TAG] == "shop-alice"
    # Her queue's dead-letter queue is hers too.
    redrive = json.loads(aws.queue_attributes("alice-jobs")["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(":alice-jobs-dlq")

    # alice uninstalls: her resources go, the baseline's stay.
    rc, out, _ = provision(
        capsys, aws, "--teardown", "--release", "shop-alice", "--owner", "alice",
        "--outputs-file", str(alice_env),
    )  # fmt: skip
    assert rc == 0, out
    assert aws.everything() == baseline
    assert not alice_env.exists()

    # Tearing down someone else's release name with alice's owner finds nothing.
    rc, out, _ = provision(capsys, aws, "--teardown", "--release", "shop", "--owner", "alice")
    assert rc == 0
    assert aws.everything() == baseline


def test_something_that_is_not_ours_is_used_but_never_touched(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Someone created the queue by hand, with other settings.
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName="jobs", Attributes={"VisibilityTimeout": "10"})["QueueUrl"]
    values = write_values(
        tmp_path / "values.yaml", {"sqs": [{"name": "jobs", "attributes": {"DelaySeconds": 3}}]}
    )
    out_file = tmp_path / "out.json"
    rc, out, _ = provision(
        capsys, aws, "--spec", str(values), "--release", "shop", "--outputs-file", str(out_file)
    )
    assert rc == 0, out
    assert "foreign       sqs jobs: exists, not managed by devstack; left as is" in out
    assert aws.queue_attributes("jobs")["DelaySeconds"] == "0"
    assert json.loads(out_file.read_text())["DEVSTACK_SQS_JOBS_URL"] == url

    rc, out, _ = provision(capsys, aws, "--teardown", "--release", "shop")
    assert rc == 0
    assert aws.queue_names() == {"jobs"}


def test_teardown_removes_everything_of_the_release(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    values = write_values(tmp_path / "values.yaml", SPEC)
    assert provision(capsys, aws, "--spec", str(values), "--release", "shop")[0] == 0
    # The app used its bucket: versions and a delete marker.
    s3 = aws.client("s3")
    s3.put_object(Bucket="uploads", Key="a.txt", Body=b"1")
    s3.put_object(Bucket="uploads", Key="a.txt", Body=b"2")
    s3.delete_object(Bucket="uploads", Key="a.txt")

    rc, out, _ = provision(capsys, aws, "--teardown", "--release", "shop", "--dry-run")
    assert rc == 0
    assert "would delete  s3 uploads" in out
    assert len(aws.everything()) == 8

    rc, out, _ = provision(capsys, aws, "--teardown", "--spec", str(values), "--release", "shop")
    assert rc == 0, out
    assert aws.everything() == set()
    assert "deleted 8 resource(s)" in out

    # Twice is fine.
    rc, out, _ = provision(capsys, aws, "--teardown", "--release", "shop")
    assert rc == 0
    assert "deleted 0 resource(s)" in out


def test_a_bad_spec_creates_nothing_and_names_the_field(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = json.loads(json.dumps(SPEC))
    bad["sqs"][1]["deadLetter"] = {"maxReceiveCount": 0}
    values = write_values(tmp_path / "values.yaml", bad)
    rc, _, err = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 2
    assert (
        "devstack.aws.sqs[1].deadLetter.maxReceiveCount: must be an integer between 1 and 1000"
        in err
    )
    assert aws.everything() == set()

    bad = json.loads(json.dumps(SPEC))
    bad["sns"][0]["subscriptions"][0]["queue"] = "nope"
    write_values(values, bad)
    rc, _, err = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 2
    assert "devstack.aws.sns[0].subscriptions[0].queue: 'nope' is not declared" in err
    assert aws.everything() == set()


def test_a_failure_partway_reports_exactly_what_was_created(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Someone deleted a secret by hand, with a recovery window: its name is
    # taken until then, which no spec check can know.
    sm = aws.client("secretsmanager")
    sm.create_secret(Name="db-password", SecretString="old")
    sm.delete_secret(SecretId="db-password", RecoveryWindowInDays=7)
    spec = {
        "s3": [{"name": "uploads"}],
        "sqs": [{"name": "jobs"}],
        "secrets": [{"name": "db-password"}],
        "parameters": [{"name": "/app/after", "value": "x"}],
    }
    values = write_values(tmp_path / "values.yaml", spec)
    rc, _, err = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 2
    err = err[err.index("devstack provision: ") :]
    assert "create        secrets db-password failed: secrets db-password: create:" in err
    assert "already done before the failure (left in place; rerun to converge):" in err
    assert "  created s3 uploads\n  created sqs jobs\n" in err
    assert "/app/after" not in err
    assert aws.everything() == {"s3 uploads", "sqs jobs"}

    # Once the old secret is gone for good, a rerun converges from there.
    sm.delete_secret(SecretId="db-password", ForceDeleteWithoutRecovery=True)
    rc, out, _ = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 0, out
    assert "unchanged     s3 uploads" in out
    assert "create        secrets db-password" in out
    assert aws.everything() == {
        "s3 uploads",
        "sqs jobs",
        "secrets db-password",
        "parameters /app/after",
    }


HOOK = """
import json, os, sys
doc = json.load(sys.stdin)
with open(os.environ["HOOK_RECORD"], "a") as f:
    f.write(json.dumps({"doc": doc, "owner": os.environ["DEVSTACK_OWNER"],
                        "phase": os.environ["DEVSTACK_PHASE"]}) + "\\n")
if doc["phase"] == "provision":
    print(json.dumps({"outputs": {"SEEDED_QUEUE": doc["outputs"]["DEVSTACK_SQS_JOBS_NAME"]}}))
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin, installed the way a user would (pip), into a folder
    put on PYTHONPATH: its entry point is discovered for real."""
    target = tmp_path_factory.mktemp("plugin")
    # Built from a copy, so the build leaves nothing in the source tree.
    source = shutil.copytree(
        ROOT / "examples" / "provisioner-plugin", tmp_path_factory.mktemp("plugin-src") / "src"
    )
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--no-index", "--target", str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return target


def test_custom_hooks_a_command_and_a_plugin(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    plugin_path: Path,
) -> None:
    (tmp_path / "seed.py").write_text(HOOK)
    record = tmp_path / "record.jsonl"
    spec = {
        "sqs": [{"name": "jobs"}],
        "logGroups": [{"name": "orders", "retentionDays": 7}],
        "hooks": [
            {
                "name": "seed",
                "command": [sys.executable, "seed.py"],
                "on": ["provision", "teardown"],
            }
        ],
    }
    values = write_values(tmp_path / "values.yaml", spec)
    env = {
        **os.environ,
        "PYTHONPATH": str(plugin_path),
        "HOOK_RECORD": str(record),
        "DEVSTACK_OWNER": "alice",
        "DEVSTACK_RELEASE": "shop-alice",
        "AWS_ENDPOINT_URL": aws.endpoint,
        "AWS_REGION": aws.region,
    }
    devstack = [sys.executable, "-m", "devstack.cli.main", "provision"]
    out_file = tmp_path / "out.json"

    # The real console path: entry points discovered from the installed plugin.
    run = subprocess.run(
        [*devstack, "--spec", str(values), "--outputs-file", str(out_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "create        logGroups orders (alice-orders)" in run.stdout
    outputs = json.loads(out_file.read_text())
    assert outputs["SEEDED_QUEUE"] == "alice-jobs"
    assert outputs["DEVSTACK_LOGS_ORDERS_GROUP"] == "alice-orders"
    groups = aws.client("logs").describe_log_groups()["logGroups"]
    assert [(g["logGroupName"], g.get("retentionInDays")) for g in groups] == [("alice-orders", 7)]
    # The hook got the spec and the outputs on stdin.
    (seen,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert seen["owner"] == "alice"
    assert seen["doc"]["spec"] == spec
    assert seen["doc"]["outputs"]["DEVSTACK_SQS_JOBS_URL"] == outputs["DEVSTACK_SQS_JOBS_URL"]
    assert seen["doc"]["release"] == "shop-alice"

    # A bad plugin item is rejected before anything is created, by the plugin's schema.
    bad = {**spec, "logGroups": [{"name": "orders", "retentionDays": 8}], "sqs": [{"name": "x"}]}
    write_values(values, bad)
    run = subprocess.run(
        [*devstack, "--spec", str(values)], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2
    assert "devstack.aws.logGroups[0].retentionDays: must be one of: 1, 3, 5, 7" in run.stderr
    assert "alice-x" not in aws.queue_names()

    # Teardown: the hook runs first, then the plugin's and the built-in resources go.
    write_values(values, spec)
    run = subprocess.run(
        [*devstack, "--teardown", "--spec", str(values)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert aws.client("logs").describe_log_groups()["logGroups"] == []
    assert aws.queue_names() == set()
    phases = [json.loads(line)["phase"] for line in record.read_text().splitlines()]
    assert phases == ["provision", "teardown"]


def test_a_failing_hook_reports_what_was_created(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = {
        "sqs": [{"name": "jobs"}],
        "hooks": [
            {
                "name": "migrate",
                "command": [sys.executable, "-c", "import sys; sys.exit('no database')"],
            }
        ],
    }
    values = write_values(tmp_path / "values.yaml", spec)
    rc, _, err = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 2
    assert "hook migrate failed: hook migrate: exited with status 1: no database" in err
    assert "  created sqs jobs" in err
    assert aws.queue_names() == {"jobs"}
