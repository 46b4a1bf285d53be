"""The routing-key model (pure, no I/O).

A request is tagged with an engineer's *routing key*: the owner whose
personal copies it should reach. The key travels in one of two headers:

- a W3C ``baggage`` list member, ``devstack-route=<owner>`` (so OpenTelemetry's
  baggage propagator carries it from hop to hop without help), or, in the
  Jaeger style, a header ``uberctx-devstack-route: <owner>``;
- a plain header, ``x-devstack-route: <owner>``, for curl and older apps.

Both names are settings (:class:`RouteSettings`). This module parses and
matches the key exactly (``alice`` never catches ``alice2``, other baggage
members may come before or after it), and writes the Traefik rule
expressions that match it, in v3 syntax (``Header``/``HeaderRegexp``) or in
v2 syntax (``Headers``/``HeadersRegexp``).

It forwards baggage as W3C Baggage and OpenTelemetry do: a hop passes on
every member it received, properties and all, in order, with the routing key
set in it (:func:`with_owner_in_baggage`, :func:`merge_baggage`), within the
W3C limits (:data:`BAGGAGE_MAX_MEMBERS`, :data:`BAGGAGE_MAX_BYTES`).

It also holds the Kubernetes label names that say which Service belongs to
what, because the CLI, the charts and the agent all use them.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NewType

#: The logical service a Kubernetes Service is a copy of.
SERVICE_LABEL = "devstack.dev/service"
#: Present on a personal copy: whose copy it is. The baseline has none.
OWNER_LABEL = "devstack.dev/owner"
#: Optional on a personal copy's objects (Pods, PVCs, Services): the owner's
#: team, for usage attribution (else the agent's owner-to-team mapping).
TEAM_LABEL = "devstack.dev/team"
#: Optional on a personal copy: when its routes stop (RFC 3339 timestamp).
EXPIRES_AT_ANNOTATION = "devstack.dev/expires-at"
#: Optional on a personal copy: seconds after the Service's creation when its
#: routes stop (used when ``expires-at`` is absent).
TTL_ANNOTATION = "devstack.dev/ttl"
#: Optional on a Service: which port (name or number) routes go to.
PORT_ANNOTATION = "devstack.dev/port"

DEFAULT_BAGGAGE_KEY = "devstack-route"
DEFAULT_ROUTE_HEADER = "x-devstack-route"
W3C_BAGGAGE_HEADER = "baggage"
JAEGER_BAGGAGE_PREFIX = "uberctx-"

#: The W3C Baggage limits a sender keeps to (https://www.w3.org/TR/baggage/#limits,
#: and OpenTelemetry's propagators): at most 180 list-members (the header
#: grammar's ``list-member 0*179( OWS "," OWS list-member )``) and 8192 bytes
#: in all. The spec asks every platform to pass on at least 64 members.
BAGGAGE_MAX_MEMBERS = 180
BAGGAGE_MAX_BYTES = 8192

Owner = NewType("Owner", str)
ServiceName = NewType("ServiceName", str)

BaggageStyle = Literal["w3c", "jaeger"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# RFC 7230 token: what a baggage key and a header name may contain.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# A W3C baggage list-member, as the spec writes it (https://www.w3.org/TR/baggage/#header-content):
# key OWS "=" OWS value *( OWS ";" OWS property ), property = key [OWS "=" OWS value];
# key is a token, value *baggage-octet (printable ASCII but space, '"', ',', ';' and '\').
_BAGGAGE_KEY = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_BAGGAGE_VALUE = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
_BAGGAGE_MEMBER = re.compile(
    rf"({_BAGGAGE_KEY})[ \t]*=[ \t]*({_BAGGAGE_VALUE})"
    rf"(?:[ \t]*;[ \t]*{_BAGGAGE_KEY}(?:[ \t]*=[ \t]*{_BAGGAGE_VALUE})?)*"
)


class RoutingError(ValueError):
    """A routing setting or name that cannot work (raised by the validators)."""


def is_dns_label(value: str) -> bool:
    """Whether ``value`` may appear as one label of a host name (RFC 1123)."""
    return bool(_DNS_LABEL.match(value))


@dataclass(frozen=True, kw_only=True)
class RouteSettings:
    """Which headers carry the routing key.

    ``baggage_style="w3c"`` carries it as a member of the ``baggage`` header;
    ``"jaeger"`` carries it in its own header ``uberctx-<baggage_key>``.
    """

    baggage_key: str = DEFAULT_BAGGAGE_KEY
    route_header: str = DEFAULT_ROUTE_HEADER
    baggage_style: BaggageStyle = "w3c"

    def __post_init__(self) -> None:
        if not _TOKEN.match(self.baggage_key):
            raise RoutingError(f"baggage key {self.baggage_key!r} is not an HTTP token")
        if not _TOKEN.match(self.route_header):
            raise RoutingError(f"route header {self.route_header!r} is not an HTTP token")
        if self.baggage_style not in ("w3c", "jaeger"):
            raise RoutingError(f"baggage style {self.baggage_style!r}: use w3c or jaeger")
        if self.route_header.lower() == self.baggage_header:
            raise RoutingError("the route header and the baggage header must differ")

    @property
    def baggage_header(self) -> str:
        """The (lower-case) header that carries the baggage member."""
        if self.baggage_style == "jaeger":
            return (JAEGER_BAGGAGE_PREFIX + self.baggage_key).lower()
        return W3C_BAGGAGE_HEADER

    @property
    def route_header_lower(self) -> str:
        return self.route_header.lower()


def parse_baggage(value: str) -> list[tuple[str, str]]:
    """The ``(key, value)`` members of one W3C ``baggage`` header value, in
    order, with member properties dropped and values percent-decoded.
    Malformed members are skipped, as the W3C spec asks of a receiver."""
    members: list[tuple[str, str]] = []
    for raw in value.split(","):
        head = raw.split(";", 1)[0]
        if "=" not in head:
            continue
        key, _, val = head.partition("=")
        key = key.strip()
        if not key or not _TOKEN.match(key):
            continue
        members.append((key, urllib.parse.unquote(val.strip())))
    return members


def owner_from_baggage(value: str, *, key: str = DEFAULT_BAGGAGE_KEY) -> str | None:
    """The routing key in a ``baggage`` header value, or ``None``. The first
    member named ``key`` with a non-empty value wins; the match on the key is
    exact. (An empty member carries no key, as the Traefik rules see it too:
    see :func:`routing_key_present_regexp`.)"""
    for member_key, member_value in parse_baggage(value):
        if member_key == key and member_value:
            return member_value
    return None


def _get(headers: Mapping[str, str] | Iterable[tuple[str, str]], name: str) -> list[str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    lowered = name.lower()
    return [v for k, v in items if k.lower() == lowered]


def owner_from_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]], settings: RouteSettings
) -> str | None:
    """The routing key a request carries, or ``None``.

    The baggage header wins over the plain header (it is what OpenTelemetry
    propagates), and the generated Traefik rules agree (see
    :func:`plain_header_rule`); several ``baggage`` headers are read as one
    list, in order.
    """
    baggage = _get(headers, settings.baggage_header)
    if baggage:
        if settings.baggage_style == "w3c":
            found = owner_from_baggage(",".join(baggage), key=settings.baggage_key)
        else:
            found = urllib.parse.unquote(baggage[0].strip()) or None
        if found:
            return found
    plain = _get(headers, settings.route_header)
    if plain and plain[0].strip():
        return plain[0].strip()
    return None


def baggage_of(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> str | None:
    """The W3C ``baggage`` a request carries (whatever the baggage style of
    the routing key): its ``baggage`` headers as one list, in order, or
    ``None`` without one."""
    values = [v.strip() for v in _get(headers, W3C_BAGGAGE_HEADER) if v.strip()]
    return ",".join(values) if values else None


def baggage_members(value: str | None) -> list[str]:
    """The list-members of a ``baggage`` header value, in order, each as
    written (properties kept, the whitespace around it dropped). A member
    that does not follow the W3C grammar is dropped, as the spec lets a
    receiver do: passing it on would make the next hop's header invalid."""
    return [
        m for m in (raw.strip() for raw in (value or "").split(",")) if _BAGGAGE_MEMBER.fullmatch(m)
    ]


