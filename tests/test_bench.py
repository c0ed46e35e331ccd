"""The benchmark runs end to end, checks its results, and every output format parses: the
nccl-tests table and trailer, JSON lines and CSV (tiny sizes)."""

from __future__ import annotations

import csv
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runners import run_threads

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "collectives.py"
OPS = ["all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce", "all_to_all"]


def _bench_module(name: str):  # type: ignore[no-untyped-def]
    """bench/<name>.py, imported."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def bench(n: int, script: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``script`` (the benchmark, or a wrapper of it) on ``n`` local ranks."""
    command = [sys.executable, "-m", "ringcomm.run", "-n", str(n), sys.executable, str(script)]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def table_rows(stdout: str) -> list[list[str]]:
    """Rank 0's data lines, split on whitespace like a script written for nccl-tests."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith("[0] ") and not line.startswith("[0] #"):
            rows.append(line[4:].split())
    return rows


def trailer(stdout: str) -> tuple[int, str, float]:
    """(wrong values, OK|FAILED, average busbw) from the lines scripts grep for."""
    bounds = re.search(r"^\[0\] # Out of bounds values : (\d+) (OK|FAILED)$", stdout, re.M)
    avg = re.search(r"^\[0\] # Avg bus bandwidth    : ([0-9.]+) ?$", stdout, re.M)
    assert bounds and avg, stdout
    return int(bounds.group(1)), bounds.group(2), float(avg.group(1))


@pytest.mark.parametrize("op", OPS)
def test_every_format_reports_the_same_rows(op: str, tmp_path: Path) -> None:
    """Table, trailer, JSON and CSV of one run agree, both column groups have no wrong values
    and rooted ops run from the root asked for; -c, -m and -z 0 are exercised on the way."""
    rows_json, rows_csv = tmp_path / "rows.json", tmp_path / "rows.csv"
    res = bench(
        3, BENCH, op, "-b", "1K", "-e", "1M", "-f", "32", "-n", "4", "-w", "1",
        "-c", "2", "-m", "2", "-z", "0", "-r", "2",
        "--json", str(rows_json), "--csv", str(rows_csv),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "validation: every 2 iterations" in res.stdout and "agg iters: 2" in res.stdout

    table = table_rows(res.stdout)
    rows = [json.loads(line) for line in rows_json.read_text().splitlines()]
    with rows_csv.open() as f:
        flat = list(csv.DictReader(f))
    assert len(table) == len(rows) == len(flat) == 3  # 1K, 32K, 1M
    # per-rank ops round down to a multiple of the 3 ranks' elements
    assert [round(r["size"] / 1024) for r in rows] == [1, 32, 1024]
    root = "2" if op in ("broadcast", "reduce") else "-1"
    in_place = op != "all_to_all"
    busbws = []
    for cols, row, flat_row in zip(table, rows, flat, strict=True):
        # nccl-tests' 13 columns: size count type redop root, then time algbw busbw #wrong twice
        assert int(cols[0]) == row["size"] == int(flat_row["size"]) == row["count"] * 4
        assert cols[4] == root == str(row["root"]) == flat_row["root"]
        assert cols[8] == "0" and row["out_of_place"]["wrong"] == 0 == int(flat_row["oop_wrong"])
        assert float(cols[7]) == pytest.approx(row["out_of_place"]["busbw"], abs=1e-3)
        assert float(flat_row["oop_busbw"]) == row["out_of_place"]["busbw"]
        busbws.append(row["out_of_place"]["busbw"])
        if in_place:
            assert cols[12] == "0" and row["in_place"]["wrong"] == 0 == int(flat_row["ip_wrong"])
            assert float(cols[11]) == pytest.approx(row["in_place"]["busbw"], abs=1e-3)
            busbws.append(row["in_place"]["busbw"])
        else:
            assert cols[9:13] == ["N/A"] * 4 and row["in_place"] is None
            assert flat_row["ip_busbw"] == ""
        assert row["bound"] == pytest.approx(row["busbw"] / row["memcpy_gbs"])
        assert float(cols[13]) == pytest.approx(row["bound"], abs=1e-3)
    wrong, verdict, avg = trailer(res.stdout)
    assert (wrong, verdict) == (0, "OK")
    assert avg == pytest.approx(sum(busbws) / len(busbws), abs=1e-4)


def test_a_wrong_result_fails_the_run(tmp_path: Path) -> None:
    """A library that gets one element wrong on one rank: #wrong counts it, the trailer says
    FAILED and the run exits non-zero."""
    wrapper = tmp_path / "broken.py"
    wrapper.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'bench')!r})\n"
        "import ringcomm, collectives\n"
        "real = ringcomm.Communicator.all_reduce\n"
        "def all_reduce(self, buf, *args, **kwargs):\n"
        "    work = real(self, buf, *args, **kwargs)\n"
        "    if self.rank == 1 and buf.size > 16:  # the benchmark's, not its tallies\n"
        "        buf[-1] += 1  # off by one in the last element\n"
        "    return work\n"
        "ringcomm.Communicator.all_reduce = all_reduce\n"
        "sys.exit(collectives.main())\n"
    )
    res = bench(2, wrapper, "all_reduce", "-b", "1K", "-e", "4K", "-f", "4", "-n", "3", "-w", "0")
    assert res.returncode != 0, res.stdout + res.stderr
    rows = table_rows(res.stdout)
    # one element on one rank, per check, in each group
    assert [(r[8], r[12]) for r in rows] == [("1", "1"), ("1", "1")], res.stdout
    assert trailer(res.stdout)[:2] == (4, "FAILED")


def test_without_checks_wrong_is_not_applicable(tmp_path: Path) -> None:
    rows_json = tmp_path / "rows.json"
    res = bench(
        2, BENCH, "broadcast", "-b", "4K", "-e", "4K", "-n", "2", "-w", "0", "-c", "0",
        "--json", str(rows_json),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    (cols,) = table_rows(res.stdout)
    assert cols[8] == cols[12] == "N/A"
    (row,) = [json.loads(line) for line in rows_json.read_text().splitlines()]
    assert row["out_of_place"]["wrong"] is None and row["in_place"]["wrong"] is None
    assert "validation: off (-c 0)" in res.stdout


def test_root_must_be_a_rank() -> None:
    res = bench(2, BENCH, "broadcast", "-b", "4K", "-e", "4K", "-r", "2")
    assert res.returncode != 0
    assert "-r 2 is not a rank of 2" in res.stderr + res.stdout


@pytest.mark.parametrize("average, want", [(0, 1.0), (1, 2.0), (2, 1.0), (3, 3.0)])
def test_average_combines_the_ranks_as_nccl_tests_does(average: int, want: float) -> None:
    collectives = _bench_module("collectives")
    got = run_threads(3, lambda comm: collectives.combine(comm, comm.rank + 1.0, average))
    assert got == [want] * 3


def test_bench_side_by_side_with_gloo(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the gloo peer needs torch: pip install 'ringcomm[torch]'")
    rows_csv = tmp_path / "rows.csv"
    res = bench(
        2, BENCH, "all_reduce", "-b", "4K", "-e", "64K", "-n", "3", "-w", "1", "--peer", "gloo",
        "--csv", str(rows_csv),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [line for line in res.stdout.splitlines() if "|" in line and "#" not in line]
    assert len(rows) == 3
    assert all(line.split("|")[1].split()[2] == "0" for line in rows), "gloo #wrong"
    with rows_csv.open() as f:
        flat = list(csv.DictReader(f))
    assert [int(r["gloo_wrong"]) for r in flat] == [0, 0, 0]
    for r in flat:  # the ratio compares ringcomm in place (all_reduce's form) with gloo
        assert float(r["gloo_ratio"]) == pytest.approx(
            float(r["ip_busbw"]) / float(r["gloo_busbw"])
        )


# (in-place reduce_scatter is not here: its output is its input, where no sentinel can stand;
# all_to_all has no in-place form)
@pytest.mark.parametrize(
    "op, in_place",
    [(op, False) for op in ("all_gather", "reduce_scatter", "all_to_all", "broadcast")]
    + [("all_gather", True), ("broadcast", True)],
)
@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_a_checked_run_that_writes_nothing_counts_as_wrong(
    op: str, in_place: bool, dtype: str
) -> None:
    """The checked run's outputs start from a sentinel, so results left over from the timed
    runs cannot pass for a correct last run (of ringcomm or of any peer)."""
    collectives = _bench_module("collectives")
    case = collectives.Case(op, 4096, np.dtype(dtype), rank=1, n=2, redop="sum", in_place=in_place)
    case.out[:] = case.expected()  # what the timed runs left
    assert case.wrong() == 0
    case.reset()  # ... and then the checked run writes nothing
    # (in place, this rank's own slot of all_gather holds its input, rightly)
    assert case.wrong() == (
        case.out.size // 2 if op == "all_gather" and in_place else case.out.size
    )


def test_plot_draws_each_op_from_json_rows(tmp_path: Path) -> None:
    """Two runs appended to one file (two ops, a peer): one chart per op, a line per
    library, the bound the benchmark measured."""
    pytest.importorskip("matplotlib", reason="bench/plot.py needs pip install 'ringcomm[bench]'")
    from matplotlib.image import imread

    rows_json = tmp_path / "rows.json"
    for op in ("all_reduce", "broadcast"):
        res = bench(
            2, BENCH, op, "-b", "4K", "-e", "64K", "-f", "4", "-n", "2", "-w", "0",
            "--peer", "zmq", "--json", str(rows_json),
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
    plot = _bench_module("plot")
    rows = plot.read_rows([rows_json])
    lines, bounds = plot.series(rows, "broadcast")
    assert sorted(lines) == [("ringcomm (shm)", 2), ("zmq", 2)]
    assert sorted(lines[("zmq", 2)]) == [4096, 16384, 65536]
    want = {r["size"]: (r["busbw"], r["time_us"]) for r in rows if r["op"] == "broadcast"}
    assert lines[("ringcomm (shm)", 2)] == want
    assert list(bounds) == [2] and bounds[2] > 0

    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "plot.py"), str(rows_json), "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    for op in ("all_reduce", "broadcast"):
        image = imread(tmp_path / f"{op}.png")
        assert image.shape[:2] == (450, 1200)  # 12 x 4.5 inches at 100 dpi
        assert image.std() > 0.01  # something is drawn


def test_plot_names_a_line_that_is_not_json(tmp_path: Path) -> None:
    bad = tmp_path / "rows.json"
    bad.write_text('{"op": "all_reduce"}\nnot json\n')
    with pytest.raises(SystemExit, match=r"rows.json:2: not a JSON row"):
        _bench_module("plot").read_rows([bad])
