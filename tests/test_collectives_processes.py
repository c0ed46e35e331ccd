"""The real thing: ranks as processes, world sizes 1-5, over shared memory (the default on
one host) and over ZeroMQ sockets (ipc:// and tcp://); the same checks as the thread tests,
plus what only processes can show."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ringcomm
from conftest import get_pool
from data import DTYPES, OPS, assert_reduced, make_input, op_applies, reference
from ranks import collectives
from ringcomm.native import board as native_board
from ringcomm.transport.shm import board as shm_board
from runners import RankPool

SIZES = [1, 2, 3, 4, 5]
# "auto" puts every rank of these pools on shared memory (one host).
TRANSPORTS = pytest.mark.parametrize("transport", ["auto", "zmq"])


@TRANSPORTS
@pytest.mark.parametrize("size", SIZES)
def test_all_reduce_matrix(size: int, transport: str) -> None:
    pool = get_pool(size, transport)
    counts = (0, 1, 3, 13, 4099)
    cases = pool.run(
        functools.partial(
            collectives.allreduce_matrix,
            algorithms=("ring", "recursive_doubling", "rabenseifner"),
            counts=counts,
        ),
        timeout=240,
    )
    assert cases[0] > 0


@TRANSPORTS
@pytest.mark.parametrize("size", [2, 3, 5])
def test_star_and_large_multi_segment_buffers(size: int, transport: str) -> None:
    """4 MiB buffers: several 1 MiB segments per chunk, zero-copy sends, all algorithms."""

    pool = get_pool(size, transport)
    out = pool.run(collectives.all_ranks_get_identical_bits, "star")
    for r in range(1, size):
        np.testing.assert_array_equal(out[0], out[r])
    results = pool.run(_big_allreduce)
    assert all(results)


def _big_allreduce(comm: ringcomm.Communicator) -> bool:
    n = comm.size
    want = (np.arange(1 << 20, dtype=np.float32) % 1000) * n + n * (n - 1) / 2
    for alg in ("ring", "recursive_doubling", "rabenseifner", "star"):
        buf = (np.arange(1 << 20, dtype=np.float32) % 1000) + comm.rank
        comm.all_reduce(buf, algorithm=alg)
        np.testing.assert_array_equal(buf, want, err_msg=alg)
    for gather, scatter in (("ring", "ring"), ("bruck", "recursive_halving")):
        out = np.zeros((1 << 20) * n, np.float32)
        comm.all_gather(out, want, algorithm=gather)
        np.testing.assert_array_equal(out, np.tile(want, n), err_msg=gather)
        part = np.zeros(1 << 20, np.float32)
        comm.reduce_scatter(part, out, algorithm=scatter)
        np.testing.assert_array_equal(part, want * n, err_msg=scatter)
    return True


@TRANSPORTS
@pytest.mark.parametrize("size", [2, 3, 4])
def test_other_collectives(size: int, transport: str) -> None:
    get_pool(size, transport).run(
        functools.partial(collectives.other_collectives, counts=(0, 1, 7, 1000)), timeout=240
    )


@TRANSPORTS
@pytest.mark.parametrize("size", [2, 3])
def test_vector_collectives(size: int, transport: str) -> None:
    get_pool(size, transport).run(collectives.vector_collectives, timeout=120)


@TRANSPORTS
@pytest.mark.parametrize("size", [2, 3])
def test_grouped_operations(size: int, transport: str) -> None:
    get_pool(size, transport).run(collectives.grouped_operations, timeout=120)


@TRANSPORTS
@pytest.mark.parametrize("size", [2, 4])
def test_any_source_receives(size: int, transport: str) -> None:
    get_pool(size, transport).run(collectives.any_source_receives, timeout=60)


@TRANSPORTS
def test_object_collectives(transport: str) -> None:
    get_pool(3, transport).run(collectives.object_collectives, timeout=120)


@TRANSPORTS
def test_p2p_size_mismatch_is_refused(transport: str) -> None:
    get_pool(3, transport).run(collectives.p2p_size_mismatch_is_refused)


@TRANSPORTS
@pytest.mark.parametrize("size", [2, 4])
def test_async_and_subcommunicators(size: int, transport: str) -> None:
    pool = get_pool(size, transport)
    pool.run(collectives.async_ops_in_flight)
    if size >= 4:
        pool.run(collectives.subcommunicators_concurrently)


def test_quick_path_takes_what_as_buffer_takes() -> None:
    get_pool(2).run(collectives.quick_path_takes_what_as_buffer_takes)


def test_torch_tensors() -> None:
    pytest.importorskip("torch", reason="torch is an optional extra: pip install 'ringcomm[torch]'")
    get_pool(3).run(collectives.torch_tensors)


@pytest.mark.parametrize(
    ("size", "native", "shared"),
    [
        (2, True, "1"),
        (3, True, "0"),
        (4, True, "1"),
        (8, True, "auto"),
        (2, False, "auto"),
        (3, False, "auto"),
    ],
)
def test_board_collectives(size: int, native: bool, shared: str) -> None:
    """The shared-memory board: every collective forced onto it, against numpy; a 4 KiB
    board cuts larger operations into pieces. n=8 on this 2-core machine too. ``native``:
    operations that fit an area run in native calls (ringcomm.native.board), and from 8 KiB
    all_gather and broadcast read by address (in the native call too); else every piece
    runs in Python steps through the areas. ``shared`` (RINGCOMM_SHM_BOARD_SHARED_CACHE):
    1, all_reduces from 64 KiB and broadcasts go through the areas in native pieces, and
    reduce_scatters through an area; 0, by address, and every all_gather streams its
    output (RINGCOMM_SHM_BOARD_STREAM_BYTES=1)."""
    env = {"RINGCOMM_SHM_BOARD_BYTES": "4096", "RINGCOMM_SHM_BOARD_NATIVE": str(int(native))}
    env["RINGCOMM_SHM_BOARD_SHARED_CACHE"] = shared
    if shared == "0":
        env["RINGCOMM_SHM_BOARD_STREAM_BYTES"] = "1"
    env["RINGCOMM_SHM_BY_ADDRESS_BYTES"] = "8192" if native else "0"  # 0: the board's too
    env["RINGCOMM_SHM_BOARD_BY_ADDRESS_BYTES"] = "8192"
    pool = RankPool(size, env=env)
    try:
        results = pool.run(collectives.board_collectives, timeout=300 if size > 4 else 120)
    finally:
        pool.close()
    pieces = {res["pieces"] for res in results}
    assert len(pieces) == 1 and pieces.pop() > 100, "every rank numbers the same pieces"
    assert all(res["area"] == 4096 for res in results)
    assert all(res["native"] == native and res["by_address"] == native for res in results)
    if shared == "0":
        assert all(res["stream_bytes"] == 1 for res in results)
    if native and shared != "auto":
        # apart, by address: each reader's copy split with the root; else in the areas
        kind = native_board.BROADCAST_SPLIT if shared == "0" else native_board.BROADCAST
        assert all(res["broadcast_kind"] == kind for res in results), results
    for res in results[1:]:
        for got, want in zip(res["bits"], results[0]["bits"], strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("size", "transport"), [(1, "auto"), (2, "auto"), (3, "auto"), (3, "zmq")])
def test_compressed_all_reduce(size: int, transport: str) -> None:
    """all_reduce(compression=...) on the board (exact against numpy, pieces of a 4 KiB
    board) and off it; every rank ends with the same bits."""
    pool = RankPool(size, transport=transport, env={"RINGCOMM_SHM_BOARD_BYTES": "4096"})
    try:
        results = pool.run(collectives.compressed_all_reduce, timeout=240)
    finally:
        pool.close()
    for res in results[1:]:
        for got, want in zip(res["bits"], results[0]["bits"], strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("size", "transport"), [(1, "auto"), (2, "auto"), (4, "auto"), (3, "zmq")])
def test_all_reduce_reads_buffers_where_they_lie(size: int, transport: str) -> None:
    """all_reduce of buffers in shared-memory files (the DDP hook's path) is right on and
    off the board, also when one rank's buffer is private (every rank falls back)."""
    results = get_pool(size, transport).run(collectives.mapped_all_reduce, timeout=240)
    if transport == "auto" and size > 1:
        assert all(res["mapped"] == size - 1 for res in results), results


@pytest.mark.parametrize(
    ("size", "shared", "copies"),
    [
        (2, "auto", "auto"),
        (3, "auto", "auto"),
        (2, "1", "auto"),
        (3, "0", "auto"),
        (2, "auto", "0"),
        (3, "1", "0"),
    ],
)
def test_board_copies_follow_the_cache(size: int, shared: str, copies: str) -> None:
    """Whether all_reduce data goes through the areas follows the cache, and whether
    broadcast, all_gather and reduce_scatter data up to 512 KiB does follows the copy
    verdict: forced either way, or probed by rank 0 (every rank learns its verdicts, and
    each follows its own figures; the copy probe runs only where both are unset and the
    cores share a cache); then the roots publish their data as settled, and it arrives."""
    env = {
        "RINGCOMM_SHM_BOARD_SHARED_CACHE": shared,
        "RINGCOMM_SHM_BOARD_AREA_COPIES": copies,
        "RINGCOMM_SHM_BOARD_BY_ADDRESS_BYTES": "16384",
    }
    pool = RankPool(size, env=env)
    try:
        results = pool.run(collectives.board_copies, timeout=120)
    finally:
        pool.close()
    verdicts = {(res["shared"], res["area_copies"]) for res in results}
    assert len(verdicts) == 1, results
    verdict, area_copies = verdicts.pop()
    if shared == "auto":
        remote, local = results[0]["probed_us"]
        assert verdict == (remote <= shm_board.APART_RATIO * local), results[0]
    else:
        assert verdict == (shared == "1")
    assert all(res["probed_us"] is None for res in results[1:])
    assert all(res["probed_copies_us"] is None for res in results[1:])
    if copies != "auto":
        assert area_copies == (copies == "1")
    if shared == "auto" and copies == "auto" and verdict:
        through_areas, by_address = results[0]["probed_copies_us"]
        assert area_copies == (through_areas <= by_address), results[0]
    else:
        assert results[0]["probed_copies_us"] is None, results[0]
        if copies == "auto":
            assert area_copies == verdict
    for res in results:
        through_area = min(res["area"], shm_board.COPY_THROUGH_AREA_BYTES)
        want = through_area + 1 if area_copies else res["by_address_bytes"]
        assert res["read_in_place"] == want, res
        assert res["by_address_bytes"] == 16384
        # through the areas: no address published; by address: where the data lies (the
        # all_reduce, second to last, follows the cache; the copies, the copy verdict)
        *copied, reduced, scattered = res["published"]
        assert (reduced == 0) == verdict, res
        assert all((address == 0) == area_copies for address in [*copied, scattered]), res


def test_board_copies_follow_rank_0() -> None:
    """Ranks set differently follow rank 0's settings (or probes), and none waits for a
    probe that rank 0 does not run."""
    results = get_pool(3).run(collectives.board_copies_follow_rank_0, timeout=120)
    # per case: rank 0's shared setting, whether it probes the cache, its copy setting
    cases = [(True, False, None), (None, True, None), (False, False, None)]
    cases += [(None, True, None), (None, True, True), (None, True, None)]
    cases += [(True, False, False), (False, False, True)]
    for case, (forced, probed, copies) in enumerate(cases):
        verdicts = {(res[case]["shared"], res[case]["area_copies"]) for res in results}
        assert len(verdicts) == 1, (case, results)
        shared, area_copies = verdicts.pop()
        assert (results[0][case]["probed_us"] is not None) == probed, (case, results)
        if forced is not None:
            assert shared == forced, (case, results)
        copy_probed = probed and copies is None and shared
        assert (results[0][case]["probed_copies_us"] is not None) == copy_probed, (case, results)
        if copies is not None:
            assert area_copies == copies, (case, results)
        elif not copy_probed:
            assert area_copies == shared, (case, results)
        assert all(res[case]["probed_copies_us"] is None for res in results[1:]), (case, results)


def test_board_by_address_follows_rank_0() -> None:
    """Ranks with different by-address thresholds take rank 0's (else one reads by address
    what another copied into its area), and a rank that turned it off turns it off for all."""
    results = get_pool(3).run(collectives.board_by_address_follows_rank_0, timeout=120)
    cases = [(16 << 10, True), (1 << 30, True), (16 << 10, False)]
    for rank, res in enumerate(results):
        for case, (threshold, by_address) in enumerate(cases):
            want = {"by_address_bytes": threshold, "by_address": by_address}
            assert res[case] == want, (rank, case, res)


def test_board_mixed_native_and_python_steps() -> None:
    """A rank that runs the board's Python steps beside native ones: every rank takes the
    Python steps' protocol for what goes through the areas in pieces (their pieces are
    cut differently), and the results are right."""
    results = get_pool(3).run(collectives.board_mixed_native, timeout=120)
    assert [res["native"] for res in results] == [True, False, True], results
    assert not any(res["everywhere"] for res in results), results


@pytest.mark.parametrize("mixed", [False, True])
def test_board_small_pieces_rotate_through_slots(mixed: bool) -> None:
    """Where every rank runs native pieces, a small piece lies in slot (k >> 1) % 4 of its
    area, so a rank does not rewrite lines its readers read a piece before; where one rank
    runs the Python steps, every piece lies at the area's start. The data arrives
    either way."""
    results = get_pool(3).run(collectives.board_small_pieces_rotate, mixed, timeout=120)
    native = [res for rank, res in enumerate(results) if not (mixed and rank == 1)]
    for res in native:
        assert res["slot_bytes"] == (0 if mixed else (1 << 20) // 4), res
        assert res["found"], res
        for k, at in res["found"]:
            assert at == [0 if mixed else (k >> 1) % 4], (k, res)
    if mixed:
        assert results[1] == {"slot_bytes": None, "found": []}, results[1]


def test_board_goes_without_when_a_rank_cannot_make_one() -> None:
    results = get_pool(3).run(collectives.board_goes_without)
    assert results == [{"board": False, "possible": False}] * 3, results


@TRANSPORTS
def test_idle_rank_does_not_burn_cpu(transport: str) -> None:
    cpu_share = get_pool(2, transport).run(collectives.idle_rank_burns_no_cpu)[0]
    assert cpu_share < 0.2, f"a waiting rank used {cpu_share:.0%} of a core"


@TRANSPORTS
def test_timeout_names_the_peer_and_breaks_the_communicator(transport: str) -> None:
    pool = RankPool(3, transport=transport)
    try:
        msgs = pool.run(collectives.timeout_names_the_peer, timeout=60)
    finally:
        pool.close()
    assert "waiting for rank" in msgs[0]


def test_tcp_only() -> None:
    pool = RankPool(3, env={"RINGCOMM_ZMQ_PROTOCOL": "tcp"}, transport="zmq")
    try:
        pool.run(
            functools.partial(collectives.allreduce_matrix, algorithms=("ring",), counts=(5, 3000))
        )
        assert all(pool.run(_big_allreduce))
    finally:
        pool.close()


@TRANSPORTS
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.sampled_from(SIZES),
    count=st.integers(0, 5000),
    dtype=st.sampled_from(DTYPES),
    op=st.sampled_from(OPS),
    seed=st.integers(0, 2**16),
)
def test_property_all_reduce(transport, size, count, dtype, op, seed):
    if not op_applies(op, dtype):
        return
    inputs = [make_input(dtype, op, r, count, seed) for r in range(size)]
    outs = get_pool(size, transport).run(_reduce_given, inputs, op)
    for got in outs:
        assert_reduced(got, reference(op, inputs), op, f"{size=} {count=} {dtype} {op.name}")


def _reduce_given(comm: ringcomm.Communicator, inputs: list[np.ndarray], op) -> np.ndarray:
    buf = inputs[comm.rank].copy()
    comm.all_reduce(buf, op)
    return buf
