"""What ranks tell each other to explain a failure: the presence exchange after a timeout,
the ``RINGCOMM_DEBUG`` agreement check before a collective, and the stall report.

Each rank describes the operation it is in as one line of text ("all_reduce(1000 x
float32, SUM)"); the checks gather those lines and name the ranks that differ or are
missing.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from ringcomm.algorithms import records
from ringcomm.algorithms.context import OpContext
from ringcomm.diagnostics.recorder import OpRecord
from ringcomm.errors import CommTimeoutError, TransportError
from ringcomm.logs import get_logger
from ringcomm.types import ReduceOp

log = get_logger(__name__)

AGREEMENT_RECORD_BYTES = 256
# After a collective times out, ranks still in it tell each other so with a message on
# this step (no algorithm uses it) and wait this long for the others': whoever is not heard
# from did not join. It must cover how much later than us the others started (and so time
# out); 0.6 s was seen to be too short under load.
PRESENCE_STEP = 0x7FFFFFF0
PRESENCE_GRACE_SECONDS = 2.0
_REDUCING = ("all_reduce", "reduce", "reduce_scatter")


def describe(
    name: str, buffers: Iterable[Any], reduce_op: int, root: int, shapes: str | None = None
) -> str:
    """One line saying which operation this rank runs: name, count x dtype per buffer (or
    ``shapes``, what every rank agrees on where buffer sizes differ by rank), reduce op,
    root (``root`` < 0: none)."""
    if shapes is None:
        shapes = ", ".join(f"{b.count} x {b.dtype_name}" for b in buffers if b is not None)
    text = f"{name}({shapes}"
    if name in _REDUCING:
        text += f", {ReduceOp(reduce_op).name}"
    if root >= 0:
        text += f", root {root}"
    return text + ")"


def by_call(calls: dict[int, str]) -> str:
    """``{rank: call}`` as "ranks [0, 2]: all_reduce(...); ranks [1]: broadcast(...)"."""
    ranks_of: dict[str, list[int]] = collections.defaultdict(list)
    for r, call in sorted(calls.items()):
        ranks_of[call].append(r)
    return "; ".join(f"ranks {ranks}: {call}" for call, ranks in ranks_of.items())


def check_agreement(ctx: OpContext, description: str) -> None:
    """RINGCOMM_DEBUG: every rank publishes what it is about to run; any difference is
    a ValueError on every rank, naming who called what."""
    mine = description[:AGREEMENT_RECORD_BYTES]
    calls = dict(enumerate(records.allgather_text(ctx, mine, AGREEMENT_RECORD_BYTES)))
    if len(set(calls.values())) > 1:
        raise ValueError(
            f"RINGCOMM_DEBUG: ranks disagree on operation #{ctx.seq}: {by_call(calls)}"
        )


def name_absent_ranks(
    ctx: OpContext, description: str, name: str, error: CommTimeoutError
) -> CommTimeoutError:
    """After a timeout: find which ranks never joined this collective (Horovod's stall
    inspector, without a coordinator) or joined another one under the same number, and
    say so in the error (``error`` itself when there is nothing to add)."""
    rank, size = ctx.rank, ctx.size
    if size == 1:
        return error
    others = [r for r in range(size) if r != rank]
    calls = {rank: description}
    try:
        record = records.text_record(description[:AGREEMENT_RECORD_BYTES], AGREEMENT_RECORD_BYTES)
        for r in others:
            ctx.send(r, PRESENCE_STEP, 0, record, copy=True)
        grace_end = time.monotonic() + PRESENCE_GRACE_SECONDS
        theirs = np.empty_like(record)
        for r in others:
            # Each peer gets a moment even after the grace: its message may be in flight
            # behind an absent peer's wait.
            ctx.deadline = max(grace_end, time.monotonic() + 0.05)
            try:
                ctx.recv_into(r, PRESENCE_STEP, 0, theirs)
            except (CommTimeoutError, TransportError):
                continue
            calls[r] = records.record_text(theirs)
    except Exception as e:  # the transport itself failed: keep the first error
        log.debug("rank %d: presence check failed: %s", rank, e)
        return error
    absent = [r for r in others if r not in calls]
    notes = []
    if absent:
        notes.append(f"Ranks {absent} did not join {name} #{ctx.seq} (ranks {sorted(calls)} did)")
    if len(set(calls.values())) > 1:
        notes.append(f"Ranks disagree on operation #{ctx.seq}: {by_call(calls)}")
    if not notes:
        return error
    return CommTimeoutError(f"{error}. " + "; ".join(notes))


def stall_report(
    rank: int, record: OpRecord | None, stall_limit: float, waiting_for: int | None, now: float
) -> str | None:
    """A warning if the running operation ``record`` has run past ``stall_limit`` seconds
    (once per operation), else None."""
    if record is None or record.warned or record.ended:
        return None
    if now - record.started < stall_limit:
        return None
    record.warned = True
    waiting = f", waiting for rank {waiting_for}" if waiting_for is not None else ""
    return (
        f"rank {rank}: {record.name} #{record.seq} ({record.nbytes} B) has run for "
        f"{now - record.started:.0f} s{waiting}; it fails at its timeout in "
        f"{max(0.0, record.deadline - now):.0f} s. Is a rank stuck, dead, or calling "
        "another operation?"
    )
