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
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

_DSN_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@")
# An http(s) URL's userinfo is a credential whatever its shape (user:password, or a token as user).
_URL_USERINFO = re.compile(r"(?i)(?P<scheme>https?://)(?P<info>[^/@\s]+)@")
_KV_SECRET = re.compile(r"(?i)\b(password|passwd|token|secret|apikey|api_key)\s*=\s*('[^']*'|\S+)")
_AUTH_HEADER = re.compile(r"(?i)\b(authorization\s*[:=]\s*)(\S+(?:\s+\S+)?)")


def redact(text: str) -> str:
    """Mask passwords in DSNs and URLs, credentials in http(s) URLs, ``password=…`` pairs and
    authorization headers. The one redaction function: logs, errors, reports, the ledger and
    everything the CLI prints go through it."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    text = _DSN_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = _KV_SECRET.sub(lambda m: f"{m[1]}=***", text)
    return _AUTH_HEADER.sub(lambda m: f"{m[1]}***", text)


def redact_value(value: Any) -> Any:
    """``redact`` through the strings of a JSON-like value (dicts, lists, tuples); a copy."""
    return _redact_value(value)


class RedactingStream:
    """A text stream that redacts what is written to it, then writes it to ``target()`` (looked up
    at each write: pytest and others swap ``sys.stdout``). Whatever the CLI prints passes here."""

    def __init__(self, target: Callable[[], TextIO]) -> None:
        self._lookup = target

    def _target(self) -> TextIO:
        found = self._lookup()
        # Under rich's live display sys.stderr is its proxy, which prints through the console that
        # writes here: the stream behind the proxy, or the two would call each other forever.
        proxied: TextIO = getattr(found, "rich_proxied_file", found)
        return proxied

    def write(self, text: str) -> int:
        self._target().write(redact(text))
        return len(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()

    def fileno(self) -> int:
        return self._target().fileno()

    @property
    def encoding(self) -> str:
        found = getattr(self._target(), "encoding", None)
        return found if isinstance(found, str) else "utf-8"


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
