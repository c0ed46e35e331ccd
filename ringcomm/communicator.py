"""The communicator: validation, issue order, and the progress thread.

Every operation is checked in the caller's thread (so bad input raises before anything is
sent), numbered, and queued. One progress thread per communicator runs the queue in issue
order; ``async_op=True`` returns a :class:`~ringcomm.Work` at once, otherwise the caller
waits. A blocking call issued while nothing is queued or running skips the queue and runs
in the caller's thread (same order, two thread hand-offs fewer). Sub-communicators have
their own thread, so their operations run concurrently.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import functools
import hashlib
import json
import operator
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ringcomm import diagnostics, hosts, logs, native
from ringcomm.algorithms import (
    bruck,
    choice,
    compressed,
    direct,
    fusion,
    hierarchical,
    linear,
    objects,
    rabenseifner,
    records,
    recursive_doubling,
    ring,
    schedule,
    star,
    tree,
    tuning,
)
from ringcomm.algorithms.context import OpContext, OrderedContext
from ringcomm.buffers import Buffer, as_buffer, plain_array
from ringcomm.config import Config
from ringcomm.diagnostics import OpRecord, protocol
from ringcomm.diagnostics.stats import Stats, print_table
from ringcomm.errors import CommClosedError, CommTimeoutError, RingcommError, TransportError
from ringcomm.gpu import DeviceBuffer
from ringcomm.gpu.engine import DeviceEngine, NcclBody
from ringcomm.logs import get_logger
from ringcomm.topology import Topology
from ringcomm.transport.base import KIND_COLLECTIVE, KIND_P2P, EndpointFactory, Transport
from ringcomm.types import ReduceOp
from ringcomm.work import Work

if TYPE_CHECKING:
    from ringcomm.transport.shm.board import Board

log = get_logger(__name__)

_ALLREDUCE = {
    "ring": ring.allreduce,
    "recursive_doubling": recursive_doubling.allreduce,
    "rabenseifner": rabenseifner.allreduce,
    "star": star.allreduce,
}  # (and "hierarchical", which runs over sub-communicators: see all_reduce)
_BROADCAST = {"binomial": tree.broadcast_binomial, "chain": tree.broadcast_chain}
_ALLGATHER = {"ring": ring.allgather, "bruck": bruck.allgather}
_REDUCE_SCATTER = {"ring": ring.reduce_scatter, "recursive_halving": rabenseifner.reduce_scatter}
_SPLIT_RECORD_BYTES = 512
_CHOSEN_LIMIT = 256  # algorithm choices remembered per communicator (see _chosen)
_HOST_RECORD_BYTES = 320  # a hostname (at most 255 bytes), "/" and a boot id
# OpContext methods the timeline records as steps.
_TRACED_STEPS = ("send", "recv", "recv_into", "recv_reduce", "reduce", "flush")

# After close() or abort() failed what was pending, the progress thread ends this fast.
_ABORTED_JOIN_SECONDS = 5.0
# With RINGCOMM_STATS=1, close() exchanges the ranks' arrival times for the straggler column
# and waits this long at most (less if the close timeout is shorter) for the other ranks.
_STRAGGLER_EXCHANGE_SECONDS = 10.0

_live: weakref.WeakSet[Communicator] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for comm in list(_live):
        comm.close()


class _Op(NamedTuple):
    name: str
    seq: int
    kind: int
    body: Callable[[OpContext], Any]
    timeout: float | None
    reduce_op: int
    bfloat16: bool
    future: concurrent.futures.Future[Any] | None  # None: run inline by the caller
    buffers: tuple[Any, ...]  # Buffer / DeviceBuffer / None, for the recorder and debug checks
    root: int  # -1 where the operation has none
    shapes: str | None  # what every rank agrees on, where buffer sizes differ by rank


def _ran_as_piece(ctx: OpContext) -> None:
    """The body of an operation that ran as one native piece (Communicator._run_piece): it
    is only ever described, never run."""
    raise AssertionError("an operation run as a native piece ran its body")


def _group_chooses(ctx: OpContext) -> None:
    """The body of an all_reduce recorded in a group: the group gives it its own."""
    raise AssertionError("an all_reduce recorded in a group ran without the group's body")


class _Part(NamedTuple):
    """An operation issued inside a :meth:`Communicator.group`, waiting for its end."""

    name: str
    body: Callable[[OpContext], Any]
    buffers: tuple[Any, ...]
    timeout: float | None
    reduce_op: int
    bfloat16: bool
    p2p: bool
    root: int
    shapes: str | None
    fuse: Buffer | None


class Group:
    """What :meth:`Communicator.group` yields: once its block ends, ``work`` is the
    group's :class:`Work` (with ``async_op=True``; None otherwise)."""

    def __init__(self) -> None:
        self.ops: list[_Part] = []
        # Settled with the group; the Work of every async call inside the group follows it.
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.future.set_running_or_notify_cancel()
        self.work: Work | None = None


def _settle(target: concurrent.futures.Future[Any], source: concurrent.futures.Future[Any]) -> None:
    """Settle ``target`` as ``source`` was settled."""
    error = source.exception()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


def _nbytes(buffers: tuple[Any, ...]) -> int:
    n = 0
    for b in buffers:  # a loop: sum() over a generator costs more per operation
        if b is not None:
            n += b.nbytes
    return n


def _describe(item: _Op) -> str:
    """What this rank thinks operation ``item`` is (for the diagnosis protocol)."""
    return protocol.describe(item.name, item.buffers, item.reduce_op, item.root, item.shapes)


_SUM, _AVG = ReduceOp.SUM, ReduceOp.AVG
# (the quick path's clocks and thread check as module names: a global and an attribute
# lookup less each, on a path of ~1.5 us a call)
_monotonic, _get_ident = time.monotonic, threading.get_ident


def _reduce_op(op: Any, buf: Buffer, name: str) -> ReduceOp:
    if op is _SUM:  # the usual call: every dtype takes it
        return op
    try:
        rop = op if type(op) is ReduceOp else ReduceOp(op)
    except ValueError:
        raise TypeError(f"{name}: op must be a ringcomm.ReduceOp, got {op!r}") from None
    if rop == ReduceOp.AVG and not buf.is_floating:
        raise TypeError(f"{name} does not support AVG on {buf.dtype_name}; use SUM and divide")
    if rop in (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR) and not buf.is_integral:
        raise TypeError(f"{name} does not support {rop.name} on {buf.dtype_name} (integers only)")
    return rop


AnyBuffer = Buffer | DeviceBuffer


def _same_dtype(output: AnyBuffer, input: AnyBuffer, name: str) -> None:
    if type(output) is not type(input):
        raise TypeError(f"{name}: output and input must both be on the host or both on a GPU")
    if output.dtype_name != input.dtype_name:
        raise TypeError(f"{name}: output is {output.dtype_name} but input is {input.dtype_name}")


def _no_overlap(output: AnyBuffer, input: AnyBuffer, name: str) -> None:
    # Both are flat and contiguous (and in one address space, _same_dtype checked it).
    if output.addr < input.addr + input.nbytes and input.addr < output.addr + output.nbytes:
        raise ValueError(f"{name}: output and input overlap; pass separate buffers")


def _intake_pair(
    name: str, output: Any, input: Any, size: int, big: str, *, allow_in_place: int | None = None
) -> tuple[AnyBuffer, AnyBuffer]:
    """Take ``output`` and ``input`` where the ``big`` one holds ``size`` times the other's
    elements; check dtypes, counts and overlap (``allow_in_place``: the small one may be
    that slot of the big one)."""
    o = as_buffer(output, name, writable=True, read=False, role="output")
    i = as_buffer(input, name, writable=False, role="input")
    large, small, other = (o, i, "input") if big == "output" else (i, o, "output")
    count = small.count
    if large.count != size * count:
        raise ValueError(
            f"{name}: {big} holds {large.count} elements, expected size * {other} = "
            f"{size} * {count}"
        )
    if (
        type(o) is Buffer
        and type(i) is Buffer
        and o.dtype_name == i.dtype_name
        and not np.may_share_memory(o.array, i.array)
    ):
        return o, i  # the usual call: apart, one dtype (what _check_pair checks first)
    _check_pair(name, o, i, big, None if allow_in_place is None else allow_in_place * count)
    return o, i


def _intake_counts(
    name: str, output: Any, input: Any, counts: list[int], rank: int, big: str
) -> tuple[AnyBuffer, AnyBuffer]:
    """Take ``output`` and ``input`` of a v-collective: the ``big`` one holds ``sum(counts)``
    elements, the other ``counts[rank]``, and may be that piece of the big one (in place)."""
    o = as_buffer(output, name, writable=True, read=False, role="output")
    i = as_buffer(input, name, writable=False, role="input")
    large, small, other = (o, i, "input") if big == "output" else (i, o, "output")
    if large.count != sum(counts) or small.count != counts[rank]:
        raise ValueError(
            f"{name}: rank {rank}'s {big} holds {large.count} elements and its {other} "
            f"{small.count}; counts {counts} need sum(counts) = {sum(counts)} and "
            f"counts[{rank}] = {counts[rank]}"
        )
    _check_pair(name, o, i, big, sum(counts[:rank]))
    return o, i