def _member_key(member: str) -> str:
    return member.partition("=")[0].strip()


def _within_limits(members: list[str], keep: int | None = None) -> str:
    """``members`` joined, within the W3C limits: from the first member that
    does not fit on, every member is dropped whole (none is ever cut), but
    ``members[keep]``, which is always kept."""
    count = 1 if keep is not None else 0
    size = len(members[keep]) if keep is not None else 0
    out: list[str] = []
    full = False
    for i, member in enumerate(members):
        if i == keep:
            out.append(member)
            continue
        grown = size + len(member) + (1 if count else 0)  # ASCII only: chars are bytes
        if full or count + 1 > BAGGAGE_MAX_MEMBERS or grown > BAGGAGE_MAX_BYTES:
            full = True
            continue
        out.append(member)
        count, size = count + 1, grown
    return ",".join(out)


def merge_baggage(*values: str | None, limit: bool = True) -> str:
    """Several ``baggage`` values as one, the way a hop passes baggage on:
    every member of the first, in order, as written; then each member of
    the later ones replaces, in place, the first member with its key, or is
    added at the end. Within the W3C limits (members beyond them dropped
    whole), unless ``limit`` is false (for a caller that adds to it and
    applies them after: :func:`with_owner_in_baggage` does).
    ``merge_baggage(inbound)`` is the inbound baggage as it may be passed on."""
    members: list[str] = []
    for value in values:
        for member in baggage_members(value):
            key = _member_key(member)
            at = next((i for i, m in enumerate(members) if _member_key(m) == key), None)
            if at is None:
                members.append(member)
            else:
                members[at] = member
    return _within_limits(members) if limit else ",".join(members)


