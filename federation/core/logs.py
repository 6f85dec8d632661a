"""Logging set-up for every fedkafka command: structured logs on stderr, never stdout.

Commands print their results (tables, ``--json``) on stdout; logs go to stderr so that
output stays machine-readable. Long-running services log at INFO; one-shot commands at
WARNING unless ``FEDKAFKA_LOG_LEVEL`` says otherwise.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure(default_level: str = "WARNING") -> None:
    level_name = os.environ.get("FEDKAFKA_LOG_LEVEL", default_level).upper()
    level = logging.getLevelName(level_name)
    if not isinstance(level, int):
        level = logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kazoo.client").setLevel(max(level, logging.WARNING))
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
