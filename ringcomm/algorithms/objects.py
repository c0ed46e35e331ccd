"""Object collectives: any picklable Python object, as torch's ``all_gather_object`` and
``broadcast_object_list`` move them, without a size-exchange round of their own.

An object is pickled with protocol 5: the pickle stream, and every contiguous buffer inside
it (numpy arrays, torch CPU tensors, ``PickleBuffer``) out of band, so an array inside an
object is sent straight from its memory and received into one allocation, never copied
into the stream. On the wire, per object: step 0 the number of pieces, step 1 their sizes,
step 2 + j piece j, segmented like every other message.

Unpickling runs code chosen by the sender: a peer is trusted exactly as far as the job
secret admits it (docs/security.md). Without ``RINGCOMM_SECRET``, anything that can reach
the sockets can make every rank run code of its choice through these calls.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

from ringcomm.algorithms.context import OpContext
from ringcomm.algorithms.linear import recv_all, send_all

_COUNT, _SIZES, _PIECES = 0, 1, 2  # steps


def dumps(obj: Any) -> list[np.ndarray]:
    """``obj`` as byte arrays: the pickle stream first, then its out-of-band buffers."""
    buffers: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    pieces = [np.frombuffer(stream, np.uint8)]
    for b in buffers:
        try:
            raw = b.raw()  # the buffer's own memory, no copy
        except BufferError:  # not contiguous: pickle it in band after all
            raw = memoryview(bytes(b))
        pieces.append(np.frombuffer(raw, np.uint8))
    return pieces


def loads(pieces: list[np.ndarray]) -> Any:
    """The object :func:`dumps` made ``pieces`` of (its buffers become the arrays' memory)."""
    return pickle.loads(pieces[0], buffers=pieces[1:])


def _send_object(ctx: OpContext, dst: int, pieces: list[np.ndarray]) -> None:
    sizes = np.array([p.nbytes for p in pieces], np.int64)
    ctx.send(dst, _COUNT, 0, np.array([len(pieces)], np.int64), copy=True)
    ctx.send(dst, _SIZES, 0, sizes, copy=True)
    for j, piece in enumerate(pieces):
        send_all(ctx, dst, _PIECES + j, piece)


def _recv_object(ctx: OpContext, src: int) -> list[np.ndarray]:
    count = int(ctx.recv(src, _COUNT, 0, np.empty(1, np.int64))[0])
    sizes = ctx.recv(src, _SIZES, 0, np.empty(count, np.int64)).copy()
    pieces = []
    for j, size in enumerate(sizes.tolist()):
        piece = np.empty(size, np.uint8)
        recv_all(ctx, src, _PIECES + j, piece)
        pieces.append(piece)
    return pieces


def all_gather(ctx: OpContext, obj: Any) -> list[Any]:
    """Every rank's ``obj``, by rank: each rank sends its pieces to every other (pairwise,
    as all_to_all: at step k to r+k, from r-k)."""
    n, r = ctx.size, ctx.rank
    mine = dumps(obj)
    out: list[Any] = [None] * n
    for k in range(1, n):
        _send_object(ctx, (r + k) % n, mine)
        src = (r - k) % n
        out[src] = loads(_recv_object(ctx, src))
    ctx.flush()
    out[r] = loads([p.copy() for p in mine])  # a copy, as every other rank gets
    return out


def broadcast(ctx: OpContext, obj: Any, root: int) -> Any:
    """``root``'s ``obj`` on every rank (the root sends it to each in turn)."""
    if ctx.rank == root:
        pieces = dumps(obj)
        for dst in range(ctx.size):
            if dst != root:
                _send_object(ctx, dst, pieces)
        ctx.flush()
        return obj
    return loads(_recv_object(ctx, root))


def gather(ctx: OpContext, obj: Any, root: int) -> list[Any] | None:
    """Every rank's ``obj`` on ``root``, by rank; None elsewhere."""
    if ctx.rank != root:
        pieces = dumps(obj)  # (alive until the flush: sends may read them in place)
        _send_object(ctx, root, pieces)
        ctx.flush()
        return None
    out: list[Any] = [None] * ctx.size
    for src in range(ctx.size):
        out[src] = obj if src == root else loads(_recv_object(ctx, src))
    return out


def scatter(ctx: OpContext, objs: list[Any] | None, root: int) -> Any:
    """Rank r gets ``objs[r]`` from ``root``."""
    if ctx.rank != root:
        return loads(_recv_object(ctx, root))
    assert objs is not None
    sent = []  # alive until the flush: sends may read them in place
    for dst in range(ctx.size):
        if dst != root:
            sent.append(dumps(objs[dst]))
            _send_object(ctx, dst, sent[-1])
    ctx.flush()
    return objs[root]
