"""Logging to the console and to a rotating file, at the configured level."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from .config import LoggingSettings

_FORMAT = "%(asctime)s %(levelname)-8s %(name)s{tag}: %(message)s"


def configure_logging(settings: LoggingSettings, process: str = "") -> None:
    """Replace the root logger's handlers: stderr, plus ``settings.file`` unless empty.

    ``process`` names the process on every line (``name[process]: message``), for
    the workers of one supervisor, which share a stderr.

    The file rotates at ``max_bytes`` keeping ``backup_count`` old files; its
    directory is created. Hypercorn's access log stays off (one line per
    request would dominate the file under load).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(settings.level.upper())
    # coredis logs every failed connection attempt as an error with a blank
    # traceback; the cluster link says once what is wrong and when it is back.
    logging.getLogger("coredis").setLevel(logging.CRITICAL)
    formatter = logging.Formatter(_FORMAT.format(tag=f"[{process}]" if process else ""))
    console = logging.StreamHandler()
    console.setFormatter(formatter)
    root.addHandler(console)
    if settings.file:
        path = Path(settings.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            path, maxBytes=settings.max_bytes, backupCount=settings.backup_count, encoding="utf-8"
        )
        rotating.setFormatter(formatter)
        root.addHandler(rotating)
