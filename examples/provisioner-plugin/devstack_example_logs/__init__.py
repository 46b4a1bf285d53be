"""An example devstack provisioner plugin: CloudWatch Logs log groups.

Registered under the entry-point group ``devstack.provisioners`` as
``logGroups``, so a spec may declare::

    logGroups:
      - name: orders
        retentionDays: 7

Each log group is named like every other resource (``alice-orders`` for
owner alice), tagged with the run's ownership tags, and reported to the app as
``DEVSTACK_LOGS_<NAME>_GROUP`` and ``DEVSTACK_LOGS_<NAME>_ARN``. ``teardown``
deletes only log groups tagged as the run's release and owner.

The plugin imports nothing from devstack: it gets a context object with
``clients.client(service)`` (boto3 clients for the run's endpoint), ``tags``,
``dry_run``, ``physical(name)``, ``env_name(kind, name, what)``,
``belongs(tags)`` and ``created(physical)``, and returns an object with
``action``, ``physical``, ``outputs`` and ``detail`` (devstack's
``PluginResult`` when it is importable).

``apply`` calls ``ctx.created(name)`` right after the log group exists, so a
failure of the retention call that follows still reports it. ``owned`` lists the
log groups tagged as the run's release and owner, so that a log group removed
from the spec is reported as stale, removed by ``--prune``, and found by
``--teardown`` without the spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RETENTION_DAYS = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1827, 3653]


@dataclass(frozen=True)
class Result:
    action: str
    physical: str
    outputs: Mapping[str, str] = field(default_factory=dict)
    detail: str = ""


class LogGroups:
    """The ``logGroups`` resource kind."""

    schema: Mapping[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": {
                "type": "string",
                "pattern": "^[A-Za-z0-9_-]{1,200}$",
                "description": "a log group name: letters, digits, - and _",
            },
            "retentionDays": {"type": "integer", "enum": RETENTION_DAYS},
        },
    }

    def _find(self, logs: Any, name: str) -> dict[str, Any] | None:
        groups = logs.describe_log_groups(logGroupNamePrefix=name).get("logGroups", [])
        return next((g for g in groups if g["logGroupName"] == name), None)

    def _outputs(self, ctx: Any, declared: str, group: Mapping[str, Any]) -> dict[str, str]:
        arn = str(group.get("arn", "")).removesuffix(":*")
        return {
            ctx.env_name("LOGS", declared, "GROUP"): group["logGroupName"],
            ctx.env_name("LOGS", declared, "ARN"): arn,
        }

    def apply(self, item: Mapping[str, Any], ctx: Any) -> Result:
        logs = ctx.clients.client("logs")
        declared = str(item["name"])
        name = ctx.physical(declared)
        retention = item.get("retentionDays")
        group = self._find(logs, name)
        if group is None:
            if ctx.dry_run:
                return Result("create", name)
            logs.create_log_group(logGroupName=name, tags=dict(ctx.tags))
            ctx.created(name)
            if retention:
                logs.put_retention_policy(logGroupName=name, retentionInDays=retention)
            group = self._find(logs, name) or {"logGroupName": name}
            return Result("create", name, self._outputs(ctx, declared, group))
        tags = logs.list_tags_log_group(logGroupName=name).get("tags", {})
        if not ctx.belongs(tags):
            return Result("foreign", name, self._outputs(ctx, declared, group), "left as is")
        if retention != group.get("retentionInDays"):
            detail = f"retentionDays: {group.get('retentionInDays')} -> {retention}"
            if not ctx.dry_run:
                if retention:
                    logs.put_retention_policy(logGroupName=name, retentionInDays=retention)
                else:
                    logs.delete_retention_policy(logGroupName=name)
            return Result("update", name, self._outputs(ctx, declared, group), detail)
        return Result("unchanged", name, self._outputs(ctx, declared, group))

    def owned(self, ctx: Any) -> list[dict[str, Any]]:
        """An item for each log group tagged as the run's release and owner."""
        logs = ctx.clients.client("logs")
        prefix = ctx.physical("")  # "alice-" for alice, "" for the baseline
        found = []
        for page in logs.get_paginator("describe_log_groups").paginate(
            **({"logGroupNamePrefix": prefix} if prefix else {})
        ):
            for group in page.get("logGroups", []):
                name = group["logGroupName"]
                if ctx.belongs(logs.list_tags_log_group(logGroupName=name).get("tags", {})):
                    found.append({"name": name[len(prefix) :]})
        return found

    def teardown(self, item: Mapping[str, Any], ctx: Any) -> bool:
        logs = ctx.clients.client("logs")
        name = ctx.physical(str(item["name"]))
        if self._find(logs, name) is None:
            return False
        if not ctx.belongs(logs.list_tags_log_group(logGroupName=name).get("tags", {})):
            return False
        logs.delete_log_group(logGroupName=name)
        return True
