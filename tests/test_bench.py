"""The benchmark runs end to end, checks its results and writes JSON (tiny sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "op", ["all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce", "all_to_all"]
)
def test_bench_reports_rows_without_wrong_results(op: str, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "ringcomm.run",
            "-n",
            "3",
            sys.executable,
            str(ROOT / "bench" / "collectives.py"),
            op,
            "-b",
            "1K",
            "-e",
            "1M",
            "-f",
            "32",
            "-n",
            "3",
            "-w",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # 1K, 32K, 1M (per-rank ops round down to a multiple of the 3 ranks' elements)
    assert [r["size"] for r in rows] == [r["count"] * 4 for r in rows]
    assert [round(r["size"] / 1024) for r in rows] == [1, 32, 1024]
    assert all(r["wrong"] == 0 and r["busbw"] > 0 for r in rows)
    assert "#wrong" in res.stdout


def test_bench_side_by_side_with_gloo(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the gloo peer needs torch: pip install 'ringcomm[torch]'")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "ringcomm.run",
            "-n",
            "2",
            sys.executable,
            str(ROOT / "bench" / "collectives.py"),
            "all_reduce",
            "-b",
            "4K",
            "-e",
            "64K",
            "-n",
            "3",
            "-w",
            "1",
            "--peer",
            "gloo",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [
        line
        for line in res.stdout.splitlines()
        if line.startswith("[0]") and "|" in line and not line.startswith("[0] #")
    ]
    assert len(rows) == 3
    assert all(line.split("|")[2].split()[2] == "0" for line in rows), "gloo #wrong"


@pytest.mark.parametrize("op", ["all_gather", "reduce_scatter", "all_to_all", "broadcast"])
@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_a_checked_run_that_writes_nothing_counts_as_wrong(op: str, dtype: str) -> None:
    """The checked run's outputs start from a sentinel, so results left over from the timed
    runs cannot pass for a correct last run (of ringcomm or of any peer)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import collectives
    finally:
        sys.path.remove(str(ROOT / "bench"))
    case = collectives.Case(op, 4096, np.dtype(dtype), rank=1, n=2, redop="sum")
    case.buf[:] = case.expected()  # what the timed runs left
    assert case.wrong() == 0
    case.reset()  # ... and then the checked run writes nothing
    assert case.wrong() == case.buf.size