def _check_pair(name: str, o: AnyBuffer, i: AnyBuffer, big: str, in_place_at: int | None) -> None:
    """Same dtype and place; no overlap, except the small buffer being exactly the big one's
    elements from ``in_place_at`` on (None: never in place)."""
    _same_dtype(o, i, name)
    if type(o) is Buffer and not np.may_share_memory(o.array, i.array):
        return  # their bounds are apart (reading an address costs ~1 us)
    large, small = (o, i) if big == "output" else (i, o)
    if in_place_at is not None and small.count > 0:
        if type(o) is Buffer:
            if _in_slot(large.array, small.array, in_place_at):
                return
        elif large.addr + in_place_at * (small.nbytes // small.count) == small.addr:
            return
    _no_overlap(o, i, name)


def _in_slot(large: np.ndarray, small: np.ndarray, at: int) -> bool:
    """Whether ``small`` is ``large``'s elements from ``at`` on (one dtype, both flat): an
    in-place all_gather's input or reduce_scatter's output (0.2 us, against 1.8 us for the
    two addresses from numpy)."""
    return native.byte_offset(large, small) == at * small.itemsize  # type: ignore[no-any-return]


def _counts(counts: Any, size: int, name: str, what: str = "counts") -> list[int]:
    """``counts`` as ``size`` non-negative ints (any sequence of integers: a list, a numpy
    or torch integer array)."""
    try:
        values = [operator.index(c) for c in counts]
    except TypeError:
        raise TypeError(f"{name}: {what} must be a sequence of integers, got {counts!r}") from None
    if len(values) != size or any(c < 0 for c in values):
        raise ValueError(
            f"{name}: {what} must hold {size} non-negative counts, one per rank, got {values}"
        )
    return values


def _alone(ctx: OpContext, data: np.ndarray) -> None:
    """all_reduce of a world of one: nothing to do."""


def _check_compression(b: AnyBuffer, rop: ReduceOp, compression: str) -> None:
    """Refuse what all_reduce(compression=...) cannot do (see Communicator.all_reduce)."""
    if compression not in compressed.COMPRESSIONS:
        raise ValueError(
            f"all_reduce: compression must be one of {compressed.COMPRESSIONS} or None, "
            f"got {compression!r}"
        )
    if type(b) is not Buffer or b.array.dtype != np.float32 or b.bfloat16:
        raise ValueError(
            f"all_reduce: compression={compression!r} takes a float32 buffer in host "
            f"memory, got {'a GPU buffer' if type(b) is not Buffer else b.dtype_name}"
        )
    if rop not in (ReduceOp.SUM, ReduceOp.AVG):
        raise ValueError(f"all_reduce: compression sums or averages, not {rop.name}")


def _contribution_factor(rop: ReduceOp, size: int) -> float:
    """What a compressed all_reduce scales each rank's data by before rounding it: AVG
    divides first, so 16-bit partial sums stay in range."""
    return 1.0 / size if rop == ReduceOp.AVG else 1.0


def _read_in_place(
    plain: Callable[[OpContext, np.ndarray], None],
    mapped: tuple[int, int],
    compression: str | None,
    rop: ReduceOp,
    size: int,
) -> Callable[[OpContext, np.ndarray], None]:
    """The all_reduce that reads the peers' buffers where they lie (``mapped``: this
    rank's fd and offset), ``plain`` where they cannot."""
    fd, offset = mapped
    rounded = None
    if compression is not None:
        rounded = (compression == "bfloat16", _contribution_factor(rop, size))

    def run(ctx: OpContext, a: np.ndarray) -> None:
        direct.allreduce_mapped(ctx, a, fd, offset, plain, rounded)

    return run


def _on_host(buffers: tuple[AnyBuffer, ...], reduces: bool) -> bool:
    """Whether the hierarchical algorithms can carry ``buffers``: host buffers, and not
    bfloat16 where the operation reduces (the sub-communicators would see integers)."""
    return all(type(b) is Buffer and not (reduces and b.bfloat16) for b in buffers)


class Communicator:
    """A group of ranks that run collectives together. Made by :func:`ringcomm.init` or
    :meth:`split`; a context manager that closes itself.

    Attributes:
        rank: this process's rank in the group, 0 .. size-1.
        size: the number of ranks.
    """

    def __init__(
        self,
        transport: Transport,
        config: Config,
        endpoints: EndpointFactory,
        topology: Topology | None = None,
    ):
        self._transport = transport
        self._config = config
        self._endpoints = endpoints
        self.rank = transport.rank
        self.size = transport.size
        self._topology = topology if topology is not None else self._exchange_hosts()
        self._flat = self._flat_order()  # the order of flat algorithms; None: rank order
        # Every rank on this host over shared memory: collectives may run on the board
        # (ringcomm.algorithms.direct).
        self._board = bool(getattr(transport, "board_possible", False))
        # What chooses algorithms: the settings, with the tune file's measured choices
        # where the user forced none.
        self._choosing = tuning.apply(config, transport.name, self.size)
        self._choices: dict[tuple[Any, ...], Any] = {}  # see _chosen
        # The quick path's pieces: (board, piece) under a short key (see _choose_piece).
        self._quick: dict[tuple[Any, ...], tuple[Board, tuple[int, int]]] = {}
        self._local: Communicator | None = None  # split_local(), made at the first call
        self._cross: Communicator | None = None  # split_cross(), likewise
        self._seq = 0
        self._p2p_ops = 0  # numbers p2p operations for messages and the flight recorder
        self._lock = threading.Lock()  # guards numbering, queueing and _outstanding
        self._exec_lock = threading.RLock()  # held by whichever thread runs an operation
        self._outstanding = 0  # operations queued for (or running on) the progress thread
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._grouping = threading.local()  # .group: the group() this thread has open
        self._groups_open = 0  # in all threads (guarded by _lock)
        self._fusion_scratch: np.ndarray | None = None  # see _fused_allreduce
        self._closed = False
        self._broken: BaseException | None = None
        self._gpu: DeviceEngine | None = None  # made at the first operation on GPU buffers
        self._recorder = diagnostics.FlightRecorder(config.flight_recorder_ops)
        self._stats = Stats(self.size) if config.stats else None
        rank_text = logs.process_rank()  # the world rank once init ran, else this rank
        world_rank = int(rank_text) if rank_text.isdigit() else self.rank
        self._timeline = diagnostics.timeline(config.timeline, world_rank)
        # Fixed for the communicator's life, read by every operation.
        self._timeout = config.timeout_seconds
        self._segment_bytes = config.segment_bytes
        self._observed = self._timeline is not None or self._stats is not None or config.debug
        self._context = OpContext
        if self._timeline is not None:
            self._context = diagnostics.traced(_TRACED_STEPS, OpContext)
        self._track = f"comm {transport.comm_id & 0xFFFF:04x} rank {self.rank}/{self.size}"
        self._thread = threading.Thread(
            target=self._progress, name=f"ringcomm-progress-{self.rank}", daemon=True
        )
        self._thread.start()
        self._thread_id = self._thread.ident
        _live.add(self)
        diagnostics.watch(self)

    def _exchange_hosts(self) -> Topology:
        """Every rank's host, exchanged once as the communicator is made (sequence number 0,
        before any operation; a sub-communicator takes its parent's instead)."""
        mine = hosts.host_identity()
        if self.size == 1:
            return Topology.from_hosts(0, [mine])
        deadline = time.monotonic() + self._config.timeout_seconds
        ctx = OpContext(
            self._transport, 0, deadline, self._config.segment_bytes, 0, False, KIND_COLLECTIVE
        )
        self._transport.op = ("topology", 0)
        try:
            everyone = records.allgather_text(ctx, mine, _HOST_RECORD_BYTES)
        except BaseException:
            self._transport.close()
            raise
        return Topology.from_hosts(self.rank, everyone)

    # -- topology ---------------------------------------------------------------------------
    @property
    def local_rank(self) -> int:
        """This rank's place among the ranks of its host (rank order)."""
        return self._topology.local_rank

    @property
    def local_size(self) -> int:
        """The number of ranks of this communicator on this rank's host."""
        return self._topology.local_size

    @property
    def node_rank(self) -> int:
        """This rank's host, numbered 0 .. num_nodes-1 in the order of each host's lowest
        rank."""
        return self._topology.node_rank

    @property
    def num_nodes(self) -> int:
        """The number of hosts this communicator spans."""
        return self._topology.num_nodes

    def split_local(self) -> Communicator:
        """The ranks of this host, ordered by rank (``local_rank`` is the rank there).
        Collective over this communicator the first time; the same communicator after."""
        if self._local is None:
            self._local = self._member_split(self.node_rank, self.rank)
        return self._local

    def split_cross(self) -> Communicator:
        """The ranks with this ``local_rank`` on every host, ordered by ``node_rank``.
        Collective over this communicator the first time; the same communicator after."""
        if self._cross is None:
            self._cross = self._member_split(self.local_rank, self.node_rank)
        return self._cross

    def _member_split(self, color: int, key: int) -> Communicator:
        # Made at the first call that needs it, which may be inside a group(): the split
        # runs at once all the same (every rank issues it at the same point).
        group, self._grouping.group = getattr(self._grouping, "group", None), None
        try:
            sub = self.split(color, key=key)
        finally:
            self._grouping.group = group
        assert sub is not None  # every rank passes a color
        return sub

    def _hierarchy(self) -> hierarchical.Hierarchy:
        """The host and cross-host sub-communicators (collective the first time)."""
        return hierarchical.Hierarchy(self.split_local(), self.split_cross(), self._topology.nodes)

    def _flat_order(self) -> tuple[int, ...] | None:
        """The order flat algorithms visit ranks in (host by host), or None for rank
        order (one host, ranks placed host by host, or ``RINGCOMM_RING_ORDER=ranks``)."""
        if self._config.ring_order == "ranks" or self._topology.num_nodes == 1:
            return None
        order = self._topology.host_order
        return None if order == tuple(range(self.size)) else order

    def _rooted(
        self, run: Callable[[OpContext, int], Any], root: int
    ) -> Callable[[OpContext], Any]:
        """The body of a rooted flat algorithm ``run(ctx, root)``, host by host where
        :meth:`_flat_order` says so (the root then is its place in that order)."""
        order = self._flat
        if order is None:
            return lambda ctx: run(ctx, root)
        return lambda ctx: run(OrderedContext.of(ctx, order), order.index(root))

    def _chosen(self, key: tuple[Any, ...], choose: Callable[..., Any]) -> Any:
        """``choose(*key[1:])``, remembered under ``key`` (its first item names the
        choice): choosing costs about a microsecond a call, and training loops repeat a few
        sizes (at most ``_CHOSEN_LIMIT`` are kept)."""
        made = self._choices.get(key)
        if made is None:
            made = self._remember(key, choose(*key[1:]))
        return made

    def _remember(self, key: tuple[Any, ...], made: Any) -> Any:
        """Keep ``made`` under ``key`` and return it (at most ``_CHOSEN_LIMIT`` kept):
        :meth:`_chosen`'s algorithms and :meth:`_choose_piece`'s native pieces, which the
        board fixes once made (n=2, 4 KiB all_reduce 3.7-3.9 -> 3.3 us a call)."""
        if len(self._choices) >= _CHOSEN_LIMIT:
            self._choices.clear()
            self._quick.clear()
        self._choices[key] = made
        return made

    def _choose_piece(
        self,
        key: tuple[Any, ...],
        buffers: tuple[Buffer, ...],
        choose: Callable[..., tuple[int, int]],
        board: Board,
        *args: Any,
        quick: tuple[Any, ...] | None = None,
    ) -> tuple[int, int]:
        """The native piece for ``key`` ("piece", operation, the bytes that choose the
        algorithm, ..., algorithm): ``choose(board, *args)`` where the operation runs on
        the board, else none; remembered (:meth:`_remember`). A piece found also goes
        under ``quick`` (the operation, its sizes, dtype and algorithm: a piece depends on
        nothing else, since a reduction the kernels do not take, or bfloat16, has none),
        where a blocking SUM or broadcast of numpy arrays looks it up before any intake:
        the checks its key leaves out were made here, for the call that chose it."""
        on_board = self._direct(key[1], key[2], buffers, key[-1])
        piece = choose(board, *args) if on_board else direct.NO_PIECE
        if quick is not None and piece[1]:
            self._quick[quick] = (board, piece)
        return self._remember(key, piece)  # type: ignore[no-any-return]

    def _direct(
        self, op: str, nbytes: int, buffers: tuple[AnyBuffer, ...], algorithm: str | None
    ) -> bool:
        """Whether this all_gather / reduce_scatter / reduce runs on the board."""
        board = self._board
        for b in buffers:  # (a loop: all() over a generator costs more per operation)
            if type(b) is not Buffer:
                board = False
        key = ("direct", op, nbytes, algorithm, board)
        return self._chosen(key, self._use_direct)  # type: ignore[no-any-return]

    def _allgather_algorithm(self, nbytes: int, algorithm: str | None) -> Callable[..., None]:
        """The point-to-point all_gather for ``nbytes`` of output."""
        return _ALLGATHER[choice.choose_allgather(nbytes, self.size, self._choosing, algorithm)]

    def _reduce_scatter_algorithm(self, nbytes: int, algorithm: str | None) -> Callable[..., None]:
        """The point-to-point reduce_scatter for ``nbytes`` of input."""
        name = choice.choose_reduce_scatter(nbytes, self.size, self._choosing, algorithm)
        return _REDUCE_SCATTER[name]

    def _use_direct(self, op: str, nbytes: int, algorithm: str | None, board: bool) -> bool:
        return choice.use_direct(op, nbytes, self.size, self._choosing, algorithm, board)

    def _hierarchical(self, buffers: tuple[AnyBuffer, ...], reduces: bool) -> bool:
        """Whether this all_gather / reduce_scatter runs hierarchically."""
        return choice.use_hierarchy(self._topology, self._config, _on_host(buffers, reduces))

    # -- the progress thread ----------------------------------------------------------------
    def _progress(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._execute(item)

    def _execute(self, item: _Op) -> None:
        """Run a queued operation and settle its future (the progress thread)."""
        assert item.future is not None
        try:
            result = self._run(item)
        except BaseException as e:  # the op's error goes to whoever waits on it
            item.future.set_exception(e)
        else:
            item.future.set_result(result)

    def _run(self, item: _Op) -> Any:
        """Run one queued operation holding the execution lock; return its result or
        raise."""
        with self._exec_lock:
            try:
                return self._run_recorded(item)
            finally:
                with self._lock:
                    self._outstanding -= 1

    def _run_recorded(self, item: _Op) -> Any:
        """Run ``item``'s body in a fresh context, in the flight recorder (and, where they
        are on, the timeline, the statistics and RINGCOMM_DEBUG's agreement check). The
        caller holds the execution lock."""
        if self._broken is not None:
            raise CommClosedError(
                f"{item.name} #{item.seq}: the communicator is unusable after an "
                f"earlier error ({self._broken}); close it and build a new one"
            )
        timeout = item.timeout if item.timeout is not None else self._timeout
        deadline = time.monotonic() + timeout
        ctx = self._context(
            self._transport,
            # p2p messages match first-in first-out per (peer, user tag): no per-pair
            # counter to keep (and grow) for every tag ever used.
            item.seq if item.kind == KIND_COLLECTIVE else 0,
            deadline,
            self._segment_bytes,
            int(item.reduce_op),  # a plain int: IntEnum hashes in Python
            item.bfloat16,
            item.kind,
        )
        transport = self._transport
        transport.op = (item.name, item.seq)
        transport.waiting_for = None
        recorder = self._recorder
        record = None
        if recorder.enabled:
            record = recorder.start(item.seq, item.name, _nbytes(item.buffers), deadline)
        if self._observed:
            return self._run_observed(item, ctx, record)
        result = self._body(item, ctx, record)
        recorder.finish(record)
        return result

    def _body(self, item: _Op, ctx: OpContext, record: OpRecord | None, check: bool = False) -> Any:
        """Run ``item``'s body (``check``: after RINGCOMM_DEBUG's agreement check); on an
        error, break the communicator and raise what :meth:`_failed` says."""
        try:
            if check:
                protocol.check_agreement(ctx, _describe(item))
            return item.body(ctx)
        except BaseException as e:
            error = self._failed(ctx, item, record, e)
            if error is e:
                raise
            raise error from e

    def _run_observed(self, item: _Op, ctx: OpContext, record: OpRecord | None) -> Any:
        """:meth:`_run_recorded`'s run of the body where the timeline, the statistics or
        RINGCOMM_DEBUG's agreement check are on."""
        recorder, timeline, stats = self._recorder, self._timeline, self._stats
        started = 0.0
        if timeline is not None:
            started = timeline.now_us()
            ctx.timeline = timeline  # type: ignore[attr-defined]
        began = time.perf_counter() if stats is not None else 0.0
        arrived_ns = time.time_ns() if stats is not None else 0  # one clock across ranks
        try:
            check = self._config.debug and item.kind == KIND_COLLECTIVE
            result = self._body(item, ctx, record, check)
        finally:
            if timeline is not None:
                nbytes = record.nbytes if record is not None else _nbytes(item.buffers)
                timeline.add(item.name, started, {"seq": item.seq, "bytes": nbytes}, self._track)
        recorder.finish(record)
        if stats is not None:
            biggest = max((b.nbytes for b in item.buffers if b is not None), default=0)
            seq = item.seq if item.kind == KIND_COLLECTIVE else None
            stats.add(item.name, biggest, time.perf_counter() - began, seq, arrived_ns)
        return result

    def _failed(
        self, ctx: OpContext, item: _Op, record: OpRecord | None, e: BaseException
    ) -> BaseException:
        """Break the communicator after ``e`` (ranks may now disagree on where they are),
        record and report it; return the error to raise: ``e``, or after a collective's
        timeout one that names the ranks that never joined."""
        error = e
        waiting = self._transport.waiting_for  # before the presence exchange moves it
        if (
            isinstance(e, CommTimeoutError)
            and item.kind == KIND_COLLECTIVE
            and item.name != "monitored_barrier"  # it names the absent ranks itself
        ):
            error = protocol.name_absent_ranks(ctx, _describe(item), item.name, e)
        self._broken = error
        self._transport.retract()  # no send of it may read the caller's memory from now on
        self._recorder.finish(record, error)
        self._report_failure(item, error, waiting)
        return error

    def stall_report(self, now: float) -> str | None:
        """The stall watchdog's question: a warning if the running operation has run past
        its stall limit (once per operation), else None."""
        record = self._recorder.current
        if record is None:
            return None
        limit = self._config.stall_limit(record.deadline - record.started)
        return protocol.stall_report(self.rank, record, limit, self._transport.waiting_for, now)

    def _report_failure(self, item: _Op, error: BaseException, waiting: int | None) -> None:
        """Log a failed operation (``waiting``: the rank it waited for when it failed): with
        the flight recorder, and its file, when a peer is to blame."""
        if isinstance(error, (CommTimeoutError, TransportError)) and self._recorder.enabled:
            if self._config.flight_recorder_dir:
                try:
                    self._recorder.write(
                        self._config.flight_recorder_dir,
                        self.rank,
                        self.size,
                        self._transport.comm_id,
                        waiting,
                    )
                except OSError as e:
                    log.warning("rank %d: cannot write the flight recorder: %s", self.rank, e)
            log.error(
                "rank %d: %s #%d failed: %s\n%s",
                self.rank,
                item.name,
                item.seq,
                error,
                self._recorder.dump(self.rank, self.size, waiting),
            )
        else:
            log.debug("rank %d: %s #%d failed: %s", self.rank, item.name, item.seq, error)

    def _submit(
        self,
        name: str,
        body: Callable[[OpContext], Any],
        buffers: tuple[Any, ...],
        *,
        async_op: bool,
        timeout: float | None,
        reduce_op: int = ReduceOp.SUM,
        bfloat16: bool = False,
        p2p: bool = False,
        nccl: NcclBody | None = None,
        root: int = -1,
        shapes: str | None = None,
        fuse: Buffer | None = None,
        seqs: int = 1,
    ) -> Work | None:
        """Number and queue (or run inline) one operation on ``buffers``; ``nccl``: what it
        does on NCCL when its buffers are on a GPU (None: staged through host memory);
        ``shapes``: how RINGCOMM_DEBUG's agreement check describes buffers whose sizes
        differ by rank; ``fuse``: an all_reduce buffer a group may pack with others;
        ``seqs``: how many collective sequence numbers it takes (a group: one per part).

        Inside a :meth:`group` opened by this thread, the operation is only recorded, and
        runs as part of the group."""
        if timeout is not None and timeout <= 0:
            raise ValueError(f"{name}: timeout must be positive, got {timeout}")
        if not async_op and threading.get_ident() == self._thread_id:
            raise RingcommError(
                f"{name} on rank {self.rank}: a blocking call from a completion callback of "
                "this communicator would wait for its own progress thread; pass "
                "async_op=True, or call it from another thread"
            )
        for b in buffers:
            if type(b) is DeviceBuffer:
                body = self._on_device(name, body, buffers, nccl)
                fuse = None
                break
        # (a thread-local lookup costs ~0.4 us: only made while some thread has a group open)
        grouping: Group | None = (
            getattr(self._grouping, "group", None) if self._groups_open else None
        )
        if grouping is not None:
            grouping.ops.append(
                _Part(name, body, buffers, timeout, reduce_op, bfloat16, p2p, root, shapes, fuse)
            )
            if async_op:
                return Work(grouping.future, f"{name} (in a group)", buffers, self._thread)
            return None
        with self._lock:  # numbering and queueing together keep issue order
            if self._closed:
                how = "was aborted" if self._transport.aborted else "is closed"
                raise CommClosedError(f"{name} on rank {self.rank}: the communicator {how}")
            if not p2p:
                seq, kind = self._seq + 1, KIND_COLLECTIVE
                self._seq += seqs
            else:
                self._p2p_ops += 1
                seq, kind = self._p2p_ops, KIND_P2P
            # A blocking call with nothing ahead of it runs right here, holding the
            # execution lock from its numbering on: handing it to the progress thread and
            # back costs two thread wake-ups (~100 us on 2 cores).
            inline = (
                not async_op and self._outstanding == 0 and self._exec_lock.acquire(blocking=False)
            )
            future: concurrent.futures.Future[Any] | None = None
            if not inline:
                future = concurrent.futures.Future()
                future.set_running_or_notify_cancel()
            item = _Op(
                name, seq, kind, body, timeout, reduce_op, bfloat16, future, buffers, root, shapes
            )
            if not inline:
                self._outstanding += 1
                self._queue.put(item)
        if future is None:
            try:
                self._run_recorded(item)
            finally:
                self._exec_lock.release()
            return None
        work = Work(future, f"{name} #{seq}", buffers, self._thread)
        if async_op:
            return work
        work.wait()
        return None

    def _on_device(
        self,
        name: str,
        body: Callable[[OpContext], Any],
        buffers: tuple[Any, ...],
        nccl: NcclBody | None,
    ) -> Callable[[OpContext], Any]:
        """The body of an operation on GPU buffers: it runs on this communicator's
        :class:`~ringcomm.gpu.engine.DeviceEngine`."""
        device = [b for b in buffers if b is not None]
        if any(type(b) is not DeviceBuffer for b in device):
            raise TypeError(f"{name}: buffers must all be on the host or all on a GPU")

        def run(ctx: OpContext) -> Any:
            if self._gpu is None:
                self._gpu = DeviceEngine(self.rank, self.size, self._config)
            return self._gpu.run(ctx, name, body, device, nccl)

        return run

    def _quick_board(self, async_op: bool) -> Board | None:
        """The board, where a blocking call may run there as one native piece by
        :meth:`_run_piece` (else None): it is made and runs native pieces, and no group, no
        timeline, statistics or debug check needs the general path."""
        if async_op or not self._board or self._observed or self._groups_open:
            return None
        b: Board | None = self._transport.board  # type: ignore[attr-defined]
        return b if b is not None and b.table is not None else None

    def _quick_pair(
        self,
        name: str,
        output: Any,
        input: Any,
        output_is_large: bool,
        algorithm: str | None,
        timeout: float | None,
        in_place: bool = True,
    ) -> bool:
        """Run a blocking all_gather (``output_is_large``), reduce_scatter or all_to_all
        ``name`` by its piece in :attr:`_quick`, where it has one and both are numpy arrays
        as as_buffer takes them (:func:`plain_array`), of one dtype, apart or, where
        ``in_place``, in place (the small one is this rank's slot of the large one); False,
        nothing done, where the general path must take it (and raise what it raises).
        Arrays that each own their memory are apart without asking numpy (0.17 us) unless
        they are one."""
        o = plain_array(output, True)
        i = plain_array(input, False)
        if o is None or i is None or o.dtype != i.dtype:
            return False
        large, small = (o, i) if output_is_large else (i, o)
        if not (
            (o.flags.owndata and i.flags.owndata and o is not i)
            or not np.may_share_memory(o, i)
            or (in_place and _in_slot(large, small, self.rank * small.size))
        ):
            return False
        quick = self._quick.get((name, large.nbytes, small.nbytes, o.dtype, algorithm))
        return quick is not None and self._run_piece(name, None, quick[0], quick[1], i, o, timeout)

    def _run_piece(
        self,
        name: str,
        buffers: tuple[Buffer, ...] | None,
        board: Board,
        piece: tuple[int, int],
        src: np.ndarray,
        dst: np.ndarray,
        timeout: float | None,
        op: int = 0,
        root: int = -1,
        average: np.ndarray | None = None,
    ) -> bool:
        """Run a blocking collective that is one native ``piece`` (kind, steps) on
        ``board`` right here: numbered, in the flight recorder, a failure handled as the
        general path's (:meth:`_failed`), but no context, body or queue item made for it
        (n=2, 4 KiB all_gather 6.0-6.7 -> 4.5-5.3 us a call). False, nothing done, where the general
        path must take it (and raise what it raises): an operation ahead of it, a closed
        or broken communicator, a group open, a timeout that is not positive, a completion
        callback.
        ``op``: the reduction as a plain int (numba types an IntEnum argument anew on
        every call). ``average``: what an AVG divides by the world size at the end (None:
        nothing).
        ``buffers`` None: ``dst`` and ``src`` (one buffer where they are one), their Buffers
        made only for a failure's report."""
        if (timeout is not None and timeout <= 0) or _get_ident() == self._thread_id:
            return False
        exec_lock, lock = self._exec_lock, self._lock
        # (acquire and release in a try, positional arguments: a third of this path's
        # locking cost against ``with`` and ``blocking=False``)
        lock.acquire()
        try:
            if (
                self._closed
                or self._outstanding
                or self._groups_open
                or not exec_lock.acquire(False)
            ):
                return False
            if self._broken is not None:
                exec_lock.release()
                return False
            self._seq = seq = self._seq + 1
        finally:
            lock.release()
        try:
            now = _monotonic()
            deadline = now + (self._timeout if timeout is None else timeout)
            transport = self._transport
            transport.op = (name, seq)
            transport.waiting_for = None
            recorder = self._recorder
            record = None
            if recorder.enabled:
                # (the buffers' bytes, as _nbytes counts them: src and dst are their arrays)
                nbytes = src.nbytes if src is dst else src.nbytes + dst.nbytes
                record = recorder.start(seq, name, nbytes, deadline, now)
            try:
                board.native_piece(piece[0], src, dst, deadline, piece[1], op, root)
                if average is not None:
                    native.divide(average, self.size, False)
            except BaseException as e:
                if buffers is None:  # (what the general path's intake made, in its order)
                    arrays = (src,) if src is dst else (dst, src)
                    buffers = tuple(as_buffer(x, name, writable=False) for x in arrays)
                rop = ReduceOp(op)
                item = _Op(
                    name, seq, KIND_COLLECTIVE, _ran_as_piece, timeout, rop, False, None,
                    buffers, root, None,
                )  # fmt: skip
                ctx = self._context(
                    transport, seq, deadline, self._segment_bytes, rop, False, KIND_COLLECTIVE
                )
                error = self._failed(ctx, item, record, e)
                if error is e:
                    raise
                raise error from e
            recorder.finish(record)
        finally:
            exec_lock.release()
        return True

    # -- collectives ------------------------------------------------------------------------
    def all_reduce(
        self,
        buf: Any,
        op: ReduceOp = ReduceOp.SUM,
        *,
        async_op: bool = False,
        algorithm: str | None = None,
        timeout: float | None = None,
        compression: str | None = None,
    ) -> Work | None:
        """Reduce ``buf`` across all ranks, in place: every rank ends with the result.

        Args:
            buf: numpy array, torch tensor (CPU or CUDA), CuPy array, or writable
                buffer-protocol object; GPU buffers: see :mod:`ringcomm.gpu.engine`.
            op: how to combine (:class:`ReduceOp`); AVG divides the sum by ``size``.
            async_op: return a :class:`Work` instead of waiting.
            algorithm: ``"direct"`` (ranks of one host), ``"ring"``,
                ``"recursive_doubling"``, ``"rabenseifner"``, ``"star"``,
                ``"hierarchical"`` (default: by size).
            timeout: seconds before :class:`CommTimeoutError` (default
                ``RINGCOMM_TIMEOUT_SECONDS``).
            compression: ``"float16"`` or ``"bfloat16"``: exchange a float32 host buffer
                as 16-bit floats, for SUM and AVG (half the bytes; see
                :mod:`ringcomm.algorithms.compressed`). Each rank's contribution (divided
                by ``size`` first for AVG) is rounded to 16 bits; on the shared-memory
                board they are summed in float32 and rounded once, elsewhere reduced in 16
                bits; every rank gets the same values. ``algorithm`` names what carries
                the 16-bit copy where the ranks have no board.

        Returns:
            A :class:`Work` if ``async_op``, else None.

        Raises:
            TypeError: unsupported buffer, dtype or op for the dtype.
            ValueError: non-contiguous or read-only buffer, unknown algorithm or
                compression, compression of anything but a float32 host buffer.

        Example::

            grad = np.ones(1000, np.float32)
            comm.all_reduce(grad, op=ringcomm.AVG)
        """
        if op is _SUM and compression is None and not async_op:
            a = plain_array(buf, True)
            quick = (
                None if a is None else self._quick.get(("all_reduce", a.nbytes, a.dtype, algorithm))
            )
            if quick is not None and self._run_piece(
                "all_reduce", None, quick[0], quick[1], a, a, timeout
            ):
                return None
        b = as_buffer(buf, "all_reduce buf", writable=True)
        rop = op if op is _SUM else _reduce_op(op, b, "all_reduce")  # (SUM: no call)
        board = self._quick_board(async_op)
        if board is not None and compression is None and type(b) is Buffer:
            a = b.array
            key = ("piece", "all_reduce", a.nbytes, a.dtype, rop, b.bfloat16, algorithm)
            piece = self._choices.get(key) or self._choose_piece(
                key,
                (b,),
                direct.allreduce_piece,
                board,
                a,
                rop,
                b.bfloat16,
                quick=("all_reduce", a.nbytes, a.dtype, algorithm),
            )
            average = a if rop == _AVG else None
            if piece[1] and self._run_piece(
                "all_reduce", (b,), board, piece, a, a, timeout, int(rop), -1, average
            ):
                return None
        host = type(b) is Buffer
        if (
            host
            and algorithm is None
            and compression is None
            and self._groups_open
            and getattr(self._grouping, "group", None) is not None
        ):
            # In a group: the group chooses, fused or not (see _submit_group).
            return self._submit(
                "all_reduce", _group_chooses, (b,), async_op=async_op, timeout=timeout,
                reduce_op=rop, bfloat16=b.bfloat16, fuse=b,
            )  # fmt: skip
        return self._reduce_all(b, rop, algorithm, compression, None, async_op, timeout)

    def _all_reduce_mapped(
        self,
        buf: Any,
        op: ReduceOp,
        fd: int,
        offset: int,
        *,
        async_op: bool = False,
        timeout: float | None = None,
        compression: str | None = None,
    ) -> Work | None:
        """:meth:`all_reduce` of a buffer that lies at ``offset`` in the shared-memory file
        open here as ``fd`` (-1: it does not): where every rank's does and the ranks share a
        board, each reads the others' buffers where they lie
        (:func:`~ringcomm.algorithms.direct.allreduce_mapped`); elsewhere a plain
        all_reduce. ``compression`` as :meth:`all_reduce`'s, with the same result. Every
        rank must call it (ringcomm.torch's DDP hooks do)."""
        b = as_buffer(buf, "all_reduce buf", writable=True)
        rop = _reduce_op(op, b, "all_reduce")
        return self._reduce_all(b, rop, None, compression, (fd, offset), async_op, timeout)

    def _reduce_all(
        self,
        b: AnyBuffer,
        rop: ReduceOp,
        algorithm: str | None,
        compression: str | None,
        mapped: tuple[int, int] | None,
        async_op: bool,
        timeout: float | None,
    ) -> Work | None:
        """all_reduce of ``b``, checked (see :meth:`all_reduce`); ``mapped``: (fd, offset)
        of the shared-memory file it lies in (see :meth:`_all_reduce_mapped`)."""
        host = type(b) is Buffer
        if compression is not None:
            _check_compression(b, rop, compression)
            key = ("compressed", b.nbytes, rop, compression, algorithm)
            run = self._chosen(key, self._compressed_algorithm)
        else:
            key = ("all_reduce", b.nbytes, rop, host and not b.bfloat16, algorithm)
            run = self._choices.get(key) or self._chosen(key, self._allreduce_algorithm)
        if mapped is not None and host and self.size > 1 and self._board and not b.bfloat16:
            run = _read_in_place(run, mapped, compression, rop, self.size)
        return self._submit(
            "all_reduce",
            lambda ctx: run(ctx, b.array),
            (b,),
            async_op=async_op,
            timeout=timeout,
            reduce_op=rop,
            bfloat16=b.bfloat16,
            nccl=lambda nc: nc.all_reduce(b, rop),
        )

    def _compressed_algorithm(
        self, nbytes: int, rop: ReduceOp, compression: str, algorithm: str | None
    ) -> Callable[[OpContext, np.ndarray], None]:
        """The all_reduce(compression=...) to run on ``nbytes`` of float32."""
        bfloat16 = compression == "bfloat16"
        factor = _contribution_factor(rop, self.size)
        via = None if algorithm == "direct" else algorithm
        inner = self._allreduce_algorithm(nbytes // 2, ReduceOp.SUM, not bfloat16, via, False)

        def exchange(ctx: OpContext, data: np.ndarray) -> None:
            compressed.through_half(ctx, data, bfloat16, factor, inner)

        if self.size > 1 and self._board and algorithm in (None, "direct"):
            return lambda ctx, a: direct.allreduce_compressed(ctx, a, bfloat16, factor, exchange)
        return exchange

    def _allreduce_algorithm(
        self, nbytes: int, rop: ReduceOp, host: bool, algorithm: str | None, board: bool = True
    ) -> Callable[[OpContext, np.ndarray], None]:
        """The all_reduce to run on ``nbytes`` (``host``: see :func:`_on_host`; ``board``:
        may it run on the board)."""
        name = choice.choose_allreduce(
            nbytes,
            self.size,
            self._choosing,
            algorithm,
            self._topology,
            host,
            board and self._board,
        )  # fmt: skip (it also refuses an unknown algorithm)
        if self.size == 1:
            return _alone  # the buffer already holds the result (AVG divides by 1)
        if name == "direct":  # what runs where the ranks cannot have a board after all
            fallback = self._allreduce_algorithm(nbytes, rop, host, algorithm, board=False)
            return lambda ctx, a: direct.allreduce(ctx, a, fallback)
        if name == "hierarchical":
            h, size = self._hierarchy(), self.size
            return lambda ctx, a: hierarchical.allreduce(h, a, rop, size, ctx.deadline)
        run, order = _ALLREDUCE[name], self._flat
        if order is None:
            return run
        # ranks placed across hosts out of rank order: the ring goes host by host
        return lambda ctx, a: run(OrderedContext.of(ctx, order), a)

    def all_gather(
        self,
        output: Any,
        input: Any,
        *,
        async_op: bool = False,
        algorithm: str | None = None,
        timeout: float | None = None,
    ) -> Work | None:
        """Gather every rank's ``input`` into ``output`` on every rank, in rank order.

        ``output`` holds ``size * input.size`` elements; ``input`` may be slot ``rank`` of
        ``output`` itself (in place). ``algorithm``: ``"direct"``, ``"bruck"`` or
        ``"ring"`` (default: by size).
        """
        if not async_op and self._quick_pair("all_gather", output, input, True, algorithm, timeout):
            return None
        o, i = _intake_pair(
            "all_gather", output, input, self.size, "output", allow_in_place=self.rank
        )
        board = self._quick_board(async_op)
        if board is not None and type(o) is Buffer and type(i) is Buffer:
            key = ("piece", "all_gather", o.nbytes, i.nbytes, i.array.dtype, i.bfloat16, algorithm)
            piece = self._choices.get(key) or self._choose_piece(
                key,
                (o, i),
                direct.allgather_piece,
                board,
                i.array,
                i.bfloat16,
                quick=("all_gather", o.nbytes, i.nbytes, i.array.dtype, algorithm),
            )
            if piece[1] and self._run_piece(
                "all_gather", (o, i), board, piece, i.array, o.array, timeout
            ):
                return None
        key = ("all_gather", o.nbytes, algorithm)
        gather = self._choices.get(key) or self._chosen(key, self._allgather_algorithm)
        body: Callable[[OpContext], Any] = lambda ctx: gather(ctx, o.array, i.array)  # noqa: E731
        if self._direct("all_gather", o.nbytes, (o, i), algorithm):
            body = lambda ctx: direct.allgather(ctx, o.array, i.array, gather)  # noqa: E731
        elif self._hierarchical((o, i), reduces=False):
            h = self._hierarchy()
            body = lambda ctx: hierarchical.all_gather(h, o.array, i.array, ctx.deadline)  # noqa: E731
        return self._submit(
            "all_gather",
            body,
            (o, i),
            async_op=async_op,
            timeout=timeout,
            nccl=lambda nc: nc.all_gather(o, i),
        )

    def reduce_scatter(
        self,
        output: Any,
        input: Any,
        op: ReduceOp = ReduceOp.SUM,
        *,
        async_op: bool = False,
        algorithm: str | None = None,
        timeout: float | None = None,
    ) -> Work | None:
        """Reduce ``input`` across ranks; rank r's ``output`` gets chunk r of the result.

        ``input`` holds ``size * output.size`` elements and is left unchanged, except when
        ``output`` is slot ``rank`` of ``input`` itself (in place). ``algorithm``:
        ``"direct"``, ``"recursive_halving"`` (a power of two of ranks; the ring elsewhere)
        or ``"ring"`` (default: by size).
        """
        if (
            op is _SUM
            and not async_op
            and self._quick_pair("reduce_scatter", output, input, False, algorithm, timeout)
        ):
            return None
        o, i = _intake_pair(
            "reduce_scatter", output, input, self.size, "input", allow_in_place=self.rank
        )
        rop = op if op is _SUM else _reduce_op(op, o, "reduce_scatter")  # (SUM: no call)
        board = self._quick_board(async_op)
        if board is not None and type(o) is Buffer and type(i) is Buffer:
            key = (
                "piece",
                "reduce_scatter",
                i.nbytes,
                o.nbytes,
                i.array.dtype,
                rop,
                o.bfloat16,
                algorithm,
            )
            quick = ("reduce_scatter", i.nbytes, o.nbytes, i.array.dtype, algorithm)
            piece = self._choices.get(key) or self._choose_piece(
                key,
                (o, i),
                direct.reduce_scatter_piece,
                board,
                o.array,
                i.array,
                rop,
                o.bfloat16,
                quick=quick,
            )
            average = o.array if rop == _AVG else None
            if piece[1] and self._run_piece(
                "reduce_scatter", (o, i), board, piece, i.array, o.array, timeout, int(rop), -1,
                average,
            ):  # fmt: skip
                return None
        key = ("reduce_scatter", i.nbytes, algorithm)
        scatter = self._choices.get(key) or self._chosen(key, self._reduce_scatter_algorithm)
        body: Callable[[OpContext], Any] = lambda ctx: scatter(ctx, o.array, i.array)  # noqa: E731
        if self._direct("reduce_scatter", i.nbytes, (o, i), algorithm):
            body = lambda ctx: direct.reduce_scatter(ctx, o.array, i.array, scatter)  # noqa: E731
        elif self._hierarchical((o, i), reduces=True):
            h = self._hierarchy()
            body = lambda ctx: hierarchical.reduce_scatter(  # noqa: E731
                h, o.array, i.array, rop, self.size, ctx.deadline
            )
        return self._submit(
            "reduce_scatter",
            body,
            (o, i),
            async_op=async_op,
            timeout=timeout,
            reduce_op=rop,
            bfloat16=o.bfloat16,
            nccl=lambda nc: nc.reduce_scatter(o, i, rop),
        )

    def broadcast(
        self,
        buf: Any,
        root: int = 0,
        *,
        async_op: bool = False,
        algorithm: str | None = None,
        timeout: float | None = None,
    ) -> Work | None:
        """Copy ``buf`` from ``root`` to every rank (``algorithm``: direct, binomial or
        chain; default: by size)."""
        self._check_rank(root, "broadcast root")
        a = None if async_op else plain_array(buf, self.rank != root)
        quick = (
            None
            if a is None
            else self._quick.get(("broadcast", a.nbytes, a.dtype, root, algorithm))
        )
        if quick is not None and self._run_piece(
            "broadcast", None, quick[0], quick[1], a, a, timeout, 0, root
        ):
            return None
        b = as_buffer(buf, "broadcast buf", writable=self.rank != root, read=self.rank == root)
        board = self._quick_board(async_op)
        if board is not None and type(b) is Buffer:
            key = ("piece", "broadcast", b.nbytes, b.array.dtype, root, b.bfloat16, algorithm)
            piece = self._choices.get(key) or self._choose_piece(
                key,
                (b,),
                direct.broadcast_piece,
                board,
                b.array,
                root,
                b.bfloat16,
                quick=("broadcast", b.nbytes, b.array.dtype, root, algorithm),
            )
            if piece[1] and self._run_piece(
                "broadcast", (b,), board, piece, b.array, b.array, timeout, 0, root
            ):
                return None
        key = ("broadcast", b.nbytes, algorithm, self._board and type(b) is Buffer)
        run = self._choices.get(key) or self._chosen(key, self._broadcast_algorithm)
        return self._submit(
            "broadcast",
            self._rooted(lambda ctx, r: run(ctx, b.array, r), root),
            (b,),
            async_op=async_op,
            timeout=timeout,
            nccl=lambda nc: nc.broadcast(b, root),
            root=root,
        )

    def _broadcast_algorithm(
        self, nbytes: int, algorithm: str | None, board: bool
    ) -> Callable[[OpContext, np.ndarray, int], None]:
        """The broadcast to run on ``nbytes`` (``board``: may it run on the board)."""
        name = choice.choose_broadcast(nbytes, self.size, self._choosing, algorithm, board)
        if name != "direct":
            return _BROADCAST[name]
        fallback = _BROADCAST[choice.choose_broadcast(nbytes, self.size, self._choosing, None)]
        return lambda ctx, a, r: direct.broadcast(ctx, a, r, fallback)

    def reduce(
        self,
        buf: Any,
        root: int = 0,
        op: ReduceOp = ReduceOp.SUM,
        *,
        async_op: bool = False,
        algorithm: str | None = None,
        timeout: float | None = None,
    ) -> Work | None:
        """Reduce ``buf`` across ranks into ``buf`` on ``root``; other ranks' buffers are
        left unchanged. ``algorithm``: ``"direct"`` or ``"binomial"`` (default: by size)."""
        self._check_rank(root, "reduce root")
        b = as_buffer(buf, "reduce buf", writable=self.rank == root)
        rop = op if op is _SUM else _reduce_op(op, b, "reduce")  # (SUM: no call)
        run: Callable[..., None] = tree.reduce_binomial
        board = self._quick_board(async_op)
        if board is not None and type(b) is Buffer:
            key = ("piece", "reduce", b.nbytes, b.array.dtype, root, rop, b.bfloat16, algorithm)
            piece = self._choices.get(key) or self._choose_piece(
                key, (b,), direct.reduce_piece, board, b.array, root, rop, b.bfloat16
            )
            average = b.array if rop == _AVG and self.rank == root else None
            if piece[1] and self._run_piece(
                "reduce", (b,), board, piece, b.array, b.array, timeout, int(rop), root, average
            ):
                return None
        if self._direct("reduce", b.nbytes, (b,), algorithm):
            run = lambda ctx, a, r: direct.reduce(ctx, a, r, tree.reduce_binomial)  # noqa: E731
        return self._submit(
            "reduce",
            self._rooted(lambda ctx, r: run(ctx, b.array, r), root),
            (b,),
            async_op=async_op,
            timeout=timeout,
            reduce_op=rop,
            bfloat16=b.bfloat16,
            nccl=lambda nc: nc.reduce(b, root, rop),
            root=root,
        )

    def gather(
        self,
        output: Any,
        input: Any,
        root: int = 0,
        *,
        async_op: bool = False,
        timeout: float | None = None,
    ) -> Work | None:
        """Gather every rank's ``input`` into ``output`` on ``root`` (rank order).

        ``output`` (``size * input.size`` elements) is needed on ``root`` only; elsewhere it
        may be None.
        """
        self._check_rank(root, "gather root")
        if self.rank == root:
            if output is None:
                raise ValueError("gather: the root needs an output buffer")
            o, i = _intake_pair("gather", output, input, self.size, "output")
        else:
            o, i = None, as_buffer(input, "gather input", writable=False)
        return self._submit(
            "gather",
            lambda ctx: linear.gather(ctx, o.array if o is not None else None, i.array, root),
            (o, i),
            async_op=async_op,
            timeout=timeout,
            nccl=lambda nc: nc.gather(o, i, root),
            shapes=f"{i.count} x {i.dtype_name} per rank",
            root=root,
        )

    def scatter(
        self,
        output: Any,
        input: Any,
        root: int = 0,
        *,
        async_op: bool = False,
        timeout: float | None = None,
    ) -> Work | None:
        """Send slot r of ``input`` on ``root`` to rank r's ``output``.

        ``input`` (``size * output.size`` elements) is needed on ``root`` only.
        """
        self._check_rank(root, "scatter root")
        if self.rank == root:
            if input is None:
                raise ValueError("scatter: the root needs an input buffer")
            o, i = _intake_pair("scatter", output, input, self.size, "input")
        else:
            o, i = as_buffer(output, "scatter output", writable=True, read=False), None
        return self._submit(
            "scatter",
            lambda ctx: linear.scatter(ctx, o.array, i.array if i is not None else None, root),
            (o, i),
            async_op=async_op,
            timeout=timeout,
            nccl=lambda nc: nc.scatter(o, i, root),
            shapes=f"{o.count} x {o.dtype_name} per rank",
            root=root,
        )

    def all_to_all(
        self,
        output: Any,
        input: Any,
        *,
        async_op: bool = False,
        algorithm: str | None = None,
        timeout: float | None = None,
    ) -> Work | None:
        """Slot s of rank d's ``output`` gets slot d of rank s's ``input``.

        Both hold the same number of elements, a multiple of ``size``, in memory apart.
        ``algorithm``: ``"direct"`` (ranks of one host: every rank reads its slot of every
        peer's input out of shared memory or where it lies, one step) or ``"linear"``
        (every pair exchanges its slots; default: the board where the ranks have one).
        """
        if not async_op and self._quick_pair(
            "all_to_all", output, input, True, algorithm, timeout, in_place=False
        ):
            return None
        o = as_buffer(output, "all_to_all output", writable=True, read=False)
        i = as_buffer(input, "all_to_all input", writable=False)
        _same_dtype(o, i, "all_to_all")
        if o.count != i.count or i.count % self.size:
            raise ValueError(
                f"all_to_all: output ({o.count}) and input ({i.count}) must hold the same "
                f"number of elements, a multiple of size {self.size}"
            )
        _no_overlap(o, i, "all_to_all")
        board = self._quick_board(async_op)
        if board is not None and type(o) is Buffer and type(i) is Buffer:
            key = ("piece", "all_to_all", i.nbytes, i.array.dtype, algorithm)
            quick = ("all_to_all", o.nbytes, i.nbytes, i.array.dtype, algorithm)
            piece = self._choices.get(key) or self._choose_piece(
                key, (o, i), direct.alltoall_piece, board, i.array, quick=quick
            )
            if piece[1] and self._run_piece(
                "all_to_all", (o, i), board, piece, i.array, o.array, timeout
            ):
                return None
        body: Callable[[OpContext], Any] = lambda ctx: linear.all_to_all(ctx, o.array, i.array)  # noqa: E731
        if self._direct("all_to_all", i.nbytes, (o, i), algorithm):
            body = lambda ctx: direct.all_to_all(ctx, o.array, i.array, linear.all_to_all)  # noqa: E731
        return self._submit(
            "all_to_all",
            body,
            (o, i),
            async_op=async_op,
            timeout=timeout,
            nccl=lambda nc: nc.all_to_all(o, i),
        )

    # -- variable-size collectives ----------------------------------------------------------
    def all_gatherv(
        self,
        output: Any,
        input: Any,
        counts: Any,
        *,
        async_op: bool = False,
        timeout: float | None = None,
    ) -> Work | None:
        """Gather inputs of different sizes: rank r's ``input`` (``counts[r]`` elements)
        lands in ``output`` after ranks 0..r-1's, on every rank.

        Every rank passes the same ``counts`` (one per rank, zeros allowed), so no size
        exchange is needed; ``output`` holds ``sum(counts)``. ``input`` may be rank r's
        piece of ``output`` itself (in place).
        """
        cs = _counts(counts, self.size, "all_gatherv")
        o, i = _intake_counts("all_gatherv", output, input, cs, self.rank, "output")
        chunks = schedule.count_bounds(cs)
        return self._submit(
            "all_gatherv",
            lambda ctx: ring.allgather(ctx, o.array, i.array, chunks),
            (o, i),
            async_op=async_op,
            timeout=timeout,
            shapes=f"counts {cs} x {o.dtype_name}",
        )

    def reduce_scatter_v(
        self,
        output: Any,
        input: Any,
        counts: Any,
        op: ReduceOp = ReduceOp.SUM,
        *,
        async_op: bool = False,
        timeout: float | None = None,
    ) -> Work | None:
        """Reduce ``input`` (``sum(counts)`` elements) across ranks; rank r's ``output``
        gets the ``counts[r]`` elements after ranks 0..r-1's pieces. Every rank passes the
        same ``counts`` (zeros allowed); ``output`` may be rank r's piece of ``input``
        (in place)."""
        cs = _counts(counts, self.size, "reduce_scatter_v")
        o, i = _intake_counts("reduce_scatter_v", output, input, cs, self.rank, "input")
        rop = _reduce_op(op, o, "reduce_scatter_v")
        chunks = schedule.count_bounds(cs)
        return self._submit(
            "reduce_scatter_v",
            lambda ctx: ring.reduce_scatter(ctx, o.array, i.array, chunks),
            (o, i),
            async_op=async_op,
            timeout=timeout,
            shapes=f"counts {cs} x {o.dtype_name}",
            reduce_op=rop,
            bfloat16=o.bfloat16,
        )

    def all_to_allv(
        self,
        output: Any,
        input: Any,
        send_counts: Any,
        recv_counts: Any,
        *,
        async_op: bool = False,
        timeout: float | None = None,
    ) -> Work | None:
        """All-to-all with pieces of different sizes: ``send_counts[d]`` elements of
        ``input`` (in rank order) go to rank d, and ``output`` receives ``recv_counts[s]``
        elements from rank s (in rank order). Rank s's ``send_counts[d]`` must equal rank
        d's ``recv_counts[s]``; zeros are allowed."""
        name = "all_to_allv"
        sc = _counts(send_counts, self.size, name, "send_counts")
        rc = _counts(recv_counts, self.size, name, "recv_counts")
        o = as_buffer(output, name, writable=True, read=False, role="output")
        i = as_buffer(input, name, writable=False, role="input")
        if i.count != sum(sc) or o.count != sum(rc):
            raise ValueError(
                f"{name}: input holds {i.count} elements and output {o.count}; they must "
                f"hold sum(send_counts) = {sum(sc)} and sum(recv_counts) = {sum(rc)}"
            )
        if sc[self.rank] != rc[self.rank]:
            raise ValueError(
                f"{name}: rank {self.rank} sends itself {sc[self.rank]} elements but "
                f"receives {rc[self.rank]} from itself"
            )
        _check_pair(name, o, i, "output", None)
        sb, rb = schedule.count_bounds(sc), schedule.count_bounds(rc)
        return self._submit(
            name,
            lambda ctx: linear.all_to_all(ctx, o.array, i.array, sb, rb),
            (o, i),
            async_op=async_op,
            timeout=timeout,
            shapes=f"{o.dtype_name} pieces",
        )

    def _intake_rooted(
        self, name: str, output: Any, input: Any, counts: list[int], root: int, big: str
    ) -> tuple[AnyBuffer | None, AnyBuffer | None]:
        """Take the buffers of gatherv (``big`` = "output") or scatterv ("input"): the big
        one exists on ``root`` only; this rank's piece holds ``counts[rank]`` elements."""
        if self.rank == root:
            if (output if big == "output" else input) is None:
                raise ValueError(f"{name}: the root needs an {big} buffer")
            return _intake_counts(name, output, input, counts, self.rank, big)
        if big == "output":
            piece, what = as_buffer(input, name, writable=False, role="input"), "input"
        else:
            piece = as_buffer(output, name, writable=True, read=False, role="output")
            what = "output"
        if piece.count != counts[self.rank]:
            raise ValueError(
                f"{name}: rank {self.rank}'s {what} holds {piece.count} elements, "
                f"counts[{self.rank}] = {counts[self.rank]}"
            )
        return (None, piece) if big == "output" else (piece, None)

    def gatherv(
        self,
        output: Any,
        input: Any,
        counts: Any,
        root: int = 0,
        *,
        async_op: bool = False,
        timeout: float | None = None,
    ) -> Work | None:
        """Gather inputs of different sizes on ``root``: rank r's ``input`` (``counts[r]``
        elements) lands in ``output`` after ranks 0..r-1's. ``output`` (``sum(counts)``
        elements) is needed on ``root`` only."""
        self._check_rank(root, "gatherv root")
        cs = _counts(counts, self.size, "gatherv")
        o, i = self._intake_rooted("gatherv", output, input, cs, root, "output")
        bounds = schedule.count_bounds(cs)
        return self._submit(
            "gatherv",
            lambda ctx: linear.gather(
                ctx, o.array if o is not None else None, i.array, root, bounds
            ),
            (o, i),
            async_op=async_op,
            timeout=timeout,
            shapes=f"counts {cs} x {i.dtype_name if i is not None else o.dtype_name}",
            root=root,
        )

    def scatterv(
        self,
        output: Any,
        input: Any,
        counts: Any,
        root: int = 0,
        *,
        async_op: bool = False,
        timeout: float | None = None,
    ) -> Work | None:
        """Scatter pieces of different sizes from ``root``: rank r's ``output`` gets the
        ``counts[r]`` elements of ``input`` after ranks 0..r-1's pieces. ``input``
        (``sum(counts)`` elements) is needed on ``root`` only."""
        self._check_rank(root, "scatterv root")
        cs = _counts(counts, self.size, "scatterv")
        o, i = self._intake_rooted("scatterv", output, input, cs, root, "input")
        bounds = schedule.count_bounds(cs)
        return self._submit(
            "scatterv",
            lambda ctx: linear.scatter(
                ctx, o.array, i.array if i is not None else None, root, bounds
            ),
            (o, i),
            async_op=async_op,
            timeout=timeout,
            shapes=f"counts {cs} x {i.dtype_name if i is not None else o.dtype_name}",
            root=root,
        )

    # -- object collectives -----------------------------------------------------------------
    def _object_op(self, name: str, body: Callable[[OpContext], Any], timeout: float | None) -> Any:
        self._not_grouped(name)
        result: list[Any] = []
        self._submit(
            name, lambda ctx: result.append(body(ctx)), (), async_op=False, timeout=timeout
        )
        return result[0]

    def all_gather_object(self, obj: Any, *, timeout: float | None = None) -> list[Any]:
        """Every rank's picklable ``obj``, as a list by rank (this rank's own entry is a
        copy, as every other rank gets it).

        Pickled with protocol 5; arrays and tensors inside travel out of band, from and into
        their own memory. Unpickling runs code the sender chose: peers are trusted as far
        as the job secret admits them (``RINGCOMM_SECRET``, docs/security.md).
        """
        return self._object_op(
            "all_gather_object", lambda ctx: objects.all_gather(ctx, obj), timeout
        )

    def broadcast_object(self, obj: Any, root: int = 0, *, timeout: float | None = None) -> Any:
        """``root``'s picklable ``obj`` on every rank (``obj`` elsewhere is ignored; the
        root gets its own object back). See :meth:`all_gather_object` on trust."""
        self._check_rank(root, "broadcast_object root")
        return self._object_op(
            "broadcast_object", lambda ctx: objects.broadcast(ctx, obj, root), timeout
        )

    def gather_object(
        self, obj: Any, root: int = 0, *, timeout: float | None = None
    ) -> list[Any] | None:
        """Every rank's picklable ``obj`` on ``root`` as a list by rank; None elsewhere.
        See :meth:`all_gather_object` on trust."""
        self._check_rank(root, "gather_object root")
        return self._object_op("gather_object", lambda ctx: objects.gather(ctx, obj, root), timeout)

    def scatter_object(
        self, objs: list[Any] | None, root: int = 0, *, timeout: float | None = None
    ) -> Any:
        """Rank r gets ``objs[r]`` from ``root`` (``objs``, one per rank, is needed on the
        root only). See :meth:`all_gather_object` on trust."""
        self._check_rank(root, "scatter_object root")
        if self.rank == root and (not isinstance(objs, (list, tuple)) or len(objs) != self.size):
            raise ValueError(
                f"scatter_object: the root needs a list of {self.size} objects, one per rank"
            )
        return self._object_op(
            "scatter_object", lambda ctx: objects.scatter(ctx, objs, root), timeout
        )

    def barrier(self, *, async_op: bool = False, timeout: float | None = None) -> Work | None:
        """Return once every rank has entered the barrier."""
        board = self._quick_board(async_op)
        if board is not None and self._run_piece(
            "barrier", (), board, direct.BARRIER_PIECE, direct.NOTHING, direct.NOTHING, timeout
        ):
            return None
        body: Callable[[OpContext], Any] = linear.barrier
        if self._board:
            body = lambda ctx: direct.barrier(ctx, linear.barrier)  # noqa: E731
        return self._submit("barrier", body, (), async_op=async_op, timeout=timeout)

    def monitored_barrier(
        self, timeout: float | None = None, *, wait_all_ranks: bool = False
    ) -> None:
        """A barrier that says who is missing: past ``timeout`` seconds rank 0 raises
        :class:`CommTimeoutError` naming the first rank that did not arrive (every one of
        them with ``wait_all_ranks``), and the ranks waiting for rank 0's release raise
        naming rank 0. It goes through rank 0 (O(n) messages there), so it is for
        debugging hangs, not for every step; the communicator is unusable after it failed.
        """
        self._submit(
            "monitored_barrier",
            lambda ctx: linear.monitored_barrier(ctx, wait_all_ranks),
            (),
            async_op=False,
            timeout=timeout,
        )

    # -- grouped operations -----------------------------------------------------------------
    @contextlib.contextmanager
    def group(self, *, async_op: bool = False, timeout: float | None = None) -> Iterator[Group]:
        """Run the collectives and sends/receives issued in this block (by this thread) as
        one operation, when the block ends::

            with comm.group():
                for g in grads:
                    comm.all_reduce(g)       # small ones are fused: one reduction
                comm.send(x, right)
                comm.recv(y, left)           # completes whatever order peers use

        Inside the block, calls only check their arguments and return at once (a
        :class:`Work` that completes with the group where ``async_op=True``); the block's
        end runs them and waits (``async_op=True`` here: it returns and the yielded
        :class:`Group`'s ``work`` follows the group). All sends go first, then the
        collectives in issue order, then the receives, so a group's sends and receives
        never deadlock on each other. all_reduce buffers below ``RINGCOMM_FUSION_BYTES``
        are packed per dtype and op and reduced together (:mod:`ringcomm.algorithms.fusion`);
        every rank must issue the same collectives in its group, as without one.
        ``timeout`` covers the whole group (default: the largest given inside, else
        ``RINGCOMM_TIMEOUT_SECONDS``). Groups do not nest; object collectives and
        :meth:`split` cannot be grouped.
        """
        if getattr(self._grouping, "group", None) is not None:
            raise RingcommError(f"group() on rank {self.rank}: groups do not nest")
        group = Group()
        self._grouping.group = group
        with self._lock:
            self._groups_open += 1
        try:
            yield group
        except BaseException:
            group.future.set_exception(
                RingcommError("the group() block raised before its operations ran; none ran")
            )
            raise
        finally:
            self._grouping.group = None
            with self._lock:
                self._groups_open -= 1
        group.work = self._submit_group(group, async_op, timeout)

    def _not_grouped(self, name: str) -> None:
        if getattr(self._grouping, "group", None) is not None:
            raise RingcommError(f"{name} on rank {self.rank} cannot run inside a group()")

    def _submit_group(self, group: Group, async_op: bool, timeout: float | None) -> Work | None:
        """Submit the operations issued inside ``group`` as one."""
        ops = group.ops
        sends = [o for o in ops if o.p2p and o.name == "send"]
        recvs = [o for o in ops if o.p2p and o.name != "send"]
        collectives = [o for o in ops if not o.p2p]
        keys = [
            None if o.fuse is None else ((o.fuse.dtype_name, o.reduce_op), o.fuse.nbytes)
            for o in collectives
        ]
        units = [
            [collectives[i] for i in unit] for unit in fusion.plan(keys, self._config.fusion_bytes)
        ]
        parts = [
            u[0] if u[0].body is not _group_chooses else self._grouped_allreduce(u) for u in units
        ]
        limits = [o.timeout for o in ops if o.timeout is not None]
        if timeout is None and limits:
            timeout = max(limits)

        def body(ctx: OpContext) -> None:
            p2p = ctx.part(0, KIND_P2P, ReduceOp.SUM, False)
            for o in sends:
                o.body(p2p)
            for j, o in enumerate(parts, start=1):
                o.body(ctx.part(ctx.seq + j, KIND_COLLECTIVE, int(o.reduce_op), o.bfloat16))
            for o in recvs:
                o.body(p2p)

        shapes = f"{len(parts)} collectives"
        if self._config.debug:  # what the agreement check compares (costly for big groups)
            shapes = "; ".join(
                protocol.describe(o.name, o.buffers, o.reduce_op, o.root, o.shapes) for o in parts
            )
        try:
            work = self._submit(
                "group",
                body,
                tuple(b for o in ops for b in o.buffers),
                async_op=async_op,
                timeout=timeout,
                p2p=not parts,
                shapes=shapes,
                seqs=1 + len(parts),
            )
        except BaseException as e:
            group.future.set_exception(e)
            raise
        if work is None:
            group.future.set_result(None)
        else:
            work.get_future().add_done_callback(functools.partial(_settle, group.future))
        return work

    def _grouped_allreduce(self, unit: list[_Part]) -> _Part:
        """One part that all-reduces the buffers of ``unit`` (all_reduce parts of one dtype
        and op, as :func:`fusion.plan` put them together): in place where it is one buffer,
        else packed into one fusion buffer."""
        buffers = tuple(o.fuse for o in unit if o.fuse is not None)
        nbytes = sum(b.nbytes for b in buffers)
        first = unit[0]
        run = self._allreduce_algorithm(
            nbytes, ReduceOp(first.reduce_op), _on_host(buffers, reduces=True), None
        )
        arrays = [b.array for b in buffers]
        if len(arrays) == 1:
            return first._replace(body=lambda ctx: run(ctx, arrays[0]))

        def body(ctx: OpContext) -> None:
            # One fusion buffer per communicator, at most RINGCOMM_FUSION_BYTES: parts run
            # one at a time, under the execution lock.
            if self._fusion_scratch is None or self._fusion_scratch.nbytes < nbytes:
                self._fusion_scratch = np.empty(self._config.fusion_bytes, np.uint8)
            fusion.allreduce(ctx, arrays, run, self._fusion_scratch)

        return first._replace(
            name="all_reduce",
            body=body,
            buffers=buffers,
            shapes=f"{len(arrays)} fused, {nbytes // max(1, arrays[0].itemsize)} x "
            f"{first.buffers[0].dtype_name}",
        )

    # -- point to point ---------------------------------------------------------------------
    def send(
        self,
        buf: Any,
        dst: int,
        tag: int = 0,
        *,
        async_op: bool = False,
        timeout: float | None = None,
    ) -> Work | None:
        """Send ``buf`` to rank ``dst``; matched by the n-th :meth:`recv` from this rank with
        the same ``tag`` (messages between a pair never overtake each other)."""
        self._check_rank(dst, "send dst")
        self._check_tag(tag)
        b = as_buffer(buf, "send buf", writable=False)
        return self._submit(
            "send",
            lambda ctx: linear.send(ctx, dst, b.array, tag),
            (b,),
            async_op=async_op,
            timeout=timeout,
            p2p=True,
        )

    def recv(
        self,
        buf: Any,
        src: int | None,
        tag: int = 0,
        *,
        async_op: bool = False,
        timeout: float | None = None,
    ) -> Work | int | None:
        """Receive into ``buf`` the message that rank ``src`` sent with ``tag``; its size
        must match ``buf``. ``src=None``: from whichever rank's message with ``tag`` comes
        first; the call returns that rank (with ``async_op``, the Work's future's result)."""
        if src is not None:
            self._check_rank(src, "recv src")
        self._check_tag(tag)
        b = as_buffer(buf, "recv buf", writable=True, read=False)
        if src is None:
            sender: list[int] = []
            work = self._submit(
                "recv",
                lambda ctx: sender.append(linear.recv_any(ctx, b.array, tag)) or sender[-1],
                (b,),
                async_op=async_op,
                timeout=timeout,
                p2p=True,
            )
            return work if work is not None or not sender else sender[0]
        return self._submit(
            "recv",
            lambda ctx: linear.recv(ctx, src, b.array, tag),
            (b,),
            async_op=async_op,
            timeout=timeout,
            p2p=True,
        )

    # -- sub-communicators ------------------------------------------------------------------
    def split(
        self, color: int | None, key: int = 0, *, timeout: float | None = None
    ) -> Communicator | None:
        """Split into sub-communicators, one per ``color``; collective over this communicator.

        Ranks are ordered by ``key``, then by their rank here. A rank passing ``color=None``
        joins none and gets None.

        Example::

            row = comm.split(color=comm.rank // 2)
        """
        self._not_grouped("split")
        if color is not None and (not isinstance(color, int) or color < 0):
            raise ValueError(f"split: color must be a non-negative int or None, got {color!r}")
        if not isinstance(key, int):
            raise TypeError(f"split: key must be an int, got {type(key).__name__}")
        holder: list[Communicator | None] = []

        def body(ctx: OpContext) -> None:
            holder.append(self._split(ctx, color, key))

        self._submit("split", body, (), async_op=False, timeout=timeout)
        return holder[0]

    def _split(self, ctx: OpContext, color: int | None, key: int) -> Communicator | None:
        endpoint = self._endpoints() if color is not None else None
        record = json.dumps(
            {"color": color, "key": key, "addr": endpoint.address.decode() if endpoint else ""}
        )
        try:
            if len(record.encode()) > _SPLIT_RECORD_BYTES:
                raise ValueError(f"split: endpoint address too long ({len(record)} bytes)")
            rows = [json.loads(t) for t in records.allgather_text(ctx, record, _SPLIT_RECORD_BYTES)]
        except BaseException:
            if endpoint is not None:
                endpoint.close()
            raise
        members = sorted((rec["key"], r) for r, rec in enumerate(rows) if rec["color"] == color)
        new_rank = [r for _, r in members].index(self.rank) if color is not None else -1
        digest = hashlib.blake2b(
            f"{self._transport.comm_id}/{ctx.seq}/{color}".encode(), digest_size=8
        ).digest()
        transport = self._transport.split(
            color,
            key,
            new_rank,
            [rows[r]["addr"].encode() for _, r in members],
            int.from_bytes(digest, "little"),
            endpoint,
        )
        if transport is None:
            return None
        topology = self._topology.subset(new_rank, [r for _, r in members])
        return Communicator(transport, self._config, self._endpoints, topology)

    # -- lifetime ---------------------------------------------------------------------------
    def close(self, timeout: float | None = None) -> None:
        """Finish queued operations, then release threads and sockets. Idempotent.

        Waits at most ``timeout`` seconds (default ``RINGCOMM_CLOSE_TIMEOUT_SECONDS``) for
        queued and running operations; whatever is still running then fails with
        :class:`CommClosedError`, as after :meth:`abort`, and close returns. The same bound
        holds at interpreter exit, where ringcomm closes every communicator left open.
        """
        limit = self._config.close_timeout_seconds if timeout is None else timeout
        for child in (self._local, self._cross):  # made by split_local()/split_cross()
            if child is not None:
                child.close(timeout)
        if self._stats is not None:
            self._exchange_arrivals(min(limit, _STRAGGLER_EXCHANGE_SECONDS))
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        give_up = time.monotonic() + limit
        if threading.current_thread() is not self._thread:
            self._thread.join(limit)
            if self._thread.is_alive():
                self._fail_pending(f"close() waited {limit:g} s for queued operations")
                self._thread.join(_ABORTED_JOIN_SECONDS)
        # A blocking call may still run inline in another thread: it holds the lock.
        if not self._exec_lock.acquire(timeout=max(0.0, give_up - time.monotonic())):
            self._fail_pending(f"close() waited {limit:g} s for a running operation")
            self._exec_lock.acquire(timeout=_ABORTED_JOIN_SECONDS)
        try:
            if self._gpu is not None:
                self._gpu.close()
            self._transport.close()
        finally:
            self._exec_lock.release()
        if self._timeline is not None:
            self._timeline.write()
        if self._stats is not None and self._stats.rows():
            print_table(self._stats, f"ringcomm stats, rank {self.rank} of {self.size}")
        diagnostics.unwatch(self)
        _live.discard(self)

    def _exchange_arrivals(self, timeout: float) -> None:
        """Give the statistics every rank's arrival times (one all_gather, left out of the
        statistics), for the straggler column; on a failure or a timeout, go without."""
        stats = self._stats
        with self._lock:
            usable = not self._closed and self._broken is None
        if stats is None or self.size == 1 or not usable or timeout <= 0:
            return
        if threading.current_thread() is self._thread:
            return  # close() from a callback on the progress thread: it cannot wait here
        mine = stats.arrivals()
        everyone = np.empty((self.size, *mine.shape), np.int64)
        self._stats = None
        try:
            self.all_gather(everyone.reshape(-1), mine.reshape(-1), timeout=timeout)
        except RingcommError as e:
            log.warning("rank %d: no straggler column in the statistics: %s", self.rank, e)
            return
        finally:
            self._stats = stats
        stats.add_everyones_arrivals(everyone)

    def _fail_pending(self, why: str) -> None:
        """Fail the running operation (within 0.2 s) and everything queued, at once."""
        log.warning("rank %d: %s; failing what is still pending", self.rank, why)
        with self._lock:
            if self._broken is None:
                self._broken = CommClosedError(
                    f"rank {self.rank}: the communicator was closed ({why})"
                )
        self._transport.abort(f"closed: {why}")

    @property
    def transport(self) -> str:
        """The transport this communicator runs on: ``zmq``, ``mpi`` or ``local``."""
        return self._transport.name

    def abort(self, reason: str = "abort() was called") -> None:
        """Fail everything pending at once, then close.

        The running operation fails within 0.2 s and every queued one at once, each with
        :class:`CommClosedError`; then the communicator is closed like :meth:`close`. Peers
        waiting for this rank get :class:`PeerLostError` over shared memory and sockets
        (over MPI, their timeout). The process can then build a new communicator, for
        example among the surviving ranks: ``ringcomm.init(...)`` with a new port.
        """
        with self._lock:
            if self._broken is None:
                self._broken = CommClosedError(
                    f"rank {self.rank}: the communicator was aborted ({reason})"
                )
        for child in (self._local, self._cross):  # its peers must not wait for it either
            if child is not None:
                child.abort(reason)
        self._transport.abort(reason)
        log.info("rank %d: communicator aborted (%s)", self.rank, reason)
        self.close()

    def stats(self) -> list[dict[str, Any]]:
        """What this communicator ran, per operation and size bucket (the next power of two
        of its largest buffer): count, bytes, mean/p50/p99 time in microseconds, algbw and
        busbw in GB/s. Empty unless ``RINGCOMM_STATS=1`` (or ``Config(stats=True)``);
        successful operations only.

        Example::

            for row in comm.stats():
                print(row["op"], row["bucket_bytes"], row["count"], row["p50_us"])
        """
        return self._stats.rows() if self._stats is not None else []

    @property
    def gpu_path(self) -> str | None:
        """How operations on GPU buffers run here: ``"nccl"`` or ``"staging"``; None until
        the first one (the choice is made collectively then)."""
        return self._gpu.path if self._gpu is not None else None

    def __enter__(self) -> Communicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ringcomm.Communicator rank {self.rank} of {self.size}>"

    # -- validation helpers -----------------------------------------------------------------
    def _check_rank(self, r: Any, what: str) -> None:
        if not isinstance(r, (int, np.integer)) or not 0 <= r < self.size:
            raise ValueError(f"{what} must be a rank in 0..{self.size - 1}, got {r!r}")

    def _check_tag(self, tag: Any) -> None:
        top = self._transport.max_tag
        if not isinstance(tag, (int, np.integer)) or not 0 <= tag <= top:
            raise ValueError(f"tag must be an int in 0..{top}, got {tag!r}")
