"""The desired state: a validated spec -> the resources it declares (pure, no I/O).

Each resource gets its physical name for the owner, its ownership tags and its
properties in the flat form the planner compares. The applier reads AWS back
into the same form, so this module and :mod:`devstack.provision.aws` agree on
these keys:

========== ====================================================================
kind       properties
========== ====================================================================
s3         ``versioning`` (bool), ``cors`` (list of rules, as declared)
sqs        ``fifo``, ``attributes.<Name>`` (strings), ``deadLetter``
           (``{"queue": <physical>, "maxReceiveCount": n}`` or None)
sns        ``fifo``, ``subscriptions.<queue physical>``
           (``{"rawMessageDelivery": bool, "filterPolicy": dict | None}``)
dynamodb   ``hashKey``, ``rangeKey`` (``"name:TYPE"``), ``globalIndexes.<name>``
           (``{"hashKey", "rangeKey", "projection"}``)
secrets    ``description``, ``value`` (only when declared)
parameters ``value``, ``type``, ``description``
========== ====================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from devstack.provision import names
from devstack.provision.plan import Desired
from devstack.provision.spec import Bucket, Key, Parameter, Queue, Secret, Spec, Table, Topic


def desired_state(spec: Spec, *, owner: str, release: str) -> list[Desired]:
    """Every resource ``spec`` declares, in the order they must be created."""
    tags = names.ownership_tags(release, owner)
    out: list[Desired] = []
    out += [bucket(b, owner=owner, tags=tags) for b in spec.buckets]
    out += queues(spec.queues, owner=owner, tags=tags)
    out += [topic(t, spec.queues, owner=owner, tags=tags) for t in spec.topics]
    out += [table(t, owner=owner, tags=tags) for t in spec.tables]
    out += [secret(s, owner=owner, tags=tags) for s in spec.secrets]
    out += [parameter(p, owner=owner, tags=tags) for p in spec.parameters]
    return out


def cors_rule(
    origins: Any, methods: Any, headers: Any = (), expose: Any = (), max_age: int | None = None
) -> dict[str, Any]:
    """One CORS rule in its comparable form (used for both sides)."""
    return {
        "allowedOrigins": list(origins or ()),
        "allowedMethods": list(methods or ()),
        "allowedHeaders": list(headers or ()),
        "exposeHeaders": list(expose or ()),
        "maxAgeSeconds": max_age,
    }


def bucket(b: Bucket, *, owner: str, tags: Mapping[str, str]) -> Desired:
    return Desired(
        kind="s3",
        declared=b.name,
        physical=names.physical(b.name, owner, kind="s3"),
        props={
            "versioning": b.versioning,
            "cors": [
                cors_rule(
                    r.allowed_origins,
                    r.allowed_methods,
                    r.allowed_headers,
                    r.expose_headers,
                    r.max_age_seconds,
                )
                for r in b.cors
            ],
        },
        tags=tags,
    )


def queues(declared: tuple[Queue, ...], *, owner: str, tags: Mapping[str, str]) -> list[Desired]:
    """Queues, each after the dead-letter queue it sends to."""
    by_name = {q.name: q for q in declared}
    out: list[Desired] = []
    done: set[str] = set()

    def physical(name: str, fifo: bool) -> names.PhysicalName:
        return names.physical(name, owner, kind="sqs", fifo=fifo)

    def add(q: Queue, trail: tuple[str, ...] = ()) -> None:
        if q.name in done or q.name in trail:
            return
        dead_letter: dict[str, Any] | None = None
        if q.dead_letter is not None:
            dl = q.dead_letter
            if dl.queue is not None:
                add(by_name[dl.queue], (*trail, q.name))
                target = physical(dl.queue, by_name[dl.queue].fifo)
            else:
                generated = names.dead_letter_name(q.name)
                target = physical(generated, q.fifo)
                out.append(_queue(generated, target, q.fifo, dl.attributes, None, tags))
            dead_letter = {"queue": target, "maxReceiveCount": dl.max_receive_count}
        attributes = dict(q.attributes)
        if q.content_based_deduplication is not None:
            attributes["ContentBasedDeduplication"] = (
                "true" if q.content_based_deduplication else "false"
            )
        out.append(_queue(q.name, physical(q.name, q.fifo), q.fifo, attributes, dead_letter, tags))
        done.add(q.name)

    for q in declared:
        add(q)
    return out


def _queue(
    declared: str,
    physical: names.PhysicalName,
    fifo: bool,
    attributes: Mapping[str, str],
    dead_letter: dict[str, Any] | None,
    tags: Mapping[str, str],
) -> Desired:
    props: dict[str, Any] = {"fifo": fifo, "deadLetter": dead_letter}
    props.update({f"attributes.{k}": v for k, v in attributes.items()})
    return Desired(
        kind="sqs",
        declared=declared,
        physical=physical,
        props=props,
        immutable=frozenset({"fifo"}),
        tags=tags,
    )


def topic(
    t: Topic, declared_queues: tuple[Queue, ...], *, owner: str, tags: Mapping[str, str]
) -> Desired:
    fifo_of = {q.name: q.fifo for q in declared_queues}
    props: dict[str, Any] = {"fifo": t.fifo}
    for s in t.subscriptions:
        queue = names.physical(s.queue, owner, kind="sqs", fifo=fifo_of.get(s.queue, False))
        props[f"subscriptions.{queue}"] = {
            "rawMessageDelivery": s.raw_message_delivery,
            "filterPolicy": dict(s.filter_policy) if s.filter_policy is not None else None,
        }
    return Desired(
        kind="sns",
        declared=t.name,
        physical=names.physical(t.name, owner, kind="sns", fifo=t.fifo),
        props=props,
        immutable=frozenset({"fifo"}),
        families=frozenset({"subscriptions."}),
        tags=tags,
    )


def key_text(k: Key | None) -> str | None:
    """``name:TYPE``, the comparable form of a key."""
    return None if k is None else f"{k.name}:{k.type}"


def table(t: Table, *, owner: str, tags: Mapping[str, str]) -> Desired:
    props: dict[str, Any] = {"hashKey": key_text(t.hash_key), "rangeKey": key_text(t.range_key)}
    for idx in t.global_indexes:
        props[f"globalIndexes.{idx.name}"] = {
            "hashKey": key_text(idx.hash_key),
            "rangeKey": key_text(idx.range_key),
            "projection": idx.projection,
        }
    return Desired(
        kind="dynamodb",
        declared=t.name,
        physical=names.physical(t.name, owner, kind="dynamodb"),
        props=props,
        immutable=frozenset({"hashKey", "rangeKey"}),
        families=frozenset({"globalIndexes."}),
        fixed_members=frozenset({"globalIndexes."}),
        tags=tags,
    )


def secret(s: Secret, *, owner: str, tags: Mapping[str, str]) -> Desired:
    props: dict[str, Any] = {"description": s.description}
    if s.value is not None:
        props["value"] = s.value
    return Desired(
        kind="secrets",
        declared=s.name,
        physical=names.physical(s.name, owner, kind="secrets"),
        props=props,
        secret=frozenset({"value"}),
        tags=tags,
        create_options={"length": s.generate_length, "punctuation": s.punctuation},
    )


def parameter(p: Parameter, *, owner: str, tags: Mapping[str, str]) -> Desired:
    return Desired(
        kind="parameters",
        declared=p.name,
        physical=names.physical(p.name, owner, kind="parameters"),
        props={"value": p.value, "type": p.type, "description": p.description},
        secret=frozenset({"value"}) if p.type == "SecureString" else frozenset(),
        tags=tags,
    )
