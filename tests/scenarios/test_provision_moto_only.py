"""`devstack provision` stories that run on moto only.

- DynamoDB tables: LocalStack's DynamoDB downloads its engine (DynamoDB Local)
  on first use and these machines are offline, so that story cannot run on
  LocalStack here.

(Outputs to Kubernetes, the hook's ConfigMap and Secret, run against moto on
the real API server: tests/cluster/test_provision_outputs.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.cli.main import main
from tests.support.aws import Backend, moto, moto_endpoint  # noqa: F401

pytestmark = [pytest.mark.slow]

TABLE: dict[str, Any] = {
    "name": "orders",
    "hashKey": {"name": "id", "type": "S"},
    "rangeKey": {"name": "ts", "type": "N"},
    "globalIndexes": [{"name": "by-user", "hashKey": {"name": "user", "type": "S"}}],
}


def run(capsys: pytest.CaptureFixture[str], aws: Backend, spec: Path, *args: str) -> str:
    rc = main(["provision", "--endpoint", aws.endpoint, "--spec", str(spec), *args])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def table(aws: Backend, name: str) -> dict[str, Any]:
    return dict(aws.client("dynamodb").describe_table(TableName=name)["Table"])


def test_a_table_with_keys_and_indexes_converges(
    moto: Backend,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"dynamodb": [TABLE]}))
    out_file = tmp_path / "out.env"

    out = run(capsys, moto, spec, "--owner", "alice", "--outputs-file", str(out_file))
    assert "create        dynamodb orders (alice-orders)" in out
    t = table(moto, "alice-orders")
    assert {(k["AttributeName"], k["KeyType"]) for k in t["KeySchema"]} == {
        ("id", "HASH"),
        ("ts", "RANGE"),
    }
    assert [i["IndexName"] for i in t["GlobalSecondaryIndexes"]] == ["by-user"]
    assert f"DEVSTACK_DYNAMODB_ORDERS_ARN='{t['TableArn']}'" in out_file.read_text()
    assert "DEVSTACK_DYNAMODB_ORDERS_TABLE='alice-orders'" in out_file.read_text()

    # Rerun: unchanged.
    out = run(capsys, moto, spec, "--owner", "alice")
    assert "unchanged     dynamodb orders (alice-orders)" in out

    # Swap an index: the old one is removed, the new one added.
    changed = {
        **TABLE,
        "globalIndexes": [{"name": "by-day", "hashKey": {"name": "day", "type": "S"}}],
    }
    spec.write_text(yaml.safe_dump({"dynamodb": [changed]}))
    out = run(capsys, moto, spec, "--owner", "alice")
    assert "update        dynamodb orders (alice-orders)" in out
    assert [i["IndexName"] for i in table(moto, "alice-orders")["GlobalSecondaryIndexes"]] == [
        "by-day"
    ]

    # An existing index cannot be redefined in place: reported, left as it is.
    redefined = {
        **changed,
        "globalIndexes": [{"name": "by-day", "hashKey": {"name": "day", "type": "N"}}],
    }
    spec.write_text(yaml.safe_dump({"dynamodb": [redefined]}))
    before = moto.snapshot()
    rc = main(["provision", "--endpoint", moto.endpoint, "--spec", str(spec), "--owner", "alice"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert (
        "cannot-update dynamodb orders (alice-orders): "
        "cannot change in place: globalIndexes.by-day:" in out
    )
    assert "'hashKey': 'day:S'" in out and "'hashKey': 'day:N'" in out
    assert moto.snapshot() == before

    # A key cannot change in place: reported, the table is left as it is.
    rekeyed = {**changed, "rangeKey": {"name": "ts", "type": "S"}}
    spec.write_text(yaml.safe_dump({"dynamodb": [rekeyed]}))
    rc = main(["provision", "--endpoint", moto.endpoint, "--spec", str(spec), "--owner", "alice"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert (
        "cannot-update dynamodb orders (alice-orders): cannot change in place: "
        "rangeKey: 'ts:N' -> 'ts:S'" in out
    )
    assert "differ in ways AWS cannot change in place" in err
    types = {
        a["AttributeName"]: a["AttributeType"]
        for a in table(moto, "alice-orders")["AttributeDefinitions"]
    }
    assert types["ts"] == "N"

    # Teardown removes it.
    out = run(capsys, moto, spec, "--owner", "alice", "--teardown")
    assert "deleted       dynamodb alice-orders" in out
    assert moto.table_names() == set()
