"""Opening a gRPC channel to a sidecar, and turning gRPC failures into
devstack errors (network I/O at the edge).

:func:`dial` waits for a channel to connect and, when it cannot, says why at
once: a refused connection or a host name that does not resolve, not a
timeout ten seconds later (``devstack.core.sync.retry`` decides what each
means for retrying)."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import grpc

from devstack.core.errors import (
    AuthError,
    DevstackError,
    PeerFailedError,
    PermanentError,
    StaleViewError,
    UnreachableError,
)
from devstack.core.protocol import MAX_MESSAGE_BYTES, read_token
from devstack.core.sync.retry import Failure, dial_error

CLIENT_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Notice a dead peer (a sleeping laptop, a killed pod) within ~30 s.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
]


def open_channel(
    target: str, *, authority: str | None = None, tls: bool = False
) -> grpc.aio.Channel:
    """A channel to ``HOST:PORT``. ``authority`` overrides the HTTP/2
    ``:authority`` so a Traefik entry point can route h2c by host."""
    options: list[tuple[str, Any]] = list(CLIENT_OPTIONS)
    if authority:
        options.append(("grpc.default_authority", authority))
        if tls:
            options.append(("grpc.ssl_target_name_override", authority))
    if tls:
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
    return grpc.aio.insecure_channel(target, options=options)


def split_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT`` or ``[V6]:PORT``; None for any other
    gRPC target (``unix:...``, ``dns:///...``)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host or "/" in host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None
    return host, int(port)


async def probe(address: str, timeout: float) -> None:
    """Resolve ``address`` and open (and close) a TCP connection to it: raise
    the :class:`~devstack.core.sync.retry.DialError` that says why that
    fails; return when it works, or when the address is not ``HOST:PORT``."""
    where = split_address(address)
    if where is None:
        return
    host, port = where
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise dial_error(Failure.UNKNOWN_HOST, address, detail=e.strerror or str(e)) from e
    errors: list[OSError] = []
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, addr), timeout)
            return
        except TimeoutError as e:
            raise dial_error(Failure.NO_ANSWER, address, timeout=timeout) from e
        except OSError as e:
            errors.append(e)
        finally:
            sock.close()
    if errors and all(isinstance(e, ConnectionRefusedError) for e in errors):
        raise dial_error(Failure.CONNECTION_REFUSED, address) from errors[0]
    detail = errors[0].strerror or str(errors[0]) if errors else "no address"
    raise dial_error(Failure.DROPPED, address, detail=detail)


async def dial(channel: grpc.aio.Channel, address: str, *, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``channel`` to connect. When gRPC
    fails to connect, :func:`probe` finds out why: a refused connection or
    an unknown host fails at once; a TCP connection that works (a proxy in
    front, a sidecar just starting) is waited for. Raises ``NoAnswerError``
    when the time is up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    probed = False
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE and not probed:
            probed = True
            await probe(address, max(0.1, deadline - loop.time()))
        left = deadline - loop.time()
        try:
            if left <= 0:
                raise TimeoutError
            await asyncio.wait_for(channel.wait_for_state_change(state), left)
        except TimeoutError:
            # TCP works (the probe said so) but gRPC still fails to connect.
            why = "the port takes TCP connections but gives no gRPC answer: --tls on one side only?"
            raise dial_error(
                Failure.NO_ANSWER, address, timeout=timeout, detail=why if probed else ""
            ) from None
        state = channel.get_state(try_to_connect=True)


def load_token(path: str | None) -> str:
    if not path:
        raise PermanentError("--token-file is required (the sidecar's token)")
    return read_token(Path(path))


#: Worth retrying with backoff: the network, a restarting pod, a full server.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
#: The sidecar failed without saying why: retried a bounded number of times.
FAILED = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})


def translate(e: grpc.RpcError, target: str) -> DevstackError:
    """One clear error for a failed call, classified: ``UnreachableError``
    (retry with backoff), ``PeerFailedError`` (retry a few times), or a
    ``PermanentError`` (``AuthError`` for a refused token) for everything
    that retrying cannot fix: ``PERMISSION_DENIED``, ``INVALID_ARGUMENT``,
    ``FAILED_PRECONDITION``, ``UNIMPLEMENTED`` (no such route), ..."""
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    return classify(code, details or "", target)


#: What grpc.aio reports, as ``INTERNAL``, when a write fails because the
#: stream ended under it: the connection broke (or the sidecar ended the call)
#: and grpc overwrote the real status (grpc/grpc#36066). It is a dropped
#: connection, not a sidecar failure; the next session's handshake shows the
#: sidecar's own status if there is one.
BROKEN_STREAM_DETAILS = "Internal error from Core"


def classify(code: grpc.StatusCode | None, details: str, target: str) -> DevstackError:
    """``translate`` for a status already at hand (e.g. a finished call's)."""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthError(f"the sidecar at {target} refused the token: {details}")
    if code == grpc.StatusCode.INTERNAL and details == BROKEN_STREAM_DETAILS:
        return UnreachableError(f"the connection to the sidecar at {target} broke mid-stream")
    if code == grpc.StatusCode.ABORTED:
        # The sidecar ended the session on purpose (``devstack resolve``
        # changed what sync last wrote): a new session reads it again.
        return StaleViewError(f"the sidecar at {target} ended the session: {details}")
    if code in RETRYABLE:
        return UnreachableError(f"cannot reach the sidecar at {target}: {details}")
    if code is None or code in FAILED:
        name = code.name if code is not None else "no status"
        return PeerFailedError(f"the sidecar at {target} failed ({name}): {details}")
    return PermanentError(f"the sidecar at {target} refused the session ({code.name}): {details}")


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """--to, --token-file, --authority, --tls: how every command reaches a sidecar."""
    parser.add_argument(
        "--to",
        default=os.environ.get("DEVSTACK_SIDECAR"),
        required=os.environ.get("DEVSTACK_SIDECAR") is None,
        metavar="HOST:PORT",
        help="the sidecar's gRPC address (env DEVSTACK_SIDECAR)",
    )
    parser.add_argument(
        "--token-file",
        default=os.environ.get("DEVSTACK_TOKEN_FILE"),
        help="file holding the sidecar's token (env DEVSTACK_TOKEN_FILE)",
    )
    parser.add_argument(
        "--authority",
        default=os.environ.get("DEVSTACK_AUTHORITY"),
        metavar="HOST",
        help="HTTP/2 :authority to send, when a Traefik entry point routes to the sidecar by host",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS (e.g. a websecure entry point)")
