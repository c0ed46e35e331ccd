"""Fixed-size text records gathered from every rank: how ranks agree on small facts inside
an operation (split's colors and addresses, RINGCOMM_DEBUG's agreement check, the presence
exchange at a timeout, the GPU path decision)."""

from __future__ import annotations

import numpy as np

from ringcomm.algorithms.context import OpContext
from ringcomm.algorithms.ring import allgather


def text_record(text: str, nbytes: int) -> np.ndarray:
    """``text`` (UTF-8) zero-padded to a fixed ``nbytes`` record, so every rank's has the
    same size on the wire.

    Raises:
        ValueError: the text does not fit.
    """
    raw = text.encode()
    if len(raw) > nbytes:
        raise ValueError(f"{len(raw)} bytes of text do not fit a {nbytes}-byte record")
    record = np.zeros(nbytes, np.uint8)
    record[: len(raw)] = np.frombuffer(raw, np.uint8)
    return record


def record_text(record: np.ndarray) -> str:
    """The text of a :func:`text_record`."""
    return bytes(record).rstrip(b"\0").decode(errors="replace")


def allgather_text(ctx: OpContext, text: str, nbytes: int) -> list[str]:
    """Every rank's ``text`` (at most ``nbytes`` in UTF-8), by rank."""
    everyone = np.empty(nbytes * ctx.size, np.uint8)
    allgather(ctx, everyone, text_record(text, nbytes))
    return [record_text(row) for row in everyone.reshape(ctx.size, nbytes)]
