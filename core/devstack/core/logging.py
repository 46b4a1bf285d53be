"""structlog configuration: JSON lines when stderr is not a terminal,
readable key=value output on a terminal; ``$DEVSTACK_LOG_FORMAT``
(``json`` or ``console``) overrides the guess.

Events have stable names (``sync.batch_applied``) and bound context
(``session``, ``path``, ``owner``). Values whose key looks secret are masked
so a token never reaches a log, and every string value is bounded (see
``clip``): a client chooses many of them (its id, paths, patterns).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

from devstack.core.errors import ConfigError


def _import_structlog_without_rich() -> None:
    """Import structlog with ``rich`` hidden from it, unless rich is loaded
    already. structlog imports rich (~40 ms) whenever it is installed (the
    dev venv has it, for import-linter), only to offer rich tracebacks and
    locals; :func:`configure`'s chain never uses them: ``format_exc_info``
    turns an exception into text before the renderer sees it. So logging
    costs ``devstack connect`` nothing extra, and output is the same with
    or without rich installed. Afterwards rich imports as usual."""
    hide = "rich" not in sys.modules
    if hide:
        sys.modules["rich"] = None  # type: ignore[assignment]  # so `import rich` fails
    try:
        import structlog  # noqa: F401
    finally:
        if hide and sys.modules.get("rich", "") is None:
            del sys.modules["rich"]


_import_structlog_without_rich()
import structlog  # noqa: E402 (imported above, with rich hidden)

LOG_FORMATS = ("json", "console")
_SECRET_KEYS = ("token", "secret", "password", "authorization", "credential", "key_id")
#: Characters kept of a string a client chose, in a log line or in a reply.
CLIP_CHARS = 300
#: A formatted traceback keeps more: its frames are ours, its end says what failed.
_TRACEBACK_CHARS = 8000


def clip(text: str, limit: int = CLIP_CHARS) -> str:
    """``text`` cut to about ``limit`` characters: its start and its end
    (where a message says what went wrong) around a count of what was left
    out, e.g. ``"abc…(+999,994 chars)…xyz"``. The one bound for strings a
    client chose (a megabyte ``client_id``, a long path) wherever the
    sidecar logs them or answers with them."""
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]}…(+{len(text) - 2 * keep:,} chars)…{text[len(text) - keep :]}"


def _clip_values(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = clip(value, _TRACEBACK_CHARS if key == "exception" else CLIP_CHARS)
    return event


def _mask_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        lowered = key.lower()
        if any(s in lowered for s in _SECRET_KEYS) and key != "event":
            event[key] = "***"
    return event


def json_wanted(env: Mapping[str, str] | None = None, *, tty: bool | None = None) -> bool:
    """Whether logs are JSON lines: ``$DEVSTACK_LOG_FORMAT`` (``json`` or
    ``console``) if set, else JSON unless stderr is a terminal."""
    env = os.environ if env is None else env
    value = env.get("DEVSTACK_LOG_FORMAT", "").strip().lower()
    if value:
        if value not in LOG_FORMATS:
            raise ConfigError(
                f"DEVSTACK_LOG_FORMAT={env['DEVSTACK_LOG_FORMAT']!r}: use json or console"
            )
        return value == "json"
    return not (sys.stderr.isatty() if tty is None else tty)


def configure(*, json: bool | None = None, level: str | None = None) -> None:
    """Configure structlog and the stdlib root logger once per process.

    ``json`` defaults to :func:`json_wanted` (``$DEVSTACK_LOG_FORMAT``, else
    "stderr is not a TTY"); ``level`` defaults to ``$DEVSTACK_LOG_LEVEL`` or
    ``info``. A bad ``$DEVSTACK_LOG_FORMAT`` is a :class:`ConfigError`.
    """
    if json is None:
        json = json_wanted()
    level_name = (level or os.environ.get("DEVSTACK_LOG_LEVEL") or "info").upper()
    numeric = logging.getLevelName(level_name)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_secrets,
            structlog.processors.format_exc_info,
            _clip_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)


def get_logger(name: str) -> Any:
    """A lazy structlog logger bound to ``component=name``: it picks up the
    configuration in force when it first logs, not when it was created."""
    return structlog.get_logger(component=name)
