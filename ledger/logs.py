"""Logging: structlog, console on a terminal, JSON lines otherwise.

Libraries that log through the standard `logging` module (aiokafka, the
event store's drivers) are given one handler on the root logger, which
renders their records like ours, unless the host program set up logging
itself. Their loggers are not touched. At the default level, `error`,
their records are shown only when critical: the command's own one-line
error already says what went wrong (a broker it could not reach), and
`--log-level warning` or lower shows everything they say.
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging"]


def configure_logging(level: str = "warning") -> None:
    renderer: structlog.typing.Processor
    if sys.stderr.isatty():
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    stamp: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    _route_library_logs(level, stamp, renderer)
    structlog.configure(
        processors=[*stamp, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


class _LibraryHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that configuring again replaces it instead of adding one."""


def _route_library_logs(
    level: str,
    stamp: list[structlog.typing.Processor],
    renderer: structlog.typing.Processor,
) -> None:
    root = logging.getLogger()
    others = [h for h in root.handlers if not isinstance(h, _LibraryHandler)]
    if others:
        return
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _LibraryHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *stamp],
        )
    )
    root.addHandler(handler)
    root.setLevel(logging.CRITICAL if level == "error" else level.upper())
