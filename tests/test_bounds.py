"""Nothing a communicator keeps grows for its lifetime: messages no receive asks for are held
under RINGCOMM_UNMATCHED_BYTES (past it, a clear error naming the peer and tag), and
point-to-point traffic keeps no state per (peer, tag) ever used."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import ringcomm
from runners import run_threads

LIMIT = 64 << 10


def _flood_unmatched(comm: ringcomm.Communicator) -> str:
    """Rank 0 sends 100 KiB with tag 5 that rank 1 never receives, then one with tag 6
    that it does."""
    if comm.rank == 0:
        for _ in range(100):
            comm.send(np.zeros(1024, np.uint8), 1, tag=5)
        comm.send(np.zeros(1, np.uint8), 1, tag=6)
        return ""
    try:
        comm.recv(np.zeros(1, np.uint8), 0, tag=6)  # files tag 5 while it looks for tag 6
    except ringcomm.TransportError as e:
        return str(e)
    raise AssertionError("rank 1 kept 100 KiB of unmatched messages under a 64 KiB limit")


@pytest.mark.parametrize("transport", ["local", "zmq", "auto"])
def test_unmatched_messages_past_the_limit_fail_naming_peer_and_tag(transport: str) -> None:
    config = ringcomm.Config(unmatched_bytes=LIMIT, timeout_seconds=20)
    out = run_threads(2, _flood_unmatched, config=config, transport=transport)
    assert "RINGCOMM_UNMATCHED_BYTES" in out[1] and "rank 0's p2p messages with tag 5" in out[1]


def _p2p_with_ever_new_tags(comm: ringcomm.Communicator, count: int) -> int:
    peer = 1 - comm.rank
    buf = np.zeros(16, np.uint8)
    for tag in range(count):
        if comm.rank == 0:
            comm.send(buf, peer, tag=tag)
        else:
            comm.recv(buf, peer, tag=tag)
    return 0


def test_p2p_keeps_no_state_per_tag() -> None:
    """20,000 messages, each with a tag never used before: the communicators' memory does
    not grow with the number of tags (it did: a counter per (peer, tag))."""
    comms: dict[int, ringcomm.Communicator] = {}

    def body(comm: ringcomm.Communicator) -> int:
        comms[comm.rank] = comm
        _p2p_with_ever_new_tags(comm, 2000)  # warm up
        comm.barrier()
        if comm.rank == 0:
            tracemalloc.start()
        comm.barrier()
        _p2p_with_ever_new_tags(comm, 20000)
        comm.barrier()
        grown = 0
        if comm.rank == 0:
            snapshot = tracemalloc.take_snapshot()
            tracemalloc.stop()
            grown = sum(
                s.size
                for s in snapshot.statistics("filename")
                if "ringcomm" in s.traceback[0].filename
            )
        return grown

    grown = run_threads(2, body, timeout=120)[0]
    assert grown < 256 << 10, f"ringcomm holds {grown} bytes more after 20,000 new tags"
