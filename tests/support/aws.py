"""AWS for tests: real LocalStack (host mode, no Docker) and moto, on 127.0.0.1.

- ``localstack_endpoint`` (session): installs LocalStack into ``.localstack-venv``
  with ``scripts/localstack`` when it is missing (the first run on a fresh
  machine takes a minute or more; its log goes to a file that a failure
  quotes), starts it on a free port with a temporary state directory and stops
  it at the end of the session.
- ``moto_endpoint`` (session): moto's server in a thread on a free port.
- :class:`Backend`: an endpoint plus independent boto3 clients for checking
  what exists, and :meth:`Backend.wipe`, which deletes everything so each test
  starts from an empty account.

LocalStack's DynamoDB downloads an engine on first use and fails offline, so it
is not started there; DynamoDB is covered on moto.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "localstack"
REGION = "us-east-1"
LOCALSTACK_SERVICES = "s3,sqs,sns,sts,iam,secretsmanager,ssm,logs"


@dataclass
class Backend:
    """One AWS endpoint under test."""

    name: str
    endpoint: str
    has_dynamodb: bool
    region: str = REGION
    _clients: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = boto3.client(
                service,
                endpoint_url=self.endpoint,
                region_name=self.region,
                aws_access_key_id="test",
                aws_secret_access_key="test",
                config=botocore.config.Config(
                    s3={"addressing_style": "path"}, retries={"max_attempts": 2}
                ),
            )
        return self._clients[service]

    def client_in(self, region: str, service: str) -> Any:
        """A client of the same endpoint for another region."""
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=region,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 2}
            ),
        )

    # -------------------------------------------------------------- reading

    def queue_names(self) -> set[str]:
        urls = self.client("sqs").list_queues().get("QueueUrls", [])
        return {u.rsplit("/", 1)[-1] for u in urls}

    def queue_attributes(self, name: str) -> dict[str, str]:
        sqs = self.client("sqs")
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        return dict(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"])

    def bucket_names(self) -> set[str]:
        return {b["Name"] for b in self.client("s3").list_buckets().get("Buckets", [])}

    def topic_names(self) -> set[str]:
        topics = self.client("sns").list_topics().get("Topics", [])
        return {t["TopicArn"].rsplit(":", 1)[-1] for t in topics}

    def secret_names(self) -> set[str]:
        return {s["Name"] for s in self.client("secretsmanager").list_secrets()["SecretList"]}

    def parameter_names(self) -> set[str]:
        params = self.client("ssm").describe_parameters().get("Parameters", [])
        return {p["Name"] for p in params}

    def table_names(self) -> set[str]:
        if not self.has_dynamodb:
            return set()
        return set(self.client("dynamodb").list_tables().get("TableNames", []))

    def everything(self) -> set[str]:
        """Every resource, as ``kind name``."""
        out = {f"sqs {n}" for n in self.queue_names()}
        out |= {f"s3 {n}" for n in self.bucket_names()}
        out |= {f"sns {n}" for n in self.topic_names()}
        out |= {f"secrets {n}" for n in self.secret_names()}
        out |= {f"parameters {n}" for n in self.parameter_names()}
        out |= {f"dynamodb {n}" for n in self.table_names()}
        return out

    def snapshot(self) -> dict[str, Any]:
        """Every resource with what AWS says about it: attributes, tags, versions,
        modification times. Two snapshots are equal only if nothing was written in
        between (counters of messages and reads are left out)."""
        sqs, s3, sns = self.client("sqs"), self.client("s3"), self.client("sns")
        out: dict[str, Any] = {}
        for name in sorted(self.queue_names()):
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            attrs = {
                k: v for k, v in self.queue_attributes(name).items() if not k.startswith("Approx")
            }
            out[f"sqs {name}"] = {
                "attributes": attrs,
                "tags": sqs.list_queue_tags(QueueUrl=url).get("Tags"),
            }
        for name in sorted(self.bucket_names()):
            cors: Any
            try:
                cors = s3.get_bucket_cors(Bucket=name)["CORSRules"]
            except botocore.exceptions.ClientError:
                cors = None
            out[f"s3 {name}"] = {
                "versioning": s3.get_bucket_versioning(Bucket=name).get("Status"),
                "cors": cors,
                "tags": s3.get_bucket_tagging(Bucket=name)["TagSet"],
            }
        for topic in sorted(t["TopicArn"] for t in sns.list_topics().get("Topics", [])):
            subs = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
            out[f"sns {topic}"] = {
                "attributes": sns.get_topic_attributes(TopicArn=topic)["Attributes"],
                "tags": sns.list_tags_for_resource(ResourceArn=topic).get("Tags"),
                "subscriptions": {
                    sub["SubscriptionArn"]: sns.get_subscription_attributes(
                        SubscriptionArn=sub["SubscriptionArn"]
                    )["Attributes"]
                    for sub in subs
                },
            }
        sm = self.client("secretsmanager")
        for name in sorted(self.secret_names()):
            meta = sm.describe_secret(SecretId=name)
            meta.pop("ResponseMetadata", None)
            meta.pop("LastAccessedDate", None)
            value = sm.get_secret_value(SecretId=name)
            out[f"secrets {name}"] = {
                "meta": meta,
                "value": (value["SecretString"], value["VersionId"]),
            }
        ssm = self.client("ssm")
        for p in ssm.describe_parameters().get("Parameters", []):
            got = ssm.get_parameter(Name=p["Name"], WithDecryption=True)["Parameter"]
            tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=p["Name"])
            out[f"parameters {p['Name']}"] = {"described": p, "value": got, "tags": tags["TagList"]}
        if self.has_dynamodb:
            ddb = self.client("dynamodb")
            for name in sorted(self.table_names()):
                table = ddb.describe_table(TableName=name)["Table"]
                for counter in ("ItemCount", "TableSizeBytes"):
                    table.pop(counter, None)
                for index in table.get("GlobalSecondaryIndexes", []):
                    for counter in ("ItemCount", "IndexSizeBytes"):
                        index.pop(counter, None)
                tags = ddb.list_tags_of_resource(ResourceArn=table["TableArn"]).get("Tags")
                out[f"dynamodb {name}"] = {"table": table, "tags": tags}
        return out

    # -------------------------------------------------------------- wiping

    def wipe(self) -> None:
        """Delete everything, so a test starts from an empty account."""
        if self.name == "moto":
            req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
            urllib.request.urlopen(req, timeout=10).close()
            return
        sqs, s3, sns = self.client("sqs"), self.client("s3"), self.client("sns")
        for url in sqs.list_queues().get("QueueUrls", []):
            sqs.delete_queue(QueueUrl=url)
        for b in s3.list_buckets().get("Buckets", []):
            versions = s3.list_object_versions(Bucket=b["Name"])
            objs = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in versions.get("Versions", []) + versions.get("DeleteMarkers", [])
            ]
            if objs:
                s3.delete_objects(Bucket=b["Name"], Delete={"Objects": objs})
            s3.delete_bucket(Bucket=b["Name"])
        for t in sns.list_topics().get("Topics", []):
            sns.delete_topic(TopicArn=t["TopicArn"])
        for s in self.client("secretsmanager").list_secrets()["SecretList"]:
            self.client("secretsmanager").delete_secret(
                SecretId=s["ARN"], ForceDeleteWithoutRecovery=True
            )
        for p in self.client("ssm").describe_parameters().get("Parameters", []):
            self.client("ssm").delete_parameter(Name=p["Name"])
        logs = self.client("logs")
        for g in logs.describe_log_groups().get("logGroups", []):
            logs.delete_log_group(logGroupName=g["logGroupName"])


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/_localstack/health", timeout=2) as r:
            import json

            services = json.load(r).get("services", {})
    except (urllib.error.URLError, OSError, ValueError):
        return False
    wanted = LOCALSTACK_SERVICES.split(",")
    return all(services.get(s) in ("available", "running") for s in wanted)


@contextlib.contextmanager
def running_localstack(workdir: Path) -> Iterator[str]:
    """Install (if needed) and run LocalStack; yields its endpoint."""
    install_log = workdir / "localstack-install.log"
    with install_log.open("w") as log:
        proc = subprocess.run(
            [str(SCRIPT), "install"], stdout=log, stderr=subprocess.STDOUT, timeout=1200
        )
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/localstack install failed (exit {proc.returncode}); "
            f"log {install_log}:\n{_tail(install_log)}"
        )
    run_log = workdir / "localstack.log"
    state = workdir / "localstack-state"
    state.mkdir()
    for _attempt in range(3):
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        with run_log.open("w") as log:
            server = subprocess.Popen(
                [str(SCRIPT), "start", str(port), str(state)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "SERVICES": LOCALSTACK_SERVICES},
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while server.poll() is None and time.monotonic() < deadline:
            if _healthy(endpoint):
                break
            time.sleep(0.2)
        if server.poll() is None and _healthy(endpoint):
            break
        _stop(server)
        if "Address already in use" not in _tail(run_log):
            pytest.fail(f"LocalStack did not become healthy; log {run_log}:\n{_tail(run_log)}")
    else:
        pytest.fail(f"LocalStack could not bind a port; log {run_log}:\n{_tail(run_log)}")
    try:
        yield endpoint
    finally:
        _stop(server)


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture(scope="session")
def localstack_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_localstack(tmp_path_factory.mktemp("localstack")) as endpoint:
        yield endpoint


@contextlib.contextmanager
def running_moto(workdir: Path) -> Iterator[str]:
    """moto's server in its own process (its own logs, its own GIL); yields its endpoint."""
    log_path = workdir / "moto.log"
    for _attempt in range(3):
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        with log_path.open("w") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while server.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2).close()
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        else:
            _stop(server)
            if "Address already in use" in _tail(log_path):
                continue
            pytest.fail(f"moto did not start; log {log_path}:\n{_tail(log_path)}")
        break
    try:
        yield endpoint
    finally:
        _stop(server)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_moto(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


BACKENDS = ("localstack", "moto")


@pytest.fixture(params=BACKENDS)
def aws(request: pytest.FixtureRequest) -> Backend:
    """Each test twice: against real LocalStack and against moto, each wiped first."""
    if request.param == "localstack":
        backend = Backend("localstack", request.getfixturevalue("localstack_endpoint"), False)
    else:
        backend = Backend("moto", request.getfixturevalue("moto_endpoint"), True)
    backend.wipe()
    return backend


@pytest.fixture
def moto(moto_endpoint: str) -> Backend:
    """moto alone (DynamoDB), wiped first."""
    backend = Backend("moto", moto_endpoint, True)
    backend.wipe()
    return backend


def inject_failure(
    client: Any,
    operation: str,
    *,
    code: str = "InjectedFault",
    status: int = 400,
    headers: dict[str, str] | None = None,
    when: Any = None,
) -> list[dict[str, Any]]:
    """Make ``client``'s calls of ``operation`` (e.g. ``PutBucketVersioning``) fail
    with ``code`` and HTTP ``status`` without reaching the endpoint, as AWS would
    answer; ``when(params)`` limits it to some calls. Returns the params of every
    failed call."""
    import botocore.awsrequest

    failed: list[dict[str, Any]] = []

    def remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["injected_failure_params"] = dict(params)  # the API parameters

    def fail(context: dict[str, Any], **_: Any) -> Any:
        params = context.get("injected_failure_params", {})
        if when is not None and not when(params):
            return None
        failed.append(params)
        response = botocore.awsrequest.AWSResponse("http://injected", status, headers or {}, None)
        parsed = {
            "Error": {"Code": code, "Message": f"injected {code}"},
            "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
        }
        return response, parsed

    service = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register(f"before-parameter-build.{service}.{operation}", remember)
    client.meta.events.register(f"before-call.{service}.{operation}", fail)
    return failed
