"""The ``ringcomm`` logger: every record of it and its children carries this process's rank
as ``record.rank`` (use ``%(rank)s`` in a format); ``RINGCOMM_LOG_LEVEL``, applied by ``init``,
turns on a stderr handler that prints it.

A library does not configure logging for its application, so by default the records go
only to handlers the application sets up (and ringcomm's own NullHandler).
"""

from __future__ import annotations

import logging

ROOT = "ringcomm"
FORMAT = "ringcomm[rank %(rank)s] %(levelname)s %(name)s: %(message)s"

_rank = "-"  # until init() knows it


class _RankFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = _rank
        return True


_FILTER = _RankFilter()


def get_logger(name: str) -> logging.Logger:
    """The logger of ringcomm module ``name``, its records tagged with the rank."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def set_rank(rank: int) -> None:
    """Tag this process's records with ``rank`` from now on (called by ``init``)."""
    global _rank
    _rank = str(rank)


def process_rank() -> str:
    """The rank this process's records carry (its world rank once ``init`` ran)."""
    return _rank


_stderr: logging.Handler | None = None  # the handler RINGCOMM_LOG_LEVEL installs


def configure(level: str | None) -> None:
    """With ``level`` (``RINGCOMM_LOG_LEVEL``, applied by ``init``), print ringcomm's
    records to stderr at that level with the rank in every line; a later ``init`` with
    another level changes it, one without leaves it as it is."""
    global _stderr
    if not level:
        return
    logger = get_logger(ROOT)
    if _stderr is None:
        _stderr = logging.StreamHandler()
        _stderr.setFormatter(logging.Formatter(FORMAT))
        _stderr.addFilter(_FILTER)  # records of child loggers pass here too
        logger.addHandler(_stderr)
    logger.setLevel(level.upper())


# A library does not configure logging for its application: without a handler of the
# application's, ringcomm's records go nowhere (not to logging's last-resort stderr).
get_logger(ROOT).addHandler(logging.NullHandler())
