"""Rendezvous, the world description, and the launcher."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

import ringcomm
from ringcomm.config import world_from
from ringcomm.run import free_port
from runners import run_threads

ROOT = Path(__file__).resolve().parents[1]


def test_world_from_arguments_ringcomm_env_then_torchrun_env() -> None:
    env = {"RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}
    spec = world_from(None, None, None, None, None, env)
    assert (spec.rank, spec.size, spec.master_addr, spec.master_port) == (1, 4, "10.0.0.1", 1234)
    env.update(RINGCOMM_RANK="2", RINGCOMM_SIZE="3")
    assert world_from(None, None, None, None, None, env).rank == 2
    assert world_from(0, 2, None, None, None, env).size == 2
    with pytest.raises(ValueError, match="rank 5"):
        world_from(5, 2, None, None, None, {})


def test_unreachable_store_fails_within_timeout_and_says_what_it_tried() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(ringcomm.RendezvousError) as info:
        ringcomm.init(rank=1, size=2, master_addr="127.0.0.1", master_port=port, timeout=1.0)
    assert time.monotonic() - t0 < 5
    assert f"tcp://127.0.0.1:{port}" in str(info.value)
    assert "rank 0" in str(info.value)


def test_port_in_use_is_a_clear_error() -> None:
    import socket

    from ringcomm.transport import zmq_context

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        before = zmq_context.live_contexts()
        with pytest.raises(ringcomm.RendezvousError, match="MASTER_PORT"):
            ringcomm.init(rank=0, size=2, master_port=port, timeout=1.0)
        # The endpoint bound before the store failed is closed (it leaked its socket).
        assert zmq_context.live_contexts() == before


def _launch(tmp_path: Path, script: str, n: int, *extra: str, timeout: float = 120):
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(script))
    return subprocess.run(
        [sys.executable, "-m", "ringcomm.run", "-n", str(n), *extra, str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )


def test_launcher_runs_ranks_and_prefixes_output(tmp_path: Path) -> None:
    res = _launch(
        tmp_path,
        """
        import numpy as np, ringcomm
        comm = ringcomm.init()
        buf = np.ones(4)
        comm.all_reduce(buf)
        print("rank", comm.rank, "of", comm.size, "sum", buf[0])
        comm.close()
    """,
        3,
    )
    assert res.returncode == 0, res.stderr
    for r in range(3):
        assert f"[{r}] rank {r} of 3 sum 3.0" in res.stdout


def test_launcher_fails_fast_with_the_traceback(tmp_path: Path) -> None:
    t0 = time.monotonic()
    res = _launch(
        tmp_path,
        """
        import time, ringcomm
        comm = ringcomm.init()
        if comm.rank == 1:
            raise RuntimeError("boom on rank one")
        time.sleep(60)  # would hang the job without fail-fast
    """,
        3,
    )
    assert time.monotonic() - t0 < 45
    assert res.returncode == 1
    assert "[1] RuntimeError: boom on rank one" in res.stderr
    assert "rank 1 failed (exit code 1)" in res.stderr


def test_launcher_reports_a_killed_rank(tmp_path: Path) -> None:
    res = _launch(
        tmp_path,
        """
        import os, signal, time
        if os.environ["RANK"] == "2":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
    """,
        3,
    )
    assert res.returncode != 0
    assert "rank 2 failed (killed by SIGKILL)" in res.stderr


def test_launcher_runs_a_module_and_a_command(tmp_path: Path) -> None:
    (tmp_path / "mymod.py").write_text("import os; print('mod', os.environ['WORLD_SIZE'])\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    res = subprocess.run(
        [sys.executable, "-m", "ringcomm.run", "-n", "2", "-m", "mymod"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert res.returncode == 0 and res.stdout.count("mod 2") == 2
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "ringcomm.run",
            "-n",
            "2",
            sys.executable,
            "-c",
            "import os; print('cmd', os.environ['LOCAL_RANK'])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "[1] cmd 1" in res.stdout


def test_log_records_carry_the_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RINGCOMM_LOG_LEVEL prints ringcomm's records with the rank in every line; an
    application's own handler gets ``record.rank`` too."""
    monkeypatch.setenv("RINGCOMM_LOG_LEVEL", "DEBUG")
    res = _launch(
        tmp_path,
        """
        import logging, ringcomm
        seen = []
        class Keep(logging.Handler):
            def emit(self, record):
                seen.append(record.rank)
        logging.getLogger("ringcomm").addHandler(Keep())
        comm = ringcomm.init()
        comm.close()
        print("seen", sorted(set(seen)))
    """,
        2,
    )
    assert res.returncode == 0, res.stderr
    for r in range(2):
        assert f"[{r}] ringcomm[rank {r}] DEBUG ringcomm: rank {r} of 2 joined" in res.stderr
        assert f"[{r}] seen ['{r}']" in res.stdout, res.stdout


