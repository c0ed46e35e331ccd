"""Public value types: reduction ops."""

from __future__ import annotations

import enum

from ringcomm import native


class ReduceOp(enum.IntEnum):
    """How a reduction combines elements across ranks.

    SUM, PROD, MIN and MAX work on every dtype (on bool: SUM/MAX are OR, PROD/MIN are AND).
    AVG is SUM divided by the world size, for floating dtypes only. BAND, BOR and BXOR are
    bitwise and take integer and bool dtypes only.
    """

    SUM = native.SUM
    PROD = native.PROD
    MIN = native.MIN
    MAX = native.MAX
    AVG = native.AVG
    BAND = native.BAND
    BOR = native.BOR
    BXOR = native.BXOR
