"""``ringcomm-info`` / ``python -m ringcomm info``: the report a user reads, its exit status,
and the local check, with and without the optional libraries installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def _info(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RINGCOMM_")}
    return subprocess.run(
        [sys.executable, "-m", "ringcomm", "info", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**clean, **(env or {})},
    )


def _field(out: str, name: str) -> str:
    found = re.search(rf"^ *{re.escape(name)} +(.*)$", out, re.M)
    assert found, f"no line for {name!r} in:\n{out}"
    return found.group(1)


def test_info_reports_versions_transports_and_settings() -> None:
    streams = {"RINGCOMM_SHM_BOARD_STREAM_BYTES": str(8 << 20)}
    res = _info(env={"RINGCOMM_TIMEOUT_SECONDS": "7", **streams})
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for section in ("versions", "MPI", "settings (RINGCOMM_*)", "transports on this host"):
        assert f"## {section}" in out, out
    import numpy
    import zmq

    assert _field(out, "numpy") == numpy.__version__
    assert _field(out, "pyzmq / libzmq").startswith(zmq.__version__)
    assert _field(out, "RINGCOMM_TIMEOUT_SECONDS") == "7  (environment)"
    assert _field(out, "RINGCOMM_SEGMENT_BYTES") == "1048576  (default)"
    assert _field(out, "shared memory").startswith("yes: /dev/shm")
    assert _field(out, "read a peer's memory").split()[0] in ("yes", "no:")
    assert _field(out, "last-level cache").endswith("; all_gather streams from 8 MiB on the host")
    assert _field(out, "sockets bind to").startswith("127.0.0.1")
    assert out.rstrip().endswith("no problems found")


def test_info_never_prints_the_secret() -> None:
    res = _info(env={"RINGCOMM_SECRET": "hunter2"})
    assert "hunter2" not in res.stdout and "set (not shown)" in res.stdout


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"RINGCOMM_TIMEOUT_SECONDS": "soon"}, "RINGCOMM_TIMEOUT_SECONDS='soon' is not a number"),
        ({"RINGCOMM_SOCKET_IFNAME": "=nosuch0"}, "selects no interface"),
        ({"RINGCOMM_GPU_PATH": "nccl"}, "NCCL is not available"),
    ],
)
def test_info_exits_non_zero_when_a_setting_cannot_work(env: dict, said: str) -> None:
    res = _info(env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert said in res.stdout.splitlines()[-1], res.stdout


def test_info_checks_local_ranks_over_each_transport() -> None:
    res = _info("-n", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^auto +ok: transport shm, 4 KiB all_reduce [\d.]+ us", res.stdout, re.M)
    assert re.search(r"^zmq +ok: transport zmq, 4 KiB all_reduce [\d.]+ us", res.stdout, re.M)


def test_info_without_mpi_and_torch(tmp_path: Path) -> None:
    """Where mpi4py and torch are not installed (imports made to fail), the report says so
    and still succeeds."""
    for name in ("mpi4py", "torch"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    res = _info(env={"PYTHONPATH": path})
    assert res.returncode == 0, res.stdout + res.stderr
    assert _field(res.stdout, "mpi4py").startswith("not installed")
    assert _field(res.stdout, "torch").startswith("not installed")
    assert "pip install 'ringcomm[mpi]'" in res.stdout


def _init_report(n: int, env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RINGCOMM_")}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "ringcomm.run",
            "-n",
            str(n),
            sys.executable,
            "-c",
            "import ringcomm; ringcomm.init().close()",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, "RINGCOMM_LOG_LEVEL": "INFO", **env},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout + res.stderr


def test_init_report_says_how_each_pair_talks() -> None:
    out = _init_report(3, {"RINGCOMM_SECRET": "hunter2"})
    assert "ringcomm init: 3 ranks on 1 host(s), transport shm (asked: auto)" in out, out
    assert "job secret set, PLAIN, clear" in out and "hunter2" not in out
    assert "pairs: 0-1 shm; 0-2 shm; 1-2 shm" in out
    assert "segment 1 MiB" in out and "recursive doubling below 2 MiB" in out
    assert out.count("ringcomm init:") == 1, "only rank 0 reports"
    out = _init_report(2, {"RINGCOMM_TRANSPORT": "zmq", "RINGCOMM_ENCRYPT": "1"})
    assert "transport zmq (asked: zmq), job secret set, CurveZMQ encryption" in out, out
    assert "pairs: 0-1 ipc curve" in out


def test_init_report_across_hosts_names_the_tcp_endpoints() -> None:
    import json

    from ringcomm.rendezvous import report

    def address(host: str, port: int, shm: str) -> bytes:
        sockets = {"host": f"{host}/boot", "tcp": f"tcp://10.0.0.{port % 7}:{port}"}
        if host == "a":
            sockets["ipc"] = f"ipc:///tmp/{port}.ipc"
        return json.dumps({"zmq": json.dumps(sockets), "shm": shm}).encode()

    addresses = [address("a", 4001, "A"), address("a", 4002, "A"), address("b", 4003, "B")]
    by_host, pairs = report.describe_pairs(addresses, "auto", encrypt=False)
    assert by_host == {"a": [0, 1], "b": [2]}
    assert pairs == {(0, 1): "shm", (0, 2): "tcp 10.0.0.6:4003", (1, 2): "tcp 10.0.0.6:4003"}


def test_init_report_says_what_the_collectives_make_of_the_hosts() -> None:
    import ringcomm
    from ringcomm.rendezvous.report import _topology_text

    even_rr = {"a": [0, 2], "b": [1, 3]}
    cfg = ringcomm.Config()
    assert _topology_text(even_rr, cfg) == (
        "2 + 2 ranks; all_reduce, all_gather and reduce_scatter hierarchical (inside hosts, "
        "then across); flat algorithms go host by host"
    )
    assert "flat (hosts with unequal numbers of ranks)" in _topology_text(
        {"a": [0, 1], "b": [2]}, cfg
    )
    assert "flat (RINGCOMM_HIERARCHY=off)" in _topology_text(
        even_rr, ringcomm.Config(hierarchy="off")
    )
    assert _topology_text(even_rr, ringcomm.Config(ring_order="ranks")).endswith("rank order")
