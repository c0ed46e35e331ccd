"""What an algorithm sees of the world: its rank, its peers, and tagged segment I/O."""

from __future__ import annotations

import dataclasses

import numpy as np

from ringcomm import native
from ringcomm.algorithms.schedule import segment_bounds
from ringcomm.transport.base import KIND_COLLECTIVE, Tag, Transport

# Tag(...) runs a Python-level __new__ (0.4 us); tuple.__new__ builds the same in half that,
# which the small-message path notices (a few tags per operation).
_tag = tuple.__new__


@dataclasses.dataclass(slots=True)
class OpContext:
    """One running operation: the transport, its sequence number, deadline and reduction.

    Every message it sends or receives is tagged ``(kind, seq, step, segment)``.
    """

    transport: Transport
    seq: int
    deadline: float
    segment_bytes: int
    op: int = native.SUM
    bfloat16: bool = False
    kind: int = KIND_COLLECTIVE

    @property
    def rank(self) -> int:
        return self.transport.rank

    @property
    def size(self) -> int:
        return self.transport.size

    def segments(self, start: int, stop: int, itemsize: int) -> list[tuple[int, int]]:
        """Segment bounds of elements ``[start, stop)`` (see :func:`segment_bounds`)."""
        if (stop - start) * itemsize <= self.segment_bytes:  # the usual small message
            return [(start, stop)]
        return segment_bounds(start, stop, max(1, self.segment_bytes // itemsize))

    def send(
        self,
        dst: int,
        step: int,
        segment: int,
        data: np.ndarray,
        *,
        copy: bool = False,
        one_way: bool = False,
    ) -> None:
        """Send ``data``; unless ``copy``, it must not change before :meth:`flush`.
        ``one_way``: see :meth:`Transport.send`."""
        self.transport.send(
            dst, _tag(Tag, (self.kind, self.seq, step, segment)), data, copy=copy, one_way=one_way
        )

    def recv(self, src: int, step: int, segment: int, like: np.ndarray) -> np.ndarray:
        """Receive the payload matching ``like`` (dtype, size) as a read-only array."""
        self.transport.waiting_for = src
        payload = self.transport.recv(
            src, _tag(Tag, (self.kind, self.seq, step, segment)), like.nbytes, self.deadline
        )
        return np.frombuffer(payload, dtype=like.dtype)

    def recv_into(self, src: int, step: int, segment: int, out: np.ndarray) -> None:
        """Receive into ``out`` (straight into it where the transport can)."""
        self.transport.waiting_for = src
        self.transport.recv_into(
            src, _tag(Tag, (self.kind, self.seq, step, segment)), out, self.deadline
        )

    def recv_reduce(self, src: int, step: int, segment: int, out: np.ndarray) -> None:
        """Receive and reduce into ``out`` straight out of the received frame (or slots)."""
        self.transport.waiting_for = src
        self.transport.recv_reduce(
            src, _tag(Tag, (self.kind, self.seq, step, segment)), out, self.reduce, self.deadline
        )

    def reduce(self, out: np.ndarray, other: np.ndarray) -> None:
        """``out = out (op) other`` with this operation's reduction."""
        native.reduce_into(out, other, self.op, self.bfloat16)

    def part(self, seq: int, kind: int, op: int, bfloat16: bool) -> OpContext:
        """The context of one part of a grouped operation: this one's transport, deadline
        and timeline, with the part's own tag sequence, kind and reduction."""
        part = dataclasses.replace(self, seq=seq, kind=kind, op=op, bfloat16=bfloat16)
        timeline = getattr(self, "timeline", None)
        if timeline is not None:  # a traced context's (set after it was made)
            part.timeline = timeline  # type: ignore[attr-defined]
        return part

    def finish_average(self, data: np.ndarray) -> None:
        """Divide by the world size if the op is AVG (its last step)."""
        if self.op == native.AVG:
            native.divide(data, self.size, self.bfloat16)

    def flush(self) -> None:
        """Wait until no zero-copy send of this operation still reads user memory."""
        self.transport.flush(self.deadline)


@dataclasses.dataclass(slots=True)
class OrderedContext(OpContext):
    """An :class:`OpContext` in which the algorithm's ranks are positions in ``order``: its
    rank i is the transport's rank ``order[i]``. A flat algorithm run on it follows that
    order (the ranks host by host) instead of rank order."""

    order: tuple[int, ...] = ()
    position: int = 0

    @classmethod
    def of(cls, ctx: OpContext, order: tuple[int, ...]) -> OrderedContext:
        """``ctx`` seen through ``order``."""
        return cls(
            ctx.transport, ctx.seq, ctx.deadline, ctx.segment_bytes, ctx.op, ctx.bfloat16,
            ctx.kind, order, order.index(ctx.transport.rank),
        )  # fmt: skip

    @property
    def rank(self) -> int:
        return self.position

    # (explicit base calls: zero-argument super() does not work in a slots dataclass)
    def send(
        self,
        dst: int,
        step: int,
        segment: int,
        data: np.ndarray,
        *,
        copy: bool = False,
        one_way: bool = False,
    ) -> None:
        OpContext.send(self, self.order[dst], step, segment, data, copy=copy, one_way=one_way)

    def recv(self, src: int, step: int, segment: int, like: np.ndarray) -> np.ndarray:
        return OpContext.recv(self, self.order[src], step, segment, like)

    def recv_into(self, src: int, step: int, segment: int, out: np.ndarray) -> None:
        OpContext.recv_into(self, self.order[src], step, segment, out)

    def recv_reduce(self, src: int, step: int, segment: int, out: np.ndarray) -> None:
        OpContext.recv_reduce(self, self.order[src], step, segment, out)
