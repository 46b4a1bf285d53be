"""``devstack sidecar --listen ADDR --workspace DIR --token-file FILE``:
the entry point that wires the workspace, the reloader and the gRPC server,
and shuts down gracefully on SIGTERM.

``DEVSTACK_HELLO_TIMEOUT`` (seconds, default ``HELLO_TIMEOUT_SECONDS``)
sets how long a new stream may take to send its Hello; it is meant for
tests and unusual networks, so it has no option."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

from devstack.core import logging as dlog
from devstack.core.errors import ConfigError
from devstack.core.protocol import TOKEN_FILE_ENV, read_token
from devstack.sidecar import reload as reload_mod
from devstack.sidecar.server import (
    HELLO_TIMEOUT_SECONDS,
    MAX_STREAMS,
    SyncService,
    start_server,
)
from devstack.sidecar.workspace import Workspace, WriteOptions

log = dlog.get_logger("sidecar")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


EXAMPLES = """examples:
  devstack sidecar --workspace /app --token-file /etc/devstack/token/token
                                        serve /app to `devstack connect` on 0.0.0.0:7070
  devstack sidecar --workspace /app --token-file T --reload supervise \\
      --command "python /app/app.py" --reload-on "*.py" --ready-url http://127.0.0.1:8000/healthz
                                        run the app, restart it when a .py file changes, and
                                        report the reload done once it answers 200-399
  devstack sidecar --workspace /app --token-file T --reload signal --signal HUP \\
      --process-name gunicorn           signal the app's process instead

The library chart (helm/devstack-lib) renders these arguments from `devstack.sidecar`
values; you rarely run it by hand. See docs/reload.md.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--listen",
        default=_env("DEVSTACK_LISTEN", "0.0.0.0:7070"),
        help="address to serve gRPC on, HOST:PORT (env DEVSTACK_LISTEN; default 0.0.0.0:7070)",
    )
    parser.add_argument(
        "--workspace",
        default=_env("DEVSTACK_WORKSPACE"),
        required=_env("DEVSTACK_WORKSPACE") is None,
        help="the folder to sync into, shared with the app (env DEVSTACK_WORKSPACE)",
    )
    parser.add_argument(
        "--token-file",
        default=_env(TOKEN_FILE_ENV),
        required=_env(TOKEN_FILE_ENV) is None,
        help=f"file holding the session token (env {TOKEN_FILE_ENV}); the app, reload steps "
        "and Exec never see this variable",
    )
    parser.add_argument(
        "--mode",
        choices=("safe", "replica"),
        default=_env("DEVSTACK_MODE", "safe"),
        help="safe: report a conflict when the app changed a file; replica: overwrite it "
        "(env DEVSTACK_MODE; default safe)",
    )
    parser.add_argument(
        "--owner",
        default=_env("DEVSTACK_OWNER_ID"),
        metavar="UID[:GID]",
        help="chown what the sidecar writes (env DEVSTACK_OWNER_ID); needs root or CAP_CHOWN "
        "unless it is the sidecar's own uid/gid, checked at startup",
    )
    parser.add_argument(
        "--file-mode",
        default=_env("DEVSTACK_FILE_MODE"),
        metavar="OCTAL",
        help="force the mode of written files, e.g. 0664; executables keep x where r is set",
    )
    parser.add_argument(
        "--dir-mode",
        default=_env("DEVSTACK_DIR_MODE"),
        metavar="OCTAL",
        help="force the mode of created folders, e.g. 0775",
    )
    parser.add_argument(
        "--name",
        default=_env("DEVSTACK_WORKSPACE_NAME"),
        help="workspace name clients may ask for (default: the folder's name)",
    )
    parser.add_argument(
        "--max-streams",
        default=_env("DEVSTACK_MAX_STREAMS", str(MAX_STREAMS)),
        metavar="N",
        help="sessions at once that may compress through one Zstandard stream, each "
        f"holding up to 16 MiB of window; past them zlib, file by file; 0: none "
        f"(env DEVSTACK_MAX_STREAMS; default {MAX_STREAMS})",
    )
    reload_mod.add_arguments(parser)


