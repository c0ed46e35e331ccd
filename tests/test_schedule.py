"""The pure schedules, checked on their own (no transport)."""

from __future__ import annotations

import itertools

import pytest

from ringcomm.algorithms.schedule import (
    binomial_tree,
    block_runs,
    bruck_steps,
    chain,
    chunk_bounds,
    dissemination_partners,
    recursive_doubling_plan,
    recursive_halving_steps,
    ring_allgather_steps,
    ring_allreduce_steps,
    ring_reduce_scatter_steps,
    segment_bounds,
)

SIZES = [1, 2, 3, 4, 5, 7, 8, 13]


@pytest.mark.parametrize("count", [0, 1, 2, 5, 7, 64, 101])
@pytest.mark.parametrize("parts", [1, 2, 3, 5, 8])
def test_chunks_cover_the_buffer_evenly(count: int, parts: int) -> None:
    bounds = chunk_bounds(count, parts)
    assert len(bounds) == parts
    assert bounds[0][0] == 0 and bounds[-1][1] == count
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    ("start", "stop", "seg"), [(0, 0, 4), (3, 3, 4), (0, 10, 4), (5, 9, 4), (0, 8, 8)]
)
def test_segments_cover_the_chunk(start: int, stop: int, seg: int) -> None:
    segs = segment_bounds(start, stop, seg)
    assert segs, "an empty chunk still has one (empty) segment"
    assert segs[0][0] == start and segs[-1][1] == stop
    assert all(0 <= b - a <= seg for a, b in segs)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(segs))


def _simulate_ring(steps_of, size: int) -> list[list[set[int]]]:
    """Track, for each rank and chunk, the set of ranks whose data the chunk holds."""
    held = [[{r} for _ in range(size)] for r in range(size)]
    all_steps = [steps_of(r, size) for r in range(size)]
    for s in range(len(all_steps[0])):
        sent = [set(held[r][all_steps[r][s].send]) for r in range(size)]
        for r in range(size):
            step, left = all_steps[r][s], (r - 1) % size
            assert all_steps[left][s].send == step.recv, "left neighbour sends what we receive"
            if step.reduce:
                assert not held[r][step.recv] & sent[left], "no contribution counted twice"
                held[r][step.recv] = held[r][step.recv] | sent[left]
            else:
                held[r][step.recv] = sent[left]
    return held


@pytest.mark.parametrize("size", SIZES[1:])
def test_ring_allreduce_leaves_every_chunk_complete_everywhere(size: int) -> None:
    held = _simulate_ring(ring_allreduce_steps, size)
    assert all(chunk == set(range(size)) for rank in held for chunk in rank)
    steps = ring_allreduce_steps(0, size)
    assert len(steps) == 2 * (size - 1)
    # each step forwards what the previous one received: the pipeline needs this
    assert all(a.recv == b.send for a, b in itertools.pairwise(steps))


@pytest.mark.parametrize("size", SIZES[1:])
def test_ring_reduce_scatter_leaves_chunk_r_at_rank_r(size: int) -> None:
    held = _simulate_ring(ring_reduce_scatter_steps, size)
    assert all(held[r][r] == set(range(size)) for r in range(size))


@pytest.mark.parametrize("size", SIZES[1:])
def test_ring_allgather_delivers_every_chunk(size: int) -> None:
    held = _simulate_ring(ring_allgather_steps, size)
    assert all(held[r][c] == {c} for r in range(size) for c in range(size))


@pytest.mark.parametrize("size", SIZES)
def test_recursive_doubling_pairs_are_mutual_and_cover_everyone(size: int) -> None:
    plans = [recursive_doubling_plan(r, size) for r in range(size)]
    p = 1 << (size.bit_length() - 1)
    for r, plan in enumerate(plans):
        if plan.is_extra:
            assert plan.fold_partner == r - p and plans[r - p].fold_partner == r
        for stage, peer in enumerate(plan.partners):
            assert plans[peer].partners[stage] == r
    # every core rank ends with the data of everyone: simulate
    data = [{r} for r in range(size)]
    for r in range(p, size):
        data[r - p] |= data[r]
    for stage in range(len(plans[0].partners)):
        data = [data[r] | data[plans[r].partners[stage]] if r < p else data[r] for r in range(size)]
    assert all(data[r] == set(range(size)) for r in range(p))