# -- choosing the interface (RINGCOMM_SOCKET_IFNAME) -------------------------------------------
IFACES = [
    ("lo", "127.0.0.1"),
    ("docker0", "172.17.0.1"),
    ("eth0", "10.0.0.5"),
    ("eth1", "10.1.0.5"),
]


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("eth", "10.0.0.5"),  # a prefix: the first match
        ("eth1", "10.1.0.5"),
        ("=eth1", "10.1.0.5"),  # an exact name
        ("ib,eth1", "10.1.0.5"),  # a list
        ("^lo,docker", "10.0.0.5"),  # an exclusion list
        ("lo", "127.0.0.1"),
    ],
)
def test_socket_ifname_reads_like_nccl_socket_ifname(monkeypatch, spec: str, want: str) -> None:
    from ringcomm import hosts

    monkeypatch.setattr(hosts, "interface_addresses", lambda: IFACES)
    assert hosts.address_of_interface(spec) == want


def test_socket_ifname_that_matches_nothing_is_a_clear_error(monkeypatch) -> None:
    from ringcomm import hosts

    monkeypatch.setattr(hosts, "interface_addresses", lambda: IFACES)
    with pytest.raises(ringcomm.TransportError, match=r"selects no interface.*eth0 10\.0\.0\.5"):
        hosts.address_of_interface("=eth")
    with pytest.raises(ringcomm.TransportError, match="selects no interface"):
        hosts.address_of_interface("^lo,docker,eth")


def test_last_level_cache_is_the_largest_data_or_unified_cache(tmp_path) -> None:
    """Read as Linux's sysfs writes it: an instruction cache never counts, a size that
    does not parse is skipped, and no cache directory at all is None."""
    from ringcomm import hosts

    caches = {"index0": ("Data", "48K"), "index1": ("Instruction", "65536K"),
              "index2": ("Unified", "1024K"), "index3": ("Unified", "32M"),
              "index4": ("Unified", "lots")}  # fmt: skip
    for name, (kind, size) in caches.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "type").write_text(kind + "\n")
        (tmp_path / name / "size").write_text(size + "\n")
    (tmp_path / "uevent").write_text("")  # not a cache: no type or size, skipped
    assert hosts.last_level_cache_bytes(str(tmp_path)) == 32 << 20
    assert hosts.last_level_cache_bytes(str(tmp_path / "none")) is None


def test_ranks_bind_to_the_chosen_interface() -> None:
    """RINGCOMM_SOCKET_IFNAME=\"=lo\" binds every rank's data socket to lo's address. The
    ranks run through run_threads, which fails on any rank that raised or hung."""
    from ringcomm.hosts import interface_addresses

    assert ("lo", "127.0.0.1") in interface_addresses()
    config = ringcomm.Config(socket_ifname="=lo", zmq_protocol="tcp", timeout_seconds=20)

    def body(comm: ringcomm.Communicator) -> str:
        x = np.ones(10)
        comm.all_reduce(x)
        assert (x == comm.size).all()
        return comm._transport._pull.getsockopt(zmq.LAST_ENDPOINT).decode()

    urls = run_threads(2, body, config=config, transport="zmq", timeout=30)
    assert len(urls) == 2 and all(url.startswith("tcp://127.0.0.1:") for url in urls), urls


def test_log_level_is_read_at_init_not_at_import() -> None:
    """RINGCOMM_LOG_LEVEL set after ``import ringcomm`` takes effect at init; a bad value
    does not break the import, it is a ValueError at init naming the variable."""
    late = (
        "import os, ringcomm\n"
        "os.environ['RINGCOMM_LOG_LEVEL'] = 'debug'\n"
        "ringcomm.init(transport='local', master_port=3).close()\n"
    )
    res = subprocess.run([sys.executable, "-c", late], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "DEBUG ringcomm: rank 0 of 1 joined" in res.stderr, res.stderr
    bad = (
        "import ringcomm\n"
        "try:\n"
        "    ringcomm.init(transport='local', master_port=4)\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
    )
    env = {**os.environ, "RINGCOMM_LOG_LEVEL": "chatty"}
    res = subprocess.run(
        [sys.executable, "-c", bad], capture_output=True, text=True, timeout=60, env=env
    )
    assert res.returncode == 0 and "refused: RINGCOMM_LOG_LEVEL='CHATTY'" in res.stdout, (
        res.stdout + res.stderr
    )


def test_launcher_timestamps_each_line(tmp_path: Path) -> None:
    res = _launch(tmp_path, "print('hello', flush=True)\n", 2, "--timestamps")
    assert res.returncode == 0, res.stderr
    lines = sorted(res.stdout.splitlines())
    assert len(lines) == 2, lines
    for r, line in enumerate(lines):
        assert re.fullmatch(rf"\[{r} \d\d:\d\d:\d\d\.\d{{3}}\] hello", line), line


def test_free_ports_come_from_below_the_ephemeral_range() -> None:
    """A port the kernel lends to outgoing connections could be taken between picking it
    and binding the store (seen in CI): free_port picks below that range, still free."""
    import socket

    from ringcomm import run

    low, high = run._ephemeral_range()
    for _ in range(20):
        port = free_port()
        assert not low <= port <= high, (port, low, high)
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free indeed
