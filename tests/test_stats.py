"""Per-operation statistics: ``comm.stats()`` and the table ``RINGCOMM_STATS=1`` prints at
close."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np

import ringcomm
from runners import run_threads


def _some_operations(comm: ringcomm.Communicator) -> list[dict]:
    for _ in range(10):
        comm.all_reduce(np.ones(1024, np.float32))  # 4 KiB
    out = np.empty(comm.size * 3000, np.float32)
    for _ in range(3):
        comm.all_gather(out, np.ones(3000, np.float32))  # 24,000 B gathered
    return comm.stats()


def test_stats_count_time_and_bandwidth_per_operation_and_size() -> None:
    rows = run_threads(2, _some_operations, config=ringcomm.Config(stats=True))[0]
    by_op = {r["op"]: r for r in rows}
    assert set(by_op) == {"all_reduce", "all_gather"}, rows
    ar, ag = by_op["all_reduce"], by_op["all_gather"]
    assert (ar["count"], ar["bytes"], ar["bucket_bytes"]) == (10, 40960, 4096)
    assert (ag["count"], ag["bytes"], ag["bucket_bytes"]) == (3, 3 * 24000, 32768)
    for r in rows:
        assert 0 < r["p50_us"] <= r["p99_us"], r
        assert r["algbw_gbs"] > 0
    assert abs(ar["busbw_gbs"] - ar["algbw_gbs"] * 2 * (2 - 1) / 2) < 1e-9  # 2(n-1)/n
    assert abs(ag["busbw_gbs"] - ag["algbw_gbs"] * (2 - 1) / 2) < 1e-9  # (n-1)/n


def test_stats_are_off_by_default() -> None:
    assert run_threads(2, _some_operations) == [[], []]


def test_stats_table_at_close() -> None:
    code = (
        "import numpy as np, ringcomm\n"
        "comm = ringcomm.init()\n"
        "for _ in range(5):\n"
        "    comm.all_reduce(np.ones(256, np.float64))\n"
        "comm.close()\n"
    )
    env = {**os.environ, "RINGCOMM_STATS": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "ringcomm.run", "-n", "2", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    for r in (0, 1):
        assert f"[{r}] # ringcomm stats, rank {r} of 2" in res.stderr, res.stderr
        row = re.search(
            rf"^\[{r}\] +all_reduce +2048 +5 +10240 .* \d \(\d+%\) +[0-9.]+$", res.stderr, re.M
        )
        assert row, res.stderr
        assert re.search(rf"^\[{r}\] # op +size <=.* last +spread_us$", res.stderr, re.M)


def _rank_two_is_late(comm: ringcomm.Communicator) -> list[dict]:
    buf = np.ones(256, np.float32)
    for _ in range(4):
        if comm.rank == 2:
            time.sleep(0.2)  # the others wait for it at every all_reduce
        comm.all_reduce(buf)
        comm.barrier()  # everyone sets out together again
    comm.close()  # the ranks exchange their arrival times here
    return comm.stats()


def test_straggler_column_names_the_rank_that_arrives_last() -> None:
    results = run_threads(3, _rank_two_is_late, config=ringcomm.Config(stats=True))
    for rows in results:  # every rank knows, from the exchange at close
        by_op = {r["op"]: r for r in rows}
        ar = by_op["all_reduce"]
        assert (ar["last_rank"], ar["last_share"]) == (2, 1.0), rows
        assert ar["spread_us"] >= 150_000  # it began 0.2 s after the others
        assert by_op["barrier"]["last_rank"] is not None
        assert set(by_op) == {"all_reduce", "barrier"}  # the exchange is not counted


def test_no_straggler_column_without_the_exchange() -> None:
    """comm.stats() before close, or on one rank: the columns are there, empty."""
    rows = run_threads(2, _some_operations, config=ringcomm.Config(stats=True))[0]
    assert all(r["last_rank"] is r["last_share"] is r["spread_us"] is None for r in rows)


def test_overhead_benchmark_runs() -> None:
    """bench/stats_overhead.py, whose figure docs/faults.md quotes, runs and reports."""
    script = os.path.join(os.path.dirname(__file__), "..", "bench", "stats_overhead.py")
    res = subprocess.run(
        [sys.executable, script, "--calls", "50", "--rounds", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    medians = re.findall(r"^stats (?:on |off): median ([0-9.]+)  rounds", res.stdout, re.M)
    assert len(medians) == 2 and all(float(m) > 0 for m in medians), res.stdout
    assert re.search(r"^cost of statistics: -?[0-9.]+ us per call$", res.stdout, re.M)
