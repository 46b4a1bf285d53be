"""The applier: the one module that talks to AWS through boto3 (does I/O).

It reads resources back into the flat properties the planner compares (see
:mod:`devstack.provision.desired`), carries out one planned action at a time,
finds what a release and owner own (by their tags) and deletes it. Every
library error leaves as a devstack error: :class:`AwsUnavailable` for an
endpoint that cannot be reached or a server error (try again),
:class:`AwsError` for a refusal, :class:`AuthError` for missing credentials.

Works against LocalStack, moto and AWS itself: nothing here depends on which.
"""

from __future__ import annotations

import contextlib
import json
import secrets as secrets_module
import string
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from devstack.core.errors import AuthError
from devstack.core.logging import get_logger
from devstack.provision import names
from devstack.provision.desired import cors_rule
from devstack.provision.errors import AwsError, AwsUnavailable
from devstack.provision.names import PhysicalName
from devstack.provision.plan import Action, ActionKind, Change, Desired, Observed, ResourceId

log = get_logger("provision.aws")

#: Told each time the applier has created or changed a resource ("created",
#: "updated"), as soon as the call that did it succeeds.
Record = Callable[[str], None]


def _ignore(verb: str) -> None:
    return None


#: LocalStack's conventional credentials, used when none are configured and an
#: endpoint is given (AWS itself never gets these).
LOCALSTACK_CREDENTIALS: Final = ("test", "test")

_NOT_FOUND: Final = frozenset(
    {
        "404",
        "NoSuchBucket",
        "NotFound",
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "ResourceNotFoundException",
        "ParameterNotFound",
        "InvalidParameter.NotFound",
    }
)
_TEMPORARY: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "SlowDown",
        "ResourceInUseException",
    }
)

#: SQS attributes that are state, not configuration.
_SQS_READ_ONLY: Final = frozenset(
    {
        "QueueArn",
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesDelayed",
        "ApproximateNumberOfMessagesNotVisible",
        "CreatedTimestamp",
        "LastModifiedTimestamp",
        "FifoQueue",
        "RedrivePolicy",
    }
)

T = TypeVar("T")


class NotFound(Exception):
    """Internal: the resource does not exist."""


def _status(e: BaseException | None) -> int:
    """The HTTP status of the boto3 error behind a devstack error (0: none)."""
    if isinstance(e, botocore.exceptions.ClientError):
        return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 0


@contextlib.contextmanager
def _wrap(what: str) -> Iterator[None]:
    """Turn boto3's errors into devstack's, naming the call that failed."""
    try:
        yield
    except botocore.exceptions.ClientError as e:
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _NOT_FOUND:
            raise NotFound(what) from e
        message = f"{what}: {code}: {err.get('Message', '')}".rstrip(": ")
        if code in _TEMPORARY or status >= 500:
            raise AwsUnavailable(message) from e
        raise AwsError(message) from e
    except (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectionClosedError,
        botocore.exceptions.ReadTimeoutError,
        botocore.exceptions.ConnectTimeoutError,
    ) as e:
        raise AwsUnavailable(f"{what}: cannot reach the AWS endpoint: {e}") from e
    except botocore.exceptions.NoCredentialsError as e:
        raise AuthError(f"{what}: no AWS credentials (set AWS_ACCESS_KEY_ID and ...)") from e
    except botocore.exceptions.BotoCoreError as e:
        raise AwsError(f"{what}: {e}") from e


