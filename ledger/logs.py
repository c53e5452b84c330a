"""Logging: structlog, console on a terminal, JSON lines otherwise.

Libraries that log through the standard `logging` module (aiokafka, the
event store's drivers) are given one handler on the root logger, which
renders their records like ours, unless the host program set up logging
itself. Their loggers are not touched. At the default level, `error`,
their records are shown only when critical: the command's own one-line
error already says what went wrong (a broker it could not reach), and
`--log-level warning` or lower shows everything they say.

Every record, ours and theirs, is redacted before it is rendered: with
every built-in pattern always, and with the ledger's policy (and a
running job's) once a ledger is open (`ledger.redaction.in_force`). A
traceback is rendered as text first, so that it is redacted too.
"""

from __future__ import annotations

import logging
import sys
import traceback
from types import TracebackType
from typing import Any

import structlog

from ledger.redaction import DEFAULT, in_force

__all__ = ["configure_logging", "redact_record", "redact_uncaught"]


def redact_record(
    logger: Any, method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A structlog processor: the record with every value redacted."""
    policy = DEFAULT.merged(in_force())

    # A traceback quotes the exception's message: render it as text here.
    if event_dict.get("exc_info"):
        event_dict = structlog.processors.format_exc_info(logger, method, event_dict)
    for key, value in list(event_dict.items()):
        if key.startswith("_"):
            continue
        event_dict[key] = policy.redact(value)
    return event_dict


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
        processors=[*stamp, redact_record, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def redact_uncaught() -> None:
    """Has Python print the traceback of an exception nobody caught
    redacted, as a log record is: its message can quote job data. For a
    program's own process (the CLI), never for a host that embeds us."""

    def hook(
        kind: type[BaseException], error: BaseException, trace: TracebackType | None
    ) -> None:
        text = "".join(traceback.format_exception(kind, error, trace))
        sys.stderr.write(DEFAULT.merged(in_force()).redact_text(text))

    sys.excepthook = hook


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
                redact_record,
                renderer,
            ],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *stamp],
        )
    )
    root.addHandler(handler)
    root.setLevel(logging.CRITICAL if level == "error" else level.upper())
