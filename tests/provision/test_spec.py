"""The spec validator: every problem names its field; good specs build the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from devstack.provision import spec
from devstack.provision.errors import SpecError

GOOD: dict[str, Any] = {
    "endpoint": "http://localstack.localstack.svc.cluster.local:4566",
    "region": "eu-west-1",
    "s3": [
        {
            "name": "uploads",
            "versioning": True,
            "cors": [{"allowedOrigins": ["*"], "allowedMethods": ["GET"]}],
        }
    ],
    "sqs": [
        {
            "name": "jobs",
            "attributes": {"VisibilityTimeout": 30, "FooBar": True},
            "deadLetter": {"maxReceiveCount": 5},
        },
        {"name": "orders", "fifo": True, "contentBasedDeduplication": True},
        {"name": "retry", "deadLetter": {"maxReceiveCount": 2, "queue": "jobs"}},
    ],
    "sns": [
        {
            "name": "events",
            "subscriptions": [
                {"queue": "jobs", "rawMessageDelivery": True, "filterPolicy": {"type": ["a"]}}
            ],
        }
    ],
    "dynamodb": [
        {
            "name": "orders",
            "hashKey": {"name": "id", "type": "S"},
            "rangeKey": {"name": "ts", "type": "N"},
            "globalIndexes": [{"name": "by-user", "hashKey": {"name": "user", "type": "S"}}],
        }
    ],
    "secrets": [
        {"name": "db-password", "generate": {"length": 16}},
        {"name": "api-key", "value": "x"},
    ],
    "parameters": [
        {"name": "/app/flag", "value": "on"},
        {"name": "count", "value": 3, "type": "String"},
    ],
    "hooks": [{"name": "seed", "command": ["python", "seed.py"], "on": ["provision", "teardown"]}],
}


def with_(path: str, value: Any) -> dict[str, Any]:
    """GOOD with one field set (``sqs.0.deadLetter.maxReceiveCount``); value
    ``...`` deletes it."""
    doc = json.loads(json.dumps(GOOD))
    *parents, last = path.split(".")
    node: Any = doc
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    key: Any = int(last) if last.isdigit() else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return doc


def test_a_good_spec_builds_the_model() -> None:
    s = spec.parse(GOOD, owner="alice")
    assert s.region == "eu-west-1"
    assert [q.name for q in s.queues] == ["jobs", "orders", "retry"]
    assert s.queues[0].attributes == {"VisibilityTimeout": "30", "FooBar": "true"}
    assert s.queues[0].dead_letter is not None and s.queues[0].dead_letter.max_receive_count == 5
    assert s.queues[2].dead_letter is not None and s.queues[2].dead_letter.queue == "jobs"
    assert s.topics[0].subscriptions[0].filter_policy == {"type": ["a"]}
    assert s.tables[0].range_key == spec.Key("ts", "N")
    assert s.secrets[0].value is None and s.secrets[0].generate_length == 16
    assert s.parameters[1].value == "3"
    assert s.hooks[0].on == frozenset({"provision", "teardown"})
    assert s.raw == GOOD
    assert not s.is_empty()
    assert spec.parse({}).is_empty()


BAD = [
    (
        "dead-letter count below 1",
        with_("sqs.1.deadLetter", {"maxReceiveCount": 0}),
        "devstack.aws.sqs[1].deadLetter.maxReceiveCount: must be an integer between 1 and 1000",
    ),
    (
        "dead-letter count not a number",
        with_("sqs.0.deadLetter.maxReceiveCount", "5"),
        "devstack.aws.sqs[0].deadLetter.maxReceiveCount: must be an integer between 1 and 1000, "
        "not a string",
    ),
    (
        "unknown field",
        with_("sqs.0.visibility", 3),
        "devstack.aws.sqs[0].visibility: unknown field (expected one of: attributes, "
        "contentBasedDeduplication, deadLetter, fifo, name)",
    ),
    ("missing name", with_("s3.0.name", ...), "devstack.aws.s3[0].name: is required"),
    (
        "bucket name with capitals",
        with_("s3.0.name", "Uploads"),
        "devstack.aws.s3[0].name: must be an S3 bucket name: 3-63 lowercase letters, digits and -, "
        "starting and ending with a letter or digit",
    ),
    (
        "bad CORS method",
        with_("s3.0.cors.0.allowedMethods", ["GET", "PATCH"]),
        "devstack.aws.s3[0].cors[0].allowedMethods[1]: must be one of: GET, PUT, POST, DELETE, "
        "HEAD",
    ),
    (
        "a list where a mapping belongs",
        with_("sqs.0.attributes", ["x"]),
        "devstack.aws.sqs[0].attributes: must be a mapping, not a list",
    ),
    (
        "bad attribute name",
        with_("sqs.0.attributes", {"Visibility-Timeout": "1"}),
        "devstack.aws.sqs[0].attributes: key 'Visibility-Timeout' must be an SQS attribute name "
        "such as VisibilityTimeout",
    ),
    (
        "reserved attribute",
        with_("sqs.0.attributes", {"FifoQueue": "true"}),
        "devstack.aws.sqs[0].attributes.FifoQueue: set `fifo` instead",
    ),
    (
        "dedup on a standard queue",
        with_("sqs.0.contentBasedDeduplication", True),
        "devstack.aws.sqs[0].contentBasedDeduplication: only FIFO queues have it",
    ),
    (
        "dead-letter queue not declared",
        with_("sqs.2.deadLetter.queue", "nope"),
        "devstack.aws.sqs[2].deadLetter.queue: 'nope' is not declared under devstack.aws.sqs",
    ),
    (
        "own dead-letter queue",
        with_("sqs.2.deadLetter.queue", "retry"),
        "devstack.aws.sqs[2].deadLetter.queue: a queue cannot be its own dead-letter queue",
    ),
    (
        "FIFO queue with a standard dead-letter queue",
        with_("sqs.2.fifo", True),
        "devstack.aws.sqs[2].deadLetter.queue: 'jobs' must be a FIFO queue like 'retry'",
    ),
    (
        "generated dead-letter name taken",
        with_("sqs.1", {"name": "jobs-dlq"}),
        "devstack.aws.sqs[0].deadLetter: its queue would be named 'jobs-dlq', which "
        "devstack.aws.sqs[1] declares",
    ),
    (
        "duplicate queue",
        with_("sqs.1", {"name": "jobs"}),
        "devstack.aws.sqs[1].name: 'jobs' is already declared at devstack.aws.sqs[0]",
    ),
    (
        "names that give the same variables",
        with_("secrets.1.name", "db_password"),
        "devstack.aws.secrets[1].name: 'db_password' gives the same output variables "
        "(*_DB_PASSWORD_*) "
        "as devstack.aws.secrets[0]; rename one",
    ),
    (
        "subscription to an undeclared queue",
        with_("sns.0.subscriptions.0.queue", "nope"),
        "devstack.aws.sns[0].subscriptions[0].queue: 'nope' is not declared under devstack.aws.sqs",
    ),
    (
        "standard topic to a FIFO queue",
        with_("sns.0.subscriptions.0.queue", "orders"),
        "devstack.aws.sns[0].subscriptions[0].queue: a standard topic cannot deliver to a FIFO "
        "queue",
    ),
    (
        "bad key type",
        with_("dynamodb.0.hashKey.type", "X"),
        "devstack.aws.dynamodb[0].hashKey.type: must be one of: S, N, B",
    ),
    (
        "one attribute, two types",
        with_("dynamodb.0.globalIndexes.0.hashKey", {"name": "ts", "type": "S"}),
        "devstack.aws.dynamodb[0].globalIndexes[0].hashKey.type: attribute 'ts' is N at "
        "devstack.aws.dynamodb[0].rangeKey",
    ),
    (
        "range key same as hash key",
        with_("dynamodb.0.rangeKey", {"name": "id", "type": "S"}),
        "devstack.aws.dynamodb[0].rangeKey.name: must differ from hashKey.name",
    ),
    (
        "short generated secret",
        with_("secrets.0.generate.length", 4),
        "devstack.aws.secrets[0].generate.length: must be an integer between 8 and 4096",
    ),
    (
        "boolean parameter value (YAML's on)",
        with_("parameters.0.value", True),
        "devstack.aws.parameters[0].value: must be a string or a number, not a boolean",
    ),
    (
        "reserved parameter prefix",
        with_("parameters.1.name", "aws-thing"),
        "devstack.aws.parameters[1].name: may not start with 'aws' or 'ssm'",
    ),
    (
        "empty hook command",
        with_("hooks.0.command", []),
        "devstack.aws.hooks[0].command: must be a non-empty list",
    ),
    (
        "bad hook phase",
        with_("hooks.0.on", ["install"]),
        "devstack.aws.hooks[0].on[0]: must be one of: provision, teardown",
    ),
    (
        "unknown kind",
        with_("kinesis", [{"name": "x"}]),
        "devstack.aws.kinesis: unknown resource kind (built in: s3, sqs, sns, dynamodb, secrets, "
        "parameters; plugins: none installed)",
    ),
    (
        "bad endpoint",
        with_("endpoint", "localstack:4566"),
        "devstack.aws.endpoint: must be an http(s) URL",
    ),
]


@pytest.mark.parametrize(("case", "raw", "problem"), BAD, ids=[c[0] for c in BAD])
def test_a_bad_spec_names_the_offending_field(case: str, raw: dict[str, Any], problem: str) -> None:
    with pytest.raises(SpecError) as e:
        spec.parse(raw)
    assert any(p.startswith(problem) for p in e.value.problems), e.value.problems


def test_every_problem_is_reported_at_once() -> None:
    raw = with_("sqs.0.deadLetter.maxReceiveCount", 0)
    raw["s3"][0]["name"] = "X"
    with pytest.raises(SpecError) as e:
        spec.parse(raw)
    assert len(e.value.problems) == 2
    assert str(e.value).startswith("bad spec:\n  devstack.aws.")


def test_names_too_long_once_the_owner_prefix_is_added() -> None:
    raw = {"s3": [{"name": "b" * 60}]}
    spec.parse(raw)
    with pytest.raises(SpecError) as e:
        spec.parse(raw, owner="alice")
    assert e.value.problems == (
        f"devstack.aws.s3[0].name: 'alice-{'b' * 60}' is longer than 63 characters "
        "(the owner prefix counts)",
    )


def test_plugin_kinds_are_validated_by_the_plugin_schema() -> None:
    schema = {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {"name": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    }
    ok = spec.parse({"logGroups": [{"name": "a", "days": 3}]}, plugin_schemas={"logGroups": schema})
    assert ok.extra == {"logGroups": ({"name": "a", "days": 3},)}
    with pytest.raises(SpecError) as e:
        spec.parse({"logGroups": [{"name": "a", "days": 0}]}, plugin_schemas={"logGroups": schema})
    assert e.value.problems == ("devstack.aws.logGroups[0].days: must be an integer >= 1",)
    with pytest.raises(SpecError) as e:
        spec.parse(
            {"logGroups": [{"name": "a"}, {"name": "a"}]}, plugin_schemas={"logGroups": schema}
        )
    assert "devstack.aws.logGroups[1].name: 'a' is already declared" in e.value.problems[0]


LOADS = [
    ("bare spec", "sqs: [{name: jobs}]\n", {"sqs": [{"name": "jobs"}]}),
    (
        "helm values",
        "image: x\ndevstack:\n  enabled: true\n  aws:\n    sqs: [{name: jobs}]\n",
        {"sqs": [{"name": "jobs"}]},
    ),
    ("values without aws", "devstack:\n  enabled: true\n", {}),
    ("json", '{"s3": [{"name": "b-1"}]}', {"s3": [{"name": "b-1"}]}),
    ("empty", "", {}),
]


@pytest.mark.parametrize(("case", "text", "expected"), LOADS, ids=[c[0] for c in LOADS])
def test_load_document(case: str, text: str, expected: dict[str, Any]) -> None:
    assert spec.load_document(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("sqs: [", "values.yaml: not valid YAML or JSON"),
        ("- a\n- b\n", "values.yaml: must be a mapping, not a list"),
        ("devstack:\n  aws: [1]\n", "devstack.aws: must be a mapping, not a list"),
    ],
)
def test_load_document_rejects(text: str, problem: str) -> None:
    with pytest.raises(SpecError) as e:
        spec.load_document(text, source="values.yaml")
    assert e.value.problems[0].startswith(problem)


def test_the_schema_file_is_a_valid_self_contained_draft7_schema() -> None:
    """The charts embed it under devstack.aws: no $ref may point outside it."""
    path = Path(spec.__file__).with_name("spec.schema.json")
    doc = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(doc)
    assert "$ref" not in path.read_text()
    jsonschema.validate(GOOD, doc)