def _maybe(what: str, call: Callable[[], T]) -> T | None:
    """``call()``, or None when the resource does not exist."""
    try:
        with _wrap(what):
            return call()
    except NotFound:
        return None


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def _tag_dict(tags: Sequence[Mapping[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or ()}


def _bool(text: Any) -> bool:
    return str(text).lower() == "true"


def _name_of_arn(arn: str) -> str:
    return arn.rsplit(":", 1)[-1]


class BotoClients:
    """boto3 clients for one endpoint, region and set of credentials, made once each.
    Plugins receive this to talk to the services they provision."""

    def __init__(self, *, endpoint: str | None, region: str) -> None:
        self.endpoint = endpoint
        self.region = region
        self._session = boto3.session.Session(region_name=region)
        creds: dict[str, str] = {}
        if endpoint and self._session.get_credentials() is None:
            creds = {
                "aws_access_key_id": LOCALSTACK_CREDENTIALS[0],
                "aws_secret_access_key": LOCALSTACK_CREDENTIALS[1],
            }
        self._creds = creds
        self._config = botocore.config.Config(
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": "path"},
        )
        self._clients: dict[str, Any] = {}
        self._account: str | None = None

    def fallback_credentials_env(self) -> dict[str, str]:
        """The LocalStack credentials as environment variables, when this run
        falls back to them (so hooks use the same); else nothing."""
        if not self._creds:
            return {}
        return {
            "AWS_ACCESS_KEY_ID": self._creds["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": self._creds["aws_secret_access_key"],
        }

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self._session.client(
                service,
                endpoint_url=self.endpoint,
                config=self._config,
                **self._creds,
            )
        return self._clients[service]

    def account(self) -> str:
        if self._account is None:
            with _wrap("sts get-caller-identity"):
                self._account = str(self.client("sts").get_caller_identity()["Account"])
        return self._account


class BotoApplier:
    """The real applier. One instance per run."""

    def __init__(self, clients: BotoClients, *, wait_seconds: float = 300.0) -> None:
        self.clients = clients
        self.wait_seconds = wait_seconds

    # ------------------------------------------------------------ shared

    def check(self) -> str:
        """Fail early, and clearly, when the endpoint is unreachable. The account id."""
        return self.clients.account()

    def observe(self, ids: Sequence[ResourceId]) -> dict[ResourceId, Observed]:
        out: dict[ResourceId, Observed] = {}
        for rid in ids:
            o = self.read(rid.kind, rid.physical)
            if o is not None:
                out[rid] = o
        return out

    def read(self, kind: str, physical: PhysicalName) -> Observed | None:
        reader = {
            "s3": self._read_bucket,
            "sqs": self._read_queue,
            "sns": self._read_topic,
            "dynamodb": self._read_table,
            "secrets": self._read_secret,
            "parameters": self._read_parameter,
        }[kind]
        try:
            return reader(physical)
        except NotFound:
            return None

    def apply(self, action: Action, *, record: Record = _ignore) -> Observed:
        """Carry out ``action``; the resource as it is afterwards. ``record`` is told
        as soon as the resource exists or has changed, so that a call failing later
        for the same resource still leaves it reported."""
        d = action.desired
        if action.kind in (ActionKind.UNCHANGED, ActionKind.FOREIGN):
            assert action.observed is not None
            return action.observed
        if action.kind is ActionKind.CREATE:
            {
                "s3": self._create_bucket,
                "sqs": self._create_queue,
                "sns": self._create_topic,
                "dynamodb": self._create_table,
                "secrets": self._create_secret,
                "parameters": self._create_parameter,
            }[d.kind](d, record)
        else:
            assert action.observed is not None
            {
                "s3": self._update_bucket,
                "sqs": self._update_queue,
                "sns": self._update_topic,
                "dynamodb": self._update_table,
                "secrets": self._update_secret,
                "parameters": self._update_parameter,
            }[d.kind](d, action.observed, action.changes, record)
        after = self.read(d.kind, d.physical)
        if after is None:
            raise AwsError(f"{d.kind} {d.physical}: missing right after it was written")
        return after

    def owned(self, release: str, owner: str) -> list[Observed]:
        """Everything tagged as ``release``'s and ``owner``'s, of every kind."""
        found: list[Observed] = []
        for kind, names_of in (
            ("s3", self._list_buckets),
            ("sqs", self._list_queues),
            ("sns", self._list_topics),
            ("dynamodb", self._list_tables),
            ("secrets", self._list_secrets),
            ("parameters", self._list_parameters),
        ):
            for physical, tags in names_of(release):
                if tags is not None and not names.belongs_to(tags, release, owner):
                    continue
                o = self.read(kind, physical)
                if o is not None and names.belongs_to(o.tags, release, owner):
                    found.append(o)
        return found

    def delete(self, o: Observed) -> None:
        """Delete ``o``. Refuses anything not tagged as devstack's."""
        if o.tags.get(names.TAG_MANAGED_BY) != names.MANAGED_BY:
            raise AwsError(f"{o.kind} {o.physical}: not managed by devstack; not deleting it")
        deleter = {
            "s3": self._delete_bucket,
            "sqs": self._delete_queue,
            "sns": self._delete_topic,
            "dynamodb": self._delete_table,
            "secrets": self._delete_secret,
            "parameters": self._delete_parameter,
        }[o.kind]
        try:
            deleter(o)
        except NotFound:
            log.info("provision.already_deleted", kind=o.kind, name=o.physical)

    def _wait(self, what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.wait_seconds
        delay = 0.2
        while not done():
            if time.monotonic() > deadline:
                raise AwsUnavailable(f"{what}: still not ready after {self.wait_seconds:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    # ------------------------------------------------------------ S3

    @property
    def _s3(self) -> Any:
        return self.clients.client("s3")

    def _read_bucket(self, name: PhysicalName) -> Observed:
        what = f"s3 {name}"
        try:
            with _wrap(what):
                self._s3.head_bucket(Bucket=name)
        except AwsError as e:
            if _status(e.__cause__) == 301:
                # S3 names are global: this one is taken, in another region
                region = self._bucket_region(name)
                raise AwsError(
                    f"{what}: the name is taken by a bucket in {region}, not {self.clients.region}"
                ) from e
            raise
        tagging = _maybe_code(
            what, "NoSuchTagSet", lambda: self._s3.get_bucket_tagging(Bucket=name)
        )
        versioning = _maybe(what, lambda: self._s3.get_bucket_versioning(Bucket=name)) or {}
        cors = _maybe_code(
            what, "NoSuchCORSConfiguration", lambda: self._s3.get_bucket_cors(Bucket=name)
        )
        rules = [
            cors_rule(
                r.get("AllowedOrigins"),
                r.get("AllowedMethods"),
                r.get("AllowedHeaders"),
                r.get("ExposeHeaders"),
                r.get("MaxAgeSeconds"),
            )
            for r in (cors or {}).get("CORSRules", [])
        ]
        return Observed(
            kind="s3",
            physical=name,
            props={"versioning": versioning.get("Status") == "Enabled", "cors": rules},
            tags=_tag_dict((tagging or {}).get("TagSet")),
            ids={"arn": f"arn:aws:s3:::{name}", "bucket": name},
        )

    def _create_bucket(self, d: Desired, record: Record) -> None:
        """CreateBucket cannot tag: the tags follow at once. A bucket whose tagging
        fails is deleted again (it is empty: we made it a moment ago), so that no
        untagged bucket is left that every later run would take for someone else's.
        Only if that delete fails too is it reported, as untagged."""
        what = f"s3 {d.physical}: create"
        args: dict[str, Any] = {"Bucket": d.physical}
        if self.clients.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.clients.region}
        with _wrap(what):
            self._s3.create_bucket(**args)
        try:
            with _wrap(f"s3 {d.physical}: tag"):
                self._s3.put_bucket_tagging(
                    Bucket=d.physical, Tagging={"TagSet": _tag_list(d.tags)}
                )
        except (AwsError, AwsUnavailable):
            try:
                with _wrap(f"s3 {d.physical}: delete the untagged bucket"):
                    self._s3.delete_bucket(Bucket=d.physical)
            except (AwsError, AwsUnavailable, NotFound) as e:
                record("created (untagged: tag or delete it by hand)")
                log.error("provision.untagged_bucket", name=d.physical, error=str(e))
            raise
        record("created")
        if d.props.get("versioning"):
            self._set_versioning(d.physical, True)
        if d.props.get("cors"):
            self._set_cors(d.physical, d.props["cors"])

    def _update_bucket(
        self, d: Desired, o: Observed, changes: Sequence[Change], record: Record
    ) -> None:
        for c in changes:
            if c.key == "versioning":
                self._set_versioning(d.physical, bool(c.new))
                record("updated")
            elif c.key == "cors":
                self._set_cors(d.physical, c.new or [])
                record("updated")

    def _set_versioning(self, bucket: str, enabled: bool) -> None:
        with _wrap(f"s3 {bucket}: versioning"):
            self._s3.put_bucket_versioning(
                Bucket=bucket,
                VersioningConfiguration={"Status": "Enabled" if enabled else "Suspended"},
            )

    def _set_cors(self, bucket: str, rules: Sequence[Mapping[str, Any]]) -> None:
        with _wrap(f"s3 {bucket}: cors"):
            if not rules:
                self._s3.delete_bucket_cors(Bucket=bucket)
                return
            aws_rules = []
            for r in rules:
                rule: dict[str, Any] = {
                    "AllowedOrigins": r["allowedOrigins"],
                    "AllowedMethods": r["allowedMethods"],
                }
                if r["allowedHeaders"]:
                    rule["AllowedHeaders"] = r["allowedHeaders"]
                if r["exposeHeaders"]:
                    rule["ExposeHeaders"] = r["exposeHeaders"]
                if r["maxAgeSeconds"] is not None:
                    rule["MaxAgeSeconds"] = r["maxAgeSeconds"]
                aws_rules.append(rule)
            self._s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": aws_rules})

    def _delete_bucket(self, o: Observed) -> None:
        what = f"s3 {o.physical}: delete"
        with _wrap(what):
            paginator = self._s3.get_paginator("list_object_versions")
            for page in paginator.paginate(Bucket=o.physical):
                objects = [
                    {"Key": v["Key"], "VersionId": v["VersionId"]}
                    for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
                ]
                for start in range(0, len(objects), 1000):
                    self._s3.delete_objects(
                        Bucket=o.physical,
                        Delete={"Objects": objects[start : start + 1000], "Quiet": True},
                    )
            self._s3.delete_bucket(Bucket=o.physical)

    def _bucket_region(self, name: str) -> str | None:
        """Where a bucket lives (GetBucketLocation answers from any region); None
        when it is gone."""
        location = _maybe(f"s3 {name}: location", lambda: self._s3.get_bucket_location(Bucket=name))
        if location is None:
            return None
        constraint = location.get("LocationConstraint") or "us-east-1"
        return "eu-west-1" if constraint == "EU" else str(constraint)

    def _list_buckets(self, release: str) -> list[tuple[PhysicalName, dict[str, str] | None]]:
        """This region's buckets. ListBuckets lists every region's; reading one of
        another region answers 301, and it is not this run's to touch anyway."""
        with _wrap("s3 list-buckets"):
            buckets = self._s3.list_buckets().get("Buckets", [])
        out: list[tuple[PhysicalName, dict[str, str] | None]] = []
        for b in buckets:
            region = b.get("BucketRegion") or self._bucket_region(b["Name"])
            if region == self.clients.region:
                out.append((PhysicalName(b["Name"]), None))
        return out

    # ------------------------------------------------------------ SQS

    @property
    def _sqs(self) -> Any:
        return self.clients.client("sqs")

    def _queue_url(self, name: str) -> str:
        with _wrap(f"sqs {name}"):
            return str(self._sqs.get_queue_url(QueueName=name)["QueueUrl"])

    def _read_queue(self, name: PhysicalName) -> Observed:
        what = f"sqs {name}"
        url = self._queue_url(name)
        with _wrap(what):
            attrs = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
            attrs = attrs.get("Attributes", {})
            tags = self._sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
        dead_letter = None
        if attrs.get("RedrivePolicy"):
            policy = json.loads(attrs["RedrivePolicy"])
            dead_letter = {
                "queue": _name_of_arn(policy["deadLetterTargetArn"]),
                "maxReceiveCount": int(policy["maxReceiveCount"]),
            }
        props: dict[str, Any] = {
            "fifo": _bool(attrs.get("FifoQueue")),
            "deadLetter": dead_letter,
        }
        props.update({f"attributes.{k}": v for k, v in attrs.items() if k not in _SQS_READ_ONLY})
        return Observed(
            kind="sqs",
            physical=name,
            props=props,
            tags=dict(tags),
            ids={"url": url, "arn": attrs["QueueArn"], "name": name},
        )

    def _redrive(self, dead_letter: Mapping[str, Any] | None) -> str:
        if not dead_letter:
            return ""
        target = self._read_queue(PhysicalName(dead_letter["queue"]))
        return json.dumps(
            {
                "deadLetterTargetArn": target.ids["arn"],
                "maxReceiveCount": dead_letter["maxReceiveCount"],
            }
        )

    def _create_queue(self, d: Desired, record: Record) -> None:
        attrs = {k.split(".", 1)[1]: v for k, v in d.props.items() if k.startswith("attributes.")}
        if d.props.get("fifo"):
            attrs["FifoQueue"] = "true"
        try:
            redrive = self._redrive(d.props.get("deadLetter"))
        except NotFound as e:
            raise AwsError(f"sqs {d.physical}: its dead-letter queue does not exist") from e
        if redrive:
            attrs["RedrivePolicy"] = redrive
        with _wrap(f"sqs {d.physical}: create"):
            self._sqs.create_queue(QueueName=d.physical, Attributes=attrs, tags=dict(d.tags))
        record("created")

    def _update_queue(
        self, d: Desired, o: Observed, changes: Sequence[Change], record: Record
    ) -> None:
        attrs: dict[str, str] = {}
        for c in changes:
            if c.key.startswith("attributes."):
                attrs[c.key.split(".", 1)[1]] = str(c.new)
            elif c.key == "deadLetter":
                attrs["RedrivePolicy"] = self._redrive(c.new)
        if attrs:
            with _wrap(f"sqs {d.physical}: set attributes"):
                self._sqs.set_queue_attributes(QueueUrl=o.ids["url"], Attributes=attrs)
            record("updated")

    def _delete_queue(self, o: Observed) -> None:
        with _wrap(f"sqs {o.physical}: delete"):
            self._sqs.delete_queue(QueueUrl=o.ids["url"])

    def _list_queues(self, release: str) -> list[tuple[PhysicalName, dict[str, str] | None]]:
        out: list[tuple[PhysicalName, dict[str, str] | None]] = []
        with _wrap("sqs list-queues"):
            for page in self._sqs.get_paginator("list_queues").paginate():
                for url in page.get("QueueUrls", []):
                    tags = self._sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
                    out.append((PhysicalName(url.rstrip("/").rsplit("/", 1)[-1]), dict(tags)))
        return out

    # ------------------------------------------------------------ SNS

    @property
    def _sns(self) -> Any:
        return self.clients.client("sns")

    def _topic_arn(self, name: str) -> str:
        return f"arn:aws:sns:{self.clients.region}:{self.clients.account()}:{name}"

    def _read_topic(self, name: PhysicalName) -> Observed:
        what = f"sns {name}"
        arn = self._topic_arn(name)
        with _wrap(what):
            attrs = self._sns.get_topic_attributes(TopicArn=arn).get("Attributes", {})
            tags = _tag_dict(self._sns.list_tags_for_resource(ResourceArn=arn).get("Tags"))
            subs: list[dict[str, Any]] = []
            for page in self._sns.get_paginator("list_subscriptions_by_topic").paginate(
                TopicArn=arn
            ):
                subs += page.get("Subscriptions", [])
        props: dict[str, Any] = {"fifo": _bool(attrs.get("FifoTopic"))}
        ids = {"arn": arn, "name": name}
        for sub in subs:
            if sub.get("Protocol") != "sqs" or not sub.get("SubscriptionArn", "").startswith(
                "arn:"
            ):
                continue
            queue = _name_of_arn(sub["Endpoint"])
            with _wrap(f"{what}: subscription to {queue}"):
                sattrs = self._sns.get_subscription_attributes(
                    SubscriptionArn=sub["SubscriptionArn"]
                ).get("Attributes", {})
            policy = sattrs.get("FilterPolicy")
            props[f"subscriptions.{queue}"] = {
                "rawMessageDelivery": _bool(sattrs.get("RawMessageDelivery")),
                "filterPolicy": json.loads(policy) if policy else None,
            }
            ids[f"subscription:{queue}"] = sub["SubscriptionArn"]
        return Observed(kind="sns", physical=name, props=props, tags=tags, ids=ids)

    def _create_topic(self, d: Desired, record: Record) -> None:
        attrs = {"FifoTopic": "true"} if d.props.get("fifo") else {}
        with _wrap(f"sns {d.physical}: create"):
            arn = self._sns.create_topic(Name=d.physical, Attributes=attrs, Tags=_tag_list(d.tags))[
                "TopicArn"
            ]
        record("created")
        for key, value in d.props.items():
            if key.startswith("subscriptions.") and value is not None:
                self._subscribe(arn, key.split(".", 1)[1], value)

    def _subscribe(self, topic_arn: str, queue: str, sub: Mapping[str, Any]) -> None:
        what = f"sns {_name_of_arn(topic_arn)}: subscribe {queue}"
        try:
            target = self._read_queue(PhysicalName(queue))
        except NotFound as e:
            raise AwsError(f"{what}: the queue does not exist") from e
        attrs = {"RawMessageDelivery": "true" if sub.get("rawMessageDelivery") else "false"}
        if sub.get("filterPolicy") is not None:
            attrs["FilterPolicy"] = json.dumps(sub["filterPolicy"], sort_keys=True)
        with _wrap(what):
            self._sns.subscribe(
                TopicArn=topic_arn,
                Protocol="sqs",
                Endpoint=target.ids["arn"],
                Attributes=attrs,
                ReturnSubscriptionArn=True,
            )

    def _update_topic(
        self, d: Desired, o: Observed, changes: Sequence[Change], record: Record
    ) -> None:
        arn = o.ids["arn"]
        for c in changes:
            if not c.key.startswith("subscriptions."):
                continue
            self._update_subscription(d, arn, o, c, record)

    def _update_subscription(
        self, d: Desired, topic_arn: str, o: Observed, c: Change, record: Record
    ) -> None:
        queue = c.key.split(".", 1)[1]
        sub_arn = o.ids.get(f"subscription:{queue}")
        what = f"sns {d.physical}: subscription to {queue}"
        if c.old is None:
            self._subscribe(topic_arn, queue, c.new)
            record("updated")
            return
        if c.new is None or (c.new.get("filterPolicy") is None and c.old.get("filterPolicy")):
            # SNS cannot drop a filter policy in place: subscribe again without it
            with _wrap(what):
                self._sns.unsubscribe(SubscriptionArn=sub_arn)
            record("updated")
            if c.new is not None:
                self._subscribe(topic_arn, queue, c.new)
            return
        for attribute, old, new in (
            ("RawMessageDelivery", c.old["rawMessageDelivery"], c.new["rawMessageDelivery"]),
            ("FilterPolicy", c.old["filterPolicy"], c.new["filterPolicy"]),
        ):
            if new == old:
                continue
            value = (
                json.dumps(new, sort_keys=True)
                if attribute == "FilterPolicy"
                else ("true" if new else "false")
            )
            with _wrap(what):
                self._sns.set_subscription_attributes(
                    SubscriptionArn=sub_arn, AttributeName=attribute, AttributeValue=value
                )
            record("updated")

    def _delete_topic(self, o: Observed) -> None:
        with _wrap(f"sns {o.physical}: delete"):
            for key, sub_arn in o.ids.items():
                if key.startswith("subscription:"):
                    with contextlib.suppress(botocore.exceptions.ClientError):
                        self._sns.unsubscribe(SubscriptionArn=sub_arn)
            self._sns.delete_topic(TopicArn=o.ids["arn"])

    def _list_topics(self, release: str) -> list[tuple[PhysicalName, dict[str, str] | None]]:
        out: list[tuple[PhysicalName, dict[str, str] | None]] = []
        with _wrap("sns list-topics"):
            for page in self._sns.get_paginator("list_topics").paginate():
                for t in page.get("Topics", []):
                    arn = t["TopicArn"]
                    tags = _tag_dict(self._sns.list_tags_for_resource(ResourceArn=arn).get("Tags"))
                    out.append((PhysicalName(_name_of_arn(arn)), tags))
        return out

    # ------------------------------------------------------------ DynamoDB

    @property
    def _ddb(self) -> Any:
        return self.clients.client("dynamodb")

    def _read_table(self, name: PhysicalName) -> Observed:
        what = f"dynamodb {name}"
        with _wrap(what):
            table = self._ddb.describe_table(TableName=name)["Table"]
            tags = _tag_dict(
                self._ddb.list_tags_of_resource(ResourceArn=table["TableArn"]).get("Tags")
            )
        types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}

        def keys(schema: Sequence[Mapping[str, str]]) -> tuple[str | None, str | None]:
            found: dict[str, str] = {}
            for k in schema:
                found[k["KeyType"]] = f"{k['AttributeName']}:{types.get(k['AttributeName'], '?')}"
            return found.get("HASH"), found.get("RANGE")

        hash_key, range_key = keys(table["KeySchema"])
        props: dict[str, Any] = {"hashKey": hash_key, "rangeKey": range_key}
        for idx in table.get("GlobalSecondaryIndexes", []):
            ih, ir = keys(idx["KeySchema"])
            props[f"globalIndexes.{idx['IndexName']}"] = {
                "hashKey": ih,
                "rangeKey": ir,
                "projection": idx.get("Projection", {}).get("ProjectionType", "ALL"),
            }
        return Observed(
            kind="dynamodb",
            physical=name,
            props=props,
            tags=tags,
            ids={"arn": table["TableArn"], "table": name, "status": table.get("TableStatus", "")},
        )

    @staticmethod
    def _key_schema(hash_key: str, range_key: str | None) -> list[dict[str, str]]:
        schema = [{"AttributeName": hash_key.rsplit(":", 1)[0], "KeyType": "HASH"}]
        if range_key:
            schema.append({"AttributeName": range_key.rsplit(":", 1)[0], "KeyType": "RANGE"})
        return schema

    @staticmethod
    def _definitions(*key_texts: str | None) -> list[dict[str, str]]:
        seen: dict[str, str] = {}
        for k in key_texts:
            if k:
                name, kind = k.rsplit(":", 1)
                seen.setdefault(name, kind)
        return [{"AttributeName": n, "AttributeType": t} for n, t in sorted(seen.items())]

    def _index(self, name: str, idx: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "IndexName": name,
            "KeySchema": self._key_schema(idx["hashKey"], idx.get("rangeKey")),
            "Projection": {"ProjectionType": idx.get("projection", "ALL")},
        }

    def _create_table(self, d: Desired, record: Record) -> None:
        indexes = {
            k.split(".", 1)[1]: v for k, v in d.props.items() if k.startswith("globalIndexes.")
        }
        key_texts = [d.props["hashKey"], d.props.get("rangeKey")]
        for idx in indexes.values():
            key_texts += [idx["hashKey"], idx.get("rangeKey")]
        args: dict[str, Any] = {
            "TableName": d.physical,
            "KeySchema": self._key_schema(d.props["hashKey"], d.props.get("rangeKey")),
            "AttributeDefinitions": self._definitions(*key_texts),
            "BillingMode": "PAY_PER_REQUEST",
            "Tags": _tag_list(d.tags),
        }
        if indexes:
            args["GlobalSecondaryIndexes"] = [self._index(n, i) for n, i in indexes.items()]
        with _wrap(f"dynamodb {d.physical}: create"):
            self._ddb.create_table(**args)
        record("created")
        self._wait_table(d.physical)

    def _wait_table(self, name: PhysicalName) -> None:
        def active() -> bool:
            with _wrap(f"dynamodb {name}: describe"):
                t = self._ddb.describe_table(TableName=name)["Table"]
            return t.get("TableStatus") == "ACTIVE" and all(
                i.get("IndexStatus", "ACTIVE") == "ACTIVE"
                for i in t.get("GlobalSecondaryIndexes", [])
            )

        self._wait(f"dynamodb {name}", active)

    def _update_table(
        self, d: Desired, o: Observed, changes: Sequence[Change], record: Record
    ) -> None:
        for c in changes:
            if not c.key.startswith("globalIndexes."):
                continue
            name = c.key.split(".", 1)[1]
            what = f"dynamodb {d.physical}: index {name}"
            if c.new is None:
                update: dict[str, Any] = {"Delete": {"IndexName": name}}
                definitions = None
            else:
                update = {"Create": self._index(name, c.new)}
                definitions = self._definitions(
                    d.props["hashKey"],
                    d.props.get("rangeKey"),
                    c.new["hashKey"],
                    c.new.get("rangeKey"),
                )
            args: dict[str, Any] = {
                "TableName": d.physical,
                "GlobalSecondaryIndexUpdates": [update],
            }
            if definitions:
                args["AttributeDefinitions"] = definitions
            with _wrap(what):
                self._ddb.update_table(**args)
            record("updated")
            self._wait_table(d.physical)

    def _delete_table(self, o: Observed) -> None:
        with _wrap(f"dynamodb {o.physical}: delete"):
            self._ddb.delete_table(TableName=o.physical)

    def _list_tables(self, release: str) -> list[tuple[PhysicalName, dict[str, str] | None]]:
        out: list[tuple[PhysicalName, dict[str, str] | None]] = []
        try:
            with _wrap("dynamodb list-tables"):
                for page in self._ddb.get_paginator("list_tables").paginate():
                    out += [(PhysicalName(n), None) for n in page.get("TableNames", [])]
        except AwsUnavailable as e:
            if _status(e.__cause__) != 501:
                raise
            # 501 Not Implemented: this endpoint has no DynamoDB at all (LocalStack
            # without it in SERVICES), so no table can be ours. Anything else fails.
            log.info("provision.dynamodb_not_offered", error=str(e))
        return out

    # ------------------------------------------------------------ Secrets Manager

    @property
    def _sm(self) -> Any:
        return self.clients.client("secretsmanager")

    def _read_secret(self, name: PhysicalName) -> Observed:
        what = f"secrets {name}"
        with _wrap(what):
            meta = self._sm.describe_secret(SecretId=name)
        if meta.get("DeletedDate"):
            raise NotFound(what)
        value = _maybe(what, lambda: self._sm.get_secret_value(SecretId=name))
        props: dict[str, Any] = {"description": meta.get("Description") or ""}
        ids = {"arn": meta["ARN"], "name": name}
        if value is not None and "SecretString" in value:
            props["value"] = value["SecretString"]
            ids["value"] = value["SecretString"]
        return Observed(
            kind="secrets",
            physical=name,
            props=props,
            tags=_tag_dict(meta.get("Tags")),
            ids=ids,
            secret=frozenset({"value"}),
        )

    def _create_secret(self, d: Desired, record: Record) -> None:
        value = d.props.get("value")
        if value is None:
            value = generate_password(
                int(d.create_options.get("length", 32)),
                punctuation=bool(d.create_options.get("punctuation", False)),
            )
        args: dict[str, Any] = {
            "Name": d.physical,
            "SecretString": value,
            "Tags": _tag_list(d.tags),
        }
        if d.props.get("description"):
            args["Description"] = d.props["description"]
        with _wrap(f"secrets {d.physical}: create"):
            self._sm.create_secret(**args)
        record("created")

    def _update_secret(
        self, d: Desired, o: Observed, changes: Sequence[Change], record: Record
    ) -> None:
        for c in changes:
            with _wrap(f"secrets {d.physical}: update {c.key}"):
                if c.key == "value":
                    self._sm.put_secret_value(SecretId=d.physical, SecretString=c.new)
                elif c.key == "description":
                    self._sm.update_secret(SecretId=d.physical, Description=c.new or "")
            record("updated")

    def _delete_secret(self, o: Observed) -> None:
        with _wrap(f"secrets {o.physical}: delete"):
            self._sm.delete_secret(SecretId=o.physical, ForceDeleteWithoutRecovery=True)

    def _list_secrets(self, release: str) -> list[tuple[PhysicalName, dict[str, str] | None]]:
        out: list[tuple[PhysicalName, dict[str, str] | None]] = []
        with _wrap("secrets list"):
            for page in self._sm.get_paginator("list_secrets").paginate():
                for s in page.get("SecretList", []):
                    out.append((PhysicalName(s["Name"]), _tag_dict(s.get("Tags"))))
        return out

    # ------------------------------------------------------------ SSM parameters

    @property
    def _ssm(self) -> Any:
        return self.clients.client("ssm")

    def _read_parameter(self, name: PhysicalName) -> Observed:
        what = f"parameters {name}"
        with _wrap(what):
            p = self._ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
            described = self._ssm.describe_parameters(
                ParameterFilters=[{"Key": "Name", "Values": [name]}]
            ).get("Parameters", [])
            tags = self._ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=name)
        description = described[0].get("Description", "") if described else ""
        return Observed(
            kind="parameters",
            physical=name,
            props={"value": p["Value"], "type": p["Type"], "description": description or ""},
            tags=_tag_dict(tags.get("TagList")),
            ids={"arn": p.get("ARN", ""), "name": name, "value": p["Value"], "type": p["Type"]},
            secret=frozenset({"value"}) if p["Type"] == "SecureString" else frozenset(),
        )

    def _create_parameter(self, d: Desired, record: Record) -> None:
        args: dict[str, Any] = {
            "Name": d.physical,
            "Value": d.props["value"],
            "Type": d.props["type"],
            "Tags": _tag_list(d.tags),
        }
        if d.props.get("description"):
            args["Description"] = d.props["description"]
        with _wrap(f"parameters {d.physical}: create"):
            self._ssm.put_parameter(**args)
        record("created")

    def _update_parameter(
        self, d: Desired, o: Observed, changes: Sequence[Change], record: Record
    ) -> None:
        args: dict[str, Any] = {
            "Name": d.physical,
            "Value": d.props["value"],
            "Type": d.props["type"],
            "Overwrite": True,
            "Description": d.props.get("description") or "",
        }
        with _wrap(f"parameters {d.physical}: update"):
            self._ssm.put_parameter(**args)
        record("updated")

    def _delete_parameter(self, o: Observed) -> None:
        with _wrap(f"parameters {o.physical}: delete"):
            self._ssm.delete_parameter(Name=o.physical)

    def _list_parameters(self, release: str) -> list[tuple[PhysicalName, dict[str, str] | None]]:
        out: list[tuple[PhysicalName, dict[str, str] | None]] = []
        with _wrap("parameters list"):
            for page in self._ssm.get_paginator("describe_parameters").paginate(
                ParameterFilters=[{"Key": f"tag:{names.TAG_RELEASE}", "Values": [release]}]
            ):
                out += [(PhysicalName(p["Name"]), None) for p in page.get("Parameters", [])]
        return out


def _maybe_code(what: str, code: str, call: Callable[[], T]) -> T | None:
    """``call()``, or None when it fails with error ``code``."""
    try:
        with _wrap(what):
            return call()
    except NotFound:
        return None
    except AwsError as e:
        cause = e.__cause__
        if isinstance(cause, botocore.exceptions.ClientError) and (
            cause.response.get("Error", {}).get("Code") == code
        ):
            return None
        raise


_SAFE_PUNCTUATION: Final = "!#%*+,-.:=?@^_~"


def generate_password(length: int, *, punctuation: bool = False) -> str:
    """A random password from the OS's CSPRNG: letters and digits, plus
    punctuation that needs no quoting in URLs or shells when asked."""
    alphabet = string.ascii_letters + string.digits + (_SAFE_PUNCTUATION if punctuation else "")
    return "".join(secrets_module.choice(alphabet) for _ in range(length))
