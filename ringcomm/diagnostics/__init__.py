"""Diagnostics: what a rank tells you about itself, and what ranks tell each other when
something goes wrong.

- :mod:`~ringcomm.diagnostics.recorder`: the flight recorder, the stall watchdog and the
  timeline (each rank on its own).
- :mod:`~ringcomm.diagnostics.protocol`: the presence exchange at a timeout, the
  ``RINGCOMM_DEBUG`` agreement check and the stall report (between ranks).
"""

from __future__ import annotations

from ringcomm.diagnostics.recorder import (
    FlightRecorder,
    OpRecord,
    timeline,
    traced,
    unwatch,
    watch,
)

__all__ = ["FlightRecorder", "OpRecord", "timeline", "traced", "unwatch", "watch"]
