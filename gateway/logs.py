"""structlog set-up: console or JSON lines on stderr, for the gateway and the libraries' loggers
alike, every line passed through the secret redactor (redact.py) as the last step."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import structlog

from gateway.redact import SecretRedactor

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Libraries whose lines are kept at the gateway's own level; all others (asyncio, …) from WARNING.
LIBRARY_LOGGERS_AT_GATEWAY_LEVEL = ("aiohttp",)


class _RedactingRenderer:
    """The renderer, then the redactor over the finished line: keys, values and tracebacks alike."""

    def __init__(self, renderer: structlog.types.Processor, redactor: SecretRedactor) -> None:
        self._renderer = renderer
        self._redactor = redactor

    def __call__(self, logger: Any, method_name: str, event_dict: structlog.types.EventDict) -> str:
        rendered = self._renderer(logger, method_name, event_dict)
        if isinstance(rendered, bytes):
            rendered = rendered.decode("utf-8", "replace")
        return self._redactor(str(rendered))


class _GatewayHandler(logging.StreamHandler):
    """The one root handler this module installs (and replaces when it is configured again)."""


def configure_logging(
    level: str = "info",
    fmt: str = "console",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog and the standard library's root logger; `secrets` are redacted literally."""
    numeric_level = LEVELS[level]
    output = stream if stream is not None else sys.stderr
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=output.isatty())
    final = _RedactingRenderer(renderer, SecretRedactor(secrets))
    # Tracebacks become text before rendering, so that the redactor sees them too.
    shared: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, final],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=output),
        cache_logger_on_first_use=True,
    )
    # Library lines (aiohttp's server errors, asyncio's) go through the same chain and redactor.
    handler = _GatewayHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, final],
        )
    )
    root = logging.getLogger()
    for old in [existing for existing in root.handlers if isinstance(existing, _GatewayHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric_level, logging.WARNING))
    for name in LIBRARY_LOGGERS_AT_GATEWAY_LEVEL:
        logging.getLogger(name).setLevel(numeric_level)
