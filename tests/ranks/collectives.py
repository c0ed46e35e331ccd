"""Bodies run on every rank by the tests (importable by spawned rank processes)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

import ringcomm
from data import (
    DTYPES,
    OPS,
    assert_reduced,
    make_input,
    op_applies,
    reference,
    round_to_16_bits,
)

COUNTS = (0, 1, 2, 3, 7, 13, 1000, 4099)


def allreduce_matrix(
    comm: ringcomm.Communicator, algorithms: tuple[str, ...], counts: tuple[int, ...] = COUNTS
) -> int:
    """Every op x dtype x count x algorithm against numpy; returns the number of cases."""
    n, cases = comm.size, 0
    for alg in algorithms:
        for dtype in DTYPES:
            for op in OPS:
                if not op_applies(op, dtype):
                    continue
                for count in counts:
                    inputs = [make_input(dtype, op, r, count, seed=count) for r in range(n)]
                    buf = inputs[comm.rank].copy()
                    comm.all_reduce(buf, op, algorithm=alg)
                    assert_reduced(
                        buf,
                        reference(op, inputs),
                        op,
                        f"all_reduce {alg} {op.name} {dtype} count={count} n={n}",
                    )
                    cases += 1
    return cases


def all_ranks_get_identical_bits(comm: ringcomm.Communicator, algorithm: str) -> np.ndarray:
    """Random floats: the result differs from numpy in rounding but must match across ranks."""
    rng = np.random.default_rng(comm.rank)
    buf = rng.standard_normal(10_007).astype(np.float32)
    comm.all_reduce(buf, algorithm=algorithm)
    return buf


def _gather_and_scatter(
    comm: ringcomm.Communicator, dtype: str, count: int, allgather: str, reduce_scatter: str
) -> None:
    """all_gather with ``allgather`` and reduce_scatter with ``reduce_scatter``, out of place
    and in place, against numpy."""
    n, r = comm.size, comm.rank
    what = f"{dtype} count={count} n={n}"
    mine = make_input(dtype, ringcomm.SUM, r, count, seed=1)
    everyone = [make_input(dtype, ringcomm.SUM, q, count, seed=1) for q in range(n)]
    what_ag = f"all_gather {allgather} {what}"
    out = np.zeros(n * count, dtype)
    comm.all_gather(out, mine, algorithm=allgather)
    np.testing.assert_array_equal(out, np.concatenate(everyone), err_msg=what_ag)
    out2 = np.zeros(n * count, dtype)
    out2[r * count : (r + 1) * count] = mine
    comm.all_gather(out2, out2[r * count : (r + 1) * count], algorithm=allgather)
    np.testing.assert_array_equal(out2, np.concatenate(everyone), err_msg="in place " + what_ag)
    what_rs = f"reduce_scatter {reduce_scatter} {what}"
    big = [make_input(dtype, ringcomm.SUM, q, n * count, seed=2) for q in range(n)]
    part = np.zeros(count, dtype)
    before = big[r].copy()
    comm.reduce_scatter(part, big[r], ringcomm.SUM, algorithm=reduce_scatter)
    want = reference(ringcomm.SUM, big)[r * count : (r + 1) * count]
    np.testing.assert_array_equal(part, want, err_msg=what_rs)
    np.testing.assert_array_equal(big[r], before, err_msg="input changed: " + what_rs)
    # ... and in place: the output is this rank's slot of the input
    whole = big[r].copy()
    comm.reduce_scatter(
        whole[r * count : (r + 1) * count], whole, ringcomm.SUM, algorithm=reduce_scatter
    )
    np.testing.assert_array_equal(
        whole[r * count : (r + 1) * count], want, err_msg="in place " + what_rs
    )


def other_collectives(comm: ringcomm.Communicator, counts: tuple[int, ...] = COUNTS) -> None:
    """all_gather, reduce_scatter, broadcast, reduce, gather, scatter, all_to_all, p2p."""
    n, r = comm.size, comm.rank
    for dtype in ("int8", "uint64", "float16", "float32", "float64", "bool"):
        for count in counts:
            what = f"{dtype} count={count} n={n}"
            mine = make_input(dtype, ringcomm.SUM, r, count, seed=1)
            everyone = [make_input(dtype, ringcomm.SUM, q, count, seed=1) for q in range(n)]
            big = [make_input(dtype, ringcomm.SUM, q, n * count, seed=2) for q in range(n)]
            for ag, rs in (("ring", "ring"), ("bruck", "recursive_halving")):
                _gather_and_scatter(comm, dtype, count, ag, rs)
            for root in {0, n - 1}:
                for alg in ("binomial", "chain"):
                    buf = everyone[root].copy() if r == root else np.zeros(count, dtype)
                    comm.broadcast(buf, root, algorithm=alg)
                    np.testing.assert_array_equal(
                        buf, everyone[root], err_msg=f"bcast {alg} {what}"
                    )
                buf = mine.copy()
                comm.reduce(buf, root, ringcomm.MAX)
                want = reference(ringcomm.MAX, everyone) if r == root else mine
                np.testing.assert_array_equal(buf, want, err_msg=f"reduce root={root} {what}")
                g = np.zeros(n * count, dtype) if r == root else None
                comm.gather(g, mine, root)
                if r == root:
                    np.testing.assert_array_equal(g, np.concatenate(everyone), err_msg="gather")
                s = np.zeros(count, dtype)
                src = np.concatenate(big)[: n * count] if r == root else None
                comm.scatter(s, src, root)
                np.testing.assert_array_equal(
                    s, np.concatenate(big)[r * count : (r + 1) * count], err_msg="scatter " + what
                )
            out = np.zeros(n * count, dtype)
            comm.all_to_all(out, big[r])
            want = np.concatenate([big[q][r * count : (r + 1) * count] for q in range(n)])
            np.testing.assert_array_equal(out, want, err_msg="all_to_all " + what)
    # point to point around the ring, two tags, ordered per tag
    right, left = (r + 1) % n, (r - 1) % n
    for count in counts:
        a = np.full(count, r, np.int32)
        b = np.full(count, r + 100, np.int32)
        works = [
            comm.send(a, right, tag=1, async_op=True),
            comm.send(b, right, tag=2, async_op=True),
        ]
        got_b, got_a = np.empty(count, np.int32), np.empty(count, np.int32)
        comm.recv(got_b, left, tag=2)
        comm.recv(got_a, left, tag=1)
        for w in works:
            w.wait()
        np.testing.assert_array_equal(got_a, np.full(count, left, np.int32))
        np.testing.assert_array_equal(got_b, np.full(count, left + 100, np.int32))
    comm.barrier()


def async_ops_in_flight(comm: ringcomm.Communicator) -> list[float]:
    """Many async ops of different kinds queued at once complete in order and correctly."""
    n = comm.size
    bufs = [np.full(1000 + i, float(comm.rank + i), np.float64) for i in range(20)]
    works = [comm.all_reduce(b, async_op=True) for b in bufs]
    gathered = np.zeros(3 * n)
    works.append(comm.all_gather(gathered, np.full(3, float(comm.rank)), async_op=True))
    works.append(comm.barrier(async_op=True))
    futures = [w.get_future() for w in works]
    for w in works:
        assert w.wait(timeout=60)
        assert w.is_completed()
    assert all(f.done() and f.exception() is None for f in futures)
    for i, b in enumerate(bufs):
        np.testing.assert_array_equal(b, np.full(b.size, sum(q + i for q in range(n))))
    np.testing.assert_array_equal(gathered, np.repeat(np.arange(n, dtype=float), 3))
    return [float(b[0]) for b in bufs]


def blocking_calls_wait_their_turn(comm: ringcomm.Communicator) -> None:
    """A blocking call issued while async calls are still queued runs after them, not at
    once on the caller's thread: every rank runs the operations in issue order (the sizes
    differ, so another order fails on a size check), and once the blocking call returns,
    every earlier one is complete."""
    n = comm.size
    bufs = [np.full(1000 + 7 * i, float(comm.rank + i), np.float64) for i in range(12)]
    works = []
    for i, b in enumerate(bufs):
        if i % 3 == 2:
            comm.all_reduce(b)
            assert all(w.is_completed() for w in works), f"op {i} ran ahead of the queue"
        else:
            works.append(comm.all_reduce(b, async_op=True))
    for w in works:
        assert w.wait(timeout=60)
    for i, b in enumerate(bufs):
        np.testing.assert_array_equal(b, np.full(b.size, sum(q + i for q in range(n))))


def subcommunicators_concurrently(comm: ringcomm.Communicator) -> tuple[int, int, int, int]:
    """Split into two colours; both halves and the parent run async ops at the same time."""
    n, r = comm.size, comm.rank
    sub = comm.split(r % 2, key=-r)  # reverse order inside each colour
    members = [q for q in range(n) if q % 2 == r % 2][::-1]
    assert sub.size == len(members) and sub.rank == members.index(r)
    none = comm.split(None if r == 0 else 0)
    assert (none is None) == (r == 0)
    sub_buf = np.full(100_000, float(r), np.float32)
    world_buf = np.full(100_000, 1.0, np.float32)
    w1 = sub.all_reduce(sub_buf, async_op=True)
    w2 = comm.all_reduce(world_buf, async_op=True)
    w1.wait()
    w2.wait()
    np.testing.assert_array_equal(sub_buf, np.full(100_000, float(sum(members)), np.float32))
    np.testing.assert_array_equal(world_buf, np.full(100_000, float(n), np.float32))
    nested = sub.split(0)
    nested.barrier()
    for c in (nested, sub, none):
        if c is not None:
            c.close()
    return sub.rank, sub.size, int(sub_buf[0]), n


def torch_tensors(comm: ringcomm.Communicator) -> None:
    """torch CPU tensors of every dtype, bfloat16 included, in place and without copies."""
    import torch

    n, r = comm.size, comm.rank
    for dtype in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
    ):
        t = (torch.arange(1001) % 5 + r).to(dtype)
        ptr = t.data_ptr()
        comm.all_reduce(t)
        want = sum((torch.arange(1001) % 5 + q).to(dtype).to(torch.float64) for q in range(n))
        if dtype == torch.bool:
            want = want > 0
        assert t.data_ptr() == ptr
        torch.testing.assert_close(t.to(torch.float64), want.to(torch.float64), msg=str(dtype))
    # bf16 AVG rounds once from fp32
    t = torch.full((513,), 1.0 + r, dtype=torch.bfloat16)
    comm.all_reduce(t, ringcomm.AVG)
    assert torch.all(t == torch.tensor((n + 1) / 2, dtype=torch.bfloat16))
    g = torch.zeros(n * 7, requires_grad=False)
    comm.all_gather(g, torch.full((7,), float(r)))
    torch.testing.assert_close(g, torch.arange(n, dtype=torch.float32).repeat_interleave(7))
    p = torch.nn.Parameter(torch.ones(10))
    comm.all_reduce(p)  # a parameter that requires grad is reduced in place too
    torch.testing.assert_close(p.detach(), torch.full((10,), float(n)))


def timeout_names_the_peer(comm: ringcomm.Communicator) -> str:
    """The last rank skips an all_reduce: the others fail fast with a typed, named error."""
    if comm.rank == comm.size - 1:
        time.sleep(1.5)
        return ""
    buf = np.ones(10, np.float32)
    t0 = time.monotonic()
    try:
        comm.all_reduce(buf, timeout=0.5)
    except ringcomm.CommTimeoutError as e:
        assert time.monotonic() - t0 < 5
        msg = str(e)
        assert f"rank {comm.rank}" in msg and "all_reduce #" in msg and "waiting for rank" in msg
        try:
            comm.barrier()
        except ringcomm.CommClosedError as e2:
            assert "unusable" in str(e2)
        else:
            raise AssertionError("a broken communicator accepted more work")
        return msg
    raise AssertionError("no timeout")


def idle_rank_burns_no_cpu(comm: ringcomm.Communicator) -> float:
    """While rank 0 waits 1 s for rank 1 inside an all_reduce, its CPU time stays small."""
    import resource

    if comm.rank == 0:
        before = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        comm.all_reduce(np.ones(4, np.float32))
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return cpu / wall
    time.sleep(1.0)
    comm.all_reduce(np.ones(4, np.float32))
    return 0.0


def threads_share_a_communicator(comm: ringcomm.Communicator) -> None:
    """Two user threads issue ops on one communicator in a fixed order via async handles."""
    results: list[Any] = []
    bufs = [np.full(50, float(i), np.float64) for i in range(8)]

    def worker() -> None:
        works = [comm.all_reduce(b, async_op=True) for b in bufs]
        results.extend(w.wait() for w in works)

    t = threading.Thread(target=worker)
    t.start()
    t.join(60)
    assert results == [True] * 8
    for i, b in enumerate(bufs):
        np.testing.assert_array_equal(b, np.full(50, float(i * comm.size)))


def p2p_size_mismatch_is_refused(comm: ringcomm.Communicator) -> None:
    """A receive of another size than the message is refused, not filled in part (on a pair
    split off for it: the error leaves the receiver's communicator unusable)."""
    pair = comm.split(0 if comm.rank < 2 else None)
    if pair is None or pair.size < 2:
        return
    try:
        if pair.rank == 0:
            pair.send(np.arange(3000, dtype=np.float32), 1, tag=9)
            return
        try:
            pair.recv(np.empty(2000, np.float32), 0, tag=9)
        except ringcomm.TransportError as e:
            assert "12000" in str(e) and "8000" in str(e), e
        else:
            raise AssertionError("a 12000-byte message filled an 8000-byte receive")
    finally:
        pair.close()


def object_collectives(comm: ringcomm.Communicator) -> None:
    """all_gather_object, broadcast_object, gather_object and scatter_object with arrays
    inside (empty, small, several segments, strided) against what each rank sent."""
    n, r = comm.size, comm.rank

    def thing(q: int) -> dict:
        return {
            "rank": q,
            "name": f"rank {q}" * q,
            "big": np.arange(q * 300_000, dtype=np.float32),  # 0 .. 3.4 MiB
            "strided": np.arange(40, dtype=np.int64)[:: q + 1],  # not contiguous from q=1
            "nested": [q, (q, None), {"k": np.full(3, q, np.int8)}],
        }

    def same(a: dict, b: dict) -> bool:
        return (
            a["rank"] == b["rank"]
            and a["name"] == b["name"]
            and np.array_equal(a["big"], b["big"])
            and np.array_equal(a["strided"], b["strided"])
            and a["nested"][:2] == b["nested"][:2]
            and np.array_equal(a["nested"][2]["k"], b["nested"][2]["k"])
        )

    mine = thing(r)
    everyone = comm.all_gather_object(mine)
    assert len(everyone) == n and all(same(everyone[q], thing(q)) for q in range(n))
    everyone[r]["big"][:] = -1  # this rank's entry is a copy ...
    assert same(mine, thing(r))  # ... its own object is untouched
    for root in {0, n - 1}:
        got = comm.broadcast_object(thing(root) if r == root else None, root)
        assert same(got, thing(root)), (root, r)
        gathered = comm.gather_object(thing(r), root)
        if r == root:
            assert gathered is not None and all(same(gathered[q], thing(q)) for q in range(n))
        else:
            assert gathered is None
        part = comm.scatter_object([thing(q) for q in range(n)] if r == root else None, root)
        assert same(part, thing(r)), (root, r)
    assert comm.all_gather_object(None) == [None] * n


def vector_collectives(comm: ringcomm.Communicator) -> None:
    """all_gatherv, reduce_scatter_v, all_to_allv, gatherv and scatterv with skewed, zero
    and all-zero counts, in and out of place, every root, against each rank's own input."""
    n, r = comm.size, comm.rank
    patterns = [
        [1000 * 10 if q == 0 else 1000 for q in range(n)],  # one rank 10x the others
        [0 if q % 2 else 7 * (q + 1) for q in range(n)],  # zeros between
        [0] * n,
        [q + 1 for q in range(n)],
    ]
    for dtype in ("int32", "float64", "float16"):
        for counts in patterns:
            what = f"{dtype} counts={counts} n={n}"
            off = [sum(counts[:q]) for q in range(n + 1)]
            total = off[n]
            pieces = [make_input(dtype, ringcomm.SUM, q, counts[q], seed=3) for q in range(n)]
            whole = np.concatenate(pieces)
            # all_gatherv, out of place and in place
            out = np.zeros(total, dtype)
            comm.all_gatherv(out, pieces[r], counts)
            np.testing.assert_array_equal(out, whole, err_msg="all_gatherv " + what)
            out = np.zeros(total, dtype)
            out[off[r] : off[r + 1]] = pieces[r]
            comm.all_gatherv(out, out[off[r] : off[r + 1]], counts)
            np.testing.assert_array_equal(out, whole, err_msg="in-place all_gatherv " + what)
            # reduce_scatter_v: everyone's input is sum(counts) long
            inputs = [make_input(dtype, ringcomm.SUM, q, total, seed=4) for q in range(n)]
            want = reference(ringcomm.SUM, inputs)[off[r] : off[r + 1]]
            part = np.zeros(counts[r], dtype)
            before = inputs[r].copy()
            comm.reduce_scatter_v(part, inputs[r], counts)
            assert_reduced(part, want, ringcomm.SUM, "reduce_scatter_v " + what)
            np.testing.assert_array_equal(inputs[r], before, err_msg="reduce_scatter_v input")
            buf = inputs[r].copy()
            comm.reduce_scatter_v(buf[off[r] : off[r + 1]], buf, counts)
            assert_reduced(buf[off[r] : off[r + 1]], want, ringcomm.SUM, "in place " + what)
            for root in sorted({0, n - 1}):
                g = np.zeros(total, dtype) if r == root else None
                comm.gatherv(g, pieces[r], counts, root)
                if r == root:
                    np.testing.assert_array_equal(g, whole, err_msg=f"gatherv {root} {what}")
                s = np.zeros(counts[r], dtype)
                comm.scatterv(s, whole if r == root else None, counts, root)
                np.testing.assert_array_equal(s, pieces[r], err_msg=f"scatterv {root} {what}")

            # all_to_allv: rank s sends (s + 2d) % 3 * counts[d] elements to d
            def amount(s: int, d: int, counts: list[int] = counts) -> int:
                return (s + 2 * d) % 3 * counts[d]

            send = [amount(r, d) for d in range(n)]
            recv = [amount(s, r) for s in range(n)]
            src = make_input(dtype, ringcomm.SUM, r, sum(send), seed=5)
            out = np.zeros(sum(recv), dtype)
            comm.all_to_allv(out, src, send, recv)
            expect = []
            for s in range(n):
                theirs = make_input(dtype, ringcomm.SUM, s, sum(amount(s, d) for d in range(n)), 5)
                start = sum(amount(s, d) for d in range(r))
                expect.append(theirs[start : start + amount(s, r)])
            np.testing.assert_array_equal(out, np.concatenate(expect), err_msg="a2av " + what)
    comm.barrier()


def grouped_operations(comm: ringcomm.Communicator) -> None:
    """group(): fused all_reduce of many buffers (dtypes, ops, sizes both sides of the fusion
    threshold), other collectives and sends/receives in one group, receives issued before
    the sends they need, p2p-only groups on a subset of ranks, async groups."""
    n, r = comm.size, comm.rank
    right, left = (r + 1) % n, (r - 1) % n
    cases = []
    for k in range(60):  # the comm's threshold is set to a few KiB in the tests
        dtype = ("float32", "int64", "float16")[k % 3]
        op = ringcomm.MAX if k % 4 == 0 else ringcomm.SUM
        count = (0, 1, 7, 100, 900, 3000)[k % 6]
        everyone = [make_input(dtype, op, q, count, seed=k) for q in range(n)]
        cases.append((everyone[r].copy(), reference(op, everyone), op, f"#{k} {dtype} {count}"))
    gathered = np.zeros(n * 5, np.int32)
    bcast = np.full(4, r, np.int16)
    got_left = np.zeros(100, np.int64)
    got_right = np.zeros(3, np.float32)
    with comm.group():
        # receives first, in the order of the block: a group runs its sends first
        comm.recv(got_left, left, tag=7)
        if n > 1:
            comm.recv(got_right, right, tag=8)
        for buf, _, op, _ in cases:
            comm.all_reduce(buf, op)
        comm.all_gather(gathered, np.full(5, r, np.int32))
        comm.broadcast(bcast, root=n - 1)
        comm.send(np.full(100, r, np.int64), right, tag=7)
        if n > 1:
            comm.send(np.full(3, r, np.float32), left, tag=8)
    for buf, want, op, what in cases:
        assert_reduced(buf, want, op, "grouped all_reduce " + what)
    np.testing.assert_array_equal(gathered, np.repeat(np.arange(n, dtype=np.int32), 5))
    np.testing.assert_array_equal(bcast, np.full(4, n - 1, np.int16))
    np.testing.assert_array_equal(got_left, np.full(100, left))
    if n > 1:
        np.testing.assert_array_equal(got_right, np.full(3, right, np.float32))
    # A p2p-only group between ranks 0 and 1 takes no collective number: the collectives
    # after it still line up with the ranks that were not in it.
    if n > 1 and r < 2:
        peer = 1 - r
        mine, theirs = np.full(50_000, r, np.float64), np.zeros(50_000)
        with comm.group():
            comm.recv(theirs, peer)
            comm.send(mine, peer)
        np.testing.assert_array_equal(theirs, np.full(50_000, peer, np.float64))
    # async: the group's work and the works of its calls
    a, b = np.full(10, r + 1.0), np.full(3, r + 1, np.int32)
    with comm.group(async_op=True) as g:
        wa = comm.all_reduce(a, async_op=True)
        comm.all_reduce(b, ringcomm.MAX)
    assert g.work is not None
    assert wa is not None and wa.wait() and g.work.wait()
    np.testing.assert_array_equal(a, np.full(10, n * (n + 1) / 2))
    np.testing.assert_array_equal(b, np.full(3, n, np.int32))
    # what a group refuses
    for refused in (
        lambda: comm.group().__enter__(),
        lambda: comm.all_gather_object(1),
        lambda: comm.split(0),
    ):
        with comm.group():
            try:
                refused()
            except ringcomm.RingcommError as e:
                assert "group" in str(e), e
            else:
                raise AssertionError("a group accepted what it cannot run")
    # a block that raises runs nothing, and its works say so
    try:
        with comm.group():
            w = comm.all_reduce(a, async_op=True)
            raise KeyError("user code")
    except KeyError:
        pass
    try:
        w.wait()
    except ringcomm.RingcommError as e:
        assert "none ran" in str(e)
    else:
        raise AssertionError("a work of an abandoned group completed")
    comm.barrier()


def any_source_receives(comm: ringcomm.Communicator) -> None:
    """recv(src=None): rank 0 receives three messages from every other rank, in whatever
    order they come, each with its sender's rank, and each sender's in the order sent;
    blocking and async."""
    n, r = comm.size, comm.rank
    rounds = 3
    if r == 0:
        seen: dict[int, int] = {}
        for k in range(rounds * (n - 1)):
            got = np.zeros(1000, np.int64)
            if k % 2:
                work = comm.recv(got, None, tag=3, async_op=True)
                assert isinstance(work, ringcomm.Work)
                work.wait()
                src = work.get_future().result()
            else:
                src = comm.recv(got, None, tag=3)
            assert isinstance(src, int) and 0 < src < n, src
            np.testing.assert_array_equal(got, np.full(1000, src * 10 + seen.get(src, 0)))
            seen[src] = seen.get(src, 0) + 1
        assert seen == dict.fromkeys(range(1, n), rounds), seen
    else:
        for round_ in range(rounds):
            comm.send(np.full(1000, r * 10 + round_, np.int64), 0, tag=3)
    if n == 1:  # a message to oneself
        comm.send(np.arange(4), 0, tag=9)
        got = np.zeros(4, np.int64)
        assert comm.recv(got, None, tag=9) == 0 and (got == np.arange(4)).all()
    comm.barrier()


def quick_path_takes_what_as_buffer_takes(comm: ringcomm.Communicator) -> None:
    """A blocking all_reduce whose native piece is chosen already skips the general intake:
    it must still refuse what as_buffer refuses (read-only, strided), flatten what it
    takes (2-D), and sum right."""
    n, r = comm.size, comm.rank
    a = np.ones(1024, np.float32)
    for _ in range(2):  # the first makes the board, the second chooses its piece
        comm.all_reduce(a)
    assert ("all_reduce", a.nbytes, a.dtype, None) in comm._quick, list(comm._quick)  # type: ignore[attr-defined]
    read_only = np.ones(1024, np.float32)
    read_only.flags.writeable = False
    _refused(lambda: comm.all_reduce(read_only), ValueError, "read-only")
    strided = np.ones(2048, np.float32)[::2]  # 4 KiB of float32 too, not contiguous
    _refused(lambda: comm.all_reduce(strided), ValueError, "not C-contiguous")
    square = np.full((32, 32), r + 1, np.float32)
    comm.all_reduce(square)
    np.testing.assert_array_equal(square, np.full((32, 32), n * (n + 1) / 2, np.float32))
    a[:] = r + 1
    comm.all_reduce(a)
    np.testing.assert_array_equal(a, np.full(1024, n * (n + 1) / 2, np.float32))
    # broadcast: a reader's buffer must be writable (every rank refuses, so none runs it)
    for _ in range(2):
        comm.broadcast(a, 0)
    assert ("broadcast", a.nbytes, a.dtype, 0, None) in comm._quick, list(comm._quick)  # type: ignore[attr-defined]
    if r == 0:
        _refused(lambda: comm.broadcast(strided, 0), ValueError, "not C-contiguous")
    else:
        _refused(lambda: comm.broadcast(read_only, 0), ValueError, "read-only")
    square = np.full((32, 32), r + 7, np.float32)
    comm.broadcast(square, 0)
    np.testing.assert_array_equal(square, np.full((32, 32), 7, np.float32))
    # all_gather and reduce_scatter: two arrays of one dtype, apart
    c = 1024
    mine, whole = np.full(c, r, np.float32), np.zeros(n * c, np.float32)
    for _ in range(2):
        comm.all_gather(whole, mine)
        comm.reduce_scatter(mine, whole)
    for key in (
        ("all_gather", n * c * 4, c * 4, np.dtype(np.float32), None),
        ("reduce_scatter", n * c * 4, c * 4, np.dtype(np.float32), None),
    ):
        assert key in comm._quick, list(comm._quick)  # type: ignore[attr-defined]
    wrong_kind = np.zeros(n * c, np.int32)  # as many bytes, another dtype
    for call in (
        lambda: comm.all_gather(wrong_kind, mine),
        lambda: comm.reduce_scatter(mine, wrong_kind),
    ):
        _refused(call, TypeError, "float32")
    overlapping = np.zeros(n * c + 1, np.float32)  # input one element past output's start
    _refused(
        lambda: comm.all_gather(overlapping[: n * c], overlapping[1 : c + 1]), ValueError, "overlap"
    )
    fixed = np.zeros(n * c, np.float32)
    fixed.flags.writeable = False
    _refused(lambda: comm.all_gather(fixed, mine), ValueError, "read-only")
    out, inp = np.zeros(n * c, np.float32), np.full(c, r + 1, np.float32)
    comm.all_gather(out, inp)
    np.testing.assert_array_equal(out, np.repeat(np.arange(1, n + 1, dtype=np.float32), c))
    out[:] = 0
    out[r * c : (r + 1) * c] = r + 1
    with _no_intake():  # in place (this rank's slot) takes the quick path too
        comm.all_gather(out, out[r * c : (r + 1) * c])
    np.testing.assert_array_equal(out, np.repeat(np.arange(1, n + 1, dtype=np.float32), c))
    other = ((r + 1) % n) * c  # another rank's slot: they overlap
    _refused(lambda: comm.all_gather(out, out[other : other + c]), ValueError, "overlap")
    whole = np.full(n * c, r + 1, np.float32)
    with _no_intake():
        comm.reduce_scatter(whole[r * c : (r + 1) * c], whole)
    np.testing.assert_array_equal(whole[r * c : (r + 1) * c], np.full(c, n * (n + 1) / 2))
    _refused(lambda: comm.reduce_scatter(whole[other : other + c], whole), ValueError, "overlap")
    part = np.zeros(c, np.float32)
    comm.reduce_scatter(part, np.full(n * c, r + 1, np.float32))
    np.testing.assert_array_equal(part, np.full(c, n * (n + 1) / 2, np.float32))
    _quick_all_to_all_takes_arrays_apart(comm)
    _quick_path_sums_where_other_ops_chose_first(comm)


def _quick_all_to_all_takes_arrays_apart(comm: ringcomm.Communicator) -> None:
    """all_to_all on the quick path: right, and never with its output on its input (one
    array as both, or views of one array), which it must refuse as the general path
    does."""
    n, r, c = comm.size, comm.rank, 1024
    sent = np.arange(n * c, dtype=np.float32) + 10_000 * r
    want = np.concatenate(
        [np.arange(r * c, (r + 1) * c, dtype=np.float32) + 10_000 * q for q in range(n)]
    )
    got = np.zeros(n * c, np.float32)
    for _ in range(2):
        comm.all_to_all(got, sent)
    assert ("all_to_all", n * c * 4, n * c * 4, np.dtype(np.float32), None) in comm._quick  # type: ignore[attr-defined]
    got[:] = 0
    with _no_intake():
        comm.all_to_all(got, sent)
    np.testing.assert_array_equal(got, want)
    _refused(lambda: comm.all_to_all(sent, sent), ValueError, "overlap")
    _refused(lambda: comm.all_to_all(sent[:], sent), ValueError, "overlap")
    _refused(lambda: comm.all_to_all(np.zeros(n * c, np.int32), sent), TypeError, "float32")


def _quick_path_sums_where_other_ops_chose_first(comm: ringcomm.Communicator) -> None:
    """Pieces chosen first for MAX, or for bfloat16 bits, at a size: a later SUM of a
    numpy array of that size and dtype (uint16 for bfloat16's bits) must not run them."""
    import torch

    n, r, c = comm.size, comm.rank, 1536  # (sizes no other check here uses)
    ones = np.full(c, r + 1, np.float32)
    whole = np.full(n * c, r + 1, np.float32)
    for _ in range(2):  # the board's pieces for MAX, chosen first at these sizes
        comm.all_reduce(ones.copy(), ringcomm.MAX)
        comm.reduce_scatter(np.zeros(c, np.float32), whole, ringcomm.MAX)
        comm.all_reduce(torch.ones(c, dtype=torch.bfloat16))
    total = n * (n + 1) / 2
    comm.all_reduce(ones)
    np.testing.assert_array_equal(ones, np.full(c, total, np.float32))
    part = np.zeros(c, np.float32)
    comm.reduce_scatter(part, whole)
    np.testing.assert_array_equal(part, np.full(c, total, np.float32))
    bits = np.full(c, 1000 * (r + 1), np.uint16)  # summed as integers, not as bfloat16s
    comm.all_reduce(bits)
    np.testing.assert_array_equal(bits, np.full(c, 1000 * total, np.uint16))


@contextlib.contextmanager
def _no_intake() -> Iterator[None]:
    """Fail any call that takes the general intake (as_buffer) inside: it must take the
    quick path."""
    from ringcomm import communicator

    def taken(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the general intake ran: the quick path was not taken")

    kept = communicator.as_buffer
    communicator.as_buffer = taken  # type: ignore[assignment]
    try:
        yield
    finally:
        communicator.as_buffer = kept  # type: ignore[assignment]


def _refused(call: Any, error: type[Exception], says: str) -> None:
    try:
        call()
    except error as e:
        assert says in str(e), e
    else:
        raise AssertionError(f"not refused: expected {error.__name__} saying {says!r}")


def board_collectives(comm: ringcomm.Communicator) -> dict[str, Any]:
    """Every collective forced onto the shared-memory board, against numpy: every op and
    dtype of all_reduce, the other collectives in and out of place, every root, sizes on
    both sides of the one-step threshold and across several pieces (the pool's board is
    small), interleaved with point-to-point algorithms on the same communicator. Returns
    what the board did, and a float all_reduce's bits (identical on every rank)."""
    n, r = comm.size, comm.rank
    counts = (0, 1, 5, 1000, 40_003)  # 40,003 float32: past 64 KiB, so two steps
    allreduce_matrix(comm, ("direct",), counts=(0, 1, 7, 1000))
    for dtype in ("int8", "float32", "float64"):
        for count in counts:
            what = f"{dtype} count={count} n={n}"
            everyone = [make_input(dtype, ringcomm.SUM, q, count, seed=3) for q in range(n)]
            mine = everyone[r]
            for alg in ("direct", "ring"):  # the board and the slots, one after the other
                out = np.zeros(n * count, dtype)
                comm.all_gather(out, mine, algorithm=alg)
                np.testing.assert_array_equal(out, np.concatenate(everyone), err_msg=what)
            out[:] = 0
            out[r * count : (r + 1) * count] = mine
            comm.all_gather(out, out[r * count : (r + 1) * count], algorithm="direct")
            np.testing.assert_array_equal(out, np.concatenate(everyone), err_msg="in place")
            big = [make_input(dtype, ringcomm.SUM, q, n * count, seed=4) for q in range(n)]
            want = reference(ringcomm.SUM, big)[r * count : (r + 1) * count]
            part = np.zeros(count, dtype)
            before = big[r].copy()
            comm.reduce_scatter(part, big[r], algorithm="direct")
            np.testing.assert_array_equal(part, want, err_msg="reduce_scatter " + what)
            np.testing.assert_array_equal(big[r], before, err_msg="reduce_scatter input")
            whole = big[r].copy()
            comm.reduce_scatter(whole[r * count : (r + 1) * count], whole, algorithm="direct")
            np.testing.assert_array_equal(whole[r * count : (r + 1) * count], want)
            total = mine.copy()  # from 64 KiB: each rank reduces its slice, then gathers
            comm.all_reduce(total, algorithm="direct")
            want_all = reference(ringcomm.SUM, everyone)
            np.testing.assert_allclose(total, want_all, rtol=1e-5, err_msg=f"all_reduce {what}")
            for alg in ("direct", "linear"):
                got = np.zeros(n * count, dtype)
                comm.all_to_all(got, big[r], algorithm=alg)
                want = np.concatenate([big[q][r * count : (r + 1) * count] for q in range(n)])
                np.testing.assert_array_equal(got, want, err_msg=f"all_to_all {alg} {what}")
            for root in range(n):
                buf = everyone[root].copy() if r == root else np.zeros(count, dtype)
                comm.broadcast(buf, root, algorithm="direct")
                np.testing.assert_array_equal(buf, everyone[root], err_msg=f"bcast {what}")
                for op in (ringcomm.SUM, ringcomm.MAX):
                    buf = mine.copy()
                    comm.reduce(buf, root, op, algorithm="direct")
                    want_r = reference(op, everyone) if r == root else mine
                    np.testing.assert_array_equal(buf, want_r, err_msg=f"reduce {root} {what}")
        comm.barrier()
    # A root runs ahead (it waits for nobody) into what a slow rank still reads: the
    # barrier's counters (two pieces on, same parity) or the other area.
    for i in range(300):
        comm.barrier()
        for j in range(2):
            buf = np.full(1000, i + j if r == 0 else -1, np.int32)
            comm.broadcast(buf, 0, algorithm="direct")
            assert buf[0] == i + j and buf[-1] == i + j, (i, j, buf[:3])
    rng = np.random.default_rng(r)
    bits = []
    for count in (1000, 40_000):  # one step and two steps
        buf = rng.standard_normal(count).astype(np.float32)
        comm.all_reduce(buf, ringcomm.AVG, algorithm="direct")
        bits.append(buf)
    board = comm._transport.board  # type: ignore[attr-defined]
    from ringcomm.algorithms import direct

    return {
        # how a broadcast of the largest count above went (its root's kind)
        "broadcast_kind": direct.broadcast_piece(board, np.empty(40_003, np.float32), 0, False)[0],
        "pieces": board.count,
        "area": board.area_bytes,
        "stream_bytes": board.stream_bytes,
        "bits": bits,
        "native": board.table is not None,
        "by_address": board.by_address and comm._transport.by_address_bytes == 8192,  # type: ignore[attr-defined]
    }


def board_copies(comm: ringcomm.Communicator) -> dict[str, Any]:
    """What the board settled about its copies (RINGCOMM_SHM_BOARD_SHARED_CACHE and
    RINGCOMM_SHM_BOARD_AREA_COPIES as the pool sets them), and where each rank's broadcast
    and all_gather data of 64 KiB went (below the 512 KiB that may go through an area,
    above the by-address threshold): the ADDRESS word a root published (0: through its
    area), an all_reduce's of 256 KiB and a reduce_scatter's of 64 KiB chunks. All against
    numpy, broadcast from every root."""
    from ringcomm.transport.shm.board import ADDRESS

    n, r = comm.size, comm.rank
    count = 16 << 10  # float32: 64 KiB
    everyone = [make_input("float32", ringcomm.SUM, q, count, seed=5) for q in range(n)]
    published = []
    for root in range(n):
        buf = everyone[root].copy() if r == root else np.zeros(count, np.float32)
        comm.broadcast(buf, root, algorithm="direct")
        np.testing.assert_array_equal(buf, everyone[root], err_msg=f"broadcast from {root}")
        b = comm._transport.board  # type: ignore[attr-defined]
        if r == root:
            published.append(int(b.counters[r][ADDRESS + (b.count & 1)]))
    out = np.zeros(n * count, np.float32)
    comm.all_gather(out, everyone[r], algorithm="direct")
    np.testing.assert_array_equal(out, np.concatenate(everyone), err_msg="all_gather")
    published.append(int(b.counters[r][ADDRESS + (b.count & 1)]))
    # 256 KiB: in one step through the areas where the cores share a cache, else by address
    many = [make_input("float32", ringcomm.SUM, q, 4 * count, seed=6) for q in range(n)]
    total = many[r].copy()
    comm.all_reduce(total, algorithm="direct")
    np.testing.assert_allclose(total, reference(ringcomm.SUM, many), rtol=1e-5)
    published.append(int(b.counters[r][ADDRESS + (b.count & 1)]))
    # reduce_scatter of 64 KiB chunks (an input within 512 KiB): likewise
    chunk = np.zeros(count, np.float32)
    comm.reduce_scatter(chunk, np.concatenate(everyone), algorithm="direct")
    whole = reference(ringcomm.SUM, [np.concatenate(everyone)] * n)
    np.testing.assert_allclose(chunk, whole[r * count : (r + 1) * count], rtol=1e-5)
    published.append(int(b.counters[r][ADDRESS + (b.count & 1)]))
    return {
        "shared": b.shared_cache,
        "area_copies": b.area_copies,
        "probed_copies_us": b.probed_copies_us,
        "read_in_place": b.read_in_place_bytes,
        "area": b.area_bytes,
        "by_address_bytes": comm._transport.board_by_address_bytes,  # type: ignore[attr-defined]
        "probed_us": b.probed_us,
        "published": published,
    }


def board_copies_follow_rank_0(comm: ringcomm.Communicator) -> list[dict[str, Any]]:
    """Ranks set apart (RINGCOMM_SHM_BOARD_SHARED_CACHE and RINGCOMM_SHM_BOARD_AREA_COPIES
    as each rank's transport holds them, on fresh sub-communicators): rank 0's settings,
    or its probes, decide for every rank, and nobody waits for a probe that does not come.
    Each case's verdicts and rank 0's figures; a 64 KiB broadcast checked after each."""
    cases = [
        (True, None, None, None),
        (None, False, None, None),
        (False, True, None, None),
        (None, None, None, None),
        (None, None, True, None),
        (None, None, None, False),
        (True, True, False, None),
        (False, False, True, None),
    ]
    seen = []
    for shared_0, shared, copies_0, copies in cases:
        sub = comm.split(0)  # a fresh communicator: its board is made at its first use
        assert sub is not None
        t = sub._transport  # type: ignore[attr-defined]
        t.board_shared_cache = shared_0 if comm.rank == 0 else shared
        t.board_area_copies = copies_0 if comm.rank == 0 else copies
        want = np.arange(16 << 10, dtype=np.float32)
        buf = want.copy() if comm.rank == 0 else np.zeros_like(want)
        sub.broadcast(buf, 0, algorithm="direct")
        np.testing.assert_array_equal(buf, want)
        b = t.board
        seen.append(
            {
                "shared": b.shared_cache,
                "probed_us": b.probed_us,
                "area_copies": b.area_copies,
                "probed_copies_us": b.probed_copies_us,
            }
        )
        sub.close()
    return seen


def board_by_address_follows_rank_0(comm: ringcomm.Communicator) -> list[dict[str, Any]]:
    """Ranks with different RINGCOMM_SHM_BOARD_BY_ADDRESS_BYTES (as each rank's transport
    holds it, on fresh sub-communicators, copies never through the areas): rank 0's size
    holds for every rank, and one rank that turned reading by address off turns it off for
    all. all_reduce, reduce_scatter, all_gather and broadcast of 64 KiB and 1 MiB a rank,
    against numpy, after each case: the board's threshold and whether it reads by address."""
    n, r = comm.size, comm.rank
    off = sys.maxsize
    cases = [(16 << 10, 1 << 30), (1 << 30, 16 << 10), (16 << 10, off)]
    seen = []
    for first, others in cases:
        sub = comm.split(0)  # a fresh communicator: its board is made at its first use
        assert sub is not None
        t = sub._transport  # type: ignore[attr-defined]
        t.board_shared_cache = False
        t.board_by_address_bytes = first if r == 0 else (others if r == 1 else first)
        for count in (16 << 10, 256 << 10):  # float32
            every = [make_input("float32", ringcomm.SUM, q, count, seed=7) for q in range(n)]
            total = every[r].copy()
            sub.all_reduce(total, algorithm="direct")
            np.testing.assert_allclose(total, reference(ringcomm.SUM, every), rtol=1e-5)
            chunk = np.zeros(count // n, np.float32)
            sub.reduce_scatter(chunk, every[r][: count // n * n], algorithm="direct")
            whole = reference(ringcomm.SUM, [e[: count // n * n] for e in every])
            mine = whole[r * (count // n) : (r + 1) * (count // n)]
            np.testing.assert_allclose(chunk, mine, rtol=1e-5)
            out = np.zeros(n * count, np.float32)
            sub.all_gather(out, every[r], algorithm="direct")
            np.testing.assert_array_equal(out, np.concatenate(every))
            buf = every[r].copy()
            sub.broadcast(buf, n - 1, algorithm="direct")
            np.testing.assert_array_equal(buf, every[n - 1])
        b = t.board
        seen.append({"by_address_bytes": b.by_address_bytes, "by_address": b.by_address})
        sub.close()
    return seen


def board_small_pieces_rotate(comm: ringcomm.Communicator, mixed: bool) -> dict[str, Any]:
    """Eight 4 KiB broadcasts through the areas, from every root in turn, on a fresh
    sub-communicator (copies forced through the areas; ``mixed``: rank 1 runs the Python
    steps): each against the root's data, and for each root that runs native pieces the
    piece's number and the slots of its area (see native.board.H_SLOT_BYTES) that hold its
    data."""
    from ringcomm.native import board as nb

    sub = comm.split(0)  # a fresh communicator: its board is made at its first use
    assert sub is not None
    t = sub._transport  # type: ignore[attr-defined]
    t.board_area_copies = True
    t.board_native = not (mixed and sub.rank == 1)
    n, r = sub.size, sub.rank
    found = []
    for i in range(8):
        root = i % n
        want = np.arange(1024, dtype=np.float32) + 1000 * i
        buf = want.copy() if r == root else np.zeros_like(want)
        sub.broadcast(buf, root, algorithm="direct")
        np.testing.assert_array_equal(buf, want, err_msg=f"broadcast {i} from {root}")
        b = t.board
        if r == root and b.table is not None:
            k, step = b.count, max(1, int(b.table[nb.H_SLOT_BYTES]) // 4)
            area = b.areas[r][k & 1].view(np.float32)
            slots = range(nb.AREA_SLOTS)
            found.append((k, [s for s in slots if (area[s * step :][:1024] == want).all()]))
    slot_bytes = None if t.board.table is None else int(t.board.table[nb.H_SLOT_BYTES])
    sub.close()
    return {"slot_bytes": slot_bytes, "found": found}


def board_mixed_native(comm: ringcomm.Communicator) -> dict[str, Any]:
    """Rank 1 runs the board's Python steps, the others native pieces (as each rank's
    transport holds it, on a fresh sub-communicator; copies through the areas): every rank
    takes the Python steps' protocol where they differ, so all_reduces of 256 KiB and of
    1.5 MiB (more than one area) and a 1.5 MiB broadcast are right against numpy."""
    n, r = comm.size, comm.rank
    sub = comm.split(0)  # a fresh communicator: its board is made at its first use
    assert sub is not None
    t = sub._transport  # type: ignore[attr-defined]
    t.board_shared_cache = True
    t.board_native = r != 1
    for count in (64 << 10, 384 << 10):  # float32: 256 KiB, 1.5 MiB
        every = [make_input("float32", ringcomm.SUM, q, count, seed=8) for q in range(n)]
        total = every[r].copy()
        sub.all_reduce(total, algorithm="direct")
        np.testing.assert_allclose(total, reference(ringcomm.SUM, every), rtol=1e-5)
        buf = every[r].copy()
        sub.broadcast(buf, 0, algorithm="direct")
        np.testing.assert_array_equal(buf, every[0])
    b = t.board
    seen = {"native": b.table is not None, "everywhere": b.native_everywhere}
    sub.close()
    return seen


def board_goes_without(comm: ringcomm.Communicator) -> dict[str, bool]:
    """Rank 1 cannot make its board (the name is taken): every rank goes without it alike,
    and the collectives forced onto it run point to point instead."""
    import os

    from ringcomm.transport.shm.board import board_path

    n, r = comm.size, comm.rank
    sub = comm.split(0)  # a fresh communicator: its board is made at its first use
    assert sub is not None
    t = sub._transport  # type: ignore[attr-defined]
    blocker = board_path(t.job_id, t.comm_id, 1)
    if r == 1:
        open(blocker, "w").close()
    sub.barrier()  # the first board collective: the board is made (or not) here
    try:
        a = np.full(10, r + 1, np.float32)
        sub.all_reduce(a, algorithm="direct")
        np.testing.assert_array_equal(a, np.full(10, n * (n + 1) / 2, np.float32))
        out = np.zeros(3 * n, np.int32)
        sub.all_gather(out, np.full(3, r, np.int32), algorithm="direct")
        np.testing.assert_array_equal(out, np.repeat(np.arange(n, dtype=np.int32), 3))
        b = np.full(4, r, np.int64)
        sub.broadcast(b, n - 1, algorithm="direct")
        np.testing.assert_array_equal(b, np.full(4, n - 1))
        sub.barrier()
        return {"board": t.board is not None, "possible": t.board_possible}
    finally:
        if r == 1:
            os.unlink(blocker)
        sub.close()


def compressed_all_reduce(comm: ringcomm.Communicator) -> dict[str, Any]:
    """all_reduce(compression=...) against numpy, for both 16-bit types, SUM and AVG, sizes
    from empty to several board pieces. On the board the result is exact: each rank's
    contribution rounded to 16 bits, summed in float32 in rank order, rounded once (also off
    the board with one or two ranks). Elsewhere (ZeroMQ, n > 2) the 16-bit copy is reduced by
    the ring, which rounds at every step: close to that, and the same on every rank. Returns
    the results' bits."""
    n, r = comm.size, comm.rank
    exact = comm.transport == "shm" or n <= 2  # (one addition: rounded once anyway)
    bits = []
    for name in ("float16", "bfloat16"):
        for op in (ringcomm.SUM, ringcomm.AVG):
            for count in (0, 1, 7, 1000, 300_001):
                rng = [np.random.default_rng(q * 7 + count) for q in range(n)]
                everyone = [(g.standard_normal(count) * 3).astype(np.float32) for g in rng]
                factor = np.float32(1.0 / n if op == ringcomm.AVG else 1.0)
                total = np.zeros(count, np.float32)
                for q in range(n):
                    total += round_to_16_bits(everyone[q] * factor, name)
                want = round_to_16_bits(total, name)
                got = everyone[r].copy()
                comm.all_reduce(got, op, compression=name)
                what = f"{name} {op.name} count={count} n={n}"
                if exact:
                    np.testing.assert_array_equal(got, want, err_msg=what)
                else:
                    np.testing.assert_allclose(got, want, rtol=0.05, atol=0.05, err_msg=what)
                bits.append(got)
    for bad in (
        lambda: comm.all_reduce(np.ones(4, np.float64), compression="float16"),
        lambda: comm.all_reduce(np.ones(4, np.float32), compression="int8"),
        lambda: comm.all_reduce(np.ones(4, np.float32), ringcomm.MAX, compression="bfloat16"),
    ):
        try:
            bad()
        except ValueError:
            continue
        raise AssertionError("a compression all_reduce that must be refused ran")
    return {"bits": bits}


def mapped_all_reduce(comm: ringcomm.Communicator) -> dict[str, Any]:
    """all_reduce of buffers in shared-memory files, read where they lie (the DDP hook's
    path): against numpy for several dtypes, ops and sizes, at an offset in the file; then
    with one rank's buffer in private memory (every rank falls back alike); then with a
    file reused for a smaller buffer. Returns how often the board saw each rank's file."""
    import mmap
    import os

    n, r = comm.size, comm.rank
    fd = os.memfd_create(f"ringcomm-test-{r}")
    os.ftruncate(fd, 8 << 20)
    m = mmap.mmap(fd, 8 << 20)
    try:
        for private in (None, 0, n - 1):  # None: every rank's buffer is in its file
            for dtype, op in (("float32", ringcomm.AVG), ("float64", ringcomm.SUM),
                              ("int32", ringcomm.SUM), ("float32", ringcomm.MAX)):  # fmt: skip
                for count in (0, 1, 1001, 300_000):
                    everyone = [make_input(dtype, op, q, count, seed=9) for q in range(n)]
                    offset = 4096 + 8 * count % 64
                    buf = np.frombuffer(m, dtype, count, offset)
                    buf[...] = everyone[r]
                    mine = -1 if private == r else fd
                    data = buf if mine >= 0 else everyone[r].copy()
                    comm._all_reduce_mapped(data, op, mine, offset)
                    want = reference(op, everyone)
                    assert_reduced(data, want, op, f"{dtype} {op.name} {count} {private}")
                    del buf, data
            for name in ("float16", "bfloat16"):  # the same bits as the compressed exchange
                for count in (1, 1001, 300_000):
                    rng = [np.random.default_rng(q * 5 + count) for q in range(n)]
                    everyone = [(g.standard_normal(count) * 3).astype(np.float32) for g in rng]
                    total = np.zeros(count, np.float32)
                    for q in range(n):
                        total += round_to_16_bits(everyone[q] * np.float32(1.0 / n), name)
                    buf = np.frombuffer(m, np.float32, count, 4096)
                    buf[...] = everyone[r]
                    data = buf if private != r else everyone[r].copy()
                    mine = fd if private != r else -1
                    comm._all_reduce_mapped(data, ringcomm.AVG, mine, 4096, compression=name)
                    exact = comm.transport == "shm" or n <= 2
                    what = f"{name} {count} {private}"
                    want = round_to_16_bits(total, name)
                    if exact:
                        np.testing.assert_array_equal(data, want, err_msg=what)
                    else:
                        np.testing.assert_allclose(data, want, rtol=0.05, atol=0.05, err_msg=what)
                    del buf, data
        board = getattr(comm._transport, "board", None)
        return {"mapped": len(board._mapped) if board is not None else 0}
    finally:
        m.close()
        os.close(fd)
