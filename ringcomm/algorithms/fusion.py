"""Tensor fusion for grouped operations: all_reduce buffers issued in one ``group()`` are
packed into fusion buffers and reduced as one operation each (Horovod's tensor fusion).

Buffers smaller than the threshold (``RINGCOMM_FUSION_BYTES``) are packed, per dtype and
reduction, in issue order, into fusion buffers of at most the threshold; a buffer of the
threshold or more is reduced on its own, in place, with no copy. Every rank issues the same
collectives in a group, so every rank makes the same plan.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np

from ringcomm.algorithms.context import OpContext


def plan(entries: Sequence[tuple[Hashable, int] | None], threshold: int) -> list[list[int]]:
    """Which entries run together: ``entries[i]`` is ``(key, nbytes)`` for a fusible
    all_reduce (same key: may share a fusion buffer), None for anything else. Returns units
    of entry indices in the order of each unit's first entry; every entry is in one unit."""
    units: list[list[int]] = []
    open_unit: dict[Hashable, tuple[list[int], int]] = {}  # key -> (unit, bytes in it)
    for i, entry in enumerate(entries):
        if entry is None or entry[1] >= threshold:
            units.append([i])
            continue
        key, nbytes = entry
        unit, used = open_unit.get(key, (None, 0))
        if unit is None or used + nbytes > threshold:
            unit, used = [], 0
            units.append(unit)
        unit.append(i)
        open_unit[key] = (unit, used + nbytes)
    return units


def allreduce(
    ctx: OpContext,
    arrays: list[np.ndarray],
    run: Callable[[OpContext, np.ndarray], None],
    scratch: np.ndarray,
) -> None:
    """All-reduce ``arrays`` (one dtype) as one: pack them into the fusion buffer (the
    front of ``scratch``, bytes, reused from group to group: a fresh one would page-fault
    its way in every time), reduce it with ``run``, unpack."""
    count = sum(a.size for a in arrays)
    fused = scratch[: count * arrays[0].itemsize].view(arrays[0].dtype)
    np.concatenate(arrays, out=fused)
    run(ctx, fused)
    start = 0
    for a in arrays:
        np.copyto(a, fused[start : start + a.size])
        start += a.size