def with_owner_in_baggage(
    baggage: str | None, owner: str, *, key: str = DEFAULT_BAGGAGE_KEY
) -> str:
    """``baggage`` with its ``key`` member set to ``owner``: the baggage a
    hop passes on for a request of ``owner``'s.

    Every other member is kept as written (properties too), in order. The
    first ``key`` member stays where it is: untouched when it already holds
    ``owner``, else replaced by ``key=owner``; any later ``key`` member is
    dropped, so there is exactly one. Without one, ``key=owner`` comes first.
    Malformed members are dropped (:func:`baggage_members`), and so are the
    members beyond the W3C limits, whole, from the end: never the routing
    member."""
    member = f"{key}={urllib.parse.quote(owner, safe='')}"
    members: list[str] = []
    at: int | None = None
    for raw in baggage_members(baggage):
        if _member_key(raw) != key:
            members.append(raw)
        elif at is None:
            at = len(members)
            value = raw.partition("=")[2].split(";", 1)[0].strip()
            members.append(raw if urllib.parse.unquote(value) == owner else member)
    if at is None:
        members.insert(0, member)
        at = 0
    return _within_limits(members, keep=at)


def route_headers(owner: str, settings: RouteSettings) -> dict[str, str]:
    """The headers that tag a fresh request with ``owner`` (what a preview
    URL's middleware injects): the baggage header and the plain header."""
    if settings.baggage_style == "w3c":
        baggage_value = with_owner_in_baggage(None, owner, key=settings.baggage_key)
    else:
        baggage_value = urllib.parse.quote(owner, safe="")
    return {settings.baggage_header: baggage_value, settings.route_header_lower: owner}


# --- Traefik rule expressions -------------------------------------------------

TraefikSyntax = Literal["v3", "v2"]


def _quote(value: str) -> str:
    if "`" in value:
        raise RoutingError(f"a backquote cannot appear in a Traefik rule: {value!r}")
    return f"`{value}`"


