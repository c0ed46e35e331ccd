"""Algorithm logic with ranks as threads (local transport): every op x dtype x count x
algorithm for world sizes 1-5, small segments so the many-segment path runs, and a
property-based test over random worlds."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ringcomm
from data import DTYPES, OPS, assert_reduced, make_input, op_applies, reference
from ranks import collectives
from runners import run_threads

SIZES = [1, 2, 3, 4, 5]
# Tiny segments (64 bytes) make every count above a few elements take many segments.
SMALL_SEGMENTS = ringcomm.Config(segment_bytes=64, zero_copy_bytes=1 << 30, timeout_seconds=20)
ALGORITHMS = ("ring", "recursive_doubling", "rabenseifner", "star")


@pytest.mark.parametrize("size", SIZES)
def test_all_reduce_every_op_dtype_count_algorithm(size: int) -> None:
    counts = run_threads(
        size,
        functools.partial(collectives.allreduce_matrix, algorithms=ALGORITHMS),
        config=SMALL_SEGMENTS,
        timeout=240,
    )
    assert counts[0] > 0


@pytest.mark.parametrize("size", SIZES)
def test_other_collectives(size: int) -> None:
    run_threads(size, collectives.other_collectives, config=SMALL_SEGMENTS, timeout=240)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_vector_collectives(size: int) -> None:
    run_threads(size, collectives.vector_collectives, config=SMALL_SEGMENTS, timeout=240)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_grouped_operations(size: int) -> None:
    config = ringcomm.Config(segment_bytes=256, fusion_bytes=4096, timeout_seconds=30)
    run_threads(size, collectives.grouped_operations, config=config, timeout=120)


@pytest.mark.parametrize("size", [1, 2, 4])
def test_any_source_receives(size: int) -> None:
    run_threads(size, collectives.any_source_receives)


def test_any_source_receive_times_out_naming_the_tag() -> None:
    def body(comm: ringcomm.Communicator) -> str:
        if comm.rank == 0:
            try:
                comm.recv(np.zeros(3), None, tag=5, timeout=0.5)
            except ringcomm.CommTimeoutError as e:
                return str(e)
        return "no error"

    err = run_threads(2, body)[0]
    assert "waiting for a message with tag 5 from any rank" in err, err


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_object_collectives(size: int) -> None:
    run_threads(size, collectives.object_collectives, config=ringcomm.Config(segment_bytes=4096))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("size", [3, 4, 5])
def test_every_rank_gets_the_same_bits(size: int, algorithm: str) -> None:
    out = run_threads(
        size,
        functools.partial(collectives.all_ranks_get_identical_bits, algorithm=algorithm),
        config=SMALL_SEGMENTS,
    )
    for r in range(1, size):
        np.testing.assert_array_equal(out[0].view(np.uint32), out[r].view(np.uint32))
    want = sum(
        np.random.default_rng(r).standard_normal(10_007).astype(np.float64) for r in range(size)
    )
    np.testing.assert_allclose(out[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [2, 3])
def test_async_ops_in_flight(size: int) -> None:
    run_threads(size, collectives.async_ops_in_flight)


@pytest.mark.parametrize("size", [2, 3])
def test_blocking_calls_wait_their_turn(size: int) -> None:
    run_threads(size, collectives.blocking_calls_wait_their_turn)


@pytest.mark.parametrize("size", [4, 5])
def test_subcommunicators(size: int) -> None:
    run_threads(size, collectives.subcommunicators_concurrently)


def test_threads_share_a_communicator() -> None:
    run_threads(3, collectives.threads_share_a_communicator)


def test_torch_tensors() -> None:
    pytest.importorskip("torch", reason="torch is an optional extra: pip install 'ringcomm[torch]'")
    run_threads(3, collectives.torch_tensors)


def test_timeout_names_operation_and_peer() -> None:
    msgs = run_threads(3, collectives.timeout_names_the_peer)
    assert "waiting for rank" in msgs[0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(1, 5),
    count=st.integers(0, 300),
    dtype=st.sampled_from(DTYPES),
    op=st.sampled_from(OPS),
    algorithm=st.sampled_from((*ALGORITHMS, None)),
    segment_bytes=st.sampled_from([64, 256, 1 << 20]),
    seed=st.integers(0, 2**16),
)
def test_property_all_reduce_matches_numpy(size, count, dtype, op, algorithm, segment_bytes, seed):
    if not op_applies(op, dtype):
        # refused before anything is sent, on every rank
        def refused(comm):
            with pytest.raises(TypeError):
                comm.all_reduce(make_input(dtype, ringcomm.SUM, comm.rank, count), op)

        run_threads(size, refused)
        return
    inputs = [make_input(dtype, op, r, count, seed) for r in range(size)]
    cfg = ringcomm.Config(segment_bytes=segment_bytes, timeout_seconds=20)

    def body(comm):
        buf = inputs[comm.rank].copy()
        comm.all_reduce(buf, op, algorithm=algorithm)
        return buf

    for got in run_threads(size, body, config=cfg):
        assert_reduced(got, reference(op, inputs), op, f"{size=} {count=} {dtype} {op.name}")