@pytest.mark.parametrize("size", [1, 2, 4, 8, 16])
def test_recursive_halving_leaves_block_r_at_rank_r_and_back_everywhere(size: int) -> None:
    plans = [recursive_halving_steps(r, size) for r in range(size)]
    assert all(len(p) == size.bit_length() - 1 for p in plans)
    # sums[r][b]: whose contributions rank r holds for block b
    sums = [[{r} for _ in range(size)] for r in range(size)]
    for k in range(len(plans[0])):
        before = [[set(b) for b in rank] for rank in sums]
        for r in range(size):
            step = plans[r][k]
            other = plans[step.partner][k]
            assert other.partner == r and other.send == step.keep and other.keep == step.send
            assert step.send[1] - step.send[0] == step.keep[1] - step.keep[0]
            for b in range(*step.keep):  # the partner sends what this rank keeps
                sums[r][b] = before[r][b] | before[step.partner][b]
    assert all(sums[r][r] == set(range(size)) for r in range(size))
    # backwards, sending what it kept, it is the all-gather: every block reaches everyone
    held = [{r} for r in range(size)]
    for k in reversed(range(len(plans[0]))):
        before = [set(h) for h in held]
        for r in range(size):
            step = plans[r][k]
            assert before[r] == set(range(*step.keep))  # it sends exactly what it holds
            held[r] |= before[step.partner] & set(range(*step.send))
    assert all(h == set(range(size)) for h in held)


def test_recursive_halving_refuses_other_sizes() -> None:
    with pytest.raises(ValueError, match="power of two"):
        recursive_halving_steps(0, 6)


@pytest.mark.parametrize("size", [*SIZES, 6, 9, 16])
def test_bruck_delivers_every_block_in_log_steps(size: int) -> None:
    plans = [bruck_steps(r, size) for r in range(size)]
    assert all(len(p) == (size - 1).bit_length() for p in plans)  # ceil(log2 n)
    held = [{r} for r in range(size)]
    for k in range(len(plans[0])):
        before = [set(h) for h in held]
        for r in range(size):
            step = plans[r][k]
            peer = plans[step.src][k]
            assert peer.dst == r and peer.count == step.count and peer.first == step.into
            sent = {(peer.first + i) % size for i in range(peer.count)}
            assert sent <= before[step.src]  # the sender holds what it sends
            assert not sent & before[r]  # and nothing arrives twice
            held[r] |= sent
    assert all(h == set(range(size)) for h in held)


def test_block_runs_wrap_past_the_last_block() -> None:
    assert block_runs(1, 2, 4) == [(1, 3)]
    assert block_runs(2, 2, 4) == [(2, 4)]
    assert block_runs(3, 3, 4) == [(3, 4), (0, 2)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("tree", [binomial_tree, chain])
def test_trees_reach_every_rank_once(size: int, tree) -> None:
    for root in range(size):
        nodes = [tree(r, size, root) for r in range(size)]
        assert nodes[root].parent is None
        for r, node in enumerate(nodes):
            for child in node.children:
                assert nodes[child].parent == r
        reached, frontier = {root}, [root]
        while frontier:
            nxt = [c for r in frontier for c in nodes[r].children]
            assert not reached & set(nxt)
            reached |= set(nxt)
            frontier = nxt
        assert reached == set(range(size))


def test_binomial_tree_depth_is_logarithmic() -> None:
    nodes = [binomial_tree(r, 16, 0) for r in range(16)]

    def depth(r: int) -> int:
        return 0 if nodes[r].parent is None else 1 + depth(nodes[r].parent)

    assert max(depth(r) for r in range(16)) == 4
    assert nodes[0].children == [8, 4, 2, 1]  # biggest subtree first


@pytest.mark.parametrize("size", SIZES)
def test_dissemination_rounds(size: int) -> None:
    rounds = [dissemination_partners(r, size) for r in range(size)]
    assert len(rounds[0]) == (size - 1).bit_length()
    for r in range(size):
        for k, (to, _frm) in enumerate(rounds[r]):
            assert rounds[to][k][1] == r