def _octal(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    try:
        mode = int(value, 8)
    except ValueError as e:
        raise ConfigError(f"{flag} {value!r}: expected an octal mode such as 0664") from e
    if not 0 <= mode <= 0o7777:
        raise ConfigError(f"{flag} {value!r}: out of range")
    return mode


def _owner(value: str | None) -> tuple[int | None, int | None]:
    if not value:
        return None, None
    uid_s, _, gid_s = value.partition(":")
    try:
        uid = int(uid_s) if uid_s else None
        gid = int(gid_s) if gid_s else None
    except ValueError as e:
        raise ConfigError(f"--owner {value!r}: expected numeric UID[:GID]") from e
    return uid, gid


def max_streams(value: str) -> int:
    """``--max-streams``: a whole number, 0 or more."""
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise ConfigError(
            f"--max-streams {value!r}: expected a whole number of sessions, 0 or more"
        )
    return n


def hello_timeout() -> float:
    """``$DEVSTACK_HELLO_TIMEOUT`` in seconds (a positive number), else the default."""
    value = os.environ.get("DEVSTACK_HELLO_TIMEOUT", "").strip()
    if not value:
        return HELLO_TIMEOUT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(
            f"DEVSTACK_HELLO_TIMEOUT={value!r}: expected a positive number of seconds"
        )
    return seconds


def options_from_args(args: argparse.Namespace) -> WriteOptions:
    uid, gid = _owner(args.owner)
    return WriteOptions(
        uid=uid,
        gid=gid,
        file_mode=_octal(args.file_mode, "--file-mode"),
        dir_mode=_octal(args.dir_mode, "--dir-mode"),
    )


def run(args: argparse.Namespace) -> int:
    dlog.configure()
    token = read_token(Path(args.token_file))
    root = Path(args.workspace)
    if not root.is_dir():
        raise ConfigError(f"--workspace {root}: not a directory")
    options = options_from_args(args)
    reload_config = reload_mod.config_from_args(args)
    timeout = hello_timeout()
    streams = max_streams(args.max_streams)
    asyncio.run(
        serve(
            args,
            root,
            token,
            options,
            reload_config,
            hello_timeout=timeout,
            max_streams=streams,
        )
    )
    return 0


async def serve(
    args: argparse.Namespace,
    root: Path,
    token: str,
    options: WriteOptions,
    reload_config: reload_mod.ReloadConfig,
    *,
    hello_timeout: float = HELLO_TIMEOUT_SECONDS,
    max_streams: int = MAX_STREAMS,
) -> None:
    ws = Workspace(root, replica=args.mode == "replica", options=options)
    name = args.name or ws.root.name
    service = SyncService(
        ws,
        token=token,
        workspace_name=name,
        hello_timeout=hello_timeout,
        max_streams=max_streams,
    )
    reloader = reload_mod.build_reloader(
        reload_config, workspace=ws.root, on_event=service.on_reload_event
    )
    service.reloader = reloader
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server, health, port = await start_server(service, args.listen)
    log.info(
        "sidecar.listening",
        listen=args.listen,
        port=port,
        workspace=str(ws.root),
        mode=args.mode,
        reload=reload_config.strategy,
    )
    ws.start_warming()  # a seeded workspace's digests, before the first connect asks
    try:
        await reloader.start()
        await stop.wait()
        log.info("sidecar.stopping")
    finally:
        await health.enter_graceful_shutdown()
        await server.stop(grace=5)
        stuck = await service.drain()
        await reloader.close()
        if stuck:
            # Left behind (daemon threads): one may hold the workspace's lock.
            # What they acknowledged is journaled already; only the digest
            # cache goes unsaved.
            log.warning("sidecar.threads_abandoned", threads=stuck)
        else:
            ws.close()
        log.info("sidecar.stopped")
