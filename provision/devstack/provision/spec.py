"""The resource spec: its model, how it is read and how it is validated (pure).

A spec is the mapping under ``devstack.aws`` in Helm values, or the same
mapping in a file of its own. Its structure is ``spec.schema.json`` (the one
source of truth, also embedded in the charts' ``values.schema.json``); this
module adds the checks a schema cannot express (references between resources,
final name lengths, clashing output names) and turns every problem into one
line naming the offending field, e.g.
``devstack.aws.sqs[1].deadLetter.maxReceiveCount: must be an integer between 1 and 1000``.

Nothing here does I/O except reading the schema file shipped with the package.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final, cast

import jsonschema
import yaml

from devstack.core.fields import field_path, json_kind
from devstack.provision import names
from devstack.provision.errors import SpecError

#: Where the spec lives in Helm values; every field is named from here.
ROOT: Final = "devstack.aws"

#: The resource kinds built in, in the order they are created.
BUILTIN_KINDS: Final = ("s3", "sqs", "sns", "dynamodb", "secrets", "parameters")
#: Keys of the spec that are not resource kinds.
SETTINGS: Final = ("endpoint", "region", "hooks")

#: Physical name limits of AWS, checked after the owner prefix is added.
_MAX_PHYSICAL: Final = {
    "s3": 63,
    "sqs": 80,
    "sns": 256,
    "dynamodb": 255,
    "secrets": 512,
    "parameters": 1011,
}

HOOK_PHASES: Final = ("provision", "teardown")
DEFAULT_HOOK_TIMEOUT: Final = 300
DEFAULT_SECRET_LENGTH: Final = 32


@dataclass(frozen=True)
class CorsRule:
    allowed_origins: tuple[str, ...]
    allowed_methods: tuple[str, ...]
    allowed_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age_seconds: int | None = None


@dataclass(frozen=True)
class Bucket:
    name: str
    versioning: bool = False
    cors: tuple[CorsRule, ...] = ()


@dataclass(frozen=True)
class DeadLetter:
    max_receive_count: int
    #: The declared name of another queue of the spec; None creates ``<name>-dlq``.
    queue: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Queue:
    name: str
    fifo: bool = False
    content_based_deduplication: bool | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    dead_letter: DeadLetter | None = None


@dataclass(frozen=True)
class Subscription:
    queue: str
    raw_message_delivery: bool = False
    filter_policy: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Topic:
    name: str
    fifo: bool = False
    subscriptions: tuple[Subscription, ...] = ()


@dataclass(frozen=True)
class Key:
    name: str
    type: str


@dataclass(frozen=True)
class Index:
    name: str
    hash_key: Key
    range_key: Key | None = None
    projection: str = "ALL"


@dataclass(frozen=True)
class Table:
    name: str
    hash_key: Key
    range_key: Key | None = None
    global_indexes: tuple[Index, ...] = ()


@dataclass(frozen=True)
class Secret:
    name: str
    #: The value to store; None means "generate one once and keep it".
    value: str | None = None
    generate_length: int = DEFAULT_SECRET_LENGTH
    punctuation: bool = False
    description: str = ""


@dataclass(frozen=True)
class Parameter:
    name: str
    value: str
    type: str = "String"
    description: str = ""


@dataclass(frozen=True)
class Hook:
    name: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    timeout_seconds: int = DEFAULT_HOOK_TIMEOUT
    on: frozenset[str] = frozenset({"provision"})


@dataclass(frozen=True)
class Spec:
    """A validated spec."""

    endpoint: str | None = None
    region: str | None = None
    buckets: tuple[Bucket, ...] = ()
    queues: tuple[Queue, ...] = ()
    topics: tuple[Topic, ...] = ()
    tables: tuple[Table, ...] = ()
    secrets: tuple[Secret, ...] = ()
    parameters: tuple[Parameter, ...] = ()
    hooks: tuple[Hook, ...] = ()
    #: Plugin kinds: kind -> its items, each validated by the plugin's schema.
    extra: Mapping[str, tuple[Mapping[str, Any], ...]] = field(default_factory=dict)
    #: The spec as declared (what custom hooks receive).
    raw: Mapping[str, Any] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (
            self.buckets
            or self.queues
            or self.topics
            or self.tables
            or self.secrets
            or self.parameters
            or self.hooks
            or any(self.extra.values())
        )


# ---------------------------------------------------------------- reading


def load_document(text: str, *, source: str = "spec") -> dict[str, Any]:
    """The raw spec in ``text`` (YAML or JSON): a bare spec, or Helm values
    whose ``devstack.aws`` holds it. Empty documents are empty specs."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError([f"{source}: not valid YAML or JSON: {e}"]) from e
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SpecError([f"{source}: must be a mapping, not {json_kind(doc)}"])
    if "devstack" in doc:
        devstack = doc["devstack"]
        if devstack is None:
            return {}
        if not isinstance(devstack, dict):
            raise SpecError([f"devstack: must be a mapping, not {json_kind(devstack)}"])
        aws = devstack.get("aws")
        if aws is None:
            return {}
        if not isinstance(aws, dict):
            raise SpecError([f"{ROOT}: must be a mapping, not {json_kind(aws)}"])
        return cast(dict[str, Any], aws)
    return cast(dict[str, Any], doc)