def _go_quote_meta(value: str) -> str:
    """Go's ``regexp.QuoteMeta``: escape every RE2 metacharacter."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", value)


def baggage_member_regexp(owner: str, *, key: str = DEFAULT_BAGGAGE_KEY) -> str:
    """An RE2 expression that matches a ``baggage`` header value holding the
    member ``key=owner`` exactly: not ``key=owner2``, not ``xkey=owner``,
    with optional whitespace and member properties, anywhere in the list."""
    return (
        r"(^|,)[ \t]*"
        + _go_quote_meta(key)
        + r"[ \t]*=[ \t]*"
        + _go_quote_meta(urllib.parse.quote(owner, safe=""))
        + r"[ \t]*(;[^,]*)?(,|$)"
    )


def routing_key_present_regexp(settings: RouteSettings) -> str:
    """An RE2 expression that matches a baggage header value which carries
    *some* routing key (a non-empty value), whoever's it is.

    W3C style: a list member named ``baggage_key`` whose value is not empty
    (what :func:`owner_from_baggage` reads). Jaeger style: any non-blank
    value of the ``uberctx-<key>`` header.
    """
    if settings.baggage_style == "w3c":
        return r"(^|,)[ \t]*" + _go_quote_meta(settings.baggage_key) + r"[ \t]*=[ \t]*[^ \t,;]"
    return r"[^ \t]"


def host_rule(host: str, *, syntax: TraefikSyntax = "v3") -> str:
    """``Host(`host`)``: identical in both syntaxes."""
    del syntax
    return f"Host({_quote(host)})"


def baggage_rule(owner: str, settings: RouteSettings, *, syntax: TraefikSyntax = "v3") -> str:
    """The rule that matches ``owner`` in the baggage header."""
    if settings.baggage_style == "w3c":
        regexp = baggage_member_regexp(owner, key=settings.baggage_key)
        name = "HeaderRegexp" if syntax == "v3" else "HeadersRegexp"
        return f"{name}({_quote(settings.baggage_header)}, {_quote(regexp)})"
    name = "Header" if syntax == "v3" else "Headers"
    return f"{name}({_quote(settings.baggage_header)}, {_quote(owner)})"


def plain_header_rule(owner: str, settings: RouteSettings, *, syntax: TraefikSyntax = "v3") -> str:
    """The rule that matches ``owner`` in the plain route header (exact),
    unless the baggage header carries a routing key.

    The baggage wins: a request with ``baggage: devstack-route=bob`` and
    ``x-devstack-route: alice`` is bob's, for Traefik as for the propagation
    helpers (:func:`owner_from_headers`). Without the second half, alice's
    plain-header route would catch it whenever bob has no copy.
    """
    name = "Header" if syntax == "v3" else "Headers"
    regexp_name = "HeaderRegexp" if syntax == "v3" else "HeadersRegexp"
    present = routing_key_present_regexp(settings)
    return (
        f"{name}({_quote(settings.route_header)}, {_quote(owner)})"
        f" && !{regexp_name}({_quote(settings.baggage_header)}, {_quote(present)})"
    )


def syntax_for(traefik_version: str) -> TraefikSyntax:
    """Which rule syntax a Traefik version reads: ``"3"``/``"3.1"`` -> v3,
    ``"2.x"`` -> v2."""
    major = parse_traefik_version(traefik_version)[0]
    return "v3" if major >= 3 else "v2"


def crd_group_for(traefik_version: str) -> str:
    """The CRD API group a Traefik version reads: ``traefik.io`` from 2.10 on,
    ``traefik.containo.us`` before."""
    major, minor = parse_traefik_version(traefik_version)
    return "traefik.io" if (major, minor) >= (2, 10) else "traefik.containo.us"


def parse_traefik_version(value: str) -> tuple[int, int]:
    """``"3"`` -> (3, 0), ``"2.10"`` -> (2, 10), ``"v2.9.6"`` -> (2, 9)."""
    m = re.fullmatch(r"v?(\d+)(?:\.(\d+))?(?:\.\d+)?", value.strip())
    if not m:
        raise RoutingError(f"not a Traefik version: {value!r} (try 3, 2.10 or 2.9)")
    major, minor = int(m.group(1)), int(m.group(2) or 0)
    if major < 2:
        raise RoutingError(f"Traefik {value} has no IngressRoute CRDs we support (need 2.x or 3.x)")
    return major, minor
