"""structlog set-up: pretty on a TTY, JSON lines otherwise, secrets redacted.

Event names are past-tense facts with fixed keys (``step_applied``,
``table_copied``, ``flag_flipped``, ``tenant_locked``) carrying ``run_id``,
``tenant``, ``wave``, ``phase`` and ``step``. Every event passes through
:func:`redact_processor`, so a DSN with a password or a token that slips into
an event value is masked before it is written anywhere.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

_DSN_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@")
_KV_SECRET = re.compile(r"(?i)\b(password|passwd|token|secret|apikey|api_key)\s*=\s*('[^']*'|\S+)")
_AUTH_HEADER = re.compile(r"(?i)\b(authorization\s*[:=]\s*)(\S+(?:\s+\S+)?)")


def redact(text: str) -> str:
    """Mask passwords in DSNs, ``password=…`` pairs and authorization headers."""
    text = _DSN_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = _KV_SECRET.sub(lambda m: f"{m[1]}=***", text)
    return _AUTH_HEADER.sub(lambda m: f"{m[1]}***", text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    return value


def redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: redact every string value of the event."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _redact_value(value)
    return event_dict


class _CurrentStderr:
    """Whatever sys.stderr is at write time (pytest swaps it; a bound file would go stale)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(*, level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Configure structlog once per process (the CLI calls it; tests use capture_logs)."""
    import structlog  # 0.2 s to import (asyncio): not for 'migrate --help' or redact()

    out = stream or sys.stderr
    as_json = (not out.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=True)
    )
    # psycopg says "error ignored …" on stderr while a lost connection is cleaned up: noise beside
    # our own line for the fault (the retry line, the step's error); shown with --log-level debug.
    # The Unleash SDK logs each failed fetch as an ERROR of its own; the step's error says it once.
    debug = level.upper() == "DEBUG"
    logging.getLogger("psycopg").setLevel(logging.DEBUG if debug else logging.ERROR)
    logging.getLogger("UnleashClient").setLevel(logging.DEBUG if debug else logging.CRITICAL)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_processor,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=stream or _CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def get_logger(**initial: Any) -> Any:
    """A bound logger with the given fixed keys."""
    import structlog

    return structlog.get_logger("migrate").bind(**initial)
