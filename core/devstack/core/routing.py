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

Owner = NewType("Owner", str)
ServiceName = NewType("ServiceName", str)

BaggageStyle = Literal["w3c", "jaeger"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# RFC 7230 token: what a baggage key and a header name may contain.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


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


def with_owner_in_baggage(
    baggage: str | None, owner: str, *, key: str = DEFAULT_BAGGAGE_KEY
) -> str:
    """``baggage`` with its ``key`` member set to ``owner``: other members are
    kept in order, any earlier ``key`` member is replaced."""
    member = f"{key}={urllib.parse.quote(owner, safe='')}"
    kept = []
    for raw in (baggage or "").split(","):
        head = raw.split(";", 1)[0]
        if not raw.strip():
            continue
        if "=" in head and head.partition("=")[0].strip() == key:
            continue
        kept.append(raw.strip())
    return ",".join([member, *kept])


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
