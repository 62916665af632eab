"""Where the protocol libraries' own log lines go in a live command: a file, not the terminal.

``openleadr``, ``ocpp``, ``websockets``, ``aiohttp`` and ``apscheduler`` log every message (openleadr sets its
logger to INFO when imported) and their tracebacks; the twin's verdicts on those messages are in the archive
already. Only the CLI's live commands call this (no module configures logging on import).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PROTOCOL_LOGGERS", "protocol_log"]

PROTOCOL_LOGGERS = ("openleadr", "ocpp", "websockets", "aiohttp", "apscheduler", "twin.live.ocpp",
                    "twin.live.openadr")


@contextmanager
def protocol_log(path: Path) -> Iterator[Path]:
    """Send the protocol loggers to ``path`` (appended) for the duration; restore them afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = []
    for name in PROTOCOL_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate))
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield path
    finally:
        for logger, propagate in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate
        handler.close()