@functools.cache
def schema() -> dict[str, Any]:
    """The JSON Schema of a spec (``spec.schema.json``)."""
    text = resources.files("devstack.provision").joinpath("spec.schema.json").read_text("utf-8")
    return cast(dict[str, Any], json.loads(text))


# ---------------------------------------------------------------- validating


def parse(
    raw: Mapping[str, Any],
    *,
    owner: str = "",
    plugin_schemas: Mapping[str, Mapping[str, Any]] | None = None,
) -> Spec:
    """Validate ``raw`` for ``owner`` and build the model, or raise
    :class:`SpecError` listing every problem. Nothing is created before this
    returns, so a bad spec never leaves half its resources behind."""
    plugin_schemas = plugin_schemas or {}
    problems = schema_problems(raw, plugin_schemas=plugin_schemas)
    if problems:
        raise SpecError(problems)
    spec = _build(raw, plugin_kinds=plugin_schemas)
    problems = semantic_problems(spec, owner=owner)
    if problems:
        raise SpecError(problems)
    return spec


def schema_problems(
    raw: Mapping[str, Any], *, plugin_schemas: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Structural problems: the schema, unknown kinds, plugin items."""
    problems = [_message(e) for e in _sorted(_validator(schema()).iter_errors(raw))]
    known = set(schema()["properties"])
    for kind, items in raw.items():
        if kind in known:
            continue
        if kind not in plugin_schemas:
            plugins = ", ".join(sorted(plugin_schemas)) or "none installed"
            problems.append(
                f"{ROOT}.{kind}: unknown resource kind "
                f"(built in: {', '.join(BUILTIN_KINDS)}; plugins: {plugins})"
            )
            continue
        if isinstance(items, list):
            item_validator = _validator(dict(plugin_schemas[kind]))
            for i, item in enumerate(items):
                problems += [
                    _message(e, prefix=f"{ROOT}.{kind}[{i}]")
                    for e in _sorted(item_validator.iter_errors(item))
                ]
    return problems


def semantic_problems(spec: Spec, *, owner: str) -> list[str]:
    """What the schema cannot say: references, final names, output names."""
    problems: list[str] = []
    queues = {q.name: (i, q) for i, q in enumerate(spec.queues)}

    def unique(kind: str, declared: Sequence[str]) -> None:
        seen_names: dict[str, int] = {}
        seen_env: dict[str, int] = {}
        for i, name in enumerate(declared):
            if name in seen_names:
                problems.append(
                    f"{ROOT}.{kind}[{i}].name: {name!r} is already declared at "
                    f"{ROOT}.{kind}[{seen_names[name]}]"
                )
                continue
            seen_names[name] = i
            token = names.env_token(name)
            if token in seen_env:
                problems.append(
                    f"{ROOT}.{kind}[{i}].name: {name!r} gives the same output variables "
                    f"(*_{token}_*) as {ROOT}.{kind}[{seen_env[token]}]; rename one"
                )
            seen_env.setdefault(token, i)

    def length(kind: str, i: int, name: str, *, fifo: bool = False, what: str = "name") -> None:
        full = names.physical(name, owner, kind=kind, fifo=fifo)
        limit = _MAX_PHYSICAL[kind]
        if len(full) > limit:
            problems.append(
                f"{ROOT}.{kind}[{i}].{what}: {full!r} is longer than {limit} characters "
                f"(the owner prefix counts)"
            )

    unique("s3", [b.name for b in spec.buckets])
    for i, b in enumerate(spec.buckets):
        length("s3", i, b.name)

    declared_queues = [q.name for q in spec.queues]
    unique("sqs", declared_queues)
    for i, q in enumerate(spec.queues):
        at = f"{ROOT}.sqs[{i}]"
        length("sqs", i, q.name, fifo=q.fifo)
        for reserved, instead in (
            ("FifoQueue", "fifo"),
            ("ContentBasedDeduplication", "contentBasedDeduplication"),
            ("RedrivePolicy", "deadLetter"),
        ):
            if reserved in q.attributes:
                problems.append(f"{at}.attributes.{reserved}: set `{instead}` instead")
        if q.content_based_deduplication is not None and not q.fifo:
            problems.append(f"{at}.contentBasedDeduplication: only FIFO queues have it")
        dl = q.dead_letter
        if dl is None:
            continue
        if dl.queue is None:
            generated = names.dead_letter_name(q.name)
            if generated in queues:
                problems.append(
                    f"{at}.deadLetter: its queue would be named {generated!r}, which "
                    f"{ROOT}.sqs[{queues[generated][0]}] declares; set deadLetter.queue: "
                    f"{generated} to use that one"
                )
            length("sqs", i, generated, fifo=q.fifo, what="deadLetter")
        elif dl.queue == q.name:
            problems.append(f"{at}.deadLetter.queue: a queue cannot be its own dead-letter queue")
        elif dl.queue not in queues:
            problems.append(f"{at}.deadLetter.queue: {dl.queue!r} is not declared under {ROOT}.sqs")
        else:
            target = queues[dl.queue][1]
            if target.fifo != q.fifo:
                problems.append(
                    f"{at}.deadLetter.queue: {dl.queue!r} must be "
                    f"{'a FIFO' if q.fifo else 'a standard'} queue like {q.name!r}"
                )
            if dl.attributes:
                problems.append(
                    f"{at}.deadLetter.attributes: set them on {ROOT}.sqs[{queues[dl.queue][0]}]"
                )

    unique("sns", [t.name for t in spec.topics])
    for i, t in enumerate(spec.topics):
        length("sns", i, t.name, fifo=t.fifo)
        seen: set[str] = set()
        for j, sub in enumerate(t.subscriptions):
            at = f"{ROOT}.sns[{i}].subscriptions[{j}].queue"
            if sub.queue in seen:
                problems.append(f"{at}: {sub.queue!r} is subscribed twice")
            seen.add(sub.queue)
            if sub.queue not in queues:
                problems.append(f"{at}: {sub.queue!r} is not declared under {ROOT}.sqs")
            elif t.fifo and not queues[sub.queue][1].fifo:
                problems.append(f"{at}: a FIFO topic can only deliver to FIFO queues")
            elif not t.fifo and queues[sub.queue][1].fifo:
                problems.append(f"{at}: a standard topic cannot deliver to a FIFO queue")

    unique("dynamodb", [t.name for t in spec.tables])
    for i, table in enumerate(spec.tables):
        length("dynamodb", i, table.name)
        at = f"{ROOT}.dynamodb[{i}]"
        types: dict[str, tuple[str, str]] = {}

        def key(where: str, k: Key | None) -> None:
            if k is None:
                return
            if k.name in types and types[k.name][0] != k.type:  # noqa: B023
                problems.append(
                    f"{where}.type: attribute {k.name!r} is {types[k.name][0]} at "  # noqa: B023
                    f"{types[k.name][1]}; one attribute has one type"  # noqa: B023
                )
            types.setdefault(k.name, (k.type, where))  # noqa: B023

        key(f"{at}.hashKey", table.hash_key)
        key(f"{at}.rangeKey", table.range_key)
        if table.range_key and table.range_key.name == table.hash_key.name:
            problems.append(f"{at}.rangeKey.name: must differ from hashKey.name")
        seen_idx: set[str] = set()
        for j, idx in enumerate(table.global_indexes):
            if idx.name in seen_idx:
                problems.append(f"{at}.globalIndexes[{j}].name: {idx.name!r} is declared twice")
            seen_idx.add(idx.name)
            key(f"{at}.globalIndexes[{j}].hashKey", idx.hash_key)
            key(f"{at}.globalIndexes[{j}].rangeKey", idx.range_key)

    unique("secrets", [s.name for s in spec.secrets])
    for i, s in enumerate(spec.secrets):
        length("secrets", i, s.name)

    unique("parameters", [p.name for p in spec.parameters])
    for i, p in enumerate(spec.parameters):
        at = f"{ROOT}.parameters[{i}]"
        length("parameters", i, p.name)
        full = names.physical(p.name, owner, kind="parameters")
        if re.match(r"^/?(aws|ssm)", full, re.IGNORECASE):
            problems.append(f"{at}.name: may not start with 'aws' or 'ssm'")
        if full.count("/") > 15:
            problems.append(f"{at}.name: {full!r} has more than 15 levels")
        if p.type == "StringList" and any(not part for part in p.value.split(",")):
            problems.append(f"{at}.value: a StringList is non-empty items separated by commas")

    seen_hooks: set[str] = set()
    for i, h in enumerate(spec.hooks):
        if h.name in seen_hooks:
            problems.append(f"{ROOT}.hooks[{i}].name: {h.name!r} is declared twice")
        seen_hooks.add(h.name)

    for kind, items in spec.extra.items():
        unique(kind, [str(item["name"]) for item in items])
    return problems


# ---------------------------------------------------------------- building


def _build(raw: Mapping[str, Any], *, plugin_kinds: Iterable[str]) -> Spec:
    """The model of a spec that passed the schema."""
    plugin_kinds = set(plugin_kinds)
    return Spec(
        endpoint=raw.get("endpoint"),
        region=raw.get("region"),
        buckets=tuple(_bucket(b) for b in raw.get("s3") or ()),
        queues=tuple(_queue(q) for q in raw.get("sqs") or ()),
        topics=tuple(_topic(t) for t in raw.get("sns") or ()),
        tables=tuple(_table(t) for t in raw.get("dynamodb") or ()),
        secrets=tuple(_secret(s) for s in raw.get("secrets") or ()),
        parameters=tuple(
            Parameter(
                name=p["name"],
                value=_text(p["value"]),
                type=p.get("type", "String"),
                description=p.get("description", ""),
            )
            for p in raw.get("parameters") or ()
        ),
        hooks=tuple(
            Hook(
                name=h["name"],
                command=tuple(h["command"]),
                env=dict(h.get("env") or {}),
                timeout_seconds=h.get("timeoutSeconds", DEFAULT_HOOK_TIMEOUT),
                on=frozenset(h.get("on") or ("provision",)),
            )
            for h in raw.get("hooks") or ()
        ),
        extra={k: tuple(dict(i) for i in v or ()) for k, v in raw.items() if k in plugin_kinds},
        raw=dict(raw),
    )


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _bucket(b: Mapping[str, Any]) -> Bucket:
    return Bucket(
        name=b["name"],
        versioning=bool(b.get("versioning", False)),
        cors=tuple(
            CorsRule(
                allowed_origins=tuple(r["allowedOrigins"]),
                allowed_methods=tuple(r["allowedMethods"]),
                allowed_headers=tuple(r.get("allowedHeaders") or ()),
                expose_headers=tuple(r.get("exposeHeaders") or ()),
                max_age_seconds=r.get("maxAgeSeconds"),
            )
            for r in b.get("cors") or ()
        ),
    )


def _queue(q: Mapping[str, Any]) -> Queue:
    dl = q.get("deadLetter")
    return Queue(
        name=q["name"],
        fifo=bool(q.get("fifo", False)),
        content_based_deduplication=q.get("contentBasedDeduplication"),
        attributes={k: _text(v) for k, v in (q.get("attributes") or {}).items()},
        dead_letter=None
        if dl is None
        else DeadLetter(
            max_receive_count=dl["maxReceiveCount"],
            queue=dl.get("queue"),
            attributes={k: _text(v) for k, v in (dl.get("attributes") or {}).items()},
        ),
    )


def _topic(t: Mapping[str, Any]) -> Topic:
    return Topic(
        name=t["name"],
        fifo=bool(t.get("fifo", False)),
        subscriptions=tuple(
            Subscription(
                queue=s["queue"],
                raw_message_delivery=bool(s.get("rawMessageDelivery", False)),
                filter_policy=s.get("filterPolicy"),
            )
            for s in t.get("subscriptions") or ()
        ),
    )


def _key(k: Mapping[str, Any] | None) -> Key | None:
    return None if k is None else Key(name=k["name"], type=k["type"])


def _table(t: Mapping[str, Any]) -> Table:
    hash_key = _key(t["hashKey"])
    assert hash_key is not None
    indexes = []
    for i in t.get("globalIndexes") or ():
        idx_hash = _key(i["hashKey"])
        assert idx_hash is not None
        indexes.append(
            Index(
                name=i["name"],
                hash_key=idx_hash,
                range_key=_key(i.get("rangeKey")),
                projection=i.get("projection", "ALL"),
            )
        )
    return Table(
        name=t["name"],
        hash_key=hash_key,
        range_key=_key(t.get("rangeKey")),
        global_indexes=tuple(indexes),
    )


def _secret(s: Mapping[str, Any]) -> Secret:
    generate = s.get("generate") or {}
    return Secret(
        name=s["name"],
        value=s.get("value"),
        generate_length=generate.get("length", DEFAULT_SECRET_LENGTH),
        punctuation=bool(generate.get("punctuation", False)),
        description=s.get("description", ""),
    )


# ---------------------------------------------------------------- messages


def _validator(s: Mapping[str, Any]) -> Any:
    return jsonschema.Draft7Validator(s)


def _sorted(errors: Iterable[Any]) -> list[Any]:
    return sorted(errors, key=lambda e: [str(p) for p in e.absolute_path] + [e.validator])


_TYPE_WORDS: Final = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def describe(s: Mapping[str, Any]) -> str:
    """What a value must be, for a person: ``an integer between 1 and 1000``."""
    if "enum" in s:
        return "one of: " + ", ".join(str(v) for v in s["enum"])
    if "pattern" in s and "description" in s:
        return str(s["description"])
    types = s.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    words = [_TYPE_WORDS.get(t, t) for t in types]
    text = " or ".join(words) if words else "a valid value"
    lo, hi = s.get("minimum"), s.get("maximum")
    if lo is not None and hi is not None:
        text += f" between {lo} and {hi}"
    elif lo is not None:
        text += f" >= {lo}"
    elif hi is not None:
        text += f" <= {hi}"
    if s.get("minLength") == 1 and "maxLength" not in s:
        text = "a non-empty string"
    elif "minLength" in s or "maxLength" in s:
        text += f" of {s.get('minLength', 0)} to {s.get('maxLength', 'any number of')} characters"
    if s.get("minItems") == 1:
        text = "a non-empty list"
    if "pattern" in s:
        text += f" matching {s['pattern']}"
    return text


def _message(error: Any, *, prefix: str = ROOT) -> str:
    """One line for one schema error, naming the field."""
    path = field_path(error.absolute_path, prefix)
    validator = error.validator
    sub = error.schema
    instance = error.instance
    if validator == "required":
        missing = [r for r in error.validator_value if r not in instance]
        return "; ".join(f"{field_path([m], path)}: is required" for m in missing)
    if validator == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(sub.get("properties", {}))
        extra = [k for k in instance if k not in allowed]
        return "; ".join(
            f"{field_path([k], path)}: unknown field (expected one of: {', '.join(allowed)})"
            for k in extra
        )
    if "propertyNames" in error.schema_path:
        return f"{path}: key {instance!r} must be {describe(sub)}"
    if validator == "type":
        return f"{path}: must be {describe(sub)}, not {json_kind(instance)}"
    if validator == "uniqueItems":
        return f"{path}: has duplicate items"
    return f"{path}: must be {describe(sub)}"
