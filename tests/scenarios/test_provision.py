"""Stories of `devstack provision`, each run against real LocalStack and against moto.

An app team declares the AWS resources of their service; the hook (or an
engineer on a laptop) runs `devstack provision`; the app reads the outputs.
Every check reads AWS back with its own boto3 clients, never through the
provisioning code. The shared spec has a DynamoDB table where the backend has
DynamoDB (moto): LocalStack's DynamoDB downloads an engine on first use and
fails offline, so it runs without it (see also test_provision_moto_only.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.cli.main import main
from devstack.provision import command
from devstack.provision.aws import BotoClients
from tests.support.aws import (  # noqa: F401
    ROOT,
    Backend,
    aws,
    inject_failure,
    localstack_endpoint,
    moto_endpoint,
)

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


TABLE: dict[str, Any] = {
    "name": "orders",
    "hashKey": {"name": "id", "type": "S"},
    "rangeKey": {"name": "ts", "type": "N"},
    "globalIndexes": [{"name": "by-user", "hashKey": {"name": "user", "type": "S"}}],
}


def spec_for(aws: Backend) -> dict[str, Any]:  # noqa: F811
    """The shared spec, with a DynamoDB table where the backend has DynamoDB."""
    spec = json.loads(json.dumps(SPEC))
    if aws.has_dynamodb:
        spec["dynamodb"] = [TABLE]
    return spec


def count(aws: Backend) -> int:  # noqa: F811
    """How many resources the shared spec declares (a dead-letter queue included)."""
    return 9 if aws.has_dynamodb else 8


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
    values = write_values(tmp_path / "values.yaml", spec_for(aws))
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
    assert aws.table_names() == ({"orders"} if aws.has_dynamodb else set())
    assert out.count("create ") == count(aws)

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
    if aws.has_dynamodb:
        table = aws.client("dynamodb").describe_table(TableName="orders")["Table"]
        assert env["DEVSTACK_DYNAMODB_ORDERS_ARN"] == table["TableArn"]
        assert [i["IndexName"] for i in table["GlobalSecondaryIndexes"]] == ["by-user"]
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

    # The hook runs again (helm upgrade): nothing is written at all, not even a tag
    # or an attribute to the value it already has (versions and modification times
    # stay), and the secret keeps its value.
    before = aws.snapshot()
    rc, out, _ = provision(
        capsys, aws, "--spec", str(values), "--release", "shop", "--outputs-file", str(env_file),
        "--prune",
    )  # fmt: skip
    assert rc == 0
    assert out.count("unchanged ") == count(aws)
    assert "create " not in out
    assert "update " not in out
    assert "pruned" not in out
    assert aws.snapshot() == before
    assert read_env(env_file) == env


def subscription(aws: Backend, queue: str) -> dict[str, str]:  # noqa: F811
    """The attributes of the topic's subscription to ``queue``."""
    sns = aws.client("sns")
    topic_arn = next(t["TopicArn"] for t in sns.list_topics()["Topics"])
    subs = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    (sub,) = [s for s in subs if s["Endpoint"].rsplit(":", 1)[-1] == queue]
    attrs: dict[str, str] = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])[
        "Attributes"
    ]
    return attrs


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
    changed["sns"][0]["subscriptions"] = [{"queue": "orders2", "filterPolicy": {"type": ["order"]}}]
    changed["sqs"].append({"name": "orders2"})
    changed["secrets"].append({"name": "api-key", "value": "one"})
    changed["parameters"][0]["value"] = "off"
    write_values(values, changed)

    rc, out, _ = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 0, out
    assert aws.queue_attributes("jobs")["VisibilityTimeout"] == "45"
    redrive = json.loads(aws.queue_attributes("jobs")["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == 9
    s3 = aws.client("s3")
    assert s3.get_bucket_versioning(Bucket="uploads")["Status"] == "Suspended"
    with pytest.raises(s3.exceptions.ClientError) as no_cors:
        s3.get_bucket_cors(Bucket="uploads")
    assert no_cors.value.response["Error"]["Code"] == "NoSuchCORSConfiguration"
    sns = aws.client("sns")
    topic_arn = next(t["TopicArn"] for t in sns.list_topics()["Topics"])
    subs = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    assert [s["Endpoint"].rsplit(":", 1)[-1] for s in subs] == ["orders2"]
    assert json.loads(subscription(aws, "orders2")["FilterPolicy"]) == {"type": ["order"]}
    assert aws.client("ssm").get_parameter(Name="/app/flag")["Parameter"]["Value"] == "off"
    assert (
        aws.client("secretsmanager").get_secret_value(SecretId="api-key")["SecretString"] == "one"
    )
    assert "update        sqs jobs" in out
    assert "create        sqs orders2" in out
    assert "update        s3 uploads: cors: " in out

    # The filter policy changes in place, then goes (SNS cannot drop it in place:
    # devstack subscribes again without it).
    changed["sns"][0]["subscriptions"][0]["filterPolicy"] = {"type": ["refund"]}
    write_values(values, changed)
    rc, out, _ = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 0, out
    assert json.loads(subscription(aws, "orders2")["FilterPolicy"]) == {"type": ["refund"]}
    del changed["sns"][0]["subscriptions"][0]["filterPolicy"]
    write_values(values, changed)
    rc, out, _ = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 0, out
    assert "FilterPolicy" not in subscription(aws, "orders2")

    # A secret's declared value changes: updated, and the value is not printed.
    changed["secrets"][1]["value"] = "two"
    write_values(values, changed)
    rc, out, err = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 0
    assert "value: (secret changed)" in out
    for stream in (out, err):
        assert "'one'" not in stream and "'two'" not in stream
    assert (
        aws.client("secretsmanager").get_secret_value(SecretId="api-key")["SecretString"] == "two"
    )

    # A SecureString becomes a plain String: the old secret is shown nowhere, not in
    # the plan (stdout) and not in the logs (stderr).
    assert changed["parameters"][1] == {
        "name": "/app/token",
        "value": "t0ken",
        "type": "SecureString",
    }
    changed["parameters"][1] = {"name": "/app/token", "value": "public", "type": "String"}
    write_values(values, changed)
    rc, out, err = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 0, err
    assert "update        parameters /app/token: type: 'SecureString' -> 'String'" in out
    assert "value: (secret changed)" in out
    for stream in (out, err):
        assert "t0ken" not in stream
    param = aws.client("ssm").get_parameter(Name="/app/token")["Parameter"]
    assert (param["Type"], param["Value"]) == ("String", "public")

    # A queue dropped from the spec is reported as stale and kept until teardown.
    del changed["sqs"][2]
    changed["sns"][0]["subscriptions"] = []
    write_values(values, changed)
    rc, out, _ = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 0
    assert "stale         sqs orders2" in out
    assert "orders2" in aws.queue_names()

    # With --prune (the chart's pre-upgrade hook) it goes, and nothing else does.
    before = aws.everything()
    rc, out, _ = provision(capsys, aws, "--spec", str(values), "--release", "shop", "--prune")
    assert rc == 0, out
    assert "pruned        sqs orders2" in out
    assert aws.everything() == before - {"sqs orders2"}


def test_each_owner_gets_their_own_copy(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    values = write_values(tmp_path / "values.yaml", spec_for(aws))
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
    } | ({"dynamodb alice-orders"} if aws.has_dynamodb else set())
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

    if aws.has_dynamodb:
        assert a["DEVSTACK_DYNAMODB_ORDERS_TABLE"] == "alice-orders"
        assert b["DEVSTACK_DYNAMODB_ORDERS_TABLE"] == "orders"
        ddb = aws.client("dynamodb")
        arn = ddb.describe_table(TableName="alice-orders")["Table"]["TableArn"]
        table_tags = {
            t["Key"]: t["Value"] for t in ddb.list_tags_of_resource(ResourceArn=arn)["Tags"]
        }
        assert table_tags[OWNER_TAG] == "alice"

    # alice's pre-upgrade hook prunes: nothing of the baseline's is hers to prune.
    rc, out, _ = provision(
        capsys, aws, "--spec", str(values), "--release", "shop-alice", "--owner", "alice",
        "--prune",
    )  # fmt: skip
    assert rc == 0, out
    assert "pruned" not in out
    assert aws.everything() == baseline | alice

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
    values = write_values(tmp_path / "values.yaml", spec_for(aws))
    assert provision(capsys, aws, "--spec", str(values), "--release", "shop")[0] == 0
    # The app used its bucket: versions and a delete marker.
    s3 = aws.client("s3")
    s3.put_object(Bucket="uploads", Key="a.txt", Body=b"1")
    s3.put_object(Bucket="uploads", Key="a.txt", Body=b"2")
    s3.delete_object(Bucket="uploads", Key="a.txt")

    rc, out, _ = provision(capsys, aws, "--teardown", "--release", "shop", "--dry-run")
    assert rc == 0
    assert "would delete  s3 uploads" in out
    assert len(aws.everything()) == count(aws)

    rc, out, _ = provision(capsys, aws, "--teardown", "--spec", str(values), "--release", "shop")
    assert rc == 0, out
    assert aws.everything() == set()
    assert f"deleted {count(aws)} resource(s)" in out

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

    # Tables: a bad key type (the schema), then a key that the schema allows but a
    # table cannot have (the checks after it).
    for table, message in (
        (
            {"name": "events", "hashKey": {"name": "id", "type": "X"}},
            "devstack.aws.dynamodb[0].hashKey.type: must be one of: S, N, B",
        ),
        (
            {**TABLE, "rangeKey": {"name": "id", "type": "N"}},
            "devstack.aws.dynamodb[0].rangeKey.name: must differ from hashKey.name",
        ),
    ):
        write_values(values, {**spec_for(aws), "dynamodb": [table]})
        rc, _, err = provision(capsys, aws, "--spec", str(values), "--release", "shop")
        assert rc == 2
        assert message in err
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

    # Dropped from the spec, the log group is stale (the plugin lists what it owns);
    # the pre-upgrade hook's --prune removes it.
    without = {k: v for k, v in spec.items() if k != "logGroups"}
    write_values(values, without)
    run = subprocess.run(
        [*devstack, "--spec", str(values)], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "stale         logGroups alice-orders: no longer declared" in run.stdout
    assert len(aws.client("logs").describe_log_groups()["logGroups"]) == 1
    run = subprocess.run(
        [*devstack, "--spec", str(values), "--prune"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "pruned        logGroups alice-orders" in run.stdout
    assert aws.client("logs").describe_log_groups()["logGroups"] == []

    # Teardown: the hook runs first, then the plugin's and the built-in resources go.
    write_values(values, spec)
    run = subprocess.run(
        [*devstack, "--spec", str(values)], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
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
    assert phases == ["provision", "provision", "provision", "provision", "teardown"]

    # Without the spec, teardown still finds the plugin's log group by its tags.
    run = subprocess.run(
        [*devstack, "--spec", str(values)], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    run = subprocess.run(
        [*devstack, "--teardown"], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "deleted       logGroups alice-orders" in run.stdout
    assert aws.client("logs").describe_log_groups()["logGroups"] == []
    assert aws.queue_names() == set()


def test_a_plugin_failing_after_its_create_still_reports_it(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    plugin_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    faults: list[tuple[str, str, dict[str, Any]]],
) -> None:
    """The example plugin calls ctx.created() right after CreateLogGroup: its
    retention call failing still leaves the log group reported."""
    monkeypatch.syspath_prepend(str(plugin_path))  # its entry point is discovered
    monkeypatch.delitem(sys.modules, "devstack_example_logs", raising=False)
    faults.append(("logs", "PutRetentionPolicy", {}))
    values = write_values(
        tmp_path / "values.yaml", {"logGroups": [{"name": "orders", "retentionDays": 7}]}
    )
    rc, _, err = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 2
    assert "plugin logGroups orders failed" in err
    assert "  created logGroups orders\n" in err
    groups = aws.client("logs").describe_log_groups()["logGroups"]
    assert [g["logGroupName"] for g in groups] == ["orders"]


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


def test_a_failing_hook_never_shows_a_secret(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The hook gets the secret outputs on stdin; when it fails and prints them, the
    error (stderr) and the logs (stderr too) show *** instead, and stdout nothing."""
    spec = {
        "secrets": [{"name": "db-password", "generate": {"length": 24}}],
        "parameters": [{"name": "/app/token", "value": "t0ken-xyz", "type": "SecureString"}],
        "hooks": [
            {
                "name": "migrate",
                "command": [
                    sys.executable, "-c",
                    "import json, sys; d = json.load(sys.stdin); "
                    "sys.exit('cannot log in with ' + json.dumps(d['secretOutputs']))",
                ],
            }
        ],
    }  # fmt: skip
    values = write_values(tmp_path / "values.yaml", spec)
    rc, out, err = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 2
    password = aws.client("secretsmanager").get_secret_value(SecretId="db-password")
    assert "hook migrate: exited with status 1: cannot log in with" in err
    assert '"DEVSTACK_SECRET_DB_PASSWORD_VALUE": "***"' in err
    for stream in (out, err):
        assert password["SecretString"] not in stream
        assert "t0ken-xyz" not in stream


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict[str, Any]]]:
    """(service, operation, options) to fail in the clients `devstack provision`
    makes: the calls fail as AWS would answer, without reaching the endpoint."""
    wanted: list[tuple[str, str, dict[str, Any]]] = []

    class FaultyClients(BotoClients):
        def client(self, service: str) -> Any:
            fresh = service not in self._clients
            c = super().client(service)
            if fresh:
                for svc, operation, options in wanted:
                    if svc == service:
                        inject_failure(c, operation, **options)
            return c

    monkeypatch.setattr(command, "BotoClients", FaultyClients)
    return wanted


def test_a_failure_after_a_create_still_reports_the_resource(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    faults: list[tuple[str, str, dict[str, Any]]],
) -> None:
    """The bucket exists, tagged, once CreateBucket and its tagging succeed: a later
    call for it failing (versioning) still reports it, and the next run adopts it
    as this release's and converges."""
    spec = {"s3": [{"name": "uploads", "versioning": True}], "sqs": [{"name": "jobs"}]}
    values = write_values(tmp_path / "values.yaml", spec)
    faults.append(("s3", "PutBucketVersioning", {}))
    rc, _, err = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 2
    err = err[err.index("devstack provision: ") :]
    assert "s3 uploads: versioning: InjectedFault" in err
    assert (
        "already done before the failure (left in place; rerun to converge):\n"
        "  created s3 uploads\n" in err
    )
    assert aws.everything() == {"s3 uploads"}
    tags = aws.client("s3").get_bucket_tagging(Bucket="uploads")["TagSet"]
    assert {"Key": RELEASE_TAG, "Value": "shop"} in tags

    faults.clear()
    rc, out, _ = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 0, out
    assert "update        s3 uploads: versioning: False -> True" in out
    assert "foreign" not in out
    assert aws.client("s3").get_bucket_versioning(Bucket="uploads")["Status"] == "Enabled"


def test_a_bucket_that_cannot_be_tagged_is_not_left_behind(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    faults: list[tuple[str, str, dict[str, Any]]],
) -> None:
    """CreateBucket cannot tag: if tagging right after fails, the empty bucket is
    deleted again, rather than left untagged for every later run to take for
    someone else's. The report says nothing was created."""
    values = write_values(tmp_path / "values.yaml", {"s3": [{"name": "uploads"}]})
    faults.append(("s3", "PutBucketTagging", {"code": "AccessDenied", "status": 403}))
    rc, _, err = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 2
    assert "s3 uploads: tag: AccessDenied" in err
    assert "nothing had been created or changed" in err
    assert aws.bucket_names() == set()


def test_a_failed_subscription_still_reports_the_topic(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    faults: list[tuple[str, str, dict[str, Any]]],
) -> None:
    spec = {
        "sqs": [{"name": "jobs"}],
        "sns": [{"name": "events", "subscriptions": [{"queue": "jobs"}]}],
    }
    values = write_values(tmp_path / "values.yaml", spec)
    faults.append(("sns", "Subscribe", {}))
    rc, _, err = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 2
    assert "  created sqs jobs\n  created sns events\n" in err
    faults.clear()
    rc, out, _ = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 0, out
    assert "update        sns events: subscriptions.jobs: (none) -> " in out
    assert subscription(aws, "jobs")["RawMessageDelivery"] == "false"


def test_buckets_of_other_regions_are_left_alone(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    faults: list[tuple[str, str, dict[str, Any]]],
) -> None:
    """ListBuckets lists every region's buckets, and S3 answers 301 to a read of a
    bucket from another region's endpoint (injected here, as moto and LocalStack
    answer it). A run in one region neither reads nor deletes the buckets of another,
    even one tagged with the same release; and an untagged bucket made by hand is
    someone else's, not an error."""
    west = aws.client_in("us-west-2", "s3")
    west.create_bucket(
        Bucket="shop-west", CreateBucketConfiguration={"LocationConstraint": "us-west-2"}
    )
    west.put_bucket_tagging(
        Bucket="shop-west",
        Tagging={"TagSet": [
            {"Key": "app.kubernetes.io/managed-by", "Value": "devstack"},
            {"Key": RELEASE_TAG, "Value": "shop"},
        ]},
    )  # fmt: skip
    aws.client("s3").create_bucket(Bucket="by-hand")
    moved = {
        "code": "PermanentRedirect",
        "status": 301,
        "headers": {"x-amz-bucket-region": "us-west-2"},
    }
    for operation in ("HeadBucket", "GetBucketTagging", "GetBucketVersioning", "GetBucketCors"):
        faults.append(
            ("s3", operation, {**moved, "when": lambda p: p.get("Bucket") == "shop-west"})
        )
    values = write_values(tmp_path / "values.yaml", {"s3": [{"name": "uploads"}]})
    rc, out, err = provision(capsys, aws, "--spec", str(values), "--release", "shop", "--prune")
    assert rc == 0, err
    assert "create        s3 uploads" in out
    rc, out, err = provision(capsys, aws, "--teardown", "--release", "shop")
    assert rc == 0, err
    assert "deleted       s3 uploads" in out
    assert aws.bucket_names() == {"shop-west", "by-hand"}

    # Declaring a bucket whose name another region holds: one clear error.
    values = write_values(tmp_path / "values.yaml", {"s3": [{"name": "shop-west"}]})
    rc, _, err = provision(capsys, aws, "--spec", str(values), "--release", "shop")
    assert rc == 2
    assert "s3 shop-west: the name is taken by a bucket in us-west-2, not us-east-1" in err


def test_an_error_listing_tables_fails_the_run(
    aws: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    faults: list[tuple[str, str, dict[str, Any]]],
) -> None:
    """What exists must be known before anything is pruned or torn down: a refusal
    to list tables fails the run (only an endpoint without DynamoDB at all, 501,
    has none to list: LocalStack here runs without it)."""
    faults.append(("dynamodb", "ListTables", {"code": "AccessDeniedException", "status": 400}))
    values = write_values(tmp_path / "values.yaml", {"sqs": [{"name": "jobs"}]})
    rc, _, err = provision(capsys, aws, "--spec", str(values), "--release", "shop", "--prune")
    assert rc == 2
    assert "dynamodb list-tables: AccessDeniedException" in err
    assert aws.everything() == set()
    rc, _, err = provision(capsys, aws, "--teardown", "--release", "shop")
    assert rc == 2
    assert "dynamodb list-tables: AccessDeniedException" in err
