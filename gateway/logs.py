"""structlog setup: JSON lines when stdout is not a terminal, readable lines when it is.

Log events name objects by reference or id. Reported URLs, reporter addresses and peer IPs
are never passed to a logger, so there is nothing to scrub here.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def exception_type_only(
    logger: object, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Keep an exception's type, never its message or traceback: either may quote the data
    being processed (a URL, an address), from our code or from a library's."""
    exc_info = event.pop("exc_info", None)
    if exc_info:
        error = exc_info[1] if isinstance(exc_info, tuple) else sys.exc_info()[1]
        if isinstance(error, BaseException):
            event.setdefault("error_type", type(error).__name__)
    return event


def configure(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """Configure structlog (and stdlib logging, for libraries) for this process."""
    stream = stream or sys.stdout
    json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        exception_type_only,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the stdlib (asyncio, SQLAlchemy): the same lines on the same
    # stream, warnings and up only, and their exception text without a traceback dump.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS[level], logging.WARNING))
