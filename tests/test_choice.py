"""The choice of algorithm: forced per size range (``RINGCOMM_<OP>_ALGORITHM``), the board's
measured defaults by world size, and the tune file ``bench/tune.py`` writes and ``init``
reads."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import ringcomm
from ringcomm.algorithms import choice, tuning
from ringcomm.config import ALLREDUCE_ALGORITHMS, parse_algorithms, parse_size
from runners import run_threads

K, M = 1 << 10, 1 << 20


def test_sizes_and_ranges_parse() -> None:
    assert [parse_size(t) for t in ("4096", "4K", "4KiB", "16M", "1g", "1.5K")] == [
        4096, 4096, 4096, 16 * M, 1 << 30, 1536,
    ]  # fmt: skip
    assert parse_algorithms("ring", ALLREDUCE_ALGORITHMS) == (("ring", 0, 1 << 62),)
    assert parse_algorithms("direct:0-256K; ring:256K-", ALLREDUCE_ALGORITHMS) == (
        ("direct", 0, 256 * K),
        ("ring", 256 * K, 1 << 62),
    )
    for bad, says in (
        ("magic", "unknown algorithm"),
        ("ring:4K", "expected name:LO-HI"),
        ("ring:4K-4K", "empty"),
        ("ring:lots-", "not a size"),
        (";", "no algorithm"),
    ):
        with pytest.raises(ValueError, match=says):
            parse_algorithms(bad, ALLREDUCE_ALGORITHMS)
    with pytest.raises(ValueError, match=r"RINGCOMM_ALLGATHER_ALGORITHM.*unknown algorithm"):
        ringcomm.Config.from_env({"RINGCOMM_ALLGATHER_ALGORITHM": "recursive_doubling"})


def test_board_defaults_follow_the_world_size() -> None:
    cfg = ringcomm.Config()
    ar = choice.choose_allreduce
    assert ar(4 * K, 2, cfg, None, board=True) == "direct"
    assert ar(1 * M, 2, cfg, None, board=True) == "direct"  # in two steps
    assert ar(1 * M, 2, cfg, None, board=False) == "recursive_doubling"
    assert ar(64 * M, 2, cfg, None, board=True) == "direct"  # every size at n=2
    assert ar(4 * M, 4, cfg, None, board=True) == "direct"
    assert ar(16 * M, 4, cfg, None, board=True) == "direct"  # every size at n>2 too
    assert ar(64 * M, 8, cfg, None, board=True) == "direct"
    assert ar(64 * M, 4, cfg, None, board=False) == "ring"  # no board: p2p
    assert ar(4 * K, 4, cfg, None, board=False) == "recursive_doubling"  # no board: p2p
    assert choice.choose_broadcast(4 * K, 4, cfg, None, board=True) == "direct"
    assert choice.choose_broadcast(4 * K, 4, cfg, None, board=False) == "binomial"
    assert choice.choose_broadcast(4 * K, 2, cfg, None, board=True) == "direct"
    assert choice.choose_broadcast(256 * K, 4, cfg, None, board=True) == "direct"
    assert choice.choose_broadcast(256 * K, 4, cfg, None, board=False) == "chain"
    assert choice.choose_broadcast(16 * M, 2, cfg, None, board=True) == "direct"
    assert choice.use_direct("all_gather", 256 * K, 2, cfg, None, True) is True
    assert choice.use_direct("reduce", 4 * K, 4, cfg, None, True) is False  # binomial
    assert choice.use_direct("reduce", 1 * M, 4, cfg, None, True) is True
    assert choice.use_direct("reduce_scatter", 4 * M, 2, cfg, None, True) is True
    assert choice.use_direct("all_gather", 4 * M, 2, cfg, None, True) is True
    assert choice.use_direct("all_gather", 4 * K, 2, cfg, None, False) is False
    assert choice.use_direct("all_to_all", 4 * K, 2, cfg, None, True) is True
    assert choice.use_direct("all_to_all", 64 * M, 8, cfg, None, True) is True
    assert choice.use_direct("all_to_all", 4 * K, 2, cfg, None, False) is False


def test_forced_ranges_choose_per_size_and_fall_back_where_they_cannot_run() -> None:
    cfg = ringcomm.Config(allreduce_algorithm="direct:0-64K;ring:64K-1M")
    ar = choice.choose_allreduce
    assert ar(4 * K, 4, cfg, None, board=True) == "direct"
    assert ar(256 * K, 4, cfg, None, board=True) == "ring"
    assert ar(4 * M, 4, cfg, None, board=True) == "direct"  # not covered: the default
    assert ar(4 * K, 4, cfg, None, board=False) == "recursive_doubling"  # no board here
    assert ar(4 * K, 4, cfg, "star", board=True) == "star"  # algorithm= wins
    forced = ringcomm.Config(reduce_algorithm="binomial", allgather_algorithm="direct")
    assert choice.use_direct("reduce", 1 * M, 4, forced, None, True) is False
    assert choice.use_direct("all_gather", 64 * M, 2, forced, None, True) is True
    assert choice.use_direct("all_gather", 64 * M, 2, forced, "ring", True) is False
    linear = ringcomm.Config.from_env({"RINGCOMM_ALL_TO_ALL_ALGORITHM": "linear:0-1M"})
    assert choice.use_direct("all_to_all", 4 * K, 2, linear, None, True) is False
    assert choice.use_direct("all_to_all", 4 * M, 2, linear, None, True) is True
    assert choice.use_direct("all_to_all", 4 * M, 2, linear, "linear", True) is False


def test_tune_ranges_from_measured_winners() -> None:
    assert tuning.ranges({4 * K: "direct", 64 * K: "direct", 1 * M: "ring"}) == (
        "direct:0-1M;ring:1M-"
    )
    spec = tuning.ranges({4 * K: "direct", 16 * K: "ring", 64 * K: "direct", 3000: "ring"})
    assert spec == "ring:0-4K;direct:4K-16K;ring:16K-64K;direct:64K-"
    parse_algorithms(spec, ALLREDUCE_ALGORITHMS)  # what init reads back


def test_tune_file_fills_only_what_the_user_left_unset(tmp_path: Path, caplog) -> None:
    path = str(tmp_path / "sub" / "tune.json")
    tuning.save(path, "here", [
        {"transport": "local", "size": 2, "op": "all_reduce", "algorithms": "star:0-1M"},
        {"transport": "local", "size": 2, "op": "broadcast", "algorithms": "chain"},
        {"transport": "local", "size": 3, "op": "all_reduce", "algorithms": "ring"},
    ])  # fmt: skip
    tuning.save(
        path,
        "here",
        [  # replaces one entry, keeps the others
            {"transport": "local", "size": 2, "op": "broadcast", "algorithms": "binomial"}
        ],
    )
    cfg = ringcomm.Config(tune_file=path, broadcast_algorithm="chain")
    applied = tuning.apply(cfg, "local", 2)
    assert applied.allreduce_algorithm == "star:0-1M"
    assert applied.broadcast_algorithm == "chain"  # the user's setting wins
    assert tuning.apply(cfg, "local", 3).allreduce_algorithm == "ring"
    assert tuning.apply(cfg, "shm", 2) == cfg  # no entry for that transport
    assert tuning.apply(ringcomm.Config(tune_file="none"), "local", 2).allreduce_algorithm is None
    with open(path) as f:
        assert len(json.load(f)["entries"]) == 3

    # A communicator made with the file chooses by it: star is never the default.
    def chosen(comm: ringcomm.Communicator) -> str:
        comm.all_reduce(np.ones(10, np.float32))
        return comm._choosing.allreduce_algorithm  # type: ignore[attr-defined]

    out = run_threads(2, chosen, config=ringcomm.Config(tune_file=path))
    assert out == ["star:0-1M", "star:0-1M"]

    bad = tmp_path / "bad.json"
    bad.write_text('{"format": 1, "entries": [{"transport": "local", "size": 2, '
                   '"op": "all_reduce", "algorithms": "magic"}]}')  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="ringcomm"):
        assert (
            tuning.apply(ringcomm.Config(tune_file=str(bad)), "local", 2).allreduce_algorithm
            is None
        )
    assert "ignoring the tune file" in caplog.text


def test_point_to_point_defaults_follow_the_size_and_the_world() -> None:
    cfg = ringcomm.Config()
    ar = choice.choose_allreduce
    assert ar(1 * M, 2, cfg, None) == "recursive_doubling"  # n=2: one exchange
    assert ar(16 * K, 8, cfg, None) == "recursive_doubling"
    assert ar(64 * K, 3, cfg, None) == "recursive_doubling"
    assert ar(256 * K, 4, cfg, None) == "rabenseifner"
    assert ar(1 * M, 8, cfg, None) == "rabenseifner"
    assert ar(256 * K, 6, cfg, None) == "ring"  # not a power of two: no fold of whole buffers
    assert ar(4 * M, 8, cfg, None) == "ring"
    ag = choice.choose_allgather
    assert ag(64 * K, 4, cfg, None) == "bruck"
    assert ag(64 * K, 3, cfg, None) == "bruck"
    assert ag(64 * K, 2, cfg, None) == "ring"  # the same one exchange
    assert ag(4 * M, 4, cfg, None) == "ring"
    assert ag(4 * M, 4, cfg, "bruck") == "bruck"
    assert ag(64 * K, 4, cfg, "direct") == "bruck"  # (the board decides before this)
    rs = choice.choose_reduce_scatter
    assert rs(1 * M, 4, cfg, None) == "recursive_halving"
    assert rs(1 * M, 6, cfg, None) == "ring"
    assert rs(1 * M, 6, cfg, "recursive_halving") == "ring"  # cannot run: the ring
    assert rs(16 * M, 8, cfg, None) == "ring"
    forced = ringcomm.Config(
        allgather_algorithm="ring:0-1M", reduce_scatter_algorithm="recursive_halving"
    )
    assert ag(64 * K, 4, forced, None) == "ring"
    assert ag(4 * M, 4, forced, None) == "ring"  # not covered: the default
    assert rs(16 * M, 4, forced, None) == "recursive_halving"
